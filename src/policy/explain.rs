//! `portvakt explain` and `/api/v1/explain`: why a client gets what it gets for a name. The
//! verdict comes from `Policy::decide`, like a query's; the deciding entry's file and line are
//! found by reading the list's files again (the index keeps no origins), the only file reads
//! of a running policy, so `locate` runs off the async runtime.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::lists::{self, EntryKind};
use crate::name::{self, NameError};
use crate::policy::{Decision, ListId, Policy};

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
    /// File and line, once [`Explanation::locate`] found them.
    pub at: Option<(PathBuf, u32)>,
    /// The entry in lowercase wire format, and the list's files to find it in.
    zone: Vec<u8>,
    files: Vec<PathBuf>,
}

impl Policy {
    /// Why `client` gets what it gets for `text_name`, by the same decision as a query. Pure:
    /// the deciding entry's file and line are left to [`Explanation::locate`].
    pub fn explain(&self, client: IpAddr, text_name: &str) -> Result<Explanation, NameError> {
        let wire = name::from_text(text_name)?;
        let Some(segment) = self.classify(client) else {
            return Ok(Explanation {
                name: name::to_text(&wire),
                segment: None,
                verdict: Verdict::Refused,
            });
        };
        let located = |list: ListId, zone_at: usize| Located {
            list: self.list_name(list).to_owned(),
            entry: name::to_text(&wire[zone_at..]),
            at: None,
            zone: wire[zone_at..].to_vec(),
            files: self.lists[list.0 as usize].files.clone(),
        };
        let verdict = match self.decide(segment, &wire) {
            Decision::Allowed => Verdict::Allowed,
            Decision::Excepted(list) => {
                Verdict::AllowedByList(located(list, self.entry_of(&wire, list)))
            }
            Decision::Blocked { list, zone_at } => Verdict::Blocked(located(list, zone_at)),
        };
        Ok(Explanation {
            name: name::to_text(&wire),
            segment: Some(self.segment_name(segment).to_owned()),
            verdict,
        })
    }
}

impl Explanation {
    /// Finds the deciding entry's file and line by reading its list's files. Blocking I/O:
    /// from async code, call it through `spawn_blocking`.
    pub fn locate(mut self) -> Explanation {
        if let Verdict::AllowedByList(located) | Verdict::Blocked(located) = &mut self.verdict {
            located.at = located.files.iter().find_map(|path| {
                let file = lists::read(path).ok()?;
                let entry = file
                    .entries
                    .iter()
                    .find(|e| e.name == located.zone && e.kind == EntryKind::Block)?;
                Some((path.clone(), entry.line))
            });
        }
        self
    }
}
