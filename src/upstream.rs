//! Upstream groups: conditional zones first (the longest matching zone wins), then the
//! default group. Each forward is our own exchange: the question (lowercase, RD, the client's
//! CD and DO, our UDP size) goes to the group's servers in order, each try bounded by its share
//! of the group's timeout, over UDP from a fresh socket on a port the kernel picks at random,
//! with a random ID; an answer counts only from that server, to that port, with that ID and
//! the question as asked. A truncated answer is asked again over TCP. So an off-path attacker
//! must guess port and ID of a query in flight (about 2^32 tries, RFC 5452), and a port never
//! outlives its query. The upstream's message is relayed as it came: deciding and caching are
//! the gateway's.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use rustc_hash::FxBuildHasher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use crate::budget;
use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, UpstreamMetrics, UpstreamResult};
use crate::name;
use crate::wire::{self, HEADER_LEN, OUR_UDP_PAYLOAD, Query, TYPE_OPT};

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
    /// The upstream answered with an error rcode (SERVFAIL, REFUSED, …): relayed, not cached.
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
    servers: Vec<SocketAddr>,
    timeout: Duration,
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
            groups.push(Group {
                metrics: metrics.upstream(&name),
                name,
                servers: config.servers.clone(),
                timeout: config.timeout,
                failing: AtomicBool::new(false),
                in_flight: AtomicU32::new(0),
            });
        }
        Upstreams { groups, zones }
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

impl Group {
    /// Asks this group and returns the upstream's answer as wire bytes (ID and OPT as the
    /// upstream sent them), counted in its metrics; failing and recovering are logged once.
    async fn forward(&self, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        let group = self;
        let started = Instant::now();
        let result = exchange(group, query).await;
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
}

/// One exchange with the group, bounded by its timeout: its servers in order, each with an
/// equal share of the timeout.
async fn exchange(group: &Group, query: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
    let share = group.timeout / group.servers.len().max(1) as u32;
    let mut last_error = None;
    for &server in &group.servers {
        let id: u16 = rand::random();
        let request = request(query, id);
        match tokio::time::timeout(share, ask(server, &request)).await {
            Ok(Ok(answer)) => return judge(group, answer),
            Ok(Err(err)) => {
                debug!(%server, %err, "upstream server failed");
                last_error = Some(err);
            }
            Err(_) => debug!(%server, "upstream server timed out"),
        }
    }
    Err(match last_error {
        Some(source) => UpstreamError::Failed {
            group: group.name.clone(),
            source,
        },
        None => UpstreamError::Timeout {
            group: group.name.clone(),
            timeout: group.timeout,
        },
    })
}

/// An answer to relay, or the upstream's error rcode.
fn judge(group: &Group, answer: Vec<u8>) -> Result<Vec<u8>, UpstreamError> {
    let rcode = ResponseCode::from_low(answer[3] & 0x0F);
    match rcode {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(answer),
        rcode => Err(UpstreamError::Rcode {
            group: group.name.clone(),
            rcode,
        }),
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

/// Asks `server` over UDP from a fresh socket (connected: only that server's datagrams reach
/// it), ignoring datagrams that do not answer; over TCP when the answer is truncated.
async fn ask(server: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let local = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(request).await?;
    // A responder keeps to our advertised payload (RFC 6891 §6.2.5); larger comes truncated.
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).await?;
        if !answers(request, &buf[..len]) {
            continue; // not ours: a forgery, or a late answer to an earlier query
        }
        if buf[2] & 0x02 != 0 {
            return ask_tcp(server, request).await;
        }
        buf.truncate(len);
        return Ok(buf);
    }
}

/// Asks `server` over TCP (RFC 7766 framing), one query on a fresh connection.
async fn ask_tcp(server: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).await?;
    if !answers(request, &answer) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TCP answer does not match the query",
        ));
    }
    Ok(answer)
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
