//! The policy: the immutable snapshot of segments, lists and upstreams that every query is
//! decided against. Pure: no I/O, no async. Building one is `compile.rs`'s job; answering
//! with a decision is `reply.rs`'s.

pub mod compile;
pub mod index;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::config::Config;
use crate::lists::{self, EntryKind, Rejected};
use crate::metrics::SegmentMetrics;
use crate::name;
use crate::reply::BlockAnswers;
use crate::segment::{SegmentId, SegmentTable};
use crate::upstream::Upstreams;
pub use index::{ListId, ListSet, Matches, SuffixIndex};

/// The compiled policy. Never changes once built: a reload swaps in a whole new one, so a
/// query sees the old policy or the new, never a mix.
pub struct Policy {
    /// The config it was built from.
    pub config: Config,
    pub segments: Vec<Segment>,
    pub table: SegmentTable,
    pub lists: Vec<List>,
    pub index: SuffixIndex,
    pub block: BlockAnswers,
    pub upstreams: Upstreams,
    pub metrics: PolicyMetrics,
    /// 1 for the policy loaded at start, one more for each reload; set by `Gateway`.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

/// Metric handles resolved for this policy's segments and lists.
pub struct PolicyMetrics {
    /// Indexed by `SegmentId`.
    pub segments: Vec<SegmentMetrics>,
    /// Clients in no segment (`segment="none"`).
    pub no_segment: SegmentMetrics,
}

/// A segment, with its lists as bitsets.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub block: ListSet,
    pub allow: ListSet,
    /// `block` in config order: when several lists block a name, the first one decides.
    pub block_order: Vec<ListId>,
}

/// A list as loaded.
#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    pub files: Vec<PathBuf>,
    /// Entries read, exceptions included.
    pub entries: usize,
    pub rejected: Vec<Rejected>,
}

/// The verdict for one name in one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// `zone_at`: offset in the query name where the list's matched entry starts.
    Blocked {
        list: ListId,
        zone_at: usize,
    },
}

impl Policy {
    pub fn classify(&self, client: IpAddr) -> Option<SegmentId> {
        self.table.classify(client)
    }

    /// Decides `name` (lowercase wire format) for `segment` in one pass over its suffixes.
    /// A name in one of the segment's allow lists is never blocked.
    pub fn decide(&self, segment: SegmentId, name: &[u8]) -> Decision {
        let seg = &self.segments[segment.0 as usize];
        let matches = self.index.lookup(name);
        if !matches.lists.intersect(seg.allow).is_empty() {
            return Decision::Allowed;
        }
        let blocked = matches.lists.intersect(seg.block);
        let list = if blocked.0.is_power_of_two() {
            blocked.first()
        } else {
            seg.block_order
                .iter()
                .copied()
                .find(|&l| blocked.contains(l))
        };
        match list {
            Some(list) => Decision::Blocked {
                list,
                zone_at: self.zone_of(name, &matches, list),
            },
            None => Decision::Allowed,
        }
    }

    /// Where the entry of `list` that matched `name` starts in it; `list` is one that
    /// [`SuffixIndex::lookup`] found for `name`.
    fn zone_of(&self, name: &[u8], matches: &Matches, list: ListId) -> usize {
        let zone_at = self.index.zone_of(name, matches, list);
        zone_at.expect("a list found for a name has an entry for one of its suffixes")
    }

    /// Why `client` gets what it gets for `name`, with the deciding entry's file and line.
    pub fn explain(&self, client: IpAddr, text_name: &str) -> Result<Explanation, name::NameError> {
        let wire = name::from_text(text_name)?;
        let Some(segment) = self.classify(client) else {
            return Ok(Explanation {
                name: name::to_text(&wire),
                segment: None,
                verdict: Verdict::Refused,
            });
        };
        let seg = &self.segments[segment.0 as usize];
        let matches = self.index.lookup(&wire);
        let allowed_by = matches.lists.intersect(seg.allow).first();
        let verdict = match (allowed_by, self.decide(segment, &wire)) {
            (Some(list), _) => {
                let zone_at = self.zone_of(&wire, &matches, list);
                Verdict::AllowedByList(self.locate(list, &wire[zone_at..]))
            }
            (None, Decision::Blocked { list, zone_at }) => {
                Verdict::Blocked(self.locate(list, &wire[zone_at..]))
            }
            (None, Decision::Allowed) => Verdict::Allowed,
        };
        Ok(Explanation {
            name: name::to_text(&wire),
            segment: Some(seg.name.clone()),
            verdict,
        })
    }

    /// Finds the entry for `zone` in `list`'s files (read again: the index keeps no origins).
    fn locate(&self, list: ListId, zone: &[u8]) -> Located {
        let info = &self.lists[list.0 as usize];
        let found = info.files.iter().find_map(|path| {
            let file = lists::read(path).ok()?;
            let entry = file
                .entries
                .iter()
                .find(|e| e.name == zone && e.kind == EntryKind::Block)?;
            Some((path.clone(), entry.line))
        });
        Located {
            list: info.name.clone(),
            entry: name::to_text(zone),
            at: found,
        }
    }
}

/// The answer to `portvakt explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub name: String,
    pub segment: Option<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The client is in no segment.
    Refused,
    /// No list of the segment contains the name: forwarded.
    Allowed,
    /// One of the segment's allow lists contains the name: forwarded.
    AllowedByList(Located),
    Blocked(Located),
}

/// A list entry that decided, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub list: String,
    pub entry: String,
    pub at: Option<(PathBuf, u32)>,
}
