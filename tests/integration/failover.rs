//! The servers of a group: with one of two black-holed, every query is still answered; the
//! dead one is found down (skipped, `portvakt_upstream_server_up` 0) and, once it answers
//! again, a background probe brings it back. A server that is merely slow is waited for: its
//! answer is heard on an earlier try's port, and it stays up.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;

use crate::harness::{
    Answered, Canned, FakeUpstream, TestGateway, encode, question, server_series,
};

fn a(addr: &str) -> Canned {
    Canned::A(vec![addr.parse::<Ipv4Addr>().unwrap()], 300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_server_is_skipped_and_probed_back() {
    let dead = FakeUpstream::new().otherwise(Canned::Silent).start().await;
    let good = FakeUpstream::new().otherwise(a("192.0.2.7")).start().await;
    let config = format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         segment = [{{ name = \"office\", networks = [\"127.0.0.3/32\"] }}]\n\
         [[upstream]]\nservers = [\"{}\", \"{}\"]\ntimeout_ms = 2000\ntry_timeout_ms = 200\n",
        dead.addr, good.addr
    );
    let gateway = TestGateway::start_text(config).await;
    let office = gateway.client_from("127.0.0.3");
    let dead_up = server_series("portvakt_upstream_server_up", dead.addr, "");
    let good_up = server_series("portvakt_upstream_server_up", good.addr, "");
    let dead_timeouts = server_series(
        "portvakt_upstream_server_queries_total",
        dead.addr,
        "result=\"timeout\",",
    );
    let metrics = gateway.scrape().await;
    assert_eq!((metrics[&dead_up], metrics[&good_up]), (1.0, 1.0));

    // Fresh names (no cache) until the dead server is found down; each is answered.
    let mut asked = 0;
    while gateway.scrape().await[&dead_up] != 0.0 {
        assert!(asked < 400, "the dead server was never found down");
        let answer = office.udp_a(&format!("n{asked}.failover.example.")).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.addresses(), ["192.0.2.7"], "n{asked}");
        asked += 1;
    }
    let metrics = gateway.scrape().await;
    assert!(
        metrics[&dead_timeouts] >= 3.0,
        "{}",
        metrics[&dead_timeouts]
    );
    assert_eq!(metrics[&good_up], 1.0);

    // Down: skipped. Within the first probe's wait (1 s), no query goes to it.
    let timeouts = metrics[&dead_timeouts];
    for i in 0..20 {
        let answer = office.udp_a(&format!("skip{i}.failover.example.")).await;
        assert_eq!(answer.addresses(), ["192.0.2.7"]);
    }
    let skipped = gateway.scrape().await[&dead_timeouts];
    assert!(
        skipped <= timeouts + 1.0,
        "{timeouts} then {skipped}: not skipped"
    );

    // It answers again: a probe (the question of a query that finds it due) brings it back.
    dead.set_otherwise(a("192.0.2.8"));
    let mut back = false;
    for i in 0..60 {
        let answer = office.udp_a(&format!("back{i}.failover.example.")).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        if gateway.scrape().await[&dead_up] == 1.0 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the server that answers again was not probed back");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_every_try_is_still_heard() {
    let upstream = FakeUpstream::new()
        .otherwise(a("192.0.2.7"))
        .delay("slow.failover.example", Duration::from_secs(6))
        .start()
        .await;
    let config = format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         segment = [{{ name = \"office\", networks = [\"127.0.0.3/32\"] }}]\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 10000\ntry_timeout_ms = 10000\n",
        upstream.addr
    );
    let gateway = TestGateway::start_text(config).await;
    // A fast answer first: the server's RTT is known, so its tries wait only 100 ms.
    let office = gateway.client_from("127.0.0.3");
    let fast = office.udp_a("fast.failover.example.").await;
    assert_eq!(fast.addresses(), ["192.0.2.7"]);

    let socket = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let query = encode(&question(
        "slow.failover.example.",
        hickory_proto::rr::RecordType::A,
        true,
    ));
    let started = std::time::Instant::now();
    socket.send_to(&query, gateway.addr()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(9), socket.recv_from(&mut buf))
        .await
        .expect("an answer within the budget")
        .unwrap();
    let took = started.elapsed();
    let answer = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.addresses(), ["192.0.2.7"]);
    assert!(
        took >= Duration::from_millis(5900),
        "answered after {took:?}"
    );
    // Later tries went out while the first waited; its answer, the first to come, won.
    let tries = upstream.queries_for("slow.failover.example");
    assert!(tries >= 3, "{tries} tries");

    let metrics = gateway.scrape().await;
    let series = |name: &str, more: &str| metrics[&server_series(name, upstream.addr, more)];
    assert_eq!(
        series("portvakt_upstream_server_up", ""),
        1.0,
        "slow is not down"
    );
    let results = "portvakt_upstream_server_queries_total";
    assert_eq!(series(results, "result=\"late\","), 1.0);
    assert_eq!(
        series(results, "result=\"timeout\","),
        0.0,
        "a late answer is no loss"
    );
    gateway.shutdown().await;
}
