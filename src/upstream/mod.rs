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

mod exchange;
mod hickory;
mod resolve;
mod server;
mod stream;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use rustc_hash::FxBuildHasher;
use tracing::{debug, info, warn};

use crate::client::budget;
use crate::config::{Scheme, ServerAddr, UpstreamConfig};
use crate::metrics::{Metrics, UpstreamMetrics, UpstreamResult};
use crate::name;
use crate::wire::{self, HEADER_LEN, OUR_UDP_PAYLOAD, Query, TYPE_OPT};

pub use exchange::{Resume, UdpTry};
use server::Server;
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
        let group = &self.upstreams.groups[self.group];
        let started = Instant::now();
        let result = exchange::run(group, query, Resume::new(started)).await;
        group.settle(&result, started);
        result
    }

    /// Goes on with an exchange that [`UdpTry`] began.
    pub async fn resume(
        &self,
        query: &Query<'_>,
        resume: Resume,
    ) -> Result<Vec<u8>, UpstreamError> {
        let group = &self.upstreams.groups[self.group];
        let started = resume.started();
        let result = exchange::run(group, query, resume).await;
        group.settle(&result, started);
        result
    }

    /// Sends the first try over UDP now, without awaiting, when the server to try first speaks
    /// UDP (`None`: use [`Admitted::forward`]).
    pub fn send_udp(&self, query: &Query<'_>) -> Option<UdpTry> {
        UdpTry::send(&self.upstreams.groups[self.group], query)
    }

    /// What arrived for `udp`: nothing of ours yet (`None`), the answer's length in `buf`
    /// (the exchange is over), or how the exchange goes on.
    pub fn read_udp(&self, udp: &mut UdpTry, buf: &mut [u8]) -> Option<Result<usize, Resume>> {
        let group = &self.upstreams.groups[self.group];
        let read = udp.read(group, buf);
        if let Some(Ok(_)) = read {
            group.settle(&Ok(()), udp.started());
        }
        read
    }

    /// `udp` waited its whole wait: the exchange goes on (in [`Admitted::resume`]), still
    /// listening on its socket, which the caller must no longer watch.
    pub fn udp_waited(&self, udp: UdpTry) -> Resume {
        udp.waited()
    }
}

impl Group {
    /// Counts an exchange's result and time; failing and recovering are logged once.
    fn settle<T>(&self, result: &Result<T, UpstreamError>, started: Instant) {
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let label = match result {
            Ok(_) => UpstreamResult::Ok,
            Err(UpstreamError::Timeout { .. }) => UpstreamResult::Timeout,
            Err(_) => UpstreamResult::Error,
        };
        self.metrics.result(label);
        match result {
            Ok(_)
                if self.failing.load(Ordering::Relaxed)
                    && self.failing.swap(false, Ordering::Relaxed) =>
            {
                info!(group = %self.name, "upstream group answers again");
            }
            Err(err) if !self.failing.swap(true, Ordering::Relaxed) => {
                warn!(group = %self.name, %err, "upstream group failing; further failures are counted, not logged");
            }
            _ => {}
        }
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
        // Servers given by host name are found through the groups' servers given by address
        // (the config checks that the group a host falls in has one).
        let named = configs
            .iter()
            .any(|c| c.servers.iter().any(|s| s.host.is_some()));
        let bootstrap = named.then(|| {
            let by_address: Vec<UpstreamConfig> = (configs.iter())
                .map(|c| UpstreamConfig {
                    servers: c
                        .servers
                        .iter()
                        .filter(|s| s.host.is_none())
                        .cloned()
                        .collect(),
                    ..c.clone()
                })
                .collect();
            Arc::new(Upstreams::new(&by_address, metrics))
        });
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
                .map(|spec| {
                    let bootstrap = spec.host.as_ref().zip(bootstrap.as_ref());
                    let found = bootstrap.map(|(host, by)| (host.as_str().into(), by.clone()));
                    Arc::new(server(&name, spec, tls.as_ref(), metrics, found))
                })
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
    host: Option<hickory::Host>,
) -> Server {
    let label = format!("{}{}", spec.scheme(), spec.endpoint());
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
        streams: Streams::new(
            spec.addr,
            tls_target,
            match &spec.scheme {
                Scheme::Quic => Some(hickory::Link::Quic),
                Scheme::Https(path) => Some(hickory::Link::Https(path.as_str().into())),
                Scheme::H3(path) => Some(hickory::Link::H3(path.as_str().into())),
                Scheme::Plain | Scheme::Tls => None,
            },
            host,
            metrics.connections.clone(),
        ),
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

/// Whether `answer` is one to relay (NOERROR, NXDOMAIN), else its error rcode.
fn judge(answer: &[u8]) -> Result<(), ResponseCode> {
    match ResponseCode::from_low(answer[3] & 0x0F) {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(()),
        rcode => Err(rcode),
    }
}

/// The query portvakt sends: ID `id`, RD, the client's CD, the question in lowercase, and an
/// OPT with our UDP size and the client's DO.
/// A query as sent upstream: at most 12 + 255 + 4 + 11 bytes, inline.
type Request = smallvec::SmallVec<[u8; 288]>;

fn request(query: &Query, id: u16) -> Request {
    let mut out = Request::new();
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
