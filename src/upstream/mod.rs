//! Upstream groups: conditional zones first (the longest matching zone wins), then the
//! default group. Each forward is our own exchange: the question (lowercase, RD, the client's
//! CD and DO, our UDP size) goes to the group's servers in the order `server::Order` gives
//! (fastest first, dead ones last), each try bounded by its own timeout and all of them by the
//! group's. Over UDP every try uses a fresh socket on a random port (1024-65535) and a random
//! ID, and an answer counts only from that server, to that port, with that ID and the question
//! as asked: an off-path attacker must guess port and ID of a query in flight, about 2^32
//! tries (RFC 5452), and no port outlives its query. A truncated answer is asked again over
//! the server's TCP connection; `tls://` servers are asked over TLS only. Those stream
//! connections are reused and pipelined (`stream`). The upstream's message is relayed as it
//! came: deciding and caching are the gateway's.

mod server;
mod stream;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use rustc_hash::FxBuildHasher;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::budget;
use crate::config::{ServerAddr, UpstreamConfig};
use crate::metrics::{Metrics, UpstreamMetrics, UpstreamResult};
use crate::name;
use crate::wire::{self, HEADER_LEN, OUR_UDP_PAYLOAD, Query, TYPE_OPT};

use server::{Order, Server};
use stream::{Streams, Tls};

/// Why a forward produced no upstream answer to relay.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream group {group} did not answer within {timeout:?}")]
    Timeout { group: String, timeout: Duration },
    #[error("upstream group {group} failed")]
    Failed {
        group: String,
        #[source]
        source: io::Error,
    },
    /// Every server answered with an error rcode (SERVFAIL, REFUSED, …): relayed, not cached.
    #[error("upstream group {group} answered {rcode}")]
    Rcode { group: String, rcode: ResponseCode },
}

/// All upstream groups of a policy.
pub struct Upstreams {
    groups: Vec<Group>,
    /// Zone (lowercase wire) to index in `groups`.
    zones: HashMap<Box<[u8]>, usize, FxBuildHasher>,
}

struct Group {
    /// `default`, or the group's first zone: the label in logs and metrics.
    name: String,
    servers: Vec<Arc<Server>>,
    /// The budget of all tries of one query.
    timeout: Duration,
    /// The longest one try waits.
    try_timeout: Duration,
    metrics: UpstreamMetrics,
    /// Set by a failure, cleared by an answer: failures are logged when they start and end,
    /// not once per query.
    failing: AtomicBool,
    /// Forwards in flight to this group (see [`GROUP_IN_FLIGHT`]).
    in_flight: AtomicU32,
}

/// Forwards in flight to one group at most: a dead group's timeouts cannot take the whole
/// in-flight budget from the other groups.
pub const GROUP_IN_FLIGHT: u32 = 3072;

/// A forward admitted to its group, counted there until dropped.
pub struct Admitted {
    upstreams: Arc<Upstreams>,
    group: usize,
}

impl Admitted {
    /// Asks the admitted group: the upstream's answer as wire bytes (ID and OPT as the upstream
    /// sent them). The question goes upstream in lowercase, with RD, the client's CD and DO,
    /// and our UDP size.
    pub async fn forward(&self, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        self.upstreams.groups[self.group].forward(query).await
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let group = &self.upstreams.groups[self.group];
        group.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    /// The groups' labels in logs and metrics.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// The servers' labels, with their group's.
    pub fn server_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        (self.groups.iter()).flat_map(|g| {
            g.servers
                .iter()
                .map(|s| (g.name.as_str(), s.label.as_str()))
        })
    }

    /// `configs` has the default group first (as `Config` orders them).
    pub fn new(configs: &[UpstreamConfig], metrics: &Metrics) -> Upstreams {
        let mut groups = Vec::with_capacity(configs.len());
        let mut zones = HashMap::default();
        for (i, config) in configs.iter().enumerate() {
            let name = config
                .zones
                .first()
                .map_or_else(|| "default".to_owned(), |z| name::to_text(z));
            for zone in &config.zones {
                zones.insert(zone.clone().into_boxed_slice(), i);
            }
            let tls = (config.servers.iter().any(|s| s.tls.is_some()))
                .then(|| tls_config(config.ca.clone()));
            let servers = (config.servers.iter())
                .map(|spec| Arc::new(server(&name, spec, tls.as_ref(), metrics)))
                .collect();
            groups.push(Group {
                metrics: metrics.upstream(&name),
                name,
                servers,
                timeout: config.timeout,
                try_timeout: config.try_timeout,
                failing: AtomicBool::new(false),
                in_flight: AtomicU32::new(0),
            });
        }
        Upstreams { groups, zones }
    }

    /// Takes over the servers' health (RTT, failures) from the groups `old` has too, so a
    /// reload does not forget which servers are slow or down.
    pub fn inherit(&mut self, old: &Upstreams) {
        for group in &mut self.groups {
            let Some(before) = old.groups.iter().find(|g| g.name == group.name) else {
                continue;
            };
            for server in &mut group.servers {
                if let Some(s) = before.servers.iter().find(|s| s.label == server.label) {
                    let new =
                        Arc::get_mut(server).expect("a new policy's servers are not shared yet");
                    new.health = s.health.clone();
                    new.metrics.up.set(i64::from(!new.health.is_down()));
                }
            }
        }
    }

    /// The group for `name`: the longest configured zone containing it, else the default.
    fn group_for(&self, name: &[u8]) -> usize {
        let conditional = name::suffixes(name).find_map(|(_, suffix)| self.zones.get(suffix));
        conditional.copied().unwrap_or(0)
    }

    /// Admits a forward of `name` to its group, unless the group has [`GROUP_IN_FLIGHT`] in
    /// flight already.
    pub fn admit(self: &Arc<Self>, name: &[u8]) -> Option<Admitted> {
        let group = self.group_for(name);
        if !budget::take(&self.groups[group].in_flight, GROUP_IN_FLIGHT) {
            return None;
        }
        Some(Admitted {
            upstreams: self.clone(),
            group,
        })
    }
}

fn server(
    group: &str,
    spec: &ServerAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    metrics: &Metrics,
) -> Server {
    let label = match spec.tls {
        Some(_) => format!("tls://{}", spec.addr),
        None => spec.addr.to_string(),
    };
    let tls_target = spec.tls.as_ref().and_then(|name| {
        let name = rustls::pki_types::ServerName::try_from(name.clone()).ok()?;
        Some(Tls {
            config: tls
                .expect("a TLS config for a group with tls:// servers")
                .clone(),
            name,
        })
    });
    let metrics = metrics.server(group, &label);
    metrics.up.set(1);
    Server {
        addr: spec.addr,
        tls: spec.tls.is_some(),
        streams: Streams::new(spec.addr, tls_target, metrics.connections.clone()),
        health: Arc::default(),
        metrics,
        label,
    }
}

/// The client config for a group's `tls://` servers: its `ca_file` roots, or the system's.
fn tls_config(ca: Option<Arc<rustls::RootCertStore>>) -> Arc<rustls::ClientConfig> {
    static SYSTEM: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    let roots = ca.unwrap_or_else(|| {
        SYSTEM
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                for err in &found.errors {
                    warn!(%err, "reading the system's CA certificates");
                }
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                debug!(added, "system CA certificates for tls:// upstreams");
                Arc::new(roots)
            })
            .clone()
    });
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

impl Group {
    /// Asks this group and returns the upstream's answer as wire bytes (ID and OPT as the
    /// upstream sent them), counted in its metrics; failing and recovering are logged once.
    async fn forward(&self, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        let group = self;
        let started = Instant::now();
        let result = self.exchange(query, started).await;
        group
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(_) => UpstreamResult::Ok,
            Err(UpstreamError::Timeout { .. }) => UpstreamResult::Timeout,
            Err(_) => UpstreamResult::Error,
        };
        group.metrics.result(label);
        match &result {
            Ok(_)
                if group.failing.load(Ordering::Relaxed)
                    && group.failing.swap(false, Ordering::Relaxed) =>
            {
                info!(group = %group.name, "upstream group answers again");
            }
            Err(err) if !group.failing.swap(true, Ordering::Relaxed) => {
                warn!(group = %group.name, %err, "upstream group failing; further failures are counted, not logged");
            }
            _ => {}
        }
        result
    }

    /// One exchange within the group's timeout: the servers in `Order`, each try within its
    /// own timeout, round after round while the budget lasts. A server that answers with an
    /// error rcode is not asked again; that rcode is the result when every server did.
    async fn exchange(
        &self,
        query: &Query<'_>,
        started: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        let deadline = started + self.timeout;
        let order = Order::new(&self.servers, started);
        let mut request = request(query, 0);
        if let Some(probe) = order.probe {
            self.probe(probe, &request);
        }
        let mut last_error = None;
        let mut rcode = None;
        let mut answered_error = 0u32; // a bit per server
        let tries = order.iter().cycle().take(order.len() * MAX_ROUNDS);
        for index in tries {
            let now = Instant::now();
            if now >= deadline || answered_error.count_ones() as usize == order.len() {
                break;
            }
            if answered_error & (1 << index) != 0 {
                continue;
            }
            let server = &self.servers[index];
            let wait = server.try_timeout(self.try_timeout).min(deadline - now);
            let id: u16 = rand::random();
            request[..2].copy_from_slice(&id.to_be_bytes());
            match try_server(server, &request, wait).await {
                Try::Answer(answer) => match judge(&answer) {
                    Ok(()) => return Ok(answer),
                    Err(code) => {
                        debug!(server = %server.label, %code, "upstream server answered an error");
                        answered_error |= 1 << index;
                        rcode = Some(code);
                    }
                },
                Try::Failed(err) => {
                    debug!(server = %server.label, %err, "upstream server failed");
                    last_error = Some(err);
                }
                Try::TimedOut => debug!(server = %server.label, "upstream server timed out"),
            }
        }
        let group = self.name.clone();
        Err(match (rcode, last_error) {
            (Some(rcode), _) => UpstreamError::Rcode { group, rcode },
            (None, Some(source)) => UpstreamError::Failed { group, source },
            (None, None) => UpstreamError::Timeout {
                group,
                timeout: self.timeout,
            },
        })
    }

    /// Asks a down server `request` in the background; its answer (or not) decides whether
    /// it is up again. The query that found the probe due does not wait for it.
    fn probe(&self, index: usize, request: &[u8]) {
        let server = &self.servers[index];
        debug!(server = %server.label, "probing a down upstream server");
        let server = server.clone();
        let mut request = request.to_vec();
        request[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
        let wait = self.try_timeout;
        tokio::spawn(async move {
            let _ = try_server(&server, &request, wait).await;
        });
    }
}

/// Rounds over a group's servers one query may make (time permitting).
const MAX_ROUNDS: usize = 3;

/// How one try went.
enum Try {
    Answer(Vec<u8>),
    Failed(io::Error),
    TimedOut,
}

/// One try of `server`, within `wait`, counted in its health and metrics.
async fn try_server(server: &Server, request: &[u8], wait: Duration) -> Try {
    let started = Instant::now();
    server.metrics.in_flight.inc();
    let asked = tokio::time::timeout(wait, async {
        if server.tls {
            server.streams.ask(request).await
        } else {
            ask_udp(server, request).await
        }
    })
    .await;
    server.metrics.in_flight.dec();
    let now = Instant::now();
    let (result, outcome) = match asked {
        Ok(Ok(answer)) => {
            server.answered(now - started);
            (UpstreamResult::Ok, Try::Answer(answer))
        }
        Ok(Err(err)) => {
            server.failed(now - started, now);
            (UpstreamResult::Error, Try::Failed(err))
        }
        Err(_) => {
            server.failed(wait, now);
            (UpstreamResult::Timeout, Try::TimedOut)
        }
    };
    server.metrics.result(result);
    outcome
}

/// Whether `answer` is one to relay (NOERROR, NXDOMAIN), else its error rcode.
fn judge(answer: &[u8]) -> Result<(), ResponseCode> {
    match ResponseCode::from_low(answer[3] & 0x0F) {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
        rcode => Err(rcode),
    }
}

/// The query portvakt sends: ID `id`, RD, the client's CD, the question in lowercase, and an
/// OPT with our UDP size and the client's DO.
fn request(query: &Query, id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + query.question().len() + 11);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0x01);
    out.push(if query.checking_disabled() { 0x10 } else { 0 });
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(query.name());
    out.extend_from_slice(&query.qtype.to_be_bytes());
    out.extend_from_slice(&query.qclass.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    let dnssec_ok = if query.dnssec_ok() { 0x80 } else { 0 };
    out.extend_from_slice(&[0, 0, dnssec_ok, 0, 0, 0]);
    out
}

/// Whether `answer` answers `request`: a response with its ID and its question (any case).
fn answers(request: &[u8], answer: &[u8]) -> bool {
    let question_end = request.len() - 11; // the OPT record is 11 bytes
    answer.len() >= question_end
        && answer[..2] == request[..2]
        && answer[2] & 0x80 != 0
        && wire::u16_at(answer, 4) == 1
        && answer[HEADER_LEN..question_end].eq_ignore_ascii_case(&request[HEADER_LEN..question_end])
}

/// Asks over UDP from a fresh socket (connected: only the server's datagrams reach it),
/// ignoring datagrams that do not answer; over the server's stream connection when the answer
/// is truncated. The query is sent before the socket joins the runtime's poller, so the send
/// never waits for a poller turn.
async fn ask_udp(server: &Server, request: &[u8]) -> io::Result<Vec<u8>> {
    let socket = fresh_socket(server.addr)?;
    socket.send(request)?;
    let socket = UdpSocket::from_std(socket.into())?;
    // A responder keeps to our advertised payload (RFC 6891 §6.2.5); larger comes truncated.
    let mut buf = vec![0u8; usize::from(OUR_UDP_PAYLOAD)];
    loop {
        let len = socket.recv(&mut buf).await?;
        if !answers(request, &buf[..len]) {
            continue; // not ours: a forgery, or a late answer to an earlier query
        }
        if buf[2] & 0x02 != 0 {
            drop(socket);
            return server.streams.ask(request).await;
        }
        buf.truncate(len);
        return Ok(buf);
    }
}

/// Tries at binding a random port before leaving the choice to the kernel.
const PORT_TRIES: usize = 8;

/// A non-blocking UDP socket on a random port in 1024-65535 (the kernel's pick if the tries
/// find only ports in use), connected to `server`.
fn fresh_socket(server: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    let any = |port| match server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    };
    let random = (0..PORT_TRIES).find_map(|_| {
        let port = rand::random_range(1024..=u16::MAX);
        socket.bind(&any(port).into()).ok()
    });
    if random.is_none() {
        socket.bind(&any(0).into())?;
    }
    socket.connect(&server.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_counts_only_with_our_id_and_question() {
        let mut client = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        client.extend_from_slice(b"\x03WwW\x07example\x00\x00\x01\x00\x01");
        let query = Query::parse(&client).unwrap();
        let sent = request(&query, 0x1234);
        assert_eq!(&sent[..4], &[0x12, 0x34, 0x01, 0x00], "our ID, RD");
        assert_eq!(
            &sent[HEADER_LEN..HEADER_LEN + 13],
            b"\x03www\x07example\x00",
            "lowercase"
        );
        assert_eq!(wire::u16_at(&sent, 10), 1, "an OPT");

        let mut answer = sent[..sent.len() - 11].to_vec();
        answer[2] |= 0x80;
        answer[HEADER_LEN + 1] = b'W'; // 0x20 case from the upstream is fine
        assert!(answers(&sent, &answer));
        let mut wrong_id = answer.clone();
        wrong_id[1] ^= 1;
        assert!(!answers(&sent, &wrong_id));
        let mut not_a_response = answer.clone();
        not_a_response[2] &= !0x80;
        assert!(!answers(&sent, &not_a_response));
        let mut other_name = answer.clone();
        other_name[HEADER_LEN + 2] = b'x';
        assert!(!answers(&sent, &other_name));
        assert!(!answers(&sent, &answer[..HEADER_LEN + 5]), "cut short");
    }
}
