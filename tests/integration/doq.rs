//! DNS over QUIC (RFC 9250) and DoH over HTTP/3: a real client (dnspython with aioquic) gets
//! its segment's policy with the Extended DNS Error over both; idle connections and stalled
//! streams hold nothing past their deadlines while other clients are answered at once over
//! UDP, DoT and DoQ; a query with a Message ID other than 0 ends its connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use portvakt::Transport;
use tokio::process::Command;

use crate::encrypted::{NAME, client_config, dot_connect, dot_query};
use crate::harness::{
    Answered, FakeUpstream, RunningUpstream, TestGateway, certificate, encode, found,
    present_or_skip, question,
};

/// Idle connections, one per address, and streams that send one byte of their query.
const IDLE: usize = 200;
const STALLED: usize = 100;

/// Staff (127.0.0.2) block the tiktok list; everyone else in 127/8 blocks nothing.
fn config(dir: &Path, upstream: &RunningUpstream) -> String {
    let d = dir.display();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         quic_listen = [\"127.0.0.1:0\"]\nhttps_listen = [\"127.0.0.1:0\"]\n\
         h3_listen = [\"127.0.0.1:0\"]\nhttps_request_timeout_ms = 1000\n\
         tls_cert_file = \"{d}/cert.pem\"\n\
         tls_key_file = \"{d}/key.pem\"\ntls_name = \"{NAME}\"\n\
         tcp_idle_timeout_ms = 1500\ntcp_read_timeout_ms = 1000\ntls_handshake_timeout_ms = 1000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [\"tests/fixtures/tiktok.txt\"]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"tiktok\"]\n\
         [[segment]]\nname = \"devices\"\nnetworks = [\"127.0.0.0/8\"]\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 700\n",
        upstream.addr
    )
}

async fn start(dir: &Path) -> (TestGateway, RunningUpstream) {
    certificate(dir, NAME);
    let upstream = FakeUpstream::new()
        .with_a("www.tiktok.com.", "192.0.2.8")
        .start()
        .await;
    let gateway = TestGateway::start_text(config(dir, &upstream)).await;
    (gateway, upstream)
}

/// A QUIC client endpoint on `source` that trusts the test CA and speaks `alpn`.
fn endpoint(source: &str, dir: &Path, alpn: &[u8]) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tls = (*client_config(&[dir])).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

pub(crate) async fn connect(source: &str, dir: &Path, to: SocketAddr) -> quinn::Connection {
    connect_alpn(source, dir, to, b"doq").await
}

async fn connect_alpn(source: &str, dir: &Path, to: SocketAddr, alpn: &[u8]) -> quinn::Connection {
    (endpoint(source, dir, alpn).connect(to, NAME).unwrap().await).unwrap()
}

/// One query on its own stream; the reply (or `None` when the stream or connection ends).
pub(crate) async fn query(connection: &quinn::Connection, name: &str, id: u16) -> Option<Message> {
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    let mut query = question(name, RecordType::A, true);
    query.metadata.id = id;
    let packet = encode(&query);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    send.write_all(&framed).await.ok()?;
    send.finish().ok()?;
    let reply = recv.read_to_end(65_537).await.ok()?;
    Message::from_vec(reply.get(2..)?).ok()
}

/// dnspython over DoQ (`quic`) or DoH3 (`h3`): prints the RCODE, the EDE codes and the
/// addresses of one A query.
const DNSPYTHON: &str = "import sys, dns.edns, dns.message, dns.query, dns.rcode
mode, host, port, source, name, ca = sys.argv[1:7]
q = dns.message.make_query(name, 'A', use_edns=0)
if mode == 'h3':
    r = dns.query.https(q, host, port=int(port), source=source, verify=ca, http_version=dns.query.HTTPVersion.H3, timeout=5)
else:
    r = dns.query.quic(q, host, port=int(port), source=source, verify=ca, server_hostname='dns.portvakt.test', timeout=5)
ede = [str(int(o.code)) for o in r.options if o.otype == dns.edns.EDE]
addrs = [a.to_text() for rrset in r.answer for a in rrset]
print(dns.rcode.to_text(r.rcode()), ','.join(ede) or '-', ','.join(addrs) or '-')
";

fn dnspython_present() -> bool {
    let has = std::process::Command::new("python3")
        .args(["-c", "import aioquic, dns.quic"])
        .output()
        .is_ok_and(|o| o.status.success());
    present_or_skip(
        has && found("openssl"),
        "python3 with dnspython and aioquic, and openssl",
    )
}

/// Runs `script` with `args` under python3; its stdout, trimmed (it must exit 0).
async fn python(script: &str, args: &[String]) -> String {
    let run = (Command::new("python3").arg("-c").arg(script).args(args))
        .kill_on_drop(true)
        .output();
    let output = (tokio::time::timeout(Duration::from_secs(40), run).await)
        .expect("python3 finishes")
        .expect("python3 runs");
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "python3 failed: {out}{err}");
    out.trim().to_owned()
}

/// One query with dnspython over `transport` (`Quic` or `H3`) at `at`.
async fn dnspython(
    transport: Transport,
    at: SocketAddr,
    source: &str,
    name: &str,
    dir: &Path,
) -> String {
    let ca = dir.join("ca.pem").display().to_string();
    let (ip, port) = (at.ip().to_string(), at.port().to_string());
    let mode = transport.as_str().to_owned();
    let args = [mode, ip, port, source.to_owned(), name.to_owned(), ca];
    python(DNSPYTHON, &args).await
}

fn sum(m: &HashMap<String, f64>, all_of: &[&str]) -> f64 {
    (m.iter())
        .filter(|(k, _)| all_of.iter().all(|part| k.contains(part)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnspython_gets_the_segment_policy_over_doq_and_doh3() {
    if !dnspython_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _upstream) = start(dir.path()).await;
    for transport in [Transport::Quic, Transport::H3] {
        let at = gateway.addrs(transport)[0];
        let ask = |source| dnspython(transport, at, source, "www.tiktok.com", dir.path());
        assert_eq!(
            ask("127.0.0.2").await,
            "NXDOMAIN 15 -",
            "staff over {transport:?}: blocked, with EDE 15 (Blocked)"
        );
        assert_eq!(
            ask("127.0.0.3").await,
            "NOERROR - 192.0.2.8",
            "a device over {transport:?}: answered from the upstream"
        );
        let m = gateway.scrape().await;
        let label = format!("transport=\"{}\"", transport.as_str());
        for (segment, decision) in [("staff", "blocked"), ("devices", "allowed")] {
            let counted = sum(&m, &["portvakt_queries_total", segment, decision, &label]);
            assert_eq!(counted, 1.0, "{segment} {decision} {label}: {m:?}");
        }
    }
    let m = gateway.scrape().await;
    assert_eq!(
        sum(&m, &["portvakt_quic_handshakes_total", "result=\"ok\""]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh3_idle_connections_and_stalled_requests_are_ended_and_counted() {
    if !dnspython_present() {
        return;
    }
    const HELD: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _upstream) = start(dir.path()).await;
    let h3 = gateway.addrs(Transport::H3)[0];
    let mut held = Vec::new();
    let mut stalled = Vec::new();
    for i in 0..HELD {
        let source = format!("127.0.4.{}", 1 + i);
        held.push(connect_alpn(&source, dir.path(), h3, b"h3").await);
        // A request stream that sends a byte of its HEADERS frame and no more.
        let connection = connect_alpn(&source, dir.path(), h3, b"h3").await;
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(&[1]).await.unwrap();
        stalled.push((send, recv, connection));
    }
    assert_eq!(
        dnspython(Transport::H3, h3, "127.0.0.2", "www.tiktok.com", dir.path()).await,
        "NXDOMAIN 15 -",
        "staff is answered while others hold connections"
    );
    let closed = async || gateway.scrape().await.get("portvakt_quic_connections") == Some(&0.0);
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !closed().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let waited = waited.await;
    let m = gateway.scrape().await;
    assert!(waited.is_ok(), "DoH3 connections still open: {m:?}");
    let hits = |limit: &str| {
        let label = format!("\"{limit}\"");
        sum(&m, &["portvakt_quic_limit_hits_total", &label])
    };
    assert!(hits("request") >= HELD as f64, "stalled requests: {m:?}");
    assert!(hits("idle") >= 2.0 * HELD as f64, "idle connections: {m:?}");
    drop((stalled, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_stalled_streams_starve_no_one() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _upstream) = start(dir.path()).await;
    let (quic, tls) = (gateway.addrs(Transport::Quic)[0], gateway.tls_addr());

    let mut held = Vec::new();
    for i in 0..IDLE {
        let source = format!("127.0.{}.{}", 4 + i / 250, 1 + i % 250);
        held.push(connect(&source, dir.path(), quic).await);
    }
    // One client's streams that send a byte of their query's length and no more, over two
    // connections (64 streams at most on each).
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let connection = connect("127.0.9.1", dir.path(), quic).await;
        for _ in 0..STALLED / 2 {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            stalled.push((send, recv));
        }
        held.push(connection);
    }

    let staff = gateway.client_from("127.0.0.2");
    let started = Instant::now();
    let udp = staff.udp_a("tiktok.com.").await.metadata.response_code;
    let udp_time = started.elapsed();
    let started = Instant::now();
    let mut dot = dot_connect(tls, &client_config(&[dir.path()]))
        .await
        .unwrap();
    let dot_rcode = dot_query(&mut dot, 7, "tiktok.com.").await.unwrap();
    let dot_time = started.elapsed();
    let started = Instant::now();
    let fresh = connect("127.0.0.2", dir.path(), quic).await;
    let doq = query(&fresh, "tiktok.com.", 0).await.expect("a DoQ reply");
    let doq_time = started.elapsed();
    for (transport, rcode, took) in [
        ("udp", udp, udp_time),
        ("dot", dot_rcode, dot_time),
        ("doq", doq.metadata.response_code, doq_time),
    ] {
        eprintln!("{transport}: {took:?}");
        assert_eq!(rcode, ResponseCode::NXDomain, "{transport}");
        assert!(
            took < Duration::from_millis(100),
            "{transport} took {took:?}"
        );
    }
    assert_eq!(doq.metadata.id, 0, "RFC 9250: the reply keeps Message ID 0");
    drop((dot, fresh));

    // Every stalled stream and idle connection is ended by its deadline, and counted.
    let closed = async || gateway.scrape().await.get("portvakt_quic_connections") == Some(&0.0);
    let waited = tokio::time::timeout(Duration::from_secs(8), async {
        while !closed().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let waited = waited.await;
    let m = gateway.scrape().await;
    assert!(
        waited.is_ok(),
        "QUIC connections still open after 8 s: {m:?}"
    );
    let hits = |limit: &str| {
        sum(
            &m,
            &["portvakt_quic_limit_hits_total", &format!("\"{limit}\"")],
        )
    };
    assert!(
        hits("slow") >= STALLED as f64,
        "stalled streams reset: {}",
        hits("slow")
    );
    assert!(
        hits("idle") >= IDLE as f64,
        "idle connections closed: {}",
        hits("idle")
    );
    drop((stalled, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_a_message_id_ends_its_connection() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _upstream) = start(dir.path()).await;
    let connection = connect("127.0.0.3", dir.path(), gateway.addrs(Transport::Quic)[0]).await;
    assert!(query(&connection, "example.com.", 0).await.is_some());
    // RFC 9250 §4.2.1: a Message ID other than 0 is a connection error (DOQ_PROTOCOL_ERROR).
    assert!(query(&connection, "example.com.", 77).await.is_none());
    let reason = tokio::time::timeout(Duration::from_secs(2), connection.closed())
        .await
        .expect("the connection is closed");
    let code = match reason {
        quinn::ConnectionError::ApplicationClosed(closed) => closed.error_code,
        other => panic!("closed otherwise: {other:?}"),
    };
    assert_eq!(code, quinn::VarInt::from_u32(0x2));
}

/// aioquic: starts `n` handshakes from 127.0.7.1 and never answers the server's flight, then
/// asks dnspython over DoQ from the same address; prints the RCODE and the seconds it took.
const STALLED_HANDSHAKES: &str = "import socket, ssl, sys, time
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
import dns.message, dns.query, dns.rcode
host, port, n, ca = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
held = []
for i in range(n):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=['doq'])
    cfg.verify_mode = ssl.CERT_NONE
    c = QuicConnection(configuration=cfg)
    c.connect((host, port), now=time.time())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('127.0.7.1', 0))
    for data, addr in c.datagrams_to_send(now=time.time()):
        s.sendto(data, addr)
    held.append((s, c))
time.sleep(0.2)
q = dns.message.make_query('www.tiktok.com', 'A')
t = time.time()
r = dns.query.quic(q, host, port=port, source='127.0.7.1', verify=ca, server_hostname='dns.portvakt.test', timeout=30)
print(dns.rcode.to_text(r.rcode()), '%.3f' % (time.time() - t))
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_left_half_done_delay_no_one() {
    if !dnspython_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gateway, _upstream) = start(dir.path()).await;
    let at = gateway.addrs(Transport::Quic)[0];
    let ca = dir.path().join("ca.pem").display().to_string();
    let (ip, port) = (at.ip().to_string(), at.port().to_string());
    // More than the client's cap (32): a handshake not done has not proved its address, so
    // it may not spend the client's connections (nor, through them, its TCP and DoT ones).
    let out = python(STALLED_HANDSHAKES, &[ip, port, "40".to_owned(), ca]).await;
    let (rcode, took) = out.split_once(' ').expect("rcode and time");
    assert_eq!(rcode, "NOERROR", "127.0.7.1 is a device: answered");
    // Each handshake runs apart: none waits for the 40 left half-done (1 s each, in turn,
    // would be 40 s; a DoQ server that awaits handshakes in its accept loop does that).
    let took: f64 = took.parse().unwrap();
    assert!(took < 5.0, "answered after {took} s");
    // The half-done ones end at the handshake deadline, counted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = gateway.scrape().await;
    let timeouts = sum(&m, &["portvakt_quic_handshakes_total", "timeout"]);
    assert!(timeouts >= 40.0, "handshake timeouts: {timeouts}");
}

/// A gateway whose one upstream server is `server` (`quic://…`, `https://…`, `h3://…`), trusting the
/// test CA in `dir`.
fn upstream_config(server: &str, dir: &Path) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[segment]]\nname = \"office\"\nnetworks = [\"127.0.0.3/32\"]\n\
         [[upstream]]\nservers = [\"{server}\"]\nca_file = \"{}/ca.pem\"\n\
         timeout_ms = 3000\ntry_timeout_ms = 3000\n",
        dir.display()
    )
}

/// 50 names at once through a gateway whose upstream is the second gateway `server` over
/// `scheme`: all answered as the server answers them, over one connection, and a `#name` the
/// certificate lacks gives SERVFAIL. `handshakes`: the server's family of handshake counts.
async fn asks_over_one_verified_connection(
    server: &TestGateway,
    dir: &Path,
    at: SocketAddr,
    scheme: &str,
    path: &str,
    handshakes: &str,
) {
    let spec = |name: &str| format!("{scheme}{at}{path}#{name}");
    let before = server.scrape().await;
    let handshaken = |m: &HashMap<String, f64>, result: &str| {
        sum(m, &[handshakes, result]) - sum(&before, &[handshakes, result])
    };
    let gateway = TestGateway::start_text(upstream_config(&spec(NAME), dir)).await;
    let mut asking = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = gateway.client_from("127.0.0.3");
        let name = match i {
            0 => "www.tiktok.com.".to_owned(),
            _ => format!("n{i}.upstream.example."),
        };
        asking.spawn(async move { (client.udp_a(&name).await, name) });
    }
    while let Some(asked) = asking.join_next().await {
        let (answer, name) = asked.unwrap();
        let want = match name.as_str() {
            "www.tiktok.com." => ResponseCode::NoError,
            _ => ResponseCode::NXDomain,
        };
        assert_eq!(answer.metadata.response_code, want, "{scheme} {name}");
    }
    let m = gateway.scrape().await;
    let server_label = format!("server=\"{scheme}{at}\"");
    let ok = sum(
        &m,
        &[
            "portvakt_upstream_server_queries_total",
            &server_label,
            "\"ok\"",
        ],
    );
    let connections = sum(
        &m,
        &["portvakt_upstream_server_connections_total", &server_label],
    );
    assert_eq!(ok, 50.0, "every query asked over {scheme}: {m:?}");
    assert_eq!(connections, 1.0, "one connection for all 50 over {scheme}");
    let seen = server.scrape().await;
    assert_eq!(handshaken(&seen, "\"ok\""), 1.0, "{scheme}");

    // A certificate without the configured name: refused, so SERVFAIL.
    let wrong = TestGateway::start_text(upstream_config(&spec("other.test"), dir)).await;
    let answer = wrong
        .client_from("127.0.0.3")
        .udp_a("www.tiktok.com.")
        .await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::ServFail,
        "{scheme}"
    );
    assert!(answer.addresses().is_empty());
    // It reached the server, whose handshake the client then broke off.
    let failed = async || handshaken(&server.scrape().await, "\"failed\"");
    let seen = tokio::time::timeout(Duration::from_secs(3), async {
        while failed().await < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert!(
        seen.await.is_ok(),
        "no failed {scheme} handshake on the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_https_and_h3_upstreams_answer_over_one_verified_connection() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The server: a second gateway, whose 127/8 clients (the first one) block nothing.
    let (server, _upstream) = start(dir.path()).await;
    let quic = server.addrs(Transport::Quic)[0];
    let quic_handshakes = "portvakt_quic_handshakes_total";
    asks_over_one_verified_connection(&server, dir.path(), quic, "quic://", "", quic_handshakes)
        .await;
    let https = server.addrs(Transport::Https)[0];
    let tls_handshakes = "portvakt_tls_handshakes_total";
    let path = "/dns-query";
    asks_over_one_verified_connection(&server, dir.path(), https, "https://", path, tls_handshakes)
        .await;
    let h3 = server.addrs(Transport::H3)[0];
    asks_over_one_verified_connection(&server, dir.path(), h3, "h3://", path, quic_handshakes)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doh_upstream_by_host_name_is_found_through_the_groups_servers() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, _upstream) = start(dir.path()).await;
    let https = server.addrs(Transport::Https)[0];
    // The certificate's name, known to no resolver but this one, the server of its zone's group.
    let finder = FakeUpstream::new()
        .with_a(&format!("{NAME}."), "127.0.0.1")
        .start()
        .await;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[segment]]\nname = \"office\"\nnetworks = [\"127.0.0.3/32\"]\n\
         [[upstream]]\nservers = [\"https://{NAME}:{}/dns-query\"]\nca_file = \"{}/ca.pem\"\n\
         timeout_ms = 3000\ntry_timeout_ms = 3000\n\
         [[upstream]]\nzones = [\"portvakt.test\"]\nservers = [\"{}\"]\n",
        https.port(),
        dir.path().display(),
        finder.addr
    );
    let gateway = TestGateway::start_text(config).await;
    let client = gateway.client_from("127.0.0.3");
    for i in 0..5 {
        let answer = client.udp_a(&format!("n{i}.upstream.example.")).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    }
    let answer = client.udp_a("www.tiktok.com.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.addresses(), ["192.0.2.8"]);
    let m = gateway.scrape().await;
    let label = format!("server=\"https://{NAME}:{}\"", https.port());
    let ok = sum(
        &m,
        &["portvakt_upstream_server_queries_total", &label, "\"ok\""],
    );
    let connections = sum(&m, &["portvakt_upstream_server_connections_total", &label]);
    assert_eq!(ok, 6.0, "asked over DoH: {m:?}");
    assert_eq!(connections, 1.0, "one connection");
    assert_eq!(
        finder.queries_for(&format!("{NAME}.")),
        2,
        "its A and AAAA asked of the zone's server, once"
    );
}

/// The measured reason portvakt has its own DoQ listener: hickory-server 0.26.3's awaits each
/// QUIC handshake inside its accept loop (up to 5 s), so one client that leaves a handshake
/// half done holds back the next client. When this fails, the reason is gone: weigh
/// hickory-server's listener again (the README's hickory table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_servers_doq_listener_still_waits_on_a_half_done_handshake() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if !dnspython_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.path().join("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.path().join("key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"doq".to_vec()];
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = socket.local_addr().unwrap();
    let catalog = hickory_server::zone_handler::Catalog::new();
    let mut server = hickory_server::Server::new(catalog);
    (server.register_quic_listener_and_tls_config(socket, Duration::from_secs(5), Arc::new(tls)))
        .unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    let (ip, port) = (at.ip().to_string(), at.port().to_string());
    let out = python(STALLED_HANDSHAKES, &[ip, port, "1".to_owned(), ca]).await;
    let (rcode, took) = out.split_once(' ').expect("rcode and time");
    assert_eq!(rcode, "REFUSED", "an empty catalog refuses: {out}");
    let took: f64 = took.parse().unwrap();
    eprintln!(
        "hickory-server's DoQ listener answered after {took} s behind one half-done handshake"
    );
    assert!(
        took > 3.0,
        "hickory-server answered after {took} s: its accept loop no longer waits on a half-done handshake"
    );
    server.shutdown_gracefully().await.unwrap();
}
