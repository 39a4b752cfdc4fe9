//! TCP limits: 2,000 idle connections from one client get its 10 and are refused past
//! them, UDP and a new TCP client are still answered within 100 ms, and the idle ones are
//! closed after the idle timeout.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;

use crate::harness::{FakeUpstream, TestGateway};
use crate::reload::eventually;

const IDLE: usize = 2000;

/// Raises this process's open-file limit as far as allowed; what it is then.
fn raise_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: a valid rlimit for the calls' duration.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(16_384);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_capped_and_do_not_stop_other_clients() {
    let files = raise_file_limit();
    assert!(
        files >= IDLE + 500,
        "open-file limit {files} is too low for {IDLE} connections"
    );
    let upstream = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let policy = "server.tcp_connections = 100\nserver.tcp_connections_per_client = 10\n\
                  server.tcp_idle_timeout_ms = 500\n\
                  segment = [{ name = \"office\", networks = [\"127.0.0.0/8\"] }]\n";
    let gateway = TestGateway::start(&upstream, policy).await;
    let office = gateway.client_from("127.0.0.3");
    office.udp_a("www.example.org.").await; // cached from now on

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(gateway.addr()).await.unwrap());
    }
    eventually(
        Duration::from_secs(5),
        "the idle flood accepted or refused",
        async || {
            let metrics = gateway.scrape().await;
            metrics[r#"portvakt_tcp_limit_hits_total{limit="client"}"#] >= (IDLE - 10) as f64
        },
    )
    .await;
    let metrics = gateway.scrape().await;
    assert_eq!(metrics["portvakt_tcp_connections"], 10.0, "the client's 10");

    let started = Instant::now();
    let answer = office.udp_a("www.example.org.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let answer = office.tcp_a("www.example.org.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "answered in {took:?}");

    // The 10 idle ones are closed after 500 ms.
    eventually(
        Duration::from_secs(3),
        "idle connections closed",
        async || {
            let metrics = gateway.scrape().await;
            metrics["portvakt_tcp_connections"] == 0.0
                && metrics[r#"portvakt_tcp_limit_hits_total{limit="idle"}"#] >= 10.0
        },
    )
    .await;
    drop(idle);
    gateway.shutdown().await;
}
