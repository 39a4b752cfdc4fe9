//! Expectations (`[[expect]]`): what the operator declares a segment must block and must
//! resolve, apart from the lists the policy is built from, so that an emptied list or a list
//! dropped from `block` cannot pass unseen. Each is judged by the query path's own judge
//! (`judge.rs`), from a client the segment really wins (`SegmentTable::member`) or the one
//! the expectation names. A policy that breaks one with `on_fail = "refuse"` is not compiled
//! (`CompileError::Expectations`), so no reload puts it in force; the self-test judges them
//! again every minute (`portvakt_expectation_ok{segment}`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::client::segment::{NO_SEGMENT, SegmentId};
use crate::config::{Expectation, Expected, OnFail, Subject};
use crate::policy::{Asked, Judgement, Policy, Route};

/// One name of one expectation that the policy does not honour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// `file:line: ...`, naming the expectation and what the policy does instead.
    pub message: String,
    /// The segment label it counts under.
    pub segment: String,
    pub on_fail: OnFail,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Policy {
    /// Judges every expectation; what breaks, and per segment label whether all hold.
    pub fn check_expectations(&self) -> (Vec<Broken>, BTreeMap<String, bool>) {
        let mut broken = Vec::new();
        let mut by_segment = BTreeMap::new();
        for expectation in &self.config.expectations {
            let found = self.check_one(expectation);
            let label = found.0;
            let ok = found.1.is_empty();
            *by_segment.entry(label.clone()).or_insert(true) &= ok;
            broken.extend(found.1.into_iter().map(|message| Broken {
                message,
                segment: label.clone(),
                on_fail: expectation.on_fail,
            }));
        }
        (broken, by_segment)
    }

    /// The segment label of `expectation`, and what it finds broken.
    fn check_one(&self, expectation: &Expectation) -> (String, Vec<String>) {
        let named = expectation.segment;
        let label = |s: Option<SegmentId>| {
            s.map_or(NO_SEGMENT.to_owned(), |s| self.segment_name(s).to_owned())
        };
        let at = &expectation.at;
        let (client, listener) = match (expectation.client, named) {
            (Some(client), _) => (client, None),
            (None, Some(segment)) => match self.table.member(segment) {
                Some(member) => member,
                None => {
                    let message = format!(
                        "{at}: expectation for segment \"{}\" cannot hold: no address is placed in it (every network is inside another segment's)",
                        label(named)
                    );
                    return (label(named), vec![message]);
                }
            },
            (None, None) => unreachable!("the config check requires a segment or a client"),
        };
        let placed = self.classify(client, listener);
        if let (Some(want), Some(client)) = (named, expectation.client)
            && placed != Some(want)
        {
            let message = format!(
                "{at}: expectation broken: client {client} is placed in segment \"{}\", not \"{}\"",
                label(placed),
                label(named)
            );
            return (label(named), vec![message]);
        }
        let Some(segment) = placed else {
            let message = format!(
                "{at}: expectation broken: client {client} is in no segment (refused), so nothing resolves or is blocked for it"
            );
            return (label(named), vec![message]);
        };
        let mut broken = Vec::new();
        let roles = (expectation.blocked.iter().map(|e| (e, true)))
            .chain(expectation.resolves.iter().map(|e| (e, false)));
        for (expected, must_block) in roles {
            let (blocked, does) = self.judge_expected(client, listener, segment, expected);
            if blocked != must_block {
                let must = if must_block { "blocked" } else { "resolve" };
                broken.push(format!(
                    "{}: expectation broken: `{}` must {} for segment \"{}\", but the policy {does}",
                    expected.at,
                    expected.text,
                    if must_block { format!("be {must}") } else { must.to_owned() },
                    self.segment_name(segment)
                ));
            }
        }
        (label(Some(segment)), broken)
    }

    /// Whether `client` (placed in `segment`) gets `expected` answered negatively, and what
    /// the policy does: a name by the query path's stages, as a stream would ask it.
    fn judge_expected(
        &self,
        client: IpAddr,
        listener: Option<SocketAddr>,
        segment: SegmentId,
        expected: &Expected,
    ) -> (bool, String) {
        let asked = |name| Asked {
            client,
            listener,
            name,
            edns_version: 0,
            rated_at: None,
        };
        match &expected.subject {
            Subject::Name(name) => match self.route(asked(name)) {
                Route::Judged(_, judgement) => self.described(judgement),
                // Placed in `segment` by the caller, so judged; no stage before resolves it.
                other => (true, format!("answers it before judging it ({other:?})")),
            },
            Subject::Address(addr) => self.judge_address(segment, *addr),
        }
    }

    /// Whether a judgement answers negatively, and what the policy does, in words.
    fn described(&self, judgement: Judgement) -> (bool, String) {
        match judgement {
            Judgement::Blocked { list, .. } => (
                true,
                format!("blocks it (list \"{}\")", self.list_name(list)),
            ),
            Judgement::Bypass { kind, .. } => (
                true,
                format!("answers it as a bypass name ({})", kind.as_str()),
            ),
            Judgement::Advertise => (false, "answers it with its own DDR records".into()),
            Judgement::Forward {
                excepted: Some(list),
            } => (
                false,
                format!("forwards it (allowed by list \"{}\")", self.list_name(list)),
            ),
            Judgement::Forward { excepted: None } => (
                false,
                "forwards it (no list of the segment holds it)".into(),
            ),
        }
    }

    fn judge_address(&self, segment: SegmentId, addr: IpAddr) -> (bool, String) {
        match self.decide_address(segment, addr) {
            Some(list) => (
                true,
                format!("blocks answers with it (list \"{}\")", self.list_name(list)),
            ),
            None => (false, "lets answers with it through".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::CompileError;

    use crate::policy::test_policy as compile;

    #[test]
    fn expectations_hold_or_name_what_breaks_them() {
        let nested = "[[segment]]\nname = \"staff\"\nnetworks = [\"10.10.0.0/16\"]\nblock = [\"tiktok\"]\n\
            [[segment]]\nname = \"printers\"\nnetworks = [\"10.10.0.0/24\"]\n";
        let holds = compile(&format!(
            "{nested}[[expect]]\nsegment = \"staff\"\nblocked = [\"tiktok.com\", \"www.tiktok.com\"]\nresolves = [\"example.org\"]\n\
             [[expect]]\nsegment = \"printers\"\nresolves = [\"tiktok.com\"]\n\
             [[expect]]\nclient = \"10.10.7.7\"\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\n"
        ))
        .unwrap();
        let (broken, by_segment) = holds.check_expectations();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(by_segment.len(), 2);
        assert!(by_segment.values().all(|ok| *ok));

        let cases = [
            (
                "staff no longer blocks tiktok",
                "[[segment]]\nname = \"staff\"\nnetworks = [\"10.10.0.0/16\"]\n\
                 [[expect]]\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\n",
                "t.toml:9: expectation broken: `tiktok.com` must be blocked for segment \"staff\", but the policy forwards it (no list of the segment holds it)",
            ),
            (
                "a name staff must resolve is blocked",
                "[[segment]]\nname = \"staff\"\nnetworks = [\"10.10.0.0/16\"]\nblock = [\"tiktok\"]\n\
                 [[expect]]\nsegment = \"staff\"\nresolves = [\"tiktok.com\"]\n",
                "t.toml:10: expectation broken: `tiktok.com` must resolve for segment \"staff\", but the policy blocks it (list \"tiktok\")",
            ),
            (
                "a client placed elsewhere",
                &format!(
                    "{nested}[[expect]]\nclient = \"10.10.0.9\"\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\n"
                ),
                "t.toml:11: expectation broken: client 10.10.0.9 is placed in segment \"printers\", not \"staff\"",
            ),
        ];
        for (case, text, want) in cases {
            let Err(CompileError::Expectations { broken }) = compile(text) else {
                panic!("{case}: compiled");
            };
            assert_eq!(broken, [want], "{case}");
        }
    }

    #[test]
    fn a_warning_expectation_lets_the_policy_in() {
        let policy = compile(
            "[[segment]]\nname = \"staff\"\nnetworks = [\"10.10.0.0/16\"]\n\
             [[expect]]\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\non_fail = \"warn\"\n",
        )
        .unwrap();
        let (broken, by_segment) = policy.check_expectations();
        assert_eq!(broken.len(), 1);
        assert_eq!(by_segment.get("staff"), Some(&false));
    }
}
