//! The one judge: what the policy does with a question (`judge`) and with an upstream answer
//! (`judge_answer`). The gateway, `explain`, the API and the expectations all ask here, so
//! they cannot disagree. The order is the query path's: DDR's own advertisement, then the
//! built-in bypass names, then the lists (allow beats block); an answer is checked for
//! blocked CNAME targets, then for Telegram's fallback configuration, then for blocked
//! addresses.

use std::net::IpAddr;

use crate::bypass::BypassKind;
use crate::cache::Answer;
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
    /// What `segment` gets for `name` (lowercase wire format) before any upstream answer.
    #[inline]
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
