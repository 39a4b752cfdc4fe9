//! The facts the admin API, the command line (and, next, the console) show, each one typed
//! view: the API renders it as JSON (`Serialize`), the command line as text (`text`). Nothing
//! renders a fact it computed on its own.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::config::ListId;
use crate::name;
use crate::policy::{Explanation, Located, Policy, Verdict};
use crate::protocol::Transport;
use crate::reload::ReloadStatus;
use crate::transport::ListenAddrs;

/// `GET /api/v1/status`: the running gateway, its policy and its reloads.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub pid: u32,
    /// Where the config came from.
    pub config: String,
    pub policy: PolicyView,
    /// Each transport's listeners as bound, by its label.
    pub listeners: std::collections::BTreeMap<&'static str, Vec<String>>,
    /// The segment of clients in none (`refuse`: refused).
    pub unknown_clients: String,
    pub segments: Vec<SegmentView>,
    pub lists: Vec<ListView>,
    pub upstreams: Vec<UpstreamView>,
    pub cache_entries: usize,
    pub reload: ReloadStatus,
}

impl Status {
    pub fn of(
        policy: &Policy,
        dns: &ListenAddrs,
        cache_entries: usize,
        reload: ReloadStatus,
    ) -> Status {
        let config = policy.config();
        let texts = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect();
        let listeners = (Transport::ALL.into_iter())
            .map(|t| (t.as_str(), texts(dns.of(t))))
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            config: config.origin.clone(),
            policy: PolicyView::of(policy),
            listeners,
            unknown_clients: (config.unknown_clients).map_or("refuse".to_owned(), |id| {
                config.segments[id.index()].name.clone()
            }),
            segments: SegmentView::all(policy),
            lists: ListView::all(policy),
            upstreams: UpstreamView::all(policy),
            cache_entries,
            reload,
        }
    }
}

/// The policy in force: which one, since when.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub generation: u64,
    pub loaded_at_unix: u64,
    pub hash: String,
}

impl PolicyView {
    pub fn of(policy: &Policy) -> PolicyView {
        let loaded_at = (policy.loaded_at().duration_since(UNIX_EPOCH)).map_or(0, |d| d.as_secs());
        PolicyView {
            generation: policy.generation(),
            loaded_at_unix: loaded_at,
            hash: policy.hash().to_owned(),
        }
    }
}

/// A segment: where its clients are, what it blocks and allows.
#[derive(Debug, Serialize)]
pub struct SegmentView {
    pub name: String,
    pub networks: Vec<String>,
    pub block: Vec<String>,
    pub allow: Vec<String>,
}

impl SegmentView {
    pub fn all(policy: &Policy) -> Vec<SegmentView> {
        let config = policy.config();
        let names = |ids: &[ListId]| {
            ids.iter()
                .map(|id| config.lists[id.index()].name.clone())
                .collect()
        };
        (config.segments.iter())
            .map(|s| SegmentView {
                name: s.name.clone(),
                networks: s.networks.iter().map(ToString::to_string).collect(),
                block: names(&s.block),
                allow: names(&s.allow),
            })
            .collect()
    }
}

/// A list as loaded: where from, how many entries, which lines were rejected.
#[derive(Debug, Serialize)]
pub struct ListView {
    pub name: String,
    pub files: Vec<String>,
    pub urls: Vec<String>,
    pub entries: usize,
    pub rejected_lines: usize,
    /// The rejected lines themselves (`file:line: why`), for `portvakt check`.
    #[serde(skip)]
    pub rejected: Vec<String>,
}

impl ListView {
    pub fn all(policy: &Policy) -> Vec<ListView> {
        (policy.lists().iter().zip(&policy.config().lists))
            .map(|(list, config)| ListView {
                name: list.name.clone(),
                files: list.files.iter().map(|f| f.display().to_string()).collect(),
                urls: config.remote.iter().map(|r| r.url.clone()).collect(),
                entries: list.entries,
                rejected_lines: list.rejected.len(),
                rejected: list.rejected.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }
}

/// An upstream group.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub zones: Vec<String>,
    pub servers: Vec<String>,
    pub timeout_ms: u64,
}

impl UpstreamView {
    pub fn all(policy: &Policy) -> Vec<UpstreamView> {
        (policy.config().upstreams.iter())
            .map(|u| UpstreamView {
                zones: u.zones.iter().map(|z| name::to_text(z)).collect(),
                servers: u.servers.iter().map(ToString::to_string).collect(),
                timeout_ms: u64::try_from(u.timeout.as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// `portvakt check`: the config compiled, the policy hash, each list, every rejected line.
#[derive(Debug, Serialize)]
pub struct Check {
    pub config: String,
    pub hash: String,
    pub lists: Vec<ListView>,
}

impl Check {
    pub fn of(policy: &Policy) -> Check {
        Check {
            config: policy.config().origin.clone(),
            hash: policy.hash().to_owned(),
            lists: ListView::all(policy),
        }
    }

    pub fn text(&self) -> String {
        let mut out = format!("{}: ok\npolicy hash: {}\n", self.config, self.hash);
        for list in &self.lists {
            let _ = writeln!(
                out,
                "list {}: {} entries, {} rejected lines ({})",
                list.name,
                list.entries,
                list.rejected_lines,
                list.files.join(", ")
            );
        }
        for line in self.lists.iter().flat_map(|l| &l.rejected) {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

/// `GET /api/v1/explain` and `portvakt explain`: why a client gets what it gets for a name.
#[derive(Debug, Serialize)]
pub struct ExplainView {
    pub client: String,
    pub name: String,
    pub segment: Option<String>,
    pub placed_by: String,
    pub verdict: &'static str,
    pub decided_by: Option<EntryView>,
    /// The CNAME target or address in the upstream answer that a list holds.
    pub in_answer: Option<String>,
    pub bypass: Option<&'static str>,
    pub answer: &'static str,
    /// The verdict in full, for the text.
    #[serde(skip)]
    kind: Kind,
    /// The block answer's TTL, for the text.
    #[serde(skip)]
    ttl: u32,
    /// Whether the upstream answer was judged too (the running gateway's explain).
    #[serde(skip)]
    answer_judged: bool,
}

/// The verdict's cases, as the text tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Refused,
    Allowed,
    AllowedByList,
    Blocked,
    BlockedInAnswer,
    Bypass,
    Advertised,
}

/// The list entry that decided, with its file and line once found.
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub list: String,
    pub entry: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl EntryView {
    fn of(located: &Located) -> EntryView {
        EntryView {
            list: located.list.clone(),
            entry: located.entry.clone(),
            file: (located.at.as_ref()).map(|(path, _)| path.display().to_string()),
            line: located.at.as_ref().map(|(_, line)| *line),
        }
    }

    fn text(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("entry `{}` at {file}:{line}", self.entry),
            _ => format!("entry `{}`", self.entry),
        }
    }
}

impl ExplainView {
    /// `answer_judged`: the explanation includes the upstream answer's own judgement.
    pub fn of(
        policy: &Policy,
        client: IpAddr,
        explanation: &Explanation,
        answer_judged: bool,
    ) -> ExplainView {
        let via = match &explanation.verdict {
            Verdict::BlockedInAnswer { via, .. } => Some(via.clone()),
            _ => None,
        };
        let kind = match explanation.verdict {
            Verdict::Refused => Kind::Refused,
            Verdict::Allowed => Kind::Allowed,
            Verdict::AllowedByList(_) => Kind::AllowedByList,
            Verdict::Blocked(_) => Kind::Blocked,
            Verdict::BlockedInAnswer { .. } => Kind::BlockedInAnswer,
            Verdict::Bypass => Kind::Bypass,
            Verdict::Advertised => Kind::Advertised,
        };
        ExplainView {
            client: client.to_string(),
            name: explanation.name.clone(),
            segment: explanation.segment.clone(),
            placed_by: explanation.placement.to_string(),
            verdict: explanation.verdict.as_str(),
            decided_by: explanation.verdict.located().map(EntryView::of),
            in_answer: via,
            bypass: explanation.bypass,
            answer: explanation.answer,
            kind,
            ttl: policy.config().block.ttl,
            answer_judged,
        }
    }

    pub fn text(&self) -> String {
        let segment = (self.segment.as_deref()).map_or("none".to_owned(), |s| format!("\"{s}\""));
        let mut out = format!(
            "client:  {}\nsegment: {segment} (by {})\nname:    {}\n",
            self.client, self.placed_by, self.name
        );
        let decided = |how: &str| {
            let entry = self.decided_by.as_ref().expect("a list decided");
            format!(
                "verdict: {how} by list \"{}\" ({})",
                entry.list,
                entry.text()
            )
        };
        let verdict = match self.kind {
            Kind::Refused => {
                "verdict: refused (client is in no segment; unknown_clients = \"refuse\")".to_owned()
            }
            Kind::Allowed => {
                "verdict: allowed (no list of the segment contains the name): forwarded".to_owned()
            }
            Kind::AllowedByList => decided("allowed") + ": forwarded",
            Kind::Blocked => decided("blocked"),
            Kind::BlockedInAnswer => {
                let entry = self.decided_by.as_ref().expect("a list decided");
                let via = self.in_answer.as_deref().unwrap_or_default();
                format!(
                    "verdict: blocked in the answer: `{via}` is in list \"{}\" ({})",
                    entry.list,
                    entry.text()
                )
            }
            Kind::Bypass => format!(
                "verdict: bypass name ({}), answered by the segment's bypass handling",
                self.bypass.unwrap_or("bypass")
            ),
            Kind::Advertised => {
                "verdict: DDR, answered with portvakt's own encrypted endpoints (advertise_encrypted)"
                    .to_owned()
            }
        };
        let _ = writeln!(out, "{verdict}");
        match self.answer {
            "forwarded" if !self.answer_judged => out.push_str(
                "answer:  forwarded; the upstream answer is judged too (CNAME targets, addresses): \
                 /api/v1/explain on the running gateway includes it\n",
            ),
            "forwarded" => out.push_str("answer:  forwarded\n"),
            "refused" => {}
            answer => {
                let _ = writeln!(out, "answer:  {answer}, ttl {}", self.ttl);
            }
        }
        if let (Some(kind), Kind::Blocked | Kind::BlockedInAnswer) = (self.bypass, self.kind) {
            let _ = writeln!(out, "bypass:  counted as a bypass attempt ({kind})");
        }
        out
    }
}

/// `portvakt audit verify`: the audit trail's hash chain holds.
#[derive(Debug, Serialize)]
pub struct AuditView {
    pub intact: bool,
    pub lines: usize,
    pub files: usize,
    pub state_dir: String,
}

impl AuditView {
    pub fn intact(verified: &crate::evidence::audit::Verified, state_dir: &Path) -> AuditView {
        AuditView {
            intact: true,
            lines: verified.lines,
            files: verified.files,
            state_dir: state_dir.display().to_string(),
        }
    }

    pub fn text(&self) -> String {
        format!(
            "audit log intact: {} lines in {} files ({})\n",
            self.lines, self.files, self.state_dir
        )
    }
}

/// `POST /api/v1/reload`: the new policy's generation, or why the running one stays.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadView {
    Success {
        generation: u64,
    },
    Failure {
        error: String,
        running_generation: u64,
    },
}

/// A request the API refuses, and why.
#[derive(Debug, Serialize)]
pub struct ErrorView {
    pub error: String,
}

impl ErrorView {
    pub fn new(error: impl Into<String>) -> ErrorView {
        ErrorView {
            error: error.into(),
        }
    }
}
