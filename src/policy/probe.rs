//! The self-test's list probes: per segment, a few names of each list it blocks or allows,
//! chosen when the policy is built, are decided again against the policy in force (from an address of the
//! segment, through its classification); `portvakt_policy_probe_ok{segment,list}` says whether
//! each decision is the configured one (blocked for a blocked list, not blocked for an allowed
//! one). It touches no counter of real queries. Being taken from the policy they test, they
//! catch a broken index, not a wrong policy: that is what the expectations (`expect.rs`) are for.

use std::net::IpAddr;

use crate::client::segment::{SegmentId, SegmentTable};
use crate::config::Config;
use crate::policy::index::{ListId, SuffixIndex};
use crate::policy::{Decision, Policy};

/// Names probed per list.
pub const NAMES: usize = 3;

/// One (segment, list) probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub segment: SegmentId,
    pub list: ListId,
    /// An address the segment's networks hold, and (for a segment of listeners) a listener.
    client: IpAddr,
    listener: Option<std::net::SocketAddr>,
    names: Vec<Vec<u8>>,
    /// Blocked (a list the segment blocks) or not (one it allows).
    blocked: bool,
}

/// The first names (of block entries) read from each list, `NAMES` at most.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Vec<Vec<u8>>>);

impl Samples {
    pub fn new(lists: usize) -> Samples {
        Samples(vec![Vec::new(); lists])
    }

    pub fn offer(&mut self, list: usize, name: &[u8]) {
        if self.0[list].len() < NAMES {
            self.0[list].push(name.to_vec());
        }
    }
}

/// The probes of `config`: for each segment, each list it blocks or allows that has names.
/// A blocked list's name that one of the segment's allowed lists also holds is left out (allow
/// beats block, so it is not expected blocked).
pub fn probes(
    config: &Config,
    samples: &Samples,
    index: &SuffixIndex,
    table: &SegmentTable,
) -> Vec<Probe> {
    let mut probes = Vec::new();
    for (id, segment) in config.segments.iter().enumerate() {
        // A client the segment wins (nested segments take the outer one's first address).
        let Some((client, listener)) = table.member(SegmentId(id as u16)) else {
            continue;
        };
        let allowed = |name: &[u8]| {
            let found = index.lookup(name).lists;
            segment.allow.iter().any(|&l| found.contains(l))
        };
        let roles = (segment.block.iter().map(|&l| (l, true)))
            .chain(segment.allow.iter().map(|&l| (l, false)));
        for (list, blocked) in roles {
            let names: Vec<Vec<u8>> = (samples.0[list.index()].iter())
                .filter(|name| !blocked || !allowed(name))
                .cloned()
                .collect();
            if !names.is_empty() {
                probes.push(Probe {
                    segment: SegmentId(id as u16),
                    list,
                    client,
                    listener,
                    names,
                    blocked,
                });
            }
        }
    }
    probes
}

impl Probe {
    /// Whether `policy` decides every name as configured, for a client it places here. The
    /// names are asked of the lists only (`decide`), not of the whole judge: a list's name
    /// that is also one of DDR's or a built-in bypass name is answered before the lists, and
    /// would fail its probe on a healthy policy. The stages are the expectations' to test.
    pub fn passes(&self, policy: &Policy) -> bool {
        policy.classify(self.client, self.listener) == Some(self.segment)
            && self.names.iter().all(|name| {
                let blocked = matches!(policy.decide(self.segment, name), Decision::Blocked { .. });
                blocked == self.blocked
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;
    use crate::policy::test_policy;

    fn policy() -> Policy {
        test_policy(
            "segment = [{ name = \"staff\", networks = [\"10.0.0.0/8\"], block = [\"tiktok\"], allow = [\"exceptions\"] },\n\
                        { name = \"lab\", networks = [\"10.9.0.0/16\"] }]\n",
        )
        .unwrap()
    }

    #[test]
    fn probes_pass_as_configured_and_fail_otherwise() {
        let policy = policy();
        assert_eq!(
            policy.probes.len(),
            2,
            "tiktok blocked and exceptions allowed for staff"
        );
        assert!(policy.probes.iter().all(|p| p.passes(&policy)));
        // Expectations turned round: each fails.
        for probe in &policy.probes {
            let wrong = Probe {
                blocked: !probe.blocked,
                ..probe.clone()
            };
            assert!(!wrong.passes(&policy), "{probe:?}");
        }
        // A client another segment holds fails too.
        let elsewhere = Probe {
            client: "10.9.0.1".parse().unwrap(),
            ..policy.probes[0].clone()
        };
        assert!(!elsewhere.passes(&policy));
        let metrics = Metrics::new();
        assert_eq!(policy.self_test(&metrics).0, 0);
    }
}
