//! The policy: the immutable snapshot of segments, lists, block answers and upstream groups
//! that every query is decided against, and the one decision rule (`decide`). Building one is
//! `compile.rs`'s job, the prepared block answers are `block.rs`'s, and `explain.rs` says why
//! a client gets what it gets; writing an answer from a decision is `reply.rs`'s. No I/O here
//! but compiling (which reads the list files) and `Explanation::locate`.

mod block;
mod compile;
mod expect;
mod explain;
pub(crate) mod index;
mod judge;
mod networks;
mod probe;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::bypass::{self, BypassKind};
use crate::client::ratelimit::{Limit, Rate, RateLimiter};
use crate::client::segment::{SegmentId, SegmentTable};
use crate::config::{BypassHandling, Config};
use crate::ddr::Advertisement;
use crate::lists::Rejected;
use crate::metrics::SegmentMetrics;
use crate::upstream::Upstreams;
pub use block::BlockAnswers;
pub use compile::CompileError;
pub use explain::{Explanation, Located, Verdict};
pub use index::{ListId, ListSet};
use index::{Matches, SuffixIndex};
pub use judge::{AnswerBlock, Asked, Judgement, Route, bypass_is_nodata};
use networks::NetworkIndex;

/// The compiled policy. Never changes once built: a reload swaps in a whole new one, so a
/// query sees the old policy or the new, never a mix. Metric handles are resolved here, once.
pub struct Policy {
    /// The config it was built from.
    config: Config,
    /// Indexed by `SegmentId`.
    segments: Vec<Segment>,
    table: SegmentTable,
    /// Indexed by `ListId`.
    lists: Vec<List>,
    index: SuffixIndex,
    /// The lists' IP entries, for the addresses in answers.
    networks: NetworkIndex,
    /// Each list's bypass tag, indexed by `ListId` (read for every blocked query).
    list_bypass: Vec<Option<BypassKind>>,
    block: BlockAnswers,
    /// DDR's records for the segments with `advertise_encrypted`.
    advertisement: Option<Advertisement>,
    /// The policy's identity (`identity.rs`).
    hash: String,
    /// Each list's entry sum (`identity.rs`), by list id.
    list_digests: Vec<u128>,
    /// The self-test (`probe.rs`).
    probes: Vec<probe::Probe>,
    /// Shared with the queries forwarded under this policy, which hold only this part.
    upstreams: Arc<Upstreams>,
    /// The clients' buckets, when a segment has a rate limit (new with each policy).
    limiter: Option<RateLimiter>,
    metrics: PolicyMetrics,
    generation: u64,
    loaded_at: SystemTime,
}

/// Metric handles resolved for this policy's segments and lists.
pub(crate) struct PolicyMetrics {
    /// Indexed by `SegmentId`.
    pub(crate) segments: Vec<SegmentMetrics>,
    /// Clients in no segment (`segment="none"`).
    pub(crate) no_segment: SegmentMetrics,
}

/// A segment, with its lists as bitsets.
#[derive(Debug, Clone)]
struct Segment {
    name: String,
    block: ListSet,
    allow: ListSet,
    /// `block` in config order: when several lists block a name, the first one decides.
    block_order: Vec<ListId>,
    /// Whether a list it blocks has IP entries (else answers' addresses need no check).
    blocks_addresses: bool,
    /// The first list it blocks tagged `bypass = "telegram_fallback"`: it also blocks answers
    /// that carry Telegram's fallback configuration, whatever their name.
    telegram_fallback: Option<ListId>,
    bypass: BypassHandling,
    /// DDR answered with portvakt's own endpoints.
    advertise: bool,
    /// Per client over UDP; `None`: no limit.
    rate: Option<Rate>,
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
    /// No list of the segment contains the name.
    Allowed,
    /// One of the segment's allow lists contains the name, so no block list applies.
    Excepted(ListId),
    /// `zone_at`: offset in the query name where the list's matched entry starts.
    Blocked { list: ListId, zone_at: usize },
}

/// What a segment's lists say about a name, given the lists that contain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Allowed,
    Excepted(ListId),
    Blocked(ListId),
}

impl Segment {
    /// Allow beats block; of several block lists, the first in the segment's `block` decides.
    fn rule(&self, found: ListSet) -> Rule {
        if let Some(list) = found.intersect(self.allow).first() {
            return Rule::Excepted(list);
        }
        let blocked = found.intersect(self.block);
        let list = if blocked.0.is_power_of_two() {
            blocked.first()
        } else {
            self.block_order
                .iter()
                .copied()
                .find(|&l| blocked.contains(l))
        };
        list.map_or(Rule::Allowed, Rule::Blocked)
    }
}

impl Policy {
    /// The config it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether `addr` is a load balancer that sends PROXY v2 headers (`proxy_protocol_from`).
    pub fn behind_proxy(&self, addr: IpAddr) -> bool {
        (self.config.proxy_from.iter()).any(|net| net.contains(&addr))
    }

    /// The hash of what decides answers: equal on replicas that enforce the same policy.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// What the audit trail records of this policy.
    pub(crate) fn in_force(&self) -> crate::evidence::audit::InForce<'_> {
        let lists = (self.lists.iter().zip(&self.list_digests))
            .map(|(l, digest)| (l.name.as_str(), (l.entries, *digest)))
            .collect();
        crate::evidence::audit::InForce {
            config: &self.config,
            generation: self.generation,
            hash: &self.hash,
            lists,
        }
    }

    /// The self-test: decides every probe and judges every expectation again, and sets
    /// `portvakt_policy_probe_ok` and `portvakt_expectation_ok`. Returns how many probes
    /// failed and what each broken expectation says.
    pub fn self_test(&self, metrics: &crate::Metrics) -> (usize, Vec<String>) {
        let mut failed = 0;
        for probe in &self.probes {
            let ok = probe.passes(self);
            failed += usize::from(!ok);
            let segment = self.segment_name(probe.segment);
            metrics.set_probe(segment, self.list_name(probe.list), ok);
        }
        let (broken, by_segment) = self.check_expectations();
        let results: Vec<(&str, bool)> =
            by_segment.iter().map(|(s, ok)| (s.as_str(), *ok)).collect();
        metrics.set_expectations(&results);
        (failed, broken.into_iter().map(|b| b.message).collect())
    }

    /// 1 for the policy loaded at start, one more for each reload (0: never put in force).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The lists as loaded, indexed by `ListId`.
    pub fn lists(&self) -> &[List] {
        &self.lists
    }

    /// The segment of a query from `client` that came in on `listener` (if known).
    pub fn classify(&self, client: IpAddr, listener: Option<SocketAddr>) -> Option<SegmentId> {
        self.table.classify_at(client, listener)
    }

    /// Decides `name` (lowercase wire format) for `segment` in one pass over its suffixes.
    /// The one decision rule: the query path, CNAME targets and `explain` all come here.
    pub fn decide(&self, segment: SegmentId, name: &[u8]) -> Decision {
        let matches = self.index.lookup(name);
        match self.segments[segment.index()].rule(matches.lists) {
            Rule::Allowed => Decision::Allowed,
            Rule::Excepted(list) => Decision::Excepted(list),
            Rule::Blocked(list) => Decision::Blocked {
                list,
                zone_at: self.zone_of(name, &matches, list),
            },
        }
    }

    /// The list that blocks `addr` (an address in an answer) for `segment`, by the same rule as
    /// names: allow beats block, the first block list decides.
    pub fn decide_address(&self, segment: SegmentId, addr: IpAddr) -> Option<ListId> {
        match self.address_rule(segment, addr) {
            Rule::Blocked(list) => Some(list),
            Rule::Allowed | Rule::Excepted(_) => None,
        }
    }

    /// The allow list that exempts `addr` for `segment` from an IP list it blocks, if any
    /// (for `explain`).
    pub(crate) fn address_exception(&self, segment: SegmentId, addr: IpAddr) -> Option<ListId> {
        match self.address_rule(segment, addr) {
            Rule::Excepted(list) => Some(list),
            Rule::Allowed | Rule::Blocked(_) => None,
        }
    }

    fn address_rule(&self, segment: SegmentId, addr: IpAddr) -> Rule {
        let segment = &self.segments[segment.index()];
        if !segment.blocks_addresses {
            return Rule::Allowed;
        }
        segment.rule(self.networks.lookup(addr))
    }

    /// The list that blocks Telegram's fallback configuration in answers for `segment`.
    pub(crate) fn telegram_fallback(&self, segment: SegmentId) -> Option<ListId> {
        self.segments[segment.index()].telegram_fallback
    }

    /// The built-in bypass name `name` is (or is below), if `segment` answers it itself, with
    /// where that name starts in `name`.
    pub fn bypass_name(&self, segment: SegmentId, name: &[u8]) -> Option<(BypassKind, usize)> {
        let handling = &self.segments[segment.index()].bypass;
        bypass::built_in(name).filter(|&(kind, _)| handling.handles(kind))
    }

    /// The advertisement of portvakt's encrypted endpoints; only for a [`Judgement::Advertise`].
    pub(crate) fn advertised(&self) -> &Advertisement {
        self.advertisement
            .as_ref()
            .expect("judged Advertise only with an advertisement")
    }

    /// The advertisement of portvakt's encrypted endpoints, if `segment` gets it for `name`.
    pub(crate) fn advertisement(&self, segment: SegmentId, name: &[u8]) -> Option<&Advertisement> {
        let ad = self.advertisement.as_ref()?;
        (self.segments[segment.index()].advertise && ad.answers(name)).then_some(ad)
    }

    /// Whether `segment` gets HTTPS/SVCB answers without their `ech` parameter.
    pub(crate) fn strips_ech(&self, segment: SegmentId) -> bool {
        self.segments[segment.index()].bypass.strip_ech
    }

    /// What a block by `list` also counts as, if anything.
    pub(crate) fn list_bypass(&self, list: ListId) -> Option<BypassKind> {
        self.list_bypass[list.index()]
    }

    /// Whether answers' addresses can be blocked for `segment` at all.
    pub(crate) fn blocks_addresses(&self, segment: SegmentId) -> bool {
        self.segments[segment.index()].blocks_addresses
    }

    /// Where the entry of `list` that matched `name` starts in it; `list` is one that
    /// [`SuffixIndex::lookup`] found for `name`.
    fn zone_of(&self, name: &[u8], matches: &Matches, list: ListId) -> usize {
        let zone_at = self.index.zone_of(name, matches, list);
        zone_at.expect("a list found for a name has an entry for one of its suffixes")
    }

    /// Where the entry of `list` that contains `name` starts in it (for `explain`: the query
    /// path gets the blocking zone from `decide`).
    pub(crate) fn entry_of(&self, name: &[u8], list: ListId) -> usize {
        self.zone_of(name, &self.index.lookup(name), list)
    }

    /// The lists that contain `name` (lowercase wire format): an entry is the name or a zone
    /// above it, and no exception of the list is.
    pub(crate) fn lists_containing(&self, name: &[u8]) -> ListSet {
        self.index.lookup(name).lists
    }

    /// The IP lists that hold a network containing `addr`.
    pub(crate) fn lists_containing_address(&self, addr: IpAddr) -> ListSet {
        self.networks.lookup(addr)
    }

    /// The lists that hold addresses or networks.
    pub(crate) fn address_lists(&self) -> ListSet {
        self.networks.lists()
    }

    /// The list called `name`.
    pub(crate) fn list_id(&self, name: &str) -> Option<ListId> {
        let at = self.lists.iter().position(|l| l.name == name)?;
        Some(ListId(at as u8))
    }

    /// Every list some segment blocks.
    pub(crate) fn blocked_lists(&self) -> ListSet {
        let mut all = ListSet::default();
        for segment in &self.segments {
            segment.block_order.iter().for_each(|&id| all.insert(id));
        }
        all
    }

    pub(crate) fn segment_name(&self, segment: SegmentId) -> &str {
        &self.segments[segment.index()].name
    }

    pub(crate) fn list_name(&self, list: ListId) -> &str {
        &self.lists[list.index()].name
    }

    pub(crate) fn block(&self) -> &BlockAnswers {
        &self.block
    }

    /// Whether `client` of `segment` may have an answer over UDP now (its rate limit).
    pub(crate) fn rate_limit(&self, segment: SegmentId, client: IpAddr, now: Instant) -> Limit {
        match (&self.limiter, self.segments[segment.index()].rate) {
            (Some(limiter), Some(rate)) => limiter.check(client, rate, limiter.ms(now)),
            _ => Limit::Pass,
        }
    }

    /// Takes over the upstream servers' health from `old` (see [`Upstreams::inherit`]).
    pub(crate) fn inherit_upstream_health(&mut self, old: &Policy) {
        if let Some(upstreams) = Arc::get_mut(&mut self.upstreams) {
            upstreams.inherit(&old.upstreams);
        }
    }

    pub(crate) fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    pub(crate) fn metrics(&self) -> &PolicyMetrics {
        &self.metrics
    }
}

/// A policy compiled from `text` after the test lists (`tiktok`, `exceptions`) and one
/// upstream, for the policy's unit tests. `text` may set root keys or open tables.
#[cfg(test)]
pub(crate) fn test_policy(text: &str) -> Result<Policy, CompileError> {
    let lists = "lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
        lists.exceptions.files = [\"tests/fixtures/allow.txt\"]\n\
        upstream = [{ servers = [\"127.0.0.1:53\"] }]\n";
    let config = Config::parse("t.toml", &format!("{lists}{text}")).unwrap();
    Policy::compile(config, &Arc::new(crate::Metrics::new()), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(block: &[u8], allow: &[u8]) -> Segment {
        let set = |ids: &[u8]| {
            let mut set = ListSet::default();
            ids.iter().for_each(|&id| set.insert(ListId(id)));
            set
        };
        Segment {
            name: "staff".into(),
            block: set(block),
            allow: set(allow),
            block_order: block.iter().map(|&id| ListId(id)).collect(),
            blocks_addresses: false,
            telegram_fallback: None,
            bypass: BypassHandling {
                canary: true,
                private_relay: true,
                ddr: true,
                strip_ech: true,
            },
            advertise: false,
            rate: None,
        }
    }

    fn found(ids: &[u8]) -> ListSet {
        ListSet(ids.iter().fold(0, |bits, &id| bits | 1 << id))
    }

    #[test]
    fn allow_beats_block() {
        let staff = segment(&[0, 1], &[2]);
        let cases = [
            ("in no list", found(&[]), Rule::Allowed),
            (
                "in a list the segment does not block",
                found(&[3]),
                Rule::Allowed,
            ),
            ("in a block list", found(&[1]), Rule::Blocked(ListId(1))),
            (
                "in the allow list only",
                found(&[2]),
                Rule::Excepted(ListId(2)),
            ),
            (
                "in a block and the allow list",
                found(&[0, 2]),
                Rule::Excepted(ListId(2)),
            ),
            (
                "in every list",
                found(&[0, 1, 2, 3]),
                Rule::Excepted(ListId(2)),
            ),
        ];
        for (case, lists, want) in cases {
            assert_eq!(staff.rule(lists), want, "{case}");
        }
    }

    #[test]
    fn the_first_block_list_in_config_order_decides() {
        // Config order is not id order: the segment names list 5 before list 1.
        let staff = segment(&[5, 1, 3], &[]);
        let cases = [
            (found(&[1, 3]), ListId(1)),
            (found(&[1, 5]), ListId(5)),
            (found(&[3, 5]), ListId(5)),
            (found(&[1, 3, 5]), ListId(5)),
            (found(&[3]), ListId(3)),
        ];
        for (lists, want) in cases {
            assert_eq!(staff.rule(lists), Rule::Blocked(want), "{lists:?}");
        }
    }
}
