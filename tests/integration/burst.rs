//! A burst of thousands of different names, sent at once, through portvakt to a real local
//! upstream (Unbound) gets exactly the rcodes that upstream gives directly: over UDP and over
//! TCP, no SERVFAIL where the upstream answers. As a real resolver's are, some of Unbound's
//! answers are slow: it has one name in eight from a server that takes a second, longer than
//! portvakt's tries wait (so they must go on listening). The client plays a stub resolver: it
//! sends the whole burst, then asks again what got no answer at all (a datagram lost).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use crate::harness::{
    Canned, FakeUpstream, TestGateway, Unbound, found, present_or_skip, server_series,
    start_unbound,
};

/// Names per burst.
const NAMES: usize = 4000;
/// Rounds of asking again what got no answer (each after a second of silence).
const ROUNDS: usize = 5;
/// TCP connections a burst is spread over.
const CONNECTIONS: usize = 4;

/// A local Unbound on UDP and TCP.
struct Upstream {
    _unbound: Unbound,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// How long the server Unbound asks for `slow.example` takes to answer.
const SLOW: Duration = Duration::from_secs(1);

/// What burst query `i` asks: of eight, three names in `burst.test` that exist, two that do
/// not, two outside what Unbound serves, and one in `slow.example`.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Exists,
    Missing,
    Refused,
    Slow,
}

fn kind(i: usize) -> Kind {
    match i % 8 {
        0..=2 => Kind::Exists,
        3 | 4 => Kind::Missing,
        5 | 6 => Kind::Refused,
        _ => Kind::Slow,
    }
}

/// The rcode Unbound gives a `kind` of name.
fn rcode(kind: Kind) -> u8 {
    match kind {
        Kind::Exists | Kind::Slow => 0,
        Kind::Missing => 3,
        Kind::Refused => 5,
    }
}

/// The name of burst `prefix`'s `i`th query.
fn name(prefix: &str, i: usize) -> String {
    let zone = match kind(i) {
        Kind::Exists | Kind::Missing => "burst.test",
        Kind::Refused => "elsewhere.example",
        Kind::Slow => "slow.example",
    };
    format!("{prefix}{i}.{zone}")
}

/// Unbound answers `burst.test` from local data (the names of `Kind::Exists`),
/// forwards `slow.example` to `slow`, and refuses the rest.
async fn unbound_upstream(prefixes: &[&str], slow: SocketAddr) -> Option<Upstream> {
    if !present_or_skip(found("unbound"), "unbound") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let d = dir.path().display();
    let mut conf = format!(
        "server:\n  interface: 127.0.0.1@{port}\n  do-daemonize: no\n  chroot: \"\"\n\
         \x20 username: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n\
         \x20 logfile: \"\"\n  num-threads: 1\n  so-reuseport: no\n  do-ip6: no\n\
         \x20 so-rcvbuf: 4m\n  num-queries-per-thread: 4096\n\
         \x20 access-control: 127.0.0.0/8 allow\n  local-zone: \".\" refuse\n\
         \x20 local-zone: \"burst.test.\" static\n  local-zone: \"slow.example.\" transparent\n\
         \x20 do-not-query-localhost: no\n\
         \x20 # Unbound waits for the slow server (retries would only come later still).\n\
         \x20 unknown-server-time-limit: 3000\n\
         \x20 infra-cache-min-rtt: 3000\n"
    );
    for prefix in prefixes {
        for i in (0..NAMES).filter(|&i| kind(i) == Kind::Exists) {
            conf.push_str(&format!(
                "  local-data: \"{} 300 IN A 192.0.2.{}\"\n",
                name(prefix, i),
                i % 250 + 1
            ));
        }
    }
    conf.push_str(&format!(
        "forward-zone:\n  name: \"slow.example.\"\n  forward-addr: {}@{}\n",
        slow.ip(),
        slow.port()
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let unbound = start_unbound(dir.path(), &conf, addr).await;
    Some(Upstream {
        _unbound: unbound,
        addr,
        _dir: dir,
    })
}

/// The `id`th query of a burst: `name` A, recursion desired, no EDNS.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut wire = id.to_be_bytes().to_vec();
    wire.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.extend_from_slice(&[0, 0, 1, 0, 1]);
    wire
}

/// The rcode of each name's answer (`None`: none came), asked all at once over UDP from
/// `source`, then again for those without an answer.
async fn burst_udp(server: SocketAddr, source: &str, names: &[String]) -> Vec<Option<u8>> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    // Room for the whole burst's answers (within net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.set_nonblocking(true).unwrap();
    let source: std::net::IpAddr = source.parse().unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    let socket = std::sync::Arc::new(UdpSocket::from_std(socket.into()).unwrap());
    let mut rcodes = vec![None; names.len()];
    let mut buf = vec![0u8; 4096];
    for _ in 0..ROUNDS {
        let missing: Vec<usize> = (0..names.len()).filter(|&i| rcodes[i].is_none()).collect();
        if missing.is_empty() {
            break;
        }
        let queries: Vec<Vec<u8>> = missing
            .iter()
            .map(|&i| query(i as u16, &names[i]))
            .collect();
        let sender = socket.clone();
        let send = tokio::spawn(async move {
            for q in queries {
                sender.send_to(&q, server).await.unwrap();
            }
        });
        // Answers until a second passes without one.
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
        {
            let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if len >= 12 && id < names.len() && answers(&buf[..len], &names[id]) {
                rcodes[id] = Some(buf[3] & 0x0f);
            }
        }
        send.await.unwrap();
    }
    rcodes
}

/// As `burst_udp`, over `CONNECTIONS` TCP connections, each sent its share at once (a
/// connection has at most 16 misses upstream at a time: this takes a while).
async fn burst_tcp(server: SocketAddr, source: &str, names: &[String]) -> Vec<Option<u8>> {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        // Runs of eight, so every connection gets its share of slow names.
        let ids: Vec<usize> = (0..names.len())
            .filter(|i| i / 8 % CONNECTIONS == c)
            .collect();
        let queries: Vec<(usize, String)> = ids.iter().map(|&i| (i, names[i].clone())).collect();
        let source: std::net::IpAddr = source.parse().unwrap();
        tasks.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            let stream = socket.connect(server).await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let expected: HashMap<u16, String> = queries
                .iter()
                .map(|(i, n)| (*i as u16, n.clone()))
                .collect();
            let writer = tokio::spawn(async move {
                let mut framed = Vec::new();
                for (i, name) in &queries {
                    let q = query(*i as u16, name);
                    framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
                    framed.extend_from_slice(&q);
                }
                write.write_all(&framed).await.unwrap();
                write
            });
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                let next = async {
                    let mut len = [0u8; 2];
                    read.read_exact(&mut len).await.ok()?;
                    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    read.read_exact(&mut reply).await.ok()?;
                    Some(reply)
                };
                let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(10), next).await
                else {
                    break;
                };
                let id = u16::from_be_bytes([reply[0], reply[1]]);
                if expected.get(&id).is_some_and(|n| answers(&reply, n)) {
                    got.push((usize::from(id), reply[3] & 0x0f));
                }
            }
            drop(writer.await);
            got
        }));
    }
    let mut rcodes = vec![None; names.len()];
    for task in tasks {
        for (i, rcode) in task.await.unwrap() {
            rcodes[i] = Some(rcode);
        }
    }
    rcodes
}

/// Whether `reply` is a response whose question is `name`.
fn answers(reply: &[u8], name: &str) -> bool {
    let question = query(0, name);
    reply.len() >= question.len()
        && reply[2] & 0x80 != 0
        && reply[12..question.len()] == question[12..]
}

/// The names whose rcodes differ, with both.
fn differing(
    names: &[String],
    direct: &[Option<u8>],
    through: &[Option<u8>],
) -> Vec<(String, Option<u8>, Option<u8>)> {
    (0..names.len())
        .filter(|&i| direct[i] != through[i])
        .map(|i| (names[i].clone(), direct[i], through[i]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_the_upstreams_own_rcodes_over_udp_and_tcp() {
    let prefixes = ["u", "t"];
    let mut slow = FakeUpstream::new().otherwise(Canned::A(vec![[192, 0, 2, 99].into()], 300));
    for prefix in prefixes {
        for i in (0..NAMES).filter(|&i| kind(i) == Kind::Slow) {
            slow = slow.delay(&name(prefix, i), SLOW);
        }
    }
    let slow = slow.start().await;
    let Some(upstream) = unbound_upstream(&prefixes, slow.addr).await else {
        return;
    };
    let config = format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         segment = [{{ name = \"office\", networks = [\"127.0.0.2/32\"] }}]\n\
         [[upstream]]\nservers = [\"{}\"]\n",
        upstream.addr
    );
    let gateway = TestGateway::start_text(config).await;
    for (prefix, tcp) in [("u", false), ("t", true)] {
        let names: Vec<String> = (0..NAMES).map(|i| name(prefix, i)).collect();
        // Through portvakt first, while Unbound must still ask for the slow names; directly
        // then (from Unbound's cache: the same rcodes, sooner).
        let started = std::time::Instant::now();
        let through = if tcp {
            burst_tcp(gateway.addr(), "127.0.0.2", &names).await
        } else {
            burst_udp(gateway.addr(), "127.0.0.2", &names).await
        };
        let took = started.elapsed();
        let direct = burst_udp(upstream.addr, "127.0.0.2", &names).await;
        let counts = |rcodes: &[Option<u8>]| {
            let mut counts: HashMap<Option<u8>, usize> = HashMap::new();
            for rcode in rcodes {
                *counts.entry(*rcode).or_default() += 1;
            }
            counts
        };
        // The upstream answers every name, each with its kind's rcode.
        let upstream_counts = counts(&direct);
        for (i, rcode) in direct.iter().enumerate() {
            assert_eq!(*rcode, Some(self::rcode(kind(i))), "{}", names[i]);
        }
        let differ = differing(&names, &direct, &through);
        let transport = if tcp { "TCP" } else { "UDP" };
        eprintln!(
            "burst over {transport}: {NAMES} names, upstream {:?}, through portvakt {:?} in {took:?}, {} differing",
            upstream_counts,
            counts(&through),
            differ.len()
        );
        assert!(
            differ.is_empty(),
            "{} of {NAMES} rcodes differ over {transport} (name, upstream, portvakt): {:?}",
            differ.len(),
            &differ[..differ.len().min(20)]
        );
    }
    // The slow answers were heard late, on the ports of earlier tries, and did not take the
    // server down.
    let metrics = gateway.scrape().await;
    let series = |name: &str, more: &str| {
        let key = server_series(name, upstream.addr, more);
        metrics
            .get(&key)
            .copied()
            .unwrap_or_else(|| panic!("no {key}"))
    };
    let late = series("portvakt_upstream_server_queries_total", "result=\"late\",");
    assert!(late >= 500.0, "late answers counted: {late}");
    assert_eq!(series("portvakt_upstream_server_up", ""), 1.0);
    gateway.shutdown().await;
}
