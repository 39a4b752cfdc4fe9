//! The servers of a group: with one of two black-holed, every query is still answered; the
//! dead one is found down (skipped, `portvakt_upstream_server_up` 0) and, once it answers
//! again, a background probe brings it back.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway};

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
    let series = |name: &str, server: &std::net::SocketAddr, more: &str| {
        format!("{name}{{group=\"default\",{more}server=\"{server}\"}}")
    };
    let dead_up = series("portvakt_upstream_server_up", &dead.addr, "");
    let good_up = series("portvakt_upstream_server_up", &good.addr, "");
    let dead_timeouts = series(
        "portvakt_upstream_server_queries_total",
        &dead.addr,
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
