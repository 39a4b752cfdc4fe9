//! `portvakt explain` and `/api/v1/explain`: why a client gets what it gets for a name. The
//! verdict comes from `Policy::judge` (and `judge_answer` for an upstream answer), like a
//! query's; the deciding entry's file and line are
//! found by reading the list's files again (the index keeps no origins), the only file reads
//! of a running policy, so `locate` runs off the async runtime.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::cache::Answer;
pub use crate::client::segment::Placement;
use crate::lists::{self, EntryKind};
use crate::name::{self, NameError};
use crate::policy::{AnswerBlock, Asked, Judgement, ListId, Policy, Route, bypass_is_nodata};

/// The answer to `portvakt explain` and `/api/v1/explain`, decided by the query path's own
/// judge ([`Policy::judge`], [`Policy::judge_answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub name: String,
    pub segment: Option<String>,
    /// What placed the client in its segment: a listener, a network, `unknown_clients`.
    pub placement: Placement,
    pub verdict: Verdict,
    /// The bypass kind the query counts as (`portvakt_bypass_attempts_total`), if any.
    pub bypass: Option<&'static str>,
    /// What goes on the wire: `refused`, `forwarded`, `advertised` (DDR's own SVCB records),
    /// `nodata`, `nxdomain`, or the configured block response.
    pub answer: &'static str,
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
    /// DDR answered with portvakt's own encrypted endpoints.
    Advertised,
    /// Forwarded, but the upstream answer is blocked: `via` is the CNAME target or the
    /// address in it that the list holds.
    BlockedInAnswer {
        via: String,
        located: Located,
    },
}

impl Explanation {
    /// Whether the query is forwarded (and its upstream answer still to be judged).
    pub fn is_forwarded(&self) -> bool {
        matches!(self.verdict, Verdict::Allowed | Verdict::AllowedByList(_))
    }
}

impl Verdict {
    /// The verdict's word: `refused`, `allowed` or `blocked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Refused => "refused",
            Verdict::Allowed | Verdict::AllowedByList(_) | Verdict::Advertised => "allowed",
            Verdict::Blocked(_) | Verdict::Bypass | Verdict::BlockedInAnswer { .. } => "blocked",
        }
    }

    /// The list entry that decided, if one did.
    pub fn located(&self) -> Option<&Located> {
        match self {
            Verdict::AllowedByList(l) | Verdict::Blocked(l) => Some(l),
            Verdict::BlockedInAnswer { located, .. } => Some(located),
            Verdict::Refused | Verdict::Allowed | Verdict::Bypass | Verdict::Advertised => None,
        }
    }
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

/// A name's matched entry (lowercase wire format), an address whose network is wanted, or an
/// answer's shape (which no entry holds).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Zone(Vec<u8>),
    Address(IpAddr),
    Shape,
}

impl Policy {
    /// Why `client` gets what it gets for `text_name`, by the same judge as a query. Pure:
    /// the deciding entry's file and line are left to [`Explanation::locate`], the upstream
    /// answer to [`Policy::explain_answer`]. `text_name` may also be an address, as found in
    /// an answer: then the verdict is that of the IP lists.
    pub fn explain(
        &self,
        client: IpAddr,
        listener: Option<SocketAddr>,
        text_name: &str,
    ) -> Result<Explanation, NameError> {
        let (segment, placement) = self.table.place(client, listener);
        let segment_name = segment.map(|s| self.segment_name(s).to_owned());
        let mut explanation = Explanation {
            name: String::new(),
            segment: segment_name,
            placement,
            verdict: Verdict::Refused,
            bypass: None,
            answer: "refused",
        };
        if let Ok(addr) = text_name.parse::<IpAddr>() {
            explanation.name = addr.to_string();
            explanation.verdict = match segment {
                None => Verdict::Refused,
                Some(s) => match (
                    self.decide_address(s, addr),
                    self.address_exception(s, addr),
                ) {
                    (Some(list), _) => Verdict::Blocked(self.located_address(list, addr)),
                    (None, Some(list)) => Verdict::AllowedByList(self.located_address(list, addr)),
                    (None, None) => Verdict::Allowed,
                },
            };
            explanation.answer = match (&explanation.verdict, segment) {
                (Verdict::Refused, _) | (_, None) => "refused",
                (Verdict::Blocked(_), _) => self.block().response_name(),
                _ => "forwarded",
            };
            explanation.bypass = self.bypass_of(&explanation.verdict);
            return Ok(explanation);
        }
        let wire = name::from_text(text_name)?;
        explanation.name = name::to_text(&wire);
        // The query path's stages, asked as a stream would ask (no rate spent, EDNS 0).
        let judgement = match self.route(Asked {
            client,
            listener,
            name: &wire,
            edns_version: 0,
            rated_at: None,
        }) {
            Route::Judged(_, judgement) => judgement,
            Route::Refused | Route::Dropped(_) | Route::Slipped(_) | Route::BadVersion(_) => {
                return Ok(explanation);
            }
        };
        (explanation.verdict, explanation.answer) = match judgement {
            Judgement::Advertise => (Verdict::Advertised, "advertised"),
            Judgement::Bypass { kind, zone_at } => {
                explanation.bypass = Some(kind.as_str());
                let answer = if bypass_is_nodata(kind, zone_at) {
                    "nodata"
                } else {
                    "nxdomain"
                };
                (Verdict::Bypass, answer)
            }
            Judgement::Blocked { list, zone_at } => (
                Verdict::Blocked(self.located_zone(list, &wire[zone_at..])),
                self.block().response_name(),
            ),
            Judgement::Forward {
                excepted: Some(list),
            } => {
                let zone_at = self.entry_of(&wire, list);
                (
                    Verdict::AllowedByList(self.located_zone(list, &wire[zone_at..])),
                    "forwarded",
                )
            }
            Judgement::Forward { excepted: None } => (Verdict::Allowed, "forwarded"),
        };
        if explanation.bypass.is_none() {
            explanation.bypass = self.bypass_of(&explanation.verdict);
        }
        Ok(explanation)
    }

    /// `explanation` (of a forwarded name) once its upstream `answer` is known: blocked when a
    /// CNAME target or an address in it is, as the query path would block it.
    pub(crate) fn explain_answer(
        &self,
        mut explanation: Explanation,
        client: IpAddr,
        listener: Option<SocketAddr>,
        answer: &Answer,
    ) -> Explanation {
        let forwarded = explanation.is_forwarded();
        let Some(segment) = self.classify(client, listener).filter(|_| forwarded) else {
            return explanation;
        };
        let (via, located) = match self.judge_answer(segment, answer) {
            None => return explanation,
            Some(AnswerBlock::Target(list, target)) => {
                let zone_at = self.entry_of(target, list);
                (
                    name::to_text(target),
                    self.located_zone(list, &target[zone_at..]),
                )
            }
            Some(AnswerBlock::Address(list, addr)) => {
                (addr.to_string(), self.located_address(list, addr))
            }
            Some(AnswerBlock::TelegramConfig(list)) => {
                let via = "TXT: Telegram's fallback configuration".to_owned();
                let shape = "(the answer's shape)".to_owned();
                (via, self.located(list, shape, Key::Shape))
            }
        };
        explanation.verdict = Verdict::BlockedInAnswer { via, located };
        explanation.bypass = self.bypass_of(&explanation.verdict);
        explanation.answer = self.block().response_name();
        explanation
    }

    fn located_zone(&self, list: ListId, zone: &[u8]) -> Located {
        self.located(list, name::to_text(zone), Key::Zone(zone.to_vec()))
    }

    fn located_address(&self, list: ListId, addr: IpAddr) -> Located {
        self.located(list, addr.to_string(), Key::Address(addr))
    }

    fn located(&self, list: ListId, entry: String, key: Key) -> Located {
        Located {
            list: self.list_name(list).to_owned(),
            entry,
            at: None,
            key,
            files: self.lists[list.index()].files.clone(),
        }
    }

    /// The bypass kind of the list that blocked, if it is tagged with one.
    fn bypass_of(&self, verdict: &Verdict) -> Option<&'static str> {
        let located = match verdict {
            Verdict::Blocked(located) | Verdict::BlockedInAnswer { located, .. } => located,
            _ => return None,
        };
        let list = self.lists.iter().position(|l| l.name == located.list)?;
        self.list_bypass(ListId(list as u8)).map(|k| k.as_str())
    }
}

impl Explanation {
    /// Finds the deciding entry's file and line by reading its list's files. Blocking I/O:
    /// from async code, call it through `spawn_blocking`.
    pub fn locate(mut self) -> Explanation {
        if let Verdict::AllowedByList(located)
        | Verdict::Blocked(located)
        | Verdict::BlockedInAnswer { located, .. } = &mut self.verdict
        {
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
                    Key::Shape => None,
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
