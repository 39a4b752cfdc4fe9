//! `portvakt explain` and `/api/v1/explain`: why a client gets what it gets for a name. The
//! verdict comes from `Policy::decide`, like a query's; the deciding entry's file and line are
//! found by reading the list's files again (the index keeps no origins), the only file reads
//! of a running policy, so `locate` runs off the async runtime.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::lists::{self, EntryKind};
use crate::name::{self, NameError};
use crate::policy::{Decision, ListId, Policy};
pub use crate::segment::Placement;

/// The answer to `portvakt explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub name: String,
    pub segment: Option<String>,
    /// What placed the client in its segment: a listener, a network, `unknown_clients`.
    pub placement: Placement,
    pub verdict: Verdict,
    /// The bypass kind the query counts as (`portvakt_bypass_attempts_total`), if any.
    pub bypass: Option<&'static str>,
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
    /// A built-in bypass name the segment answers itself (negatively).
    Bypass,
}

/// A list entry that decided, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub list: String,
    pub entry: String,
    /// File and line, once [`Explanation::locate`] found them.
    pub at: Option<(PathBuf, u32)>,
    /// What to look for in the list's files.
    key: Key,
    files: Vec<PathBuf>,
}

/// A name's matched entry (lowercase wire format), or an address whose network is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Zone(Vec<u8>),
    Address(IpAddr),
}

impl Policy {
    /// Why `client` gets what it gets for `text_name`, by the same decision as a query. Pure:
    /// the deciding entry's file and line are left to [`Explanation::locate`].
    /// `text_name` may also be an address, as found in an answer: then the verdict is that of
    /// the IP lists.
    pub fn explain(
        &self,
        client: IpAddr,
        listener: Option<SocketAddr>,
        text_name: &str,
    ) -> Result<Explanation, NameError> {
        let (segment, placement) = self.table.place(client, listener);
        let segment_name = segment.map(|s| self.segment_name(s).to_owned());
        let located = |list: ListId, entry: String, key: Key| Located {
            list: self.list_name(list).to_owned(),
            entry,
            at: None,
            key,
            files: self.lists[list.0 as usize].files.clone(),
        };
        if let Ok(addr) = text_name.parse::<IpAddr>() {
            let key = || Key::Address(addr);
            let verdict = match segment {
                None => Verdict::Refused,
                Some(s) => match (
                    self.decide_address(s, addr),
                    self.address_exception(s, addr),
                ) {
                    (Some(list), _) => Verdict::Blocked(located(list, addr.to_string(), key())),
                    (None, Some(list)) => {
                        Verdict::AllowedByList(located(list, addr.to_string(), key()))
                    }
                    (None, None) => Verdict::Allowed,
                },
            };
            return Ok(Explanation {
                name: addr.to_string(),
                segment: segment_name,
                placement,
                bypass: self.bypass_of(&verdict),
                verdict,
            });
        }
        let wire = name::from_text(text_name)?;
        let entry = |list: ListId, zone_at: usize| {
            let zone = wire[zone_at..].to_vec();
            located(list, name::to_text(&zone), Key::Zone(zone))
        };
        let verdict = match segment {
            None => Verdict::Refused,
            Some(s) if self.bypass_name(s, &wire).is_some() => Verdict::Bypass,
            Some(s) => match self.decide(s, &wire) {
                Decision::Allowed => Verdict::Allowed,
                Decision::Excepted(list) => {
                    Verdict::AllowedByList(entry(list, self.entry_of(&wire, list)))
                }
                Decision::Blocked { list, zone_at } => Verdict::Blocked(entry(list, zone_at)),
            },
        };
        let bypass = match verdict {
            Verdict::Bypass => crate::bypass::built_in(&wire).map(|(k, _)| k.as_str()),
            _ => self.bypass_of(&verdict),
        };
        Ok(Explanation {
            name: name::to_text(&wire),
            segment: segment_name,
            placement,
            verdict,
            bypass,
        })
    }

    /// The bypass kind of the list that blocked, if it is tagged with one.
    fn bypass_of(&self, verdict: &Verdict) -> Option<&'static str> {
        let Verdict::Blocked(located) = verdict else {
            return None;
        };
        let list = self.lists.iter().position(|l| l.name == located.list)?;
        self.list_bypass(ListId(list as u8)).map(|k| k.as_str())
    }
}

impl Explanation {
    /// Finds the deciding entry's file and line by reading its list's files. Blocking I/O:
    /// from async code, call it through `spawn_blocking`.
    pub fn locate(mut self) -> Explanation {
        if let Verdict::AllowedByList(located) | Verdict::Blocked(located) = &mut self.verdict {
            let found = located.files.iter().find_map(|path| {
                let file = lists::read(path).ok()?;
                match &located.key {
                    Key::Zone(zone) => {
                        let entry = (file.entries.iter())
                            .find(|e| e.name == *zone && e.kind == EntryKind::Block)?;
                        Some((path.clone(), entry.line, None))
                    }
                    Key::Address(addr) => {
                        let (net, line) = (file.networks.iter())
                            .find(|(net, _)| net.contains(&addr.to_canonical()))?;
                        Some((path.clone(), *line, Some(net.to_string())))
                    }
                }
            });
            if let Some((path, line, network)) = found {
                located.at = Some((path, line));
                if let Some(network) = network {
                    located.entry = network;
                }
            }
        }
        self
    }
}
