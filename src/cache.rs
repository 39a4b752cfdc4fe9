//! The answer cache: upstream answers only (never synthesized ones, so a new policy applies
//! from the next query with nothing to flush), stored in wire format without OPT, and served
//! by copying and patching: the client's ID, flags and question case, TTLs counted down on
//! `tokio::time::Instant`, and the client's own OPT. Shared by all segments: the CNAME
//! targets and addresses of each entry are kept so every hit is re-decided for the asking
//! segment.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use crate::bypass;
use crate::name::MAX_WIRE_LEN;
use crate::wire::push_opt;
use crate::wire::{
    self, EdeCode, HEADER_LEN, Query, SVC_ECH, Sections, TYPE_CNAME, TYPE_OPT, TYPE_SOA,
};

/// Upper bound on how long any answer is kept (and on the TTLs served from it).
const MAX_TTL: u32 = 86_400;
/// The TTL of every record of a stale answer (RFC 8767 §4: "30 seconds is a reasonable value").
const STALE_TTL: u32 = 30;
const KEY_LEN: usize = MAX_WIRE_LEN + 5;

/// An upstream answer ready to be served to any client asking the same question.
#[derive(Debug)]
pub struct Answer {
    /// Header, question (lowercase), records; no OPT.
    wire: Box<[u8]>,
    /// Offsets of every record's TTL field.
    ttl_at: SmallVec<[u16; 8]>,
    stored_at: Instant,
    expires_at: Instant,
    /// CNAME targets in the answer section, lowercase wire format.
    cname_targets: Box<[Box<[u8]>]>,
    /// Addresses in the answer section (A, AAAA, SVCB/HTTPS hints), for IP lists.
    addresses: SmallVec<[IpAddr; 2]>,
    /// Its TXT records carry Telegram's fallback configuration (`bypass::is_telegram_config`).
    telegram_config: bool,
    /// What segments with `strip_ech` get instead, if the answer carries ECH.
    without_ech: WithoutEch,
    /// For a failure entry: the expired answer it replaced, served stale meanwhile.
    stale: Option<Arc<Answer>>,
}

/// The answer for segments with `strip_ech`.
#[derive(Debug)]
pub enum WithoutEch {
    /// It carries no ECH: the answer itself.
    Same,
    /// The same answer without its SVCB/HTTPS records' `ech` parameter.
    Stripped(Box<Answer>),
    /// It carries ECH that could not be removed (a record hickory-proto cannot re-encode): such
    /// segments get NODATA, and the client falls back to A/AAAA without ECH.
    Unstrippable,
}

/// Why an upstream message cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("malformed upstream message")]
    Malformed,
    #[error("upstream message does not answer the question asked")]
    WrongQuestion,
}

impl Answer {
    /// Takes an upstream response to `query`: strips its OPT, records where the TTLs are, and
    /// computes how long it may be kept (RFC 2308 §5 for negative answers: the SOA's TTL,
    /// capped by its MINIMUM, which is also written back as the SOA's TTL).
    /// One heap allocation for a usual answer (its wire bytes), two or more only for CNAME
    /// chains, many records or ECH.
    pub fn from_upstream(query: &Query, msg: &[u8], now: Instant) -> Result<Answer, AnswerError> {
        let sections = Sections::read(msg).ok_or(AnswerError::Malformed)?;
        let question_end = HEADER_LEN + query.question().len();
        if wire::u16_at(msg, 4) != 1
            || msg.len() < question_end
            || !msg[HEADER_LEN..question_end].eq_ignore_ascii_case(query.question())
        {
            return Err(AnswerError::WrongQuestion);
        }
        let additionals = &sections.additionals;
        let opt = additionals.iter().position(|r| r.rtype == TYPE_OPT);
        let (end, additionals) = match opt {
            // Names after the OPT may point anywhere: only a trailing OPT is cut out.
            Some(i) if i + 1 != additionals.len() => return Err(AnswerError::Malformed),
            Some(i) => (additionals[i].start, &additionals[..i]),
            None => (msg.len(), &additionals[..]),
        };
        let mut msg: Box<[u8]> = msg[..end].into();
        wire::set_u16(&mut msg, 10, additionals.len() as u16);
        msg[HEADER_LEN..HEADER_LEN + query.name().len()].make_ascii_lowercase();

        let records = || {
            (sections.answers.iter())
                .chain(&sections.authorities)
                .chain(additionals)
        };
        let rcode = msg[3] & 0x0F;
        let mut negative_ttl = None;
        if sections.answers.is_empty() || rcode != 0 {
            for soa in sections.authorities.iter().filter(|r| r.rtype == TYPE_SOA) {
                let minimum_at = soa.end - 4;
                let ttl = wire::u32_at(&msg, soa.ttl_at).min(wire::u32_at(&msg, minimum_at));
                msg[soa.ttl_at..soa.ttl_at + 4].copy_from_slice(&ttl.to_be_bytes());
                negative_ttl = Some(negative_ttl.map_or(ttl, |t: u32| t.min(ttl)));
            }
        }
        let keep = match negative_ttl {
            Some(ttl) => ttl,
            None => sections
                .answers
                .iter()
                .map(|r| wire::u32_at(&msg, r.ttl_at))
                .min()
                .unwrap_or(0),
        }
        .min(MAX_TTL);
        for r in records() {
            let ttl = wire::u32_at(&msg, r.ttl_at).min(MAX_TTL);
            msg[r.ttl_at..r.ttl_at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        let mut addresses = SmallVec::new();
        for record in &sections.answers {
            wire::record_addresses(&msg, record, &mut addresses);
        }
        let has_ech = (sections.answers.iter()).any(|r| wire::has_svc_param(&msg, r, SVC_ECH));
        let without_ech = if has_ech {
            strip_ech(&msg)
                .and_then(|stripped| Answer::from_upstream(query, &stripped, now).ok())
                .map_or(WithoutEch::Unstrippable, |a| {
                    WithoutEch::Stripped(Box::new(a))
                })
        } else {
            WithoutEch::Same
        };
        let telegram_config = bypass::is_telegram_config(&msg, &sections.answers);
        let cname_targets = sections
            .answers
            .iter()
            .filter(|r| r.rtype == TYPE_CNAME)
            .filter_map(|r| wire::read_name(&msg, r.rdata_at).map(Vec::into_boxed_slice))
            .collect();
        Ok(Answer {
            ttl_at: records().map(|r| r.ttl_at as u16).collect(),
            wire: msg,
            stored_at: now,
            expires_at: now + Duration::from_secs(keep.into()),
            cname_targets,
            addresses,
            telegram_config,
            without_ech,
            stale: None,
        })
    }

    /// What this answer takes in memory, about (its stripped twin and stale answer included).
    pub fn bytes(&self) -> u64 {
        let own = std::mem::size_of::<Answer>() + KEY_INLINE + self.wire.len();
        let targets: usize = self.cname_targets.iter().map(|t| t.len() + 16).sum();
        let stripped = match &self.without_ech {
            WithoutEch::Stripped(answer) => answer.bytes(),
            _ => 0,
        };
        let stale = self.stale.as_ref().map_or(0, |s| s.bytes());
        (own + targets) as u64 + stripped + stale
    }

    pub fn cname_targets(&self) -> &[Box<[u8]>] {
        &self.cname_targets
    }

    /// Whether it carries Telegram's fallback configuration.
    pub fn is_telegram_config(&self) -> bool {
        self.telegram_config
    }

    /// For a failure entry, the answer to serve stale instead, while it is within
    /// `stale_for` of its expiry.
    pub fn stale(&self, now: Instant, stale_for: Duration) -> Option<&Arc<Answer>> {
        self.stale
            .as_ref()
            .filter(|s| now < s.expires_at + stale_for)
    }

    /// Writes this (expired) answer for `query` as a stale answer (RFC 8767): every TTL 30,
    /// and EDE 3 (Stale Answer) when the client has EDNS.
    pub fn write_stale(&self, query: &Query, out: &mut Vec<u8>) {
        let ede = (
            EdeCode::StaleAnswer,
            "upstreams unreachable: an expired answer",
        );
        self.write_with(query, self.stored_at, Some(ede), out);
        for &at in self.ttl_at.iter() {
            let at = at as usize;
            out[at..at + 4].copy_from_slice(&STALE_TTL.to_be_bytes());
        }
    }

    /// What a segment with `strip_ech` gets.
    pub fn without_ech(&self) -> &WithoutEch {
        &self.without_ech
    }

    /// The addresses the answer section carries.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires_at
    }

    /// A SERVFAIL for `query`, kept `lifetime`: after an upstream failure, the same question
    /// is answered at once instead of waiting out another timeout (RFC 2308 §7.1 allows
    /// caching server failures, for at most five minutes). With `stale`, the expired answer
    /// it replaces is served stale instead, meanwhile (RFC 8767 §5: no retry for a while).
    pub fn failure(
        query: &Query,
        now: Instant,
        lifetime: Duration,
        stale: Option<Arc<Answer>>,
    ) -> Answer {
        let mut wire = Vec::with_capacity(HEADER_LEN + query.question().len());
        wire.extend_from_slice(&[0, 0, 0x80, 0x80 | 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        wire.extend_from_slice(&query.question().to_ascii_lowercase());
        Answer {
            wire: wire.into_boxed_slice(),
            ttl_at: SmallVec::new(),
            stored_at: now,
            expires_at: now + lifetime,
            cname_targets: Box::new([]),
            addresses: SmallVec::new(),
            telegram_config: false,
            without_ech: WithoutEch::Same,
            stale,
        }
    }

    /// Whether this is a failure entry (a cached SERVFAIL).
    fn is_failure(&self) -> bool {
        self.wire.get(3).is_some_and(|b| b & 0x0F == 2) && self.ttl_at.is_empty()
    }

    /// Whether it may be stored at all: answers with a TTL of 0 are served once, not kept.
    pub fn is_cacheable(&self) -> bool {
        self.expires_at > self.stored_at
    }

    /// Writes this answer for `query`: the client's ID, RD, CD and question bytes, TTLs
    /// reduced by the time spent in the cache, and the client's OPT. AD is kept only for a
    /// client that asked for DNSSEC (RFC 6840 §5.8).
    pub fn write(&self, query: &Query, now: Instant, out: &mut Vec<u8>) {
        self.write_with(query, now, None, out);
    }

    fn write_with(
        &self,
        query: &Query,
        now: Instant,
        ede: Option<(EdeCode, &str)>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[0..2].copy_from_slice(&query.id().to_be_bytes());
        out[2] = 0x80 | query.recursion_desired() as u8;
        let ad = if query.dnssec_ok() { out[3] & 0x20 } else { 0 };
        out[3] = 0x80 | ad | if query.checking_disabled() { 0x10 } else { 0 } | (out[3] & 0x0F);
        let question = query.question();
        out[HEADER_LEN..HEADER_LEN + question.len()].copy_from_slice(question);
        let age = now
            .saturating_duration_since(self.stored_at)
            .as_secs()
            .min(u32::MAX.into()) as u32;
        if age > 0 {
            for &at in self.ttl_at.iter() {
                let at = at as usize;
                let ttl = wire::u32_at(out, at).saturating_sub(age);
                out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
            }
        }
        push_opt(query, 0, ede, out);
    }
}

/// `msg` with the `ech` parameter removed from every SVCB/HTTPS answer record (and from their
/// `mandatory` lists), re-encoded by hickory-proto once per cached answer, off the per-query
/// path. The data is changed, so it is no longer authenticated: AD is cleared and the answer
/// section's signatures are dropped.
fn strip_ech(msg: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
    use hickory_proto::rr::{RData, RecordType};
    let mut message = Message::from_vec(msg).ok()?;
    message.metadata.authentic_data = false;
    message
        .answers
        .retain(|r| r.record_type() != RecordType::RRSIG);
    for record in &mut message.answers {
        let svcb = match &mut record.data {
            RData::SVCB(svcb) => svcb,
            RData::HTTPS(https) => &mut https.0,
            _ => continue,
        };
        svcb.svc_params
            .retain(|(key, _)| *key != SvcParamKey::EchConfigList);
        for (_, value) in &mut svcb.svc_params {
            if let SvcParamValue::Mandatory(mandatory) = value {
                mandatory.0.retain(|key| *key != SvcParamKey::EchConfigList);
            }
        }
    }
    message.to_vec().ok()
}

/// A stored key: inline up to `KEY_INLINE` bytes (names of up to 43), so storing an answer
/// for a usual name allocates nothing for its key.
pub type Key = SmallVec<[u8; KEY_INLINE]>;
const KEY_INLINE: usize = 48;

/// Bounded map from question (name, type, class, DO, CD) to answer: by entries and by bytes.
pub struct Cache {
    map: quick_cache::sync::Cache<
        Key,
        Arc<Answer>,
        Weight,
        quick_cache::DefaultHashBuilder,
        Evictions,
    >,
}

/// Counts the answers the cache drops to stay within its entries and bytes (an answer larger
/// than the whole cache is dropped as it comes).
#[derive(Clone)]
struct Evictions(prometheus::IntCounter);

impl quick_cache::Lifecycle<Key, Arc<Answer>> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Key, _answer: Arc<Answer>) {
        self.0.inc();
    }
}

/// An entry weighs 1 per `unit` bytes it takes (at least 1) against a capacity of
/// `max_entries`: small answers are bounded by count, large ones by bytes (`max_entries` ×
/// `unit` = the byte cap).
#[derive(Clone)]
struct Weight {
    unit: u64,
}

impl quick_cache::Weighter<Key, Arc<Answer>> for Weight {
    fn weight(&self, _key: &Key, answer: &Arc<Answer>) -> u64 {
        answer.bytes().div_ceil(self.unit).max(1)
    }
}

impl Cache {
    /// `None` for `max_entries == 0`: no cache. Each answer dropped for room counts in
    /// `evicted`.
    pub fn new(
        max_entries: usize,
        max_bytes: u64,
        evicted: prometheus::IntCounter,
    ) -> Option<Cache> {
        (max_entries > 0).then(|| {
            let unit = (max_bytes / max_entries as u64).max(1);
            let weight = Weight { unit };
            Cache {
                map: quick_cache::sync::Cache::with(
                    max_entries,
                    max_entries as u64,
                    weight,
                    quick_cache::DefaultHashBuilder::default(),
                    Evictions(evicted),
                ),
            }
        })
    }

    /// The weight in use now: entries, a large answer counting as several.
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.map.weight()
    }

    /// A live answer for `query`, if any. Expired entries are dropped here once they are past
    /// `stale_for` too (until then they may still be served stale).
    pub fn get(&self, query: &Query, now: Instant, stale_for: Duration) -> Option<Arc<Answer>> {
        let (key, len) = key(query);
        let answer = self.map.get(&key[..len])?;
        if answer.is_expired(now) {
            let keep_until = answer
                .stale
                .as_ref()
                .map_or(answer.expires_at, |s| s.expires_at);
            if now >= keep_until + stale_for {
                self.map.remove(&key[..len]);
            }
            return None;
        }
        Some(answer)
    }

    /// An expired answer for `query` still within `stale_for` of its expiry (or the one a
    /// failure entry keeps), to serve when the upstreams fail.
    pub fn stale(&self, query: &Query, now: Instant, stale_for: Duration) -> Option<Arc<Answer>> {
        let (key, len) = key(query);
        let entry = self.map.get(&key[..len])?;
        if let Some(kept) = entry.stale(now, stale_for) {
            return Some(kept.clone());
        }
        let usable = entry.stale.is_none() && !entry.is_failure() && entry.is_expired(now);
        (usable && now < entry.expires_at + stale_for).then_some(entry)
    }

    pub fn insert(&self, query: &Query, answer: Arc<Answer>) {
        if answer.is_cacheable() {
            let (key, len) = key(query);
            self.map.insert(Key::from_slice(&key[..len]), answer);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// DO and CD change what an upstream returns (RFC 4035 §3.2), so they are part of the key.
pub(crate) fn key(query: &Query) -> ([u8; KEY_LEN], usize) {
    let mut key = [0u8; KEY_LEN];
    let name = query.name();
    key[..name.len()].copy_from_slice(name);
    let mut at = name.len();
    key[at..at + 2].copy_from_slice(&query.qtype.to_be_bytes());
    key[at + 2..at + 4].copy_from_slice(&query.qclass.to_be_bytes());
    key[at + 4] = query.dnssec_ok() as u8 | (query.checking_disabled() as u8) << 1;
    at += 5;
    (key, at)
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;

    use super::*;
    use crate::wire::Query;

    fn counter() -> IntCounter {
        IntCounter::new("evicted", "evicted").unwrap()
    }

    /// A query for `a.example` (type A), with EDNS when `edns`.
    fn query_bytes(id: u16, name: &[u8], edns: bool) -> Vec<u8> {
        query_with_flags(id, name, edns, false, false)
    }

    /// A query with EDNS DO and header CD set as given.
    fn query_with_flags(id: u16, name: &[u8], edns: bool, dnssec_ok: bool, cd: bool) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[
            0x01,
            if cd { 0x10 } else { 0 },
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            edns as u8,
        ]);
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if edns {
            let flags = if dnssec_ok { 0x80 } else { 0 };
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, flags, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn dnssec_ok_and_checking_disabled_are_part_of_the_key() {
        let name = b"\x01a\x07example\x00";
        let plain = query_bytes(1, name, true);
        let plain = Query::parse(&plain).unwrap();
        let cache = Cache::new(10, 1 << 20, counter()).unwrap();
        let answer = Answer::from_upstream(&plain, &upstream_answer(300), Instant::now()).unwrap();
        cache.insert(&plain, Arc::new(answer));
        assert!(cache.get(&plain, Instant::now(), Duration::ZERO).is_some());
        for (dnssec_ok, cd) in [(true, false), (false, true), (true, true)] {
            let other = query_with_flags(2, name, true, dnssec_ok, cd);
            let other = Query::parse(&other).unwrap();
            assert!(
                cache.get(&other, Instant::now(), Duration::ZERO).is_none(),
                "DO={dnssec_ok} CD={cd} must not share DO=0 CD=0's answer"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_kept_briefly() {
        let packet = query_bytes(9, b"\x01A\x07example\x00", false);
        let query = Query::parse(&packet).unwrap();
        let cache = Cache::new(10, 1 << 20, counter()).unwrap();
        cache.insert(
            &query,
            Arc::new(Answer::failure(
                &query,
                Instant::now(),
                Duration::from_secs(2),
                None,
            )),
        );
        let mut out = Vec::new();
        cache
            .get(&query, Instant::now(), Duration::ZERO)
            .expect("kept")
            .write(&query, Instant::now(), &mut out);
        assert_eq!(
            (out[3] & 0x0F, &out[..2]),
            (2, &[0u8, 9][..]),
            "SERVFAIL with the client's ID"
        );
        assert_eq!(&out[12..], &packet[12..], "the client's question");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            cache.get(&query, Instant::now(), Duration::ZERO).is_none(),
            "gone after its lifetime"
        );
    }

    /// An upstream answer: A 192.0.2.1 with `ttl`, plus an upstream OPT at the end.
    /// An answer for `name` (a one-label name under example.) with a TXT record of `size` bytes.
    fn txt_answer(label: &[u8], size: usize) -> Vec<u8> {
        let mut m = vec![0x99, 0x99, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.push(label.len() as u8);
        m.extend_from_slice(label);
        m.extend_from_slice(b"\x07example\x00\x00\x10\x00\x01");
        m.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 1, 0x2c]);
        let strings = size.div_ceil(255);
        m.extend_from_slice(&((size + strings) as u16).to_be_bytes());
        for chunk in vec![b'x'; size].chunks(255) {
            m.push(chunk.len() as u8);
            m.extend_from_slice(chunk);
        }
        m
    }

    #[test]
    fn large_answers_are_bounded_by_bytes_small_ones_by_count() {
        // 100 entries, 64 kB: a unit of 655 bytes.
        let evicted = counter();
        let cache = Cache::new(100, 64_000, evicted.clone()).unwrap();
        let now = Instant::now();
        let packet = |label: &[u8]| {
            let mut packet = query_bytes(
                1,
                &[&[label.len() as u8], label, b"\x07example\x00"].concat(),
                false,
            );
            let at = packet.len() - 3;
            packet[at] = 16; // TXT
            packet
        };
        let insert = |label: &[u8], size: usize| {
            let packet = packet(label);
            let query = Query::parse(&packet).unwrap();
            let answer = Answer::from_upstream(&query, &txt_answer(label, size), now).unwrap();
            assert!(answer.bytes() > size as u64, "counts its wire bytes");
            cache.insert(&query, Arc::new(answer));
        };
        let held = |prefix: &str| {
            (0..300u32)
                .filter(|i| {
                    let packet = packet(format!("{prefix}{i}").as_bytes());
                    let query = Query::parse(&packet).unwrap();
                    cache.get(&query, now, Duration::ZERO).is_some()
                })
                .count()
        };
        for i in 0..300u32 {
            insert(format!("s{i}").as_bytes(), 20);
        }
        let small = held("s");
        assert!((90..=100).contains(&small), "small answers held: {small}");
        for i in 0..300u32 {
            insert(format!("b{i}").as_bytes(), 6000);
        }
        // Each large answer weighs 10 units: at most ten fit beside the small ones, and all
        // of them together stay within the 100 units (64 kB).
        let (small, large) = (held("s"), held("b"));
        assert!(large <= 10, "large answers held: {large}");
        assert!(small + 10 * large <= 100, "{small} small and {large} large");
        assert!(cache.weight() <= 100);
        // Every answer not held was counted as it was dropped.
        let dropped = 600 - cache.len() as u64;
        assert_eq!(evicted.get(), dropped);
    }

    fn upstream_answer(ttl: u32) -> Vec<u8> {
        let mut m = vec![0x99, 0x99, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_count_down_and_entries_expire() {
        let packet = query_bytes(7, b"\x01A\x07eXample\x00", true);
        let query = Query::parse(&packet).unwrap();
        let cache = Cache::new(10, 1 << 20, counter()).unwrap();
        let answer = Answer::from_upstream(&query, &upstream_answer(300), Instant::now()).unwrap();
        cache.insert(&query, Arc::new(answer));

        tokio::time::advance(Duration::from_secs(100)).await;
        let hit = cache
            .get(&query, Instant::now(), Duration::ZERO)
            .expect("live entry");
        let mut out = Vec::new();
        hit.write(&query, Instant::now(), &mut out);
        assert_eq!(&out[..2], &[0, 7], "client's ID");
        assert_eq!(&out[12..23], &packet[12..23], "client's question case");
        let ttl_at = 12 + 15 + 6;
        assert_eq!(wire::u32_at(&out, ttl_at), 200);
        assert_eq!(wire::u16_at(&out, 10), 1, "our OPT replaces the upstream's");
        assert_eq!(
            wire::u16_at(&out, out.len() - 8),
            1232,
            "our payload size, not the upstream's 4096"
        );

        let plain = query_bytes(8, b"\x01a\x07example\x00", false);
        let plain = Query::parse(&plain).unwrap();
        let shared = cache
            .get(&plain, Instant::now(), Duration::ZERO)
            .expect("EDNS itself is not in the key, DO and CD are");
        shared.write(&plain, Instant::now(), &mut out);
        assert_eq!(
            wire::u16_at(&out, 10),
            0,
            "no OPT for a client without EDNS"
        );
        tokio::time::advance(Duration::from_secs(201)).await;
        assert!(
            cache.get(&query, Instant::now(), Duration::ZERO).is_none(),
            "expired after its TTL"
        );
    }

    #[test]
    fn zero_ttl_answers_are_served_but_not_kept() {
        let packet = query_bytes(7, b"\x01a\x07example\x00", false);
        let query = Query::parse(&packet).unwrap();
        let now = Instant::now();
        let answer = Answer::from_upstream(&query, &upstream_answer(0), now).unwrap();
        assert!(!answer.is_cacheable());
        let wrong = query_bytes(7, b"\x01b\x07example\x00", false);
        let wrong = Query::parse(&wrong).unwrap();
        assert_eq!(
            Answer::from_upstream(&wrong, &upstream_answer(60), now).err(),
            Some(AnswerError::WrongQuestion)
        );
    }

    /// An HTTPS answer for `a.example` with `ech` and an `ipv4hint` of `hint` bytes.
    fn https_answer(hint: &[u8], ad: bool) -> Vec<u8> {
        let flags = if ad { 0xA0 } else { 0x80 };
        let mut m = vec![0x99, 0x99, 0x81, flags, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x41\x00\x01");
        let mut rdata = vec![0, 1, 0]; // priority 1, target "."
        rdata.extend_from_slice(&[0, 4, 0, hint.len() as u8]);
        rdata.extend_from_slice(hint);
        rdata.extend_from_slice(&[0, 5, 0, 4, 0xfe, 0x0d, 0, 0]);
        m.extend_from_slice(&[0xC0, 12, 0, 65, 0, 1, 0, 0, 1, 0x2c]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
        m
    }

    fn https_query() -> Vec<u8> {
        let mut q = query_bytes(5, b"\x01a\x07example\x00", false);
        let at = q.len() - 3;
        q[at] = 65; // type HTTPS
        q
    }

    #[test]
    fn ech_is_removed_once_and_the_copy_is_no_longer_authenticated() {
        let packet = https_query();
        let query = Query::parse(&packet).unwrap();
        let answer =
            Answer::from_upstream(&query, &https_answer(&[192, 0, 2, 1], true), Instant::now())
                .unwrap();
        assert_eq!(answer.addresses(), ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let WithoutEch::Stripped(stripped) = answer.without_ech() else {
            panic!("not stripped: {:?}", answer.without_ech());
        };
        let sections = Sections::read(&stripped.wire).unwrap();
        let https = &sections.answers[0];
        assert!(!wire::has_svc_param(&stripped.wire, https, SVC_ECH));
        assert_eq!(stripped.addresses(), answer.addresses(), "the hints stay");
        assert_eq!(stripped.wire[3] & 0x20, 0, "AD cleared");
    }

    #[test]
    fn ech_that_cannot_be_removed_leaves_the_answer_usable() {
        // An ipv4hint of 5 bytes: hickory-proto will not decode it; portvakt reads the 4.
        let packet = https_query();
        let query = Query::parse(&packet).unwrap();
        let msg = https_answer(&[192, 0, 2, 1, 9], false);
        let answer = Answer::from_upstream(&query, &msg, Instant::now()).unwrap();
        assert!(matches!(answer.without_ech(), WithoutEch::Unstrippable));
        assert_eq!(answer.addresses().len(), 1);
    }
}
