//! The one judge: where a question ends (`route`), what the policy does with its name
//! (`judge`) and with an upstream answer (`judge_answer`). The gateway, the miss's reply,
//! `explain`, the API and the expectations all ask here, so they cannot disagree (the
//! self-test's probes ask the lists alone: they test the index). The stage
//! order is written once, in `route`: placement (no segment: refused), the segment's rate
//! (datagrams), the EDNS version, then the name: DDR's own advertisement, the built-in
//! bypass names, the lists (allow beats block). An answer is checked for blocked CNAME
//! targets, then for Telegram's fallback configuration, then for blocked addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::bypass::BypassKind;
use crate::cache::Answer;
use crate::client::ratelimit::Limit;
use crate::client::segment::SegmentId;
use crate::policy::{Decision, ListId, Policy};

/// What a segment gets for a question before any upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// DDR: answered with portvakt's own encrypted endpoints (`advertise_encrypted`).
    Advertise,
    /// A built-in bypass name the segment answers itself, negatively; `zone_at` is where the
    /// built-in name starts in the question.
    Bypass { kind: BypassKind, zone_at: usize },
    /// A list blocks it; `zone_at` is where the matched entry starts in the question.
    Blocked { list: ListId, zone_at: usize },
    /// Forwarded; `excepted` is the allow list that exempts it from a block, if any. The
    /// answer is judged again by [`Policy::judge_answer`].
    Forward { excepted: Option<ListId> },
}

impl Judgement {
    /// Whether the segment answers the question itself, negatively (never forwarded).
    pub fn is_blocked(self) -> bool {
        matches!(self, Judgement::Bypass { .. } | Judgement::Blocked { .. })
    }
}

/// A question as the stages before the judge see it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'n> {
    pub client: IpAddr,
    /// The listen address it arrived on, when the transport knows it.
    pub listener: Option<SocketAddr>,
    /// Lowercase wire format.
    pub name: &'n [u8],
    /// The EDNS version asked for (0 without EDNS).
    pub edns_version: u8,
    /// A datagram's arrival: the segment's rate applies to it. `None` for streams, for a
    /// miss judged again and for `explain`, which must not spend a client's rate.
    pub rated_at: Option<Instant>,
}

/// Where a question ends before any upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No segment holds the client: refused (never an open resolver).
    Refused,
    /// Over its segment's rate: dropped.
    Dropped(SegmentId),
    /// Over its segment's rate: truncated, so that it asks again over TCP.
    Slipped(SegmentId),
    /// An EDNS version above 0: BADVERS.
    BadVersion(SegmentId),
    /// Judged by its name.
    Judged(SegmentId, Judgement),
}

impl Route {
    /// The client's segment, when it has one.
    pub fn segment(self) -> Option<SegmentId> {
        match self {
            Route::Refused => None,
            Route::Dropped(s) | Route::Slipped(s) | Route::BadVersion(s) | Route::Judged(s, _) => {
                Some(s)
            }
        }
    }
}

/// Why an upstream answer is blocked for a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBlock<'a> {
    /// A CNAME target (lowercase wire format) is in the list.
    Target(ListId, &'a [u8]),
    /// An address in the answer is in the list's networks.
    Address(ListId, IpAddr),
    /// Its TXT records carry Telegram's fallback configuration, and the list is the
    /// segment's tagged `bypass = "telegram_fallback"`.
    TelegramConfig(ListId),
}

impl AnswerBlock<'_> {
    pub fn list(self) -> ListId {
        match self {
            AnswerBlock::Target(list, _)
            | AnswerBlock::Address(list, _)
            | AnswerBlock::TelegramConfig(list) => list,
        }
    }
}

impl Policy {
    /// Where `asked` ends before any upstream answer: the stages in the query path's order.
    #[inline(always)] // callgrind: out of line (4 callers) it costs ~30 instructions a query
    pub fn route(&self, asked: Asked) -> Route {
        let Some(segment) = self.classify(asked.client, asked.listener) else {
            return Route::Refused;
        };
        if let Some(at) = asked.rated_at {
            match self.rate_limit(segment, asked.client, at) {
                Limit::Pass => {}
                Limit::Drop => return Route::Dropped(segment),
                Limit::Slip => return Route::Slipped(segment),
            }
        }
        if asked.edns_version > 0 {
            return Route::BadVersion(segment);
        }
        Route::Judged(segment, self.judge(segment, asked.name))
    }

    /// What `segment` gets for `name` (lowercase wire format) before any upstream answer.
    #[inline(always)] // callgrind: out of line it costs ~35 instructions a blocked query
    pub fn judge(&self, segment: SegmentId, name: &[u8]) -> Judgement {
        if self.advertisement(segment, name).is_some() {
            return Judgement::Advertise;
        }
        if let Some((kind, zone_at)) = self.bypass_name(segment, name) {
            return Judgement::Bypass { kind, zone_at };
        }
        match self.decide(segment, name) {
            Decision::Blocked { list, zone_at } => Judgement::Blocked { list, zone_at },
            Decision::Excepted(list) => Judgement::Forward {
                excepted: Some(list),
            },
            Decision::Allowed => Judgement::Forward { excepted: None },
        }
    }

    /// Whether an upstream answer for `segment` is blocked: a CNAME target the segment's lists
    /// block, an address in a network they block (by the same rule as names), or Telegram's
    /// fallback configuration where a list tagged `telegram_fallback` is blocked.
    #[inline]
    pub fn judge_answer<'a>(
        &self,
        segment: SegmentId,
        answer: &'a Answer,
    ) -> Option<AnswerBlock<'a>> {
        for target in answer.cname_targets() {
            if let Decision::Blocked { list, .. } = self.decide(segment, target) {
                return Some(AnswerBlock::Target(list, target));
            }
        }
        if answer.is_telegram_config()
            && let Some(list) = self.telegram_fallback(segment)
        {
            return Some(AnswerBlock::TelegramConfig(list));
        }
        if !self.blocks_addresses(segment) {
            return None;
        }
        (answer.addresses().iter()).find_map(|&a| {
            self.decide_address(segment, a)
                .map(|l| AnswerBlock::Address(l, a))
        })
    }
}

/// Whether a bypass answer is NODATA (NOERROR, no records) rather than NXDOMAIN: DDR's own
/// name exists (RFC 9462 §4), the names below it and every other built-in name do not.
pub fn bypass_is_nodata(kind: BypassKind, zone_at: usize) -> bool {
    kind == BypassKind::Ddr && zone_at == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_policy;

    /// staff (10/8) blocks tiktok with a rate of 1 query (burst 1); nothing else is placed.
    fn policy() -> Policy {
        test_policy(
            "rate_limit = { qps = 1, burst = 1, slip = 2 }\n\
             segment = [{ name = \"staff\", networks = [\"10.0.0.0/8\"], block = [\"tiktok\"] }]\n",
        )
        .unwrap()
    }

    fn asked(client: &str, version: u8, rated_at: Option<Instant>) -> Asked<'static> {
        Asked {
            client: client.parse().unwrap(),
            listener: None,
            name: b"\x06tiktok\x03com\x00",
            edns_version: version,
            rated_at,
        }
    }

    #[test]
    fn the_stages_run_in_the_query_paths_order() {
        let policy = policy();
        let staff = SegmentId(0);
        let now = Instant::now();
        // Placement first: an unplaced client is refused whatever else it asks.
        assert_eq!(
            policy.route(asked("192.0.2.1", 1, Some(now))),
            Route::Refused
        );
        // The EDNS version before the name: BADVERS, not the block.
        assert_eq!(
            policy.route(asked("10.0.0.1", 1, None)),
            Route::BadVersion(staff)
        );
        let Route::Judged(segment, judgement) = policy.route(asked("10.0.0.1", 0, None)) else {
            panic!("a placed version-0 question is judged");
        };
        assert_eq!(segment, staff);
        assert!(matches!(judgement, Judgement::Blocked { zone_at: 0, .. }));
        // The rate before the version and the name: the first datagram passes (burst 1),
        // the next two are over the rate, one dropped and one truncated (slip 2).
        assert_eq!(
            policy.route(asked("10.0.0.2", 1, Some(now))),
            Route::BadVersion(staff)
        );
        let over: Vec<Route> = (0..2)
            .map(|_| policy.route(asked("10.0.0.2", 1, Some(now))))
            .collect();
        assert!(over.contains(&Route::Dropped(staff)), "{over:?}");
        assert!(over.contains(&Route::Slipped(staff)), "{over:?}");
        // Without `rated_at` (streams, explain, a miss judged again) no rate is spent.
        assert_eq!(
            policy.route(asked("10.0.0.2", 0, None)).segment(),
            Some(staff)
        );
        assert!(matches!(
            policy.route(asked("10.0.0.2", 0, None)),
            Route::Judged(..)
        ));
    }
}
