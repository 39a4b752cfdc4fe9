//! The path of one query, transport-independent: wire bytes and client address in, wire bytes
//! out. `answer_now` does everything that needs no upstream (malformed, refused, blocked,
//! cache hit) without awaiting; a miss comes back as `Step::Forward`, which `forward`
//! finishes. The stages before the cache run in the order `Policy::route` fixes (the one
//! judge, which `explain`, the expectations and the self-test ask too); the cache and the
//! upstream follow here, and so does the one place where every reply is counted (`finish`),
//! malformed and BADVERS ones included.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use crate::bypass::BypassKind;
use crate::cache::{Answer, Cache, WithoutEch};
use crate::client::budget::{ClientBudget, ClientPermit};
use crate::client::proxy;
use crate::client::segment::SegmentId;
use crate::coalesce::InFlight;
use crate::evidence::days::unix_now;
use crate::evidence::pseudonym::{Attempts, TopClients};
use crate::metrics::{DecisionLabel, Metrics, ShedReason};
use crate::policy::{Asked, Judgement, ListId, Policy, Route};
use crate::reply;
use crate::upstream::Admitted;
use crate::wire::{self, EdeCode, Malformed, Query, Rcode};

mod miss;

pub use miss::{Datagram, Heard, Later, Pending, Watched};

/// How long a SERVFAIL caused by an upstream failure is answered from the cache.
pub const FAILURE_CACHE: std::time::Duration = std::time::Duration::from_secs(2);

/// Upstream queries in flight at once; past this, misses get SERVFAIL at once rather than
/// queueing without bound behind a slow upstream.
pub const MAX_IN_FLIGHT: usize = 4096;

pub use crate::metrics::Transport;

/// Who asked: the source address, and the listen address the query arrived on when the
/// transport knows it (a listener tied to a segment decides the segment before the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    pub listener: Option<SocketAddr>,
}

impl Client {
    pub fn at(addr: IpAddr, listener: SocketAddr) -> Client {
        Client {
            addr,
            listener: Some(listener),
        }
    }
}

impl From<IpAddr> for Client {
    fn from(addr: IpAddr) -> Client {
        Client {
            addr,
            listener: None,
        }
    }
}

/// What `answer_now` left to do.
#[allow(clippy::large_enum_variant)] // boxing `Pending` would allocate on every miss
pub enum Step {
    /// The reply is in `out`.
    Reply,
    /// Send nothing (a response, or a packet too short for a header).
    Drop,
    /// The name must be forwarded: pass this to [`Gateway::forward`].
    Forward(Pending),
}

/// Forwards in flight from one client at most (an IPv6 /56 counts as one client) once the
/// gateway has [`PRESSED_AT`] in flight: a client flooding names of a dead zone gets SERVFAIL
/// for the rest, and every other client's misses still go upstream. Below that, one busy
/// client (a NAT, a load test) may use the room nobody else needs.
pub const CLIENT_IN_FLIGHT: u32 = 128;

/// Forwards in flight from which every client is held to [`CLIENT_IN_FLIGHT`].
pub const PRESSED_AT: usize = MAX_IN_FLIGHT / 2;

/// An error answer instead of an upstream one: its RCODE and Extended DNS Error.
type Failure = (Rcode, Option<(EdeCode, &'static str)>);

/// What an upstream exchange gave a question: the answer (as cached), or the error to answer.
type Settled = Result<Arc<Answer>, Failure>;

/// The answer when the upstream exchange failed (other than by timing out).
const UPSTREAM_FAILED: Failure = (
    Rcode::ServFail,
    Some((EdeCode::NetworkError, "upstream failed")),
);

/// What decided a reply, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Blocked(ListId),
    /// A built-in bypass name, answered negatively.
    Bypass(BypassKind),
    Allowed,
    /// An upstream answer served without its ECH parameters.
    AllowedWithoutEch,
    /// An expired answer served because the upstreams failed (RFC 8767).
    Stale,
    /// SERVFAIL: an in-flight budget was full.
    Shed(ShedReason),
    /// Answered with an error before any decision: FORMERR or NOTIMP (header only).
    Malformed,
    /// BADVERS (extended RCODE 16) for an EDNS version above 0.
    BadVersion,
}

/// One query as its reply is fitted and counted: how it came, since when, the client's
/// segment, and the query once it parsed.
#[derive(Clone, Copy)]
struct Context<'q> {
    client: IpAddr,
    transport: Transport,
    started: std::time::Instant,
    segment: Option<SegmentId>,
    query: Option<&'q Query<'q>>,
}

impl<'q> Context<'q> {
    fn new(
        client: IpAddr,
        transport: Transport,
        started: std::time::Instant,
        segment: Option<SegmentId>,
        query: Option<&'q Query<'q>>,
    ) -> Self {
        Context {
            client,
            transport,
            started,
            segment,
            query,
        }
    }
}

/// The gateway core: the current policy, the answer cache, the in-flight bound, the metrics.
pub struct Gateway {
    policy: ArcSwap<Policy>,
    cache: Option<Cache>,
    in_flight: Arc<Semaphore>,
    clients: Arc<ClientBudget>,
    /// Questions in flight upstream, shared by identical misses.
    questions: Arc<InFlight<Settled>>,
    /// Today's attempts per client pseudonym, when the report lists top clients.
    attempts: Attempts,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// `policy` must have been compiled with `metrics`.
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Gateway {
        publish(&metrics, &policy);
        Gateway {
            cache: Cache::new(
                policy.config().cache_max_entries,
                policy.config().cache_max_bytes,
                metrics.cache_evictions.clone(),
            ),
            policy: ArcSwap::from_pointee(policy),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            clients: ClientBudget::new(CLIENT_IN_FLIGHT),
            questions: InFlight::new(),
            attempts: Attempts::default(),
            metrics,
        }
    }

    /// Runs `f` on the policy in force now. The policy is lent, never handed out, so nothing
    /// can keep an old one alive across a reload (or across an `.await`).
    pub fn with_policy<R>(&self, f: impl FnOnce(&Policy) -> R) -> R {
        f(&self.policy.load())
    }

    /// The generation of the policy in force.
    pub fn generation(&self) -> u64 {
        self.policy.load().generation()
    }

    /// Puts `policy` in force for every query that starts from now on, and hands back the
    /// one it replaces (for the caller to drop off the runtime: it may be large).
    pub(crate) fn swap(&self, mut policy: Policy) -> Arc<Policy> {
        policy.inherit_upstream_health(&self.policy.load());
        debug_assert_eq!(
            policy.generation(),
            self.generation() + 1,
            "generations count up"
        );
        publish(&self.metrics, &policy);
        self.policy.swap(Arc::new(policy))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Today's clients with the most attempts, under pseudonyms, when the report lists them.
    pub fn top_clients(&self) -> Option<TopClients> {
        let report = self.with_policy(|p| p.config().report);
        (report.top_clients > 0)
            .then(|| (self.attempts).top(report.top_clients, report.top_clients_min, unix_now()))
    }

    /// Answers in the cache now.
    pub fn cache_len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// Answers what can be answered without an upstream; never awaits.
    pub fn answer_now(
        &self,
        packet: &[u8],
        client: impl Into<Client>,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Step {
        let mut client = client.into();
        let started = std::time::Instant::now();
        let policy = self.policy.load();
        // A load balancer's datagram: the client is the one its PROXY header names. (Streams
        // read theirs once, at the start of the connection.)
        let mut packet = packet;
        if transport.is_datagram() && policy.behind_proxy(client.addr) {
            let Some(rest) = self.unwrap_proxy(packet, &mut client) else {
                return Step::Drop;
            };
            packet = rest;
        }
        let query = match Query::parse(packet) {
            Ok(query) => query,
            Err(Malformed::Drop) => return Step::Drop,
            Err(Malformed::Answer(rcode)) => {
                wire::write_header_only(packet, rcode, out);
                let segment = policy.classify(client.addr, client.listener);
                let ctx = Context::new(client.addr, transport, started, segment, None);
                return self.finish(&policy, &ctx, Outcome::Malformed, out);
            }
        };
        let route = policy.route(Asked {
            client: client.addr,
            listener: client.listener,
            name: query.name(),
            edns_version: query.edns.map_or(0, |e| e.version),
            rated_at: transport.is_datagram().then_some(started),
        });
        let ctx = Context::new(
            client.addr,
            transport,
            started,
            route.segment(),
            Some(&query),
        );
        let outcome = match route {
            Route::Refused => {
                debug!(client = %client.addr, "refused: client in no segment");
                reply::refused(&query, out);
                Outcome::Refused
            }
            Route::Dropped(segment) => {
                self.rate_limited(&policy, segment);
                return Step::Drop;
            }
            Route::Slipped(segment) => {
                self.rate_limited(&policy, segment);
                reply::truncated(&query, 0, out);
                Outcome::Allowed
            }
            Route::BadVersion(_) => {
                reply::bad_version(&query, out);
                Outcome::BadVersion
            }
            Route::Judged(segment, Judgement::Forward { .. }) => {
                let Some(outcome) = self.cached(&policy, segment, &query, out) else {
                    let at = (client, transport, started);
                    return match self.admit(&policy, &query, client.addr) {
                        Ok(admitted) => Step::Forward(Pending::new(admitted, at, packet, &query)),
                        Err(shed) => self.finish(&policy, &ctx, shed_reply(&query, shed, out), out),
                    };
                };
                outcome
            }
            Route::Judged(segment, judgement) => {
                answer_judged(&policy, segment, judgement, &query, out)
            }
        };
        self.finish(&policy, &ctx, outcome, out)
    }

    /// Counts a UDP query over its segment's rate (dropped, or truncated so that it asks
    /// again over TCP: every `slip`th).
    fn rate_limited(&self, policy: &Policy, segment: SegmentId) {
        policy.metrics().segments[segment.index()]
            .rate_limited
            .inc();
    }

    /// The packet after a load balancer's PROXY v2 header, with `client` set to the client
    /// the header names; `None` (the datagram is dropped, and counted) when it has none.
    fn unwrap_proxy<'p>(&self, packet: &'p [u8], client: &mut Client) -> Option<&'p [u8]> {
        match proxy::parse(packet) {
            Ok((named, len)) => {
                client.addr = named.unwrap_or(client.addr);
                Some(&packet[len..])
            }
            Err(err) => {
                debug!(%err, "dropped a datagram from a load balancer");
                self.metrics.query.proxy_errors.inc();
                None
            }
        }
    }

    /// A forwarded name answered without an upstream: from the cache, or REFUSED when the
    /// client asks for cached answers only (RD=0). `None`: it goes upstream.
    #[inline] // a stage of every query: kept in line with answer_now
    fn cached(
        &self,
        policy: &Policy,
        segment: SegmentId,
        query: &Query,
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        let cached = self.cache.as_ref().and_then(|cache| {
            let hit = cache.get(query, Instant::now(), policy.config().cache_stale_for);
            let counter = match hit {
                Some(_) => &self.metrics.query.cache_hits,
                None => &self.metrics.query.cache_misses,
            };
            counter.inc();
            hit
        });
        if let Some(answer) = cached {
            return Some(serve(policy, &self.metrics, segment, query, &answer, out));
        }
        // RD=0 asks for what we hold; we never forward it.
        (!query.recursion_desired()).then(|| {
            reply::error(query, Rcode::Refused, None, out);
            Outcome::Allowed
        })
    }

    /// Admits a miss within every in-flight budget: the client's, the total, its upstream
    /// group's (in that order, so a flooding client is stopped by its own budget first).
    fn admit(
        &self,
        policy: &Policy,
        query: &Query,
        client: IpAddr,
    ) -> Result<(Admitted, OwnedSemaphorePermit, ClientPermit), ShedReason> {
        let pressed = self.in_flight.available_permits() <= MAX_IN_FLIGHT - PRESSED_AT;
        let client_permit = (self.clients.admit(client, pressed)).ok_or(ShedReason::Client)?;
        let permit = (self.in_flight.clone().try_acquire_owned()).map_err(|_| ShedReason::Total)?;
        let upstream = (policy.upstreams().admit(query.name())).ok_or(ShedReason::Group)?;
        Ok((upstream, permit, client_permit))
    }

    /// Both steps in one: for transports that await anyway (TCP, tests).
    pub async fn answer(
        &self,
        packet: &[u8],
        client: impl Into<Client>,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        match self.answer_now(packet, client, transport, &mut out) {
            Step::Reply => Some(out),
            Step::Drop => None,
            Step::Forward(pending) => {
                self.forward(pending, &mut out).await;
                Some(out)
            }
        }
    }

    /// The one place a reply is counted: fits it to the transport, then counts its decision,
    /// deciding list, RCODE and time. Every reply portvakt sends passes here.
    fn finish(&self, policy: &Policy, ctx: &Context, outcome: Outcome, out: &mut Vec<u8>) -> Step {
        // UDP replies larger than the client accepts become header + question with TC=1.
        // (Without a parsed query, the reply is a 12-byte header.)
        if let Some(query) = ctx.query
            && ctx.transport.is_datagram()
            && out.len() > query.udp_limit()
        {
            let rcode = out[3] & 0x0F;
            reply::truncated(query, rcode, out);
        }
        let handles = match ctx.segment {
            Some(segment) => &policy.metrics().segments[segment.index()],
            None => &policy.metrics().no_segment,
        };
        if matches!(outcome, Outcome::Blocked(_) | Outcome::Bypass(_))
            && policy.config().report.top_clients > 0
        {
            self.attempts.note(ctx.client, unix_now());
        }
        let decision = match (outcome, ctx.segment) {
            (Outcome::Blocked(list), _) => {
                handles.blocked_by(list.index());
                if let Some(kind) = policy.list_bypass(list) {
                    handles.bypass_attempt(kind);
                }
                DecisionLabel::Blocked
            }
            (Outcome::Bypass(kind), _) => {
                handles.bypass_attempt(kind);
                DecisionLabel::Blocked
            }
            (Outcome::AllowedWithoutEch, _) => {
                handles.bypass_attempt(BypassKind::Ech);
                DecisionLabel::Allowed
            }
            (Outcome::Stale, _) => {
                self.metrics.query.stale_answers.inc();
                DecisionLabel::Allowed
            }
            (Outcome::Shed(reason), _) => {
                handles.shed(reason);
                DecisionLabel::Allowed
            }
            // An error reply decided by no list: allowed in a segment, refused in none.
            (Outcome::Refused, _) | (Outcome::Malformed, None) => DecisionLabel::Refused,
            (Outcome::Allowed | Outcome::Malformed | Outcome::BadVersion, _) => {
                DecisionLabel::Allowed
            }
        };
        handles.decided(decision, ctx.transport);
        let metrics = &self.metrics.query;
        if outcome == Outcome::BadVersion {
            metrics.responses_badvers.inc();
        } else {
            metrics.response(out[3]).inc();
        }
        metrics
            .duration(decision)
            .observe(ctx.started.elapsed().as_secs_f64());
        Step::Reply
    }
}

/// Writes the answer a judgement gives without an upstream (DDR's advertisement, a bypass
/// name, a blocked name); `Forward` is the caller's.
#[inline(always)] // callgrind: out of line it costs ~40 instructions per blocked query
fn answer_judged(
    policy: &Policy,
    segment: SegmentId,
    judgement: Judgement,
    query: &Query,
    out: &mut Vec<u8>,
) -> Outcome {
    match judgement {
        Judgement::Advertise => {
            reply::advertise(query, policy.advertised(), policy.block(), out);
            Outcome::Allowed
        }
        Judgement::Bypass { kind, zone_at } => {
            debug!(segment = %policy.segment_name(segment), kind = kind.as_str(), "bypass name");
            reply::bypass(query, policy.block(), kind, zone_at, out);
            Outcome::Bypass(kind)
        }
        // Answered here and never forwarded: forwarding would leak the lookup.
        Judgement::Blocked { list, zone_at } => {
            debug!(segment = %policy.segment_name(segment), list = %policy.list_name(list), "blocked");
            reply::blocked(query, policy.block(), list, zone_at, out);
            Outcome::Blocked(list)
        }
        // The caller's: refused (never forwarded unseen) should a caller pass one anyway.
        Judgement::Forward { .. } => {
            debug_assert!(false, "a forwarded name is answered by its upstream");
            reply::refused(query, out);
            Outcome::Refused
        }
    }
}

/// SERVFAIL for a miss that an in-flight budget turned away.
fn shed_reply(query: &Query, shed: ShedReason, out: &mut Vec<u8>) -> Outcome {
    debug!(
        reason = shed.as_str(),
        "servfail: too many queries in flight"
    );
    let ede = (EdeCode::NetworkError, "too many queries in flight");
    reply::error(query, Rcode::ServFail, Some(ede), out);
    Outcome::Shed(shed)
}

/// Writes an upstream answer, unless a CNAME target, an address or a TXT shape in it is
/// blocked for this segment: the answer is shared by all segments, so it is re-decided on
/// every serve. A name blocked so is noted for the report (the name, never the client).
fn serve(
    policy: &Policy,
    metrics: &Metrics,
    segment: SegmentId,
    query: &Query,
    answer: &Answer,
    out: &mut Vec<u8>,
) -> Outcome {
    // A failure entry that keeps an expired answer: that one, served stale (RFC 8767).
    let now = Instant::now();
    let stale = answer.stale(now, policy.config().cache_stale_for);
    let answer = stale.map_or(answer, |s| &**s);
    if let Some(block) = policy.judge_answer(segment, answer) {
        let list = block.list();
        debug!(list = %policy.list_name(list), ?block, "blocked: in the answer");
        // The name itself is in no list: the report shows it, so the ops team can add it.
        metrics.note_answer_blocked(policy.list_name(list), query.name());
        // The SOA is owned by the question name: the blocked zone is not in the question.
        reply::blocked(query, policy.block(), list, 0, out);
        return Outcome::Blocked(list);
    }
    let write = |answer: &Answer, out: &mut Vec<u8>| match stale {
        Some(_) => answer.write_stale(query, out),
        None => answer.write(query, now, out),
    };
    let without_ech = policy.strips_ech(segment).then(|| answer.without_ech());
    let outcome = match without_ech {
        Some(WithoutEch::Stripped(stripped)) => {
            write(stripped, out);
            Outcome::AllowedWithoutEch
        }
        Some(WithoutEch::Unstrippable) => {
            reply::error(query, Rcode::NoError, None, out);
            Outcome::AllowedWithoutEch
        }
        Some(WithoutEch::Same) | None => {
            write(answer, out);
            Outcome::Allowed
        }
    };
    match (stale, outcome) {
        (Some(_), Outcome::Allowed) => Outcome::Stale,
        _ => outcome,
    }
}

/// Rejected lines logged per list as a policy goes into force (`portvakt check` lists all).
const REJECTED_LOGGED: usize = 10;

/// Sets the gauges that describe the policy in force: its load time and list sizes. Called
/// as a policy goes into force, so a build that fails later never shows its figures.
fn publish(metrics: &Metrics, policy: &Policy) {
    metrics
        .last_reload_success
        .set(unix_seconds(policy.loaded_at()));
    metrics.set_policy_hash(policy.hash());
    let certificate = policy.config().encrypted.certificate.as_ref();
    metrics.set_certificate_expiry(certificate.and_then(|c| c.not_after_unix));
    metrics.reset_probes();
    let (_, broken) = policy.self_test(metrics);
    // Only expectations with `on_fail = "warn"` can be broken in a policy put in force.
    for message in broken {
        tracing::warn!(%message, "expectation broken (on_fail = \"warn\"): the policy is in force anyway");
    }
    for list in policy.lists() {
        metrics.set_list_entries(&list.name, list.entries);
        metrics.set_list_rejected(&list.name, list.rejected.len());
        for rejected in list.rejected.iter().take(REJECTED_LOGGED) {
            tracing::warn!(list = %list.name, line = %rejected, "list line rejected (skipped)");
        }
        if list.rejected.len() > REJECTED_LOGGED {
            let more = list.rejected.len() - REJECTED_LOGGED;
            tracing::warn!(list = %list.name, more, "more list lines rejected; `portvakt check` lists them all");
        }
    }
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
