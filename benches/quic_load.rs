//! A load client for DNS over QUIC (RFC 9250) and DoH over HTTP/3, for `benches/encrypted.sh`'s
//! `doq` and `doh3` modes (dnsperf speaks neither): `clients` connections, reused for the whole
//! run, each with `outstanding / clients` queries in flight at most, paced together to `qps`.
//!   cargo bench --bench quic_load -- mode=doq server=127.0.0.1:8853 source=127.0.0.2 \
//!     ca=ca.pem name=dns.portvakt.test queries=cached.txt clients=10 outstanding=200 qps=20000 duration=8
//! With `fresh=1`, every query goes on a new connection (a full handshake each; `outstanding`
//! of them at once, no matter `clients`), for handshakes per second.
//! Prints `sent=N completed=N lost=N qps=X`. Loopback only: it asks only `server`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Buf, Bytes};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A query unanswered after this long is lost.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What every worker shares: the queries, the next one's index, the counts, the end.
struct Load {
    queries: Arc<Vec<Vec<u8>>>,
    counts: Arc<Counts>,
    next: AtomicUsize,
    end: Instant,
}

impl Load {
    /// One worker: a query every `period` until the end, each asked by `ask` within
    /// [`TIMEOUT`] and counted.
    async fn paced<F, A>(self: Arc<Self>, period: Duration, mut ask: F)
    where
        F: FnMut(Vec<u8>) -> A,
        A: std::future::Future<Output = Option<()>>,
    {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            if Instant::now() >= self.end {
                break;
            }
            let at = self.next.fetch_add(1, Ordering::Relaxed) % self.queries.len();
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(TIMEOUT, ask(self.queries[at].clone())).await {
                Ok(Some(())) => self.counts.completed.fetch_add(1, Ordering::Relaxed),
                _ => self.counts.lost.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    completed: AtomicU64,
    lost: AtomicU64,
}

fn main() {
    let args: HashMap<String, String> = (std::env::args().skip(1))
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let arg = |key: &str| {
        (args.get(key).cloned()).unwrap_or_else(|| panic!("missing {key}=… (see the file's head)"))
    };
    let number = |key: &str| arg(key).parse::<u64>().expect("a number");
    let h3 = match arg("mode").as_str() {
        "doq" => false,
        "doh3" => true,
        other => panic!("mode is doq or doh3, not {other}"),
    };
    let server: SocketAddr = arg("server").parse().expect("server=ip:port");
    assert!(server.ip().is_loopback(), "loopback only");
    let queries = Arc::new(read_queries(&arg("queries")));
    let (clients, outstanding) = (number("clients").max(1), number("outstanding"));
    let workers = (outstanding / clients).max(1);
    let (qps, duration) = (
        number("qps").max(1),
        Duration::from_secs(number("duration")),
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(arg("ca")).expect("ca=PEM file") {
        roots.add(cert.expect("a certificate")).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![if h3 { b"h3".to_vec() } else { b"doq".to_vec() }];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    let name = arg("name");
    let fresh = args.get("fresh").is_some_and(|f| f == "1");
    let source: SocketAddr = format!("{}:0", arg("source")).parse().expect("source=ip");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let started = runtime.block_on(async {
        let mut endpoint = quinn::Endpoint::client(source).unwrap();
        endpoint.set_default_client_config(client);
        let mut tasks = tokio::task::JoinSet::new();
        // Every worker sends one query per `period`: together, `qps`.
        let period = Duration::from_secs_f64((clients * workers) as f64 / qps as f64);
        let mut connections = Vec::new();
        for _ in 0..if fresh { 0 } else { clients } {
            let connection = (endpoint.connect(server, &name).unwrap().await).expect("connected");
            connections.push(connection);
        }
        let started = Instant::now();
        let end = started + duration;
        let load = Arc::new(Load {
            queries: queries.clone(),
            counts: counts.clone(),
            next: AtomicUsize::new(0),
            end,
        });
        if fresh {
            let period = Duration::from_secs_f64(outstanding.max(1) as f64 / qps as f64);
            for _ in 0..outstanding.max(1) {
                let (endpoint, name) = (endpoint.clone(), name.clone());
                tasks.spawn(load.clone().paced(period, move |query| {
                    let (endpoint, name) = (endpoint.clone(), name.clone());
                    async move {
                        let connection = endpoint.connect(server, &name).ok()?.await.ok()?;
                        let answered = match h3 {
                            true => {
                                let quic = h3_quinn::Connection::new(connection.clone());
                                let (mut driver, send) = h3::client::new(quic).await.ok()?;
                                let authority = format!("{name}:{}", server.port());
                                tokio::select! {
                                    asked = ask_h3(send, &authority, &query) => asked,
                                    _ = std::future::poll_fn(|cx| driver.poll_close(cx)) => None,
                                }
                            }
                            false => ask_doq(&connection, &query).await,
                        };
                        connection.close(0u32.into(), b"");
                        answered
                    }
                }));
            }
        }
        for connection in connections {
            let h3 = if h3 {
                let (mut driver, send) =
                    h3::client::new(h3_quinn::Connection::new(connection.clone()))
                        .await
                        .expect("HTTP/3 set up");
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
                Some(send)
            } else {
                None
            };
            let authority = format!("{name}:{}", server.port());
            for _ in 0..workers {
                let (connection, h3, authority) =
                    (connection.clone(), h3.clone(), authority.clone());
                tasks.spawn(load.clone().paced(period, move |query| {
                    let (connection, h3, authority) =
                        (connection.clone(), h3.clone(), authority.clone());
                    async move {
                        match h3 {
                            Some(send) => ask_h3(send, &authority, &query).await,
                            None => ask_doq(&connection, &query).await,
                        }
                    }
                }));
            }
        }
        while tasks.join_next().await.is_some() {}
        started
    });
    let elapsed = started.elapsed().as_secs_f64();
    let completed = counts.completed.load(Ordering::Relaxed);
    println!(
        "sent={} completed={completed} lost={} qps={:.1}",
        counts.sent.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
        completed as f64 / elapsed
    );
}

/// One DoQ query on its own stream; `Some` when a reply came whole.
async fn ask_doq(connection: &quinn::Connection, query: &[u8]) -> Option<()> {
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    send.write_all(&framed).await.ok()?;
    send.finish().ok()?;
    let reply = recv.read_to_end(65_537).await.ok()?;
    (reply.len() >= 14).then_some(())
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One DoH3 GET; `Some` when a 200 and its body came.
async fn ask_h3(mut send: SendRequest, authority: &str, query: &[u8]) -> Option<()> {
    let uri = format!(
        "https://{authority}/dns-query?dns={}",
        URL_SAFE_NO_PAD.encode(query)
    );
    let request = hyper::Request::get(uri).body(()).ok()?;
    let mut stream = send.send_request(request).await.ok()?;
    stream.finish().await.ok()?;
    let response = stream.recv_response().await.ok()?;
    let mut body = 0;
    while let Some(chunk) = stream.recv_data().await.ok()? {
        body += chunk.remaining();
    }
    (response.status() == 200 && body >= 12).then_some(())
}

/// dnsperf's query file (`name type` a line) as DNS messages with ID 0 and RD.
fn read_queries(path: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).expect("queries=FILE");
    let types = [
        ("A", 1u16),
        ("NS", 2),
        ("CNAME", 5),
        ("MX", 15),
        ("TXT", 16),
        ("AAAA", 28),
        ("HTTPS", 65),
    ];
    let queries: Vec<Vec<u8>> = (text.lines())
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let kind = parts.next().unwrap_or("A");
            let code = types
                .iter()
                .find(|(t, _)| *t == kind)
                .map_or(1, |(_, c)| *c);
            let mut wire = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
            {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label.as_bytes());
            }
            wire.push(0);
            wire.extend_from_slice(&code.to_be_bytes());
            wire.extend_from_slice(&1u16.to_be_bytes());
            Some(wire)
        })
        .collect();
    assert!(!queries.is_empty(), "no queries in {path}");
    queries
}
