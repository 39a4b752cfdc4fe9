//! A miss, whole: the query that waits (parsed once), its question joined to the same one in
//! flight (lead or follow), the first UDP try sent at once and heard on the receive loop's
//! socket watch, the rest of the exchange on the runtime, the answer settled into the cache
//! and the reply decided under the policy in force when it arrives. Transports see only
//! [`Pending`] (streams: [`Gateway::forward`]) and, for UDP, [`Datagram`], [`Watched`],
//! [`Heard`] and [`Later`]; nothing of the upstream layer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use super::{
    Client, Context, FAILURE_CACHE, Gateway, Outcome, Settled, Step, Transport, UPSTREAM_FAILED,
    answer_judged, serve,
};
use crate::cache::{self, Answer};
use crate::client::budget::ClientPermit;
use crate::coalesce::{self, Join, Lead};
use crate::policy::{Asked, Judgement, Route};
use crate::reply;
use crate::upstream::{Admitted, Resume, UdpTry, UpstreamError};
use crate::wire::{self, EdeCode, Parsed, Query, Rcode};

/// A query waiting for its upstream answer. It holds the upstream group set of the policy it
/// started under and its in-flight permit, never the policy itself: the answer is decided
/// under the policy in force when it arrives, so no query in flight keeps an old policy alive.
pub struct Pending {
    /// Admitted to its upstream group (of the policy it started under).
    upstream: Admitted,
    pub(super) client: Client,
    /// The client's query: inline up to 256 bytes (nearly every query), so a miss allocates
    /// nothing for it.
    packet: smallvec::SmallVec<[u8; 256]>,
    /// Where its parts lie in `packet`: it is parsed once.
    parsed: Parsed,
    transport: Transport,
    started: std::time::Instant,
    _permit: OwnedSemaphorePermit,
    _client_permit: ClientPermit,
}

impl Pending {
    /// A miss admitted upstream (`admitted`: its group, its permits in the budgets), from
    /// `client` over `transport` since `started`.
    pub(super) fn new(
        (upstream, permit, client_permit): (Admitted, OwnedSemaphorePermit, ClientPermit),
        (client, transport, started): (Client, Transport, std::time::Instant),
        packet: &[u8],
        query: &Query,
    ) -> Pending {
        Pending {
            upstream,
            client,
            packet: packet.into(),
            parsed: query.parsed(),
            transport,
            started,
            _permit: permit,
            _client_permit: client_permit,
        }
    }

    /// The query, as parsed when it became pending.
    fn query(&self) -> Query<'_> {
        Query::at(&self.packet, self.parsed)
    }
}

/// A miss whose question is not in flight yet: this asker leads it upstream, then settles the
/// result (the others asking meanwhile get it too).
struct Leading {
    pending: Pending,
    lead: Lead<Settled>,
}

/// What one miss is to do about its question.
enum Forwarding {
    Lead(Leading),
    Follow(Following),
}

/// A miss whose question is asked upstream already: it waits for that answer.
struct Following {
    pending: Pending,
    result: coalesce::Result<Settled>,
}

/// What a datagram came to (UDP's path, [`Gateway::answer_datagram`]).
#[allow(clippy::large_enum_variant)] // boxing would allocate on every miss
pub enum Datagram {
    /// The reply is in `out`.
    Reply,
    /// Send nothing.
    Drop,
    /// A miss whose first try is out: watch [`Watched::socket`] until [`Watched::deadline`].
    Watch(Watched),
    /// A miss that goes on on the runtime: [`Gateway::go_on`] writes its reply.
    Later(Later),
}

/// A miss whose first UDP try is out, watched by the receive loop.
pub struct Watched {
    leading: Leading,
    udp: UdpTry,
}

impl Watched {
    /// The try's socket, to poll for reading.
    pub fn socket(&self) -> &std::net::UdpSocket {
        self.udp.socket()
    }

    /// When the try has waited its whole wait ([`Gateway::waited`]).
    pub fn deadline(&self) -> std::time::Instant {
        self.udp.deadline()
    }

    /// Reads what came on the socket into `buf`: `None` while nothing of ours came (what
    /// could be forged is dropped here), else what [`Gateway::heard`] settles.
    pub fn read(&mut self, buf: &mut [u8]) -> Option<Heard> {
        let read = self.leading.pending.upstream.read_udp(&mut self.udp, buf);
        read.map(Heard)
    }
}

/// What a watched try heard: the answer's length in the read buffer, or that the exchange goes
/// on (the next try).
pub struct Heard(Result<usize, Resume>);

/// A miss that goes on on the runtime: following the same question's leader, or the rest of
/// its own exchange.
pub struct Later(LaterMiss);

#[allow(clippy::large_enum_variant)] // boxing would allocate on every slow miss
enum LaterMiss {
    Follow(Following),
    Lead(Leading, Option<Resume>),
}

impl Gateway {
    /// Answers a datagram at once, or starts its miss: the first try goes upstream over UDP
    /// from here, without awaiting, for the receive loop to watch.
    pub fn answer_datagram(
        &self,
        packet: &[u8],
        client: impl Into<Client>,
        out: &mut Vec<u8>,
    ) -> Datagram {
        let pending = match self.answer_now(packet, client, Transport::Udp, out) {
            Step::Reply => return Datagram::Reply,
            Step::Drop => return Datagram::Drop,
            Step::Forward(pending) => pending,
        };
        match self.join(pending) {
            Forwarding::Lead(leading) => {
                let udp = (leading.pending.upstream).send_udp(&leading.pending.query());
                match udp {
                    Some(udp) => Datagram::Watch(Watched { leading, udp }),
                    None => Datagram::Later(Later(LaterMiss::Lead(leading, None))),
                }
            }
            Forwarding::Follow(following) => Datagram::Later(Later(LaterMiss::Follow(following))),
        }
    }

    /// Settles what a watched try heard (read into `buf`): the reply is in `out` (`None`), or
    /// the miss goes on on the runtime.
    pub fn heard(
        &self,
        watched: Watched,
        heard: Heard,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Later> {
        match heard.0 {
            Ok(len) => {
                self.settle_answer(watched, &buf[..len], out);
                None
            }
            Err(resume) => Some(Later(LaterMiss::Lead(watched.leading, Some(resume)))),
        }
    }

    /// Settles `answer`, the upstream's reply to a watched try (as [`Watched::read`] accepted
    /// it), and writes the client's reply to `out`.
    pub fn settle_answer(&self, watched: Watched, answer: &[u8], out: &mut Vec<u8>) {
        self.settle(watched.leading, Ok(answer), out);
    }

    /// A watched try waited its whole wait: the miss goes on on the runtime, the try still
    /// listening on its socket (which the receive loop must no longer watch).
    pub fn waited(&self, watched: Watched) -> Later {
        let resume = watched.leading.pending.upstream.udp_waited(watched.udp);
        Later(LaterMiss::Lead(watched.leading, Some(resume)))
    }

    /// Finishes a miss on the runtime, and writes the reply to `out`.
    pub async fn go_on(&self, later: Later, out: &mut Vec<u8>) {
        match later.0 {
            LaterMiss::Follow(following) => self.follow(following, out).await,
            LaterMiss::Lead(leading, resume) => {
                let forwarded = {
                    let (upstream, query) = (&leading.pending.upstream, leading.pending.query());
                    match resume {
                        Some(resume) => upstream.resume(&query, resume).await,
                        None => upstream.forward(&query).await,
                    }
                };
                self.settle(leading, forwarded.as_deref(), out);
            }
        }
    }

    /// Leads a miss upstream, or follows the asker leading the same question.
    fn join(&self, pending: Pending) -> Forwarding {
        let (key, len) = cache::key(&pending.query());
        match self.questions.join(&key[..len]) {
            Join::Leader(lead) => Forwarding::Lead(Leading { pending, lead }),
            Join::Follower(result) => Forwarding::Follow(Following { pending, result }),
        }
    }

    /// Forwards a miss, caches the answer, and writes the reply to `out`. The answer is
    /// decided under the policy in force when it arrives (a reload meanwhile applies to it).
    pub async fn forward(&self, pending: Pending, out: &mut Vec<u8>) {
        match self.join(pending) {
            Forwarding::Lead(leading) => {
                let forwarded = {
                    let pending = &leading.pending;
                    pending.upstream.forward(&pending.query()).await
                };
                self.settle(leading, forwarded.as_deref(), out);
            }
            Forwarding::Follow(following) => self.follow(following, out).await,
        }
    }

    /// The leader's upstream result: cached, handed to the followers, and the reply in `out`.
    fn settle(
        &self,
        leading: Leading,
        forwarded: Result<&[u8], &UpstreamError>,
        out: &mut Vec<u8>,
    ) {
        let query = leading.pending.query();
        let stale_for = self.policy.load().config().cache_stale_for;
        let answer = self.accept(&query, forwarded, stale_for);
        leading.lead.finish(answer.clone());
        self.reply(&leading.pending, &query, answer, out);
    }

    /// Waits for the leader of the same question, and writes the reply to `out`.
    async fn follow(&self, following: Following, out: &mut Vec<u8>) {
        let answer = coalesce::followed(following.result).await;
        let pending = following.pending;
        self.reply(
            &pending,
            &pending.query(),
            answer.unwrap_or(Err(UPSTREAM_FAILED)),
            out,
        );
    }

    /// The reply to a forwarded query, decided under the policy in force now.
    fn reply(&self, pending: &Pending, query: &Query, answer: Settled, out: &mut Vec<u8>) {
        let policy = self.policy.load();
        // A reload meanwhile may have moved the client or blocked the name: judge again.
        // (Its rate and EDNS version were passed on arrival.)
        let route = policy.route(Asked {
            client: pending.client.addr,
            listener: pending.client.listener,
            name: query.name(),
            edns_version: 0,
            rated_at: None,
        });
        let ctx = Context::new(
            pending.client.addr,
            pending.transport,
            pending.started,
            route.segment(),
            Some(query),
        );
        let outcome = match (route, answer) {
            (Route::Judged(segment, Judgement::Forward { .. }), Ok(answer)) => {
                serve(&policy, &self.metrics, segment, query, &answer, out)
            }
            (Route::Judged(_, Judgement::Forward { .. }), Err((rcode, ede))) => {
                reply::error(query, rcode, ede, out);
                Outcome::Allowed
            }
            (Route::Judged(segment, judgement), _) => {
                answer_judged(&policy, segment, judgement, query, out)
            }
            // Only `Refused` can come here; the others fail closed too.
            (Route::Refused | Route::Dropped(_) | Route::Slipped(_) | Route::BadVersion(_), _) => {
                reply::refused(query, out);
                Outcome::Refused
            }
        };
        self.finish(&policy, &ctx, outcome, out);
    }

    /// What the client gets from an upstream result: the answer (cached), or the error to
    /// answer with (a failure is cached for `FAILURE_CACHE`). When the upstreams failed and
    /// the cache holds an expired answer within `stale_for`, the failure entry keeps it, and
    /// it is served stale (RFC 8767).
    fn accept(
        &self,
        query: &Query,
        forwarded: Result<&[u8], &UpstreamError>,
        stale_for: Duration,
    ) -> Settled {
        let now = Instant::now();
        let message = match forwarded {
            Ok(message) => message,
            Err(UpstreamError::Rcode { rcode, .. })
                if u16::from(*rcode) == Rcode::Refused as u16 =>
            {
                return Err((Rcode::Refused, None));
            }
            Err(err) => {
                debug!(%err, "servfail: upstream failed");
                let ede = match err {
                    UpstreamError::Timeout { .. } => {
                        (EdeCode::NoReachableAuthority, "upstream timed out")
                    }
                    _ => UPSTREAM_FAILED.1.expect("an EDE"),
                };
                if let Some(cache) = &self.cache {
                    let stale = cache.stale(query, now, stale_for);
                    let serve_stale = stale.is_some();
                    let failure = Arc::new(Answer::failure(query, now, FAILURE_CACHE, stale));
                    cache.insert(query, failure.clone());
                    if serve_stale {
                        return Ok(failure);
                    }
                }
                return Err((Rcode::ServFail, Some(ede)));
            }
        };
        match Answer::from_upstream(query, message, now) {
            Ok(answer) => {
                let answer = Arc::new(answer);
                if let Some(cache) = &self.cache {
                    cache.insert(query, answer.clone());
                }
                Ok(answer)
            }
            Err(err) => {
                debug!(%err, "servfail: unusable upstream answer");
                let ede = (EdeCode::NetworkError, "unusable upstream answer");
                Err((Rcode::ServFail, Some(ede)))
            }
        }
    }

    /// The upstream answer a forwarded `name` (wire format) of type `qtype` gets now: the
    /// cached one, else one asked upstream (and cached). For `explain`: no client query is
    /// counted; `None` when the upstreams fail or are busy.
    pub(crate) async fn lookup(&self, name: &[u8], qtype: u16) -> Option<Arc<Answer>> {
        let packet = wire::question(name, qtype);
        let query = Query::parse(&packet).ok()?;
        let (stale_for, upstreams) =
            self.with_policy(|p| (p.config().cache_stale_for, p.upstreams().clone()));
        let cached = (self.cache.as_ref()).and_then(|c| c.get(&query, Instant::now(), stale_for));
        if cached.is_some() {
            return cached;
        }
        let forwarded = upstreams.admit(query.name())?.forward(&query).await;
        self.accept(&query, forwarded.as_deref(), stale_for).ok()
    }
}
