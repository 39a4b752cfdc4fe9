//! Clients that stall hold nothing past their deadlines: DoH POSTs whose body never comes, TCP
//! clients that never read their replies, DoT handshakes left half-done. Meanwhile new UDP,
//! TCP, DoT and DoH clients are answered at once, and every stalled connection is closed by
//! its deadline and counted.

use portvakt::Transport;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::encrypted::{NAME, client_config, dot_connect, dot_query};
use crate::harness::{
    Canned, FakeUpstream, TestGateway, certificate, encode, found, present_or_skip, question,
};

/// Stalled clients of each kind, each from its own address (the per-client cap is 32).
const DOH_POSTS: usize = 60;
const SILENT_READERS: usize = 60;
const HALF_HANDSHAKES: usize = 30;

async fn connect_from(source: String, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A TCP client that never reads: a small receive buffer, then 100 queries whose replies
/// (about 50 KB each) fill it and the server's send buffer.
async fn silent_reader(source: String, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(1 << 20).unwrap(); // the queries all go out at once
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let packet = encode(&question("big.example.", RecordType::TXT, true));
    let mut framed = Vec::new();
    for _ in 0..100 {
        framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        framed.extend_from_slice(&packet);
    }
    // Bounded: the server stops reading once its replies back up.
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&framed)).await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_by_their_deadlines_and_starve_no_one() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let upstream = FakeUpstream::new()
        .with("big.example.", Canned::Txt(250))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let d = dir.path().display();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         https_listen = [\"127.0.0.1:0\"]\ntls_cert_file = \"{d}/cert.pem\"\n\
         tls_key_file = \"{d}/key.pem\"\ntls_name = \"{NAME}\"\n\
         tcp_idle_timeout_ms = 1500\ntcp_write_timeout_ms = 1000\nhttps_request_timeout_ms = 1000\n\
         tls_handshake_timeout_ms = 1000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [\"tests/fixtures/tiktok.txt\"]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\nblock = [\"tiktok\"]\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 700\n",
        upstream.addr
    );
    let gateway = TestGateway::start_text(text).await;
    let (tls_addr, https_addr, tcp_addr) = (
        gateway.tls_addr(),
        gateway.addrs(Transport::Https)[0],
        gateway.addr(),
    );
    let config = client_config(&[dir.path()]);

    // DoH POSTs whose body never comes (HTTP/1.1 over TLS).
    let mut held = Vec::new();
    let mut doh = Vec::new();
    for i in 0..DOH_POSTS {
        let tcp = connect_from(format!("127.0.1.{}", i + 1), https_addr).await;
        let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let head = "POST /dns-query HTTP/1.1\r\nHost: dns.portvakt.test\r\n\
                    Content-Type: application/dns-message\r\nContent-Length: 100\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        doh.push(stream);
    }
    // TCP clients that never read.
    for i in 0..SILENT_READERS {
        held.push(silent_reader(format!("127.0.2.{}", i + 1), tcp_addr).await);
    }
    // DoT connections whose handshake never starts.
    for i in 0..HALF_HANDSHAKES {
        held.push(connect_from(format!("127.0.3.{}", i + 1), tls_addr).await);
    }

    // New clients of every transport are answered at once.
    let staff = gateway.client_from("127.0.0.2");
    let started = Instant::now();
    assert_eq!(
        staff.udp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let udp = started.elapsed();
    let started = Instant::now();
    assert_eq!(
        staff.tcp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let tcp = started.elapsed();
    let started = Instant::now();
    let mut dot = dot_connect(tls_addr, &config).await.unwrap();
    assert_eq!(
        dot_query(&mut dot, 7, "tiktok.com.").await.unwrap(),
        ResponseCode::NXDomain
    );
    let dot_time = started.elapsed();
    let started = Instant::now();
    let status = doh_get(https_addr, &config).await;
    let doh_time = started.elapsed();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    for (transport, took) in [
        ("udp", udp),
        ("tcp", tcp),
        ("dot", dot_time),
        ("doh", doh_time),
    ] {
        assert!(
            took < Duration::from_millis(100),
            "{transport} took {took:?}"
        );
    }

    // Every stalled one is closed by its deadline, and counted.
    let hits = |m: &std::collections::HashMap<String, f64>, limit: &str| {
        m.get(&format!(
            "portvakt_tcp_limit_hits_total{{limit=\"{limit}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    drop(dot);
    let closed = async || {
        let m = gateway.scrape().await;
        m.get("portvakt_tcp_connections") == Some(&0.0)
    };
    let waited = tokio::time::timeout(Duration::from_secs(8), async {
        while !closed().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    if waited.await.is_err() {
        let m = gateway.scrape().await;
        let shown: Vec<_> = (m.iter())
            .filter(|(k, _)| k.contains("tcp_") || k.contains("handshake"))
            .collect();
        panic!("stalled connections not closed within 8 s: {shown:?}");
    }
    let m = gateway.scrape().await;
    assert!(
        hits(&m, "request") >= DOH_POSTS as f64,
        "DoH request deadlines: {}",
        hits(&m, "request")
    );
    assert!(
        hits(&m, "write") >= SILENT_READERS as f64,
        "write deadlines: {}",
        hits(&m, "write")
    );
    let timeouts = m
        .get("portvakt_tls_handshakes_total{result=\"timeout\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        timeouts >= HALF_HANDSHAKES as f64,
        "handshake deadlines: {timeouts}"
    );
    // The DoH clients got their 408 before the close.
    let mut buf = [0u8; 64];
    let n = doh[0].read(&mut buf).await.unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop((held, doh));
    gateway.shutdown().await;
}

/// One DoH GET over HTTP/1.1 from 127.0.0.2; the status line.
async fn doh_get(addr: SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>) -> String {
    use base64::Engine;
    let tcp = connect_from("127.0.0.2".into(), addr).await;
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let query = encode(&question("tiktok.com.", RecordType::A, false));
    let dns = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query);
    let request =
        format!("GET /dns-query?dns={dns} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A client that pipelines without pause, its queries split across writes so that a read
/// always ends inside one: only a query that itself comes too slowly is cut, so this client
/// keeps its connection far past the read deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_pipeline_whose_reads_end_mid_query_is_not_slow() {
    let upstream = FakeUpstream::new().start().await;
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntcp_read_timeout_ms = 300\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [\"tests/fixtures/tiktok.txt\"]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"tiktok\"]\n\
         [[upstream]]\nservers = [\"{}\"]\n",
        upstream.addr
    );
    let gateway = TestGateway::start_text(config).await;
    let stream = connect_from("127.0.0.2".to_owned(), gateway.addr()).await;
    let (mut read, mut write) = stream.into_split();
    let packet = encode(&question("www.tiktok.com.", RecordType::A, false));
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    const QUERIES: usize = 60;
    let cut = framed.len() / 2;
    // Each write: the second half of one query and the first half of the next, every 20 ms
    // (1.2 s in all, four read deadlines).
    let writer = tokio::spawn(async move {
        write.write_all(&framed[..cut]).await.unwrap();
        for _ in 1..QUERIES {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut chunk = framed[cut..].to_vec();
            chunk.extend_from_slice(&framed[..cut]);
            write.write_all(&chunk).await.unwrap();
        }
        write.write_all(&framed[cut..]).await.unwrap();
        write
    });
    let mut answered = 0;
    let mut len = [0u8; 2];
    while answered < QUERIES {
        let next = tokio::time::timeout(Duration::from_secs(3), read.read_exact(&mut len)).await;
        let Ok(Ok(_)) = next else { break };
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN for staff");
        answered += 1;
    }
    let _write = writer.await.unwrap();
    assert_eq!(answered, QUERIES, "every query answered on one connection");
    let m = gateway.scrape().await;
    let slow = m
        .get("portvakt_tcp_limit_hits_total{limit=\"slow\"}")
        .copied();
    assert_eq!(slow.unwrap_or(0.0), 0.0, "no query was slow: {m:?}");
}
