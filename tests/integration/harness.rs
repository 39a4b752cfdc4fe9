//! Test harness: the real gateway in-process on 127.0.0.1:0, a fake upstream on loopback
//! (UDP and TCP, canned answers, a query counter per name), and clients that send from a
//! chosen loopback address so each plays a client of one segment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::svcb::{
    Alpn, EchConfigList, IpHint, SVCB, SvcParamKey, SvcParamValue,
};
use hickory_proto::rr::rdata::{A, CNAME, HTTPS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portvakt::{Config, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;

/// How long a test waits for any single answer before failing.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// What the fake upstream answers for one name.
#[derive(Clone, Debug)]
pub enum Canned {
    A(Vec<Ipv4Addr>, u32),
    Cname(String, Box<Canned>),
    NxDomain,
    Txt(usize),
    /// One TXT record per text (each split into strings of at most 255 bytes).
    TxtRecords(Vec<String>),
    Rcode(ResponseCode),
    /// An HTTPS record (priority 1, target ".") with `alpn=h2`, these `ipv4hint`s and, when
    /// `ech` is set, an `ech` parameter.
    Https {
        hints: Vec<Ipv4Addr>,
        ech: bool,
    },
    /// Never answers.
    Silent,
}

#[derive(Default)]
struct UpstreamState {
    answers: HashMap<String, Canned>,
    /// For names without an answer of their own (NXDOMAIN when `None`).
    otherwise: Option<Canned>,
    /// How long UDP answers to a name are held back.
    delays: HashMap<String, Duration>,
    queries: HashMap<String, usize>,
}

/// A fake upstream resolver on 127.0.0.1 (same port for UDP and TCP). Names it does not
/// know get NXDOMAIN with an SOA.
pub struct FakeUpstream {
    state: Arc<Mutex<UpstreamState>>,
}

pub struct RunningUpstream {
    pub addr: SocketAddr,
    state: Arc<Mutex<UpstreamState>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn new() -> Self {
        FakeUpstream {
            state: Arc::default(),
        }
    }

    pub fn with(self, name: &str, canned: Canned) -> Self {
        self.state.lock().unwrap().answers.insert(key(name), canned);
        self
    }

    /// Holds back its UDP answers for `name` by `delay` (the upstream is slow).
    pub fn delay(self, name: &str, delay: Duration) -> Self {
        self.state.lock().unwrap().delays.insert(key(name), delay);
        self
    }

    /// Answers every name it has no answer for with `canned` (e.g. `Silent`: a dead server).
    pub fn otherwise(self, canned: Canned) -> Self {
        self.state.lock().unwrap().otherwise = Some(canned);
        self
    }

    pub fn with_a(self, name: &str, addr: &str) -> Self {
        self.with(name, Canned::A(vec![addr.parse().unwrap()], 300))
    }

    pub async fn start(self) -> RunningUpstream {
        // UDP and TCP on one port: a free UDP port may be taken for TCP, so try a few.
        let mut tries = 0;
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            // Room for a burst of questions (within net.core.rmem_max).
            let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(4 << 20);
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(_) if tries < 20 => tries += 1,
                Err(err) => panic!("no port free for UDP and TCP: {err}"),
            }
        };
        let state = self.state;
        let udp_state = state.clone();
        let udp_task = tokio::spawn(async move {
            let udp = Arc::new(udp);
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let delay = Message::from_vec(&buf[..len]).ok().and_then(|m| {
                    let name = key(&m.queries.first()?.name().to_ascii());
                    udp_state.lock().unwrap().delays.get(&name).copied()
                });
                if let Some(reply) = respond(&udp_state, &buf[..len], true) {
                    match delay {
                        None => {
                            let _ = udp.send_to(&reply, from).await;
                        }
                        Some(delay) => {
                            let udp = udp.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = udp.send_to(&reply, from).await;
                            });
                        }
                    }
                }
            }
        });
        let tcp_state = state.clone();
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    continue;
                };
                let state = tcp_state.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).await.is_ok() {
                        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        if let Some(reply) = respond(&state, &query, false) {
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            let _ = stream.write_all(&framed).await;
                        }
                    }
                });
            }
        });
        RunningUpstream {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }
}

impl RunningUpstream {
    /// Answers `name` with `canned` from now on.
    pub fn set(&self, name: &str, canned: Canned) {
        self.state.lock().unwrap().answers.insert(key(name), canned);
    }

    /// Answers names without an answer of their own with `canned` from now on.
    pub fn set_otherwise(&self, canned: Canned) {
        self.state.lock().unwrap().otherwise = Some(canned);
    }

    /// Queries the upstream received for `name` (any type, UDP and TCP).
    pub fn queries_for(&self, name: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .queries
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for RunningUpstream {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn soa(zone: &Name) -> Record {
    let soa = SOA::new(
        Name::from_str("ns.upstream.test.").unwrap(),
        Name::from_str("hostmaster.upstream.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    Record::from_rdata(zone.clone(), 120, RData::SOA(soa))
}

fn respond(state: &Mutex<UpstreamState>, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let query = request.queries.first()?.clone();
    let name = key(&query.name().to_ascii());
    let canned = {
        let mut state = state.lock().unwrap();
        *state.queries.entry(name.clone()).or_default() += 1;
        state
            .answers
            .get(&name)
            .or(state.otherwise.as_ref())
            .cloned()
    };
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }
    let mut owner = query.name().clone();
    let mut canned = canned.unwrap_or(Canned::NxDomain);
    loop {
        match canned {
            Canned::A(addrs, ttl) => {
                for addr in addrs {
                    response.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(addr))));
                }
                break;
            }
            Canned::Cname(target, then) => {
                let target = Name::from_str(&target).unwrap();
                response.add_answer(Record::from_rdata(
                    owner.clone(),
                    300,
                    RData::CNAME(CNAME(target.clone())),
                ));
                owner = target;
                canned = *then;
            }
            Canned::NxDomain => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(soa(&owner.base_name()));
                break;
            }
            Canned::Txt(count) => {
                for i in 0..count {
                    let text = format!("{i:03}-{}", "x".repeat(200));
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        300,
                        RData::TXT(TXT::new(vec![text])),
                    ));
                }
                break;
            }
            Canned::TxtRecords(texts) => {
                for text in texts {
                    let strings = (text.as_bytes().chunks(255))
                        .map(|c| String::from_utf8(c.to_vec()).unwrap())
                        .collect();
                    response.add_answer(Record::from_rdata(
                        owner.clone(),
                        300,
                        RData::TXT(TXT::new(strings)),
                    ));
                }
                break;
            }
            Canned::Rcode(rcode) => {
                response.metadata.response_code = rcode;
                break;
            }
            Canned::Https { hints, ech } => {
                let mut params = vec![
                    (
                        SvcParamKey::Alpn,
                        SvcParamValue::Alpn(Alpn(vec!["h2".into()])),
                    ),
                    (
                        SvcParamKey::Ipv4Hint,
                        SvcParamValue::Ipv4Hint(IpHint(hints.into_iter().map(A).collect())),
                    ),
                ];
                if ech {
                    let config = EchConfigList(vec![0xfe, 0x0d, 0, 4, 1, 2, 3, 4]);
                    params.push((
                        SvcParamKey::EchConfigList,
                        SvcParamValue::EchConfigList(config),
                    ));
                }
                let https = HTTPS(SVCB::new(1, Name::root(), params));
                response.add_answer(Record::from_rdata(owner.clone(), 300, RData::HTTPS(https)));
                break;
            }
            Canned::Silent => return None,
        }
    }
    let mut wire = response.to_vec().ok()?;
    let limit = request
        .edns
        .as_ref()
        .map_or(512, |e| e.max_payload().max(512)) as usize;
    if udp && wire.len() > limit {
        let mut truncated = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        truncated.metadata.truncation = true;
        truncated.add_query(query);
        wire = truncated.to_vec().ok()?;
    }
    Some(wire)
}

/// The gateway under test.
pub struct TestGateway {
    running: portvakt::Running,
    /// Holds `config_path`.
    dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts the gateway with `policy` (TOML: lists, segments, block settings) on
    /// 127.0.0.1:0, forwarding to `upstream`.
    pub async fn start(upstream: &RunningUpstream, policy: &str) -> TestGateway {
        Self::start_with_upstreams(&[(upstream, &[])], policy).await
    }

    /// As `start`, with several upstream groups: the first is the default, the others
    /// get their zones.
    pub async fn start_with_upstreams(
        upstreams: &[(&RunningUpstream, &[&str])],
        policy: &str,
    ) -> TestGateway {
        let mut text = format!(
            "server.listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nadmin.listen = \"127.0.0.1:0\"\n{policy}\n"
        );
        for (upstream, zones) in upstreams {
            let zones: Vec<String> = zones.iter().map(|z| format!("\"{z}\"")).collect();
            text.push_str(&format!(
                "[[upstream]]\nservers = [\"{}\"]\nzones = [{}]\ntimeout_ms = 700\n",
                upstream.addr,
                zones.join(", ")
            ));
        }
        Self::start_text(text).await
    }

    /// Starts the gateway on a whole config, written to `config_path()` so that reloads
    /// read it again.
    pub async fn start_text(text: String) -> TestGateway {
        Self::try_start_text(text).await.expect("gateway starts")
    }

    async fn try_start_text(text: String) -> Result<TestGateway, portvakt::StartError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portvakt.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|err| panic!("{err}\n---\n{text}"));
        let source = portvakt::ConfigSource::File(path);
        let running = portvakt::start(config, source).await?;
        Ok(TestGateway { running, dir })
    }

    /// The config file the gateway reads at every reload.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("portvakt.toml")
    }

    pub fn reloader(&self) -> &portvakt::Reloader {
        self.running.reloader()
    }

    pub fn gateway(&self) -> &portvakt::Gateway {
        self.running.gateway()
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addrs(Transport::Udp)[0]
    }

    /// The first DNS-over-TLS listener as bound.
    pub fn tls_addr(&self) -> SocketAddr {
        self.running.addrs(Transport::Tls)[0]
    }

    /// The listeners of `transport` as bound.
    pub fn addrs(&self, transport: Transport) -> &[SocketAddr] {
        self.running.addrs(transport)
    }

    /// The admin listener as bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.running.admin_addr().expect("an admin listener")
    }

    /// A client sending from `source` (e.g. "127.0.0.2" or "::1").
    pub fn client_from(&self, source: &str) -> Client {
        let source: IpAddr = source.parse().unwrap();
        let server = match source {
            IpAddr::V4(_) => self.addr(),
            IpAddr::V6(_) => self
                .running
                .addrs(Transport::Udp)
                .iter()
                .copied()
                .find(SocketAddr::is_ipv6)
                .expect("an IPv6 listener"),
        };
        Client { source, server }
    }

    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }

    /// GET `path` from the admin listener: (status code, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_request("GET", path, &[]).await
    }

    /// Any request to the admin listener, with extra header lines: (status code, body).
    pub async fn admin_request(&self, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
        let addr = self.running.admin_addr().expect("admin listener");
        let mut request =
            format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        for line in headers {
            request.push_str(line);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.admin_raw(&request).await
    }

    /// Sends `request` as written to the admin listener: the status and body of the reply.
    pub async fn admin_raw(&self, request: &str) -> (u16, String) {
        let addr = self.running.admin_addr().expect("admin listener");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(ANSWER_DEADLINE, stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_owned())
    }

    /// A real scrape of `/metrics`: every sample by its series, e.g.
    /// `portvakt_queries_total{decision="blocked",segment="staff",transport="udp"}`.
    pub async fn scrape(&self) -> HashMap<String, f64> {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect()
    }
}

/// A DNS client bound to one source address.
pub struct Client {
    source: IpAddr,
    server: SocketAddr,
}

/// A query as tests build it.
pub fn question(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut message = Message::query();
    message.metadata.id = rand_id(name);
    message.metadata.recursion_desired = true;
    // from_labels keeps the case as given (from_str lowercases).
    let mut qname =
        Name::from_labels(name.split('.').filter(|l| !l.is_empty()).map(str::as_bytes)).unwrap();
    qname.set_fqdn(true);
    message.add_query(Query::query(qname, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    message
}

/// Encodes a query with its question name in exactly the case given (hickory's encoder
/// lowercases it), so tests can see 0x20 case come back.
pub fn encode(query: &Message) -> Vec<u8> {
    let mut wire = query.to_vec().unwrap();
    if let Some(q) = query.queries.first() {
        let mut at = 12;
        for label in q.name().iter() {
            at += 1;
            wire[at..at + label.len()].copy_from_slice(label);
            at += label.len();
        }
    }
    wire
}

fn rand_id(name: &str) -> u16 {
    name.bytes()
        .fold(0x5a5a_u16, |h, b| h.rotate_left(5) ^ b as u16)
}

impl Client {
    pub async fn udp_raw(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind(SocketAddr::new(self.source, 0))
            .await
            .unwrap();
        socket.send_to(packet, self.server).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let (len, _) = tokio::time::timeout(ANSWER_DEADLINE, socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(len);
        Some(buf)
    }

    pub async fn tcp_raw(&self, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
        self.tcp_raw_replies(packets, packets.len()).await
    }

    /// As `tcp_raw`, reading `replies` replies (some packets get none).
    pub async fn tcp_raw_replies(&self, packets: &[Vec<u8>], replies: usize) -> Vec<Vec<u8>> {
        let socket = match self.source {
            IpAddr::V4(_) => TcpSocket::new_v4().unwrap(),
            IpAddr::V6(_) => TcpSocket::new_v6().unwrap(),
        };
        socket.bind(SocketAddr::new(self.source, 0)).unwrap();
        let mut stream = socket.connect(self.server).await.unwrap();
        let mut framed = Vec::new();
        for packet in packets {
            framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            framed.extend_from_slice(packet);
        }
        stream.write_all(&framed).await.unwrap();
        let expected = replies;
        let mut replies = Vec::new();
        for _ in 0..expected {
            let read = async {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
                stream.read_exact(&mut reply).await.unwrap();
                reply
            };
            replies.push(
                tokio::time::timeout(ANSWER_DEADLINE, read)
                    .await
                    .expect("tcp answer in time"),
            );
        }
        replies
    }

    pub async fn udp(&self, query: &Message) -> Message {
        let reply = self
            .udp_raw(&encode(query))
            .await
            .expect("udp answer in time");
        Message::from_vec(&reply).unwrap()
    }

    pub async fn tcp(&self, query: &Message) -> Message {
        let reply = self.tcp_raw(&[encode(query)]).await.remove(0);
        Message::from_vec(&reply).unwrap()
    }

    /// An A query with EDNS over UDP.
    pub async fn udp_a(&self, name: &str) -> Message {
        self.udp(&question(name, RecordType::A, true)).await
    }

    /// An A query with EDNS over TCP.
    pub async fn tcp_a(&self, name: &str) -> Message {
        self.tcp(&question(name, RecordType::A, true)).await
    }
}

/// Reading answers.
pub trait Answered {
    fn addresses(&self) -> Vec<String>;
    /// (info-code, extra-text) of every EDE option.
    fn ede(&self) -> Vec<(u16, String)>;
    fn soa_owner(&self) -> Option<String>;
}

impl Answered for Message {
    fn addresses(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    fn ede(&self) -> Vec<(u16, String)> {
        let Some(edns) = &self.edns else {
            return Vec::new();
        };
        edns.options()
            .options
            .iter()
            .filter_map(|(_, option)| match option {
                hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data) if data.len() >= 2 => {
                    Some((
                        u16::from_be_bytes([data[0], data[1]]),
                        String::from_utf8_lossy(&data[2..]).into_owned(),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    fn soa_owner(&self) -> Option<String> {
        self.authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .map(|r| r.name.to_string())
    }
}

/// Whether `tool` is on the PATH.
pub fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A CA made here (`ca.pem`) and, signed by it, a certificate for `name` and 127.0.0.1
/// (`cert.pem`, `key.pem`), in `dir`, by openssl.
pub fn certificate(dir: &std::path::Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let extensions = format!(
        "subjectAltName=DNS:{name},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.join("ext.cnf"), extensions).unwrap();
    let subject = format!("/CN={name}");
    let steps: [&[&str]; 3] = [
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "2", "-subj", "/CN=portvakt test CA"],
        ]
        .concat(),
        &[&["req"], &ec[..], &["-subj", &subject, "-out", "leaf.csr"]].concat(),
        &[
            "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        ],
    ];
    let files: [&[&str]; 3] = [
        &["-keyout", "ca.key", "-out", "ca.pem"],
        &["-keyout", "key.pem"],
        &[
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    ];
    for (step, files) in steps.iter().zip(files) {
        let status = Command::new("openssl")
            .args(*step)
            .args(files)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {step:?} failed");
    }
}

/// Starts the gateway on the config `text(ports)` gives for ports free on 127.0.0.1 now;
/// should another test take one before the gateway binds it, up to five fresh sets are
/// tried. For configs that must name a listener's port before it is bound.
pub async fn start_on_free_ports<const N: usize>(
    text: impl Fn([u16; N]) -> String,
) -> (TestGateway, [u16; N]) {
    for _ in 0..4 {
        let ports = std::array::from_fn(|_| free_port());
        match TestGateway::try_start_text(text(ports)).await {
            Err(portvakt::StartError::Bind(err))
                if err.source.kind() == std::io::ErrorKind::AddrInUse => {}
            started => return (started.expect("gateway starts"), ports),
        }
    }
    let ports = std::array::from_fn(|_| free_port());
    (TestGateway::start_text(text(ports)).await, ports)
}

/// A port free on 127.0.0.1 now (for configs that must name a port before binding).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether what a test needs (`what`: shared data, a tool) is here. Without `CI` a missing
/// one skips the test with a message; in CI it fails it: a test that passes because what it
/// needs is absent proves nothing.
pub fn present_or_skip(present: bool, what: &str) -> bool {
    assert!(
        present || std::env::var_os("CI").is_none(),
        "{what} is missing, and CI is set"
    );
    if !present {
        eprintln!("skipping: {what} is missing");
    }
    present
}

/// Unbound, run in the foreground on a config of the test's; killed when dropped.
pub struct Unbound(std::process::Child);

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `conf` to `dir/unbound.conf`, starts Unbound on it and waits until it accepts TCP
/// on `addr`; panics when it has not within 10 s.
pub async fn start_unbound(dir: &std::path::Path, conf: &str, addr: SocketAddr) -> Unbound {
    std::fs::write(dir.join("unbound.conf"), conf).unwrap();
    let child = std::process::Command::new("unbound")
        .arg("-d")
        .arg("-c")
        .arg(dir.join("unbound.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("unbound starts");
    let unbound = Unbound(child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return unbound;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("unbound did not listen on {addr}");
}

/// The series name of an upstream server's metric `name` in the default group, with the
/// `more` labels (`result="late",`) that sort before `server`.
pub fn server_series(name: &str, server: SocketAddr, more: &str) -> String {
    format!("{name}{{group=\"default\",{more}server=\"{server}\"}}")
}
