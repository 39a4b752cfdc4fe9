//! Allowed names: forwarded faithfully, cached, CNAME chains checked, conditional zones,
//! upstream failures, truncation.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway, question};

const POLICY: &str = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{ name = "staff",          networks = ["127.0.0.2/32"], block = ["tiktok"] },
           { name = "tiktok-devices", networks = ["127.0.0.3/32"] }]
"#;

#[tokio::test]
async fn answers_are_cached_and_served_to_every_segment() {
    let upstream = FakeUpstream::new()
        .with(
            "www.example.org.",
            Canned::A(vec!["192.0.2.1".parse().unwrap()], 600),
        )
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let first = staff.udp_a("www.example.org.").await;
    assert_eq!(first.addresses(), ["192.0.2.1"]);
    assert_eq!(first.answers[0].ttl, 600);
    let again = gateway
        .client_from("127.0.0.3")
        .tcp_a("WWW.Example.ORG.")
        .await;
    assert_eq!(again.addresses(), ["192.0.2.1"]);
    assert!(again.answers[0].ttl <= 600);
    assert_eq!(
        again.queries[0].name().to_ascii(),
        "WWW.Example.ORG.",
        "question case echoed from the cache"
    );
    assert_eq!(
        upstream.queries_for("www.example.org."),
        1,
        "second query is a cache hit"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn negative_answers_keep_rcode_and_soa() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let answer = gateway
        .client_from("127.0.0.2")
        .udp_a("missing.example.org.")
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.soa_owner().as_deref(), Some("example.org."));
    assert_eq!(
        answer.authorities[0].ttl, 60,
        "negative TTL is min(SOA TTL, SOA MINIMUM)"
    );
    assert!(
        answer.ede().is_empty(),
        "an upstream NXDOMAIN is not a block"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn cname_chains_survive_including_ones_ending_in_nxdomain() {
    let upstream = FakeUpstream::new()
        .with(
            "alias.example.org.",
            Canned::Cname(
                "www.example.org.".into(),
                Box::new(Canned::A(vec!["192.0.2.2".parse().unwrap()], 300)),
            ),
        )
        .with(
            "dangling.example.org.",
            Canned::Cname("gone.example.net.".into(), Box::new(Canned::NxDomain)),
        )
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let chain = staff.udp_a("alias.example.org.").await;
    assert_eq!(chain.answers.len(), 2);
    assert!(matches!(chain.answers[0].data, RData::CNAME(_)));
    assert_eq!(chain.addresses(), ["192.0.2.2"]);
    let dangling = staff.tcp_a("dangling.example.org.").await;
    assert_eq!(dangling.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(dangling.answers.len(), 1, "the CNAME is kept: {dangling:?}");
    assert!(dangling.soa_owner().is_some());
    gateway.shutdown().await;
}

#[tokio::test]
async fn cname_targets_are_checked_against_the_asking_segment() {
    let cloaked = Canned::Cname(
        "v16.tiktokcdn.com.".into(),
        Box::new(Canned::A(vec!["192.0.2.3".parse().unwrap()], 300)),
    );
    let upstream = FakeUpstream::new()
        .with("video.example.org.", cloaked)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    // The device fills the cache first; staff must still be blocked from the cached chain.
    let device = gateway
        .client_from("127.0.0.3")
        .udp_a("video.example.org.")
        .await;
    assert_eq!(device.addresses(), ["192.0.2.3"]);
    let staff = gateway
        .client_from("127.0.0.2")
        .udp_a("video.example.org.")
        .await;
    assert_eq!(staff.metadata.response_code, ResponseCode::NXDomain);
    assert!(staff.answers.is_empty());
    assert_eq!(staff.ede()[0].0, 15);
    assert_eq!(upstream.queries_for("video.example.org."), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn conditional_zones_go_to_their_group() {
    let default = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let internal = FakeUpstream::new()
        .with_a("dc1.kommune.internal.", "10.0.0.10")
        .start()
        .await;
    let gateway = TestGateway::start_with_upstreams(
        &[(&default, &[]), (&internal, &["Kommune.Internal"])],
        POLICY,
    )
    .await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("dc1.kommune.internal.").await.addresses(),
        ["10.0.0.10"]
    );
    assert_eq!(
        staff.udp_a("www.example.org.").await.addresses(),
        ["192.0.2.1"]
    );
    assert_eq!(default.queries_for("dc1.kommune.internal."), 0);
    assert_eq!(internal.queries_for("www.example.org."), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn silent_upstream_gives_servfail_within_the_timeout() {
    let upstream = FakeUpstream::new()
        .with("slow.example.org.", Canned::Silent)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let started = Instant::now();
    let answer = gateway
        .client_from("127.0.0.2")
        .udp_a("slow.example.org.")
        .await;
    let took = started.elapsed();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(answer.ede()[0].0, 22);
    // timeout_ms = 700 in the harness: never hang the client (hickory's default is 15 s).
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_refused_is_relayed_and_servfail_too() {
    let upstream = FakeUpstream::new()
        .with("refused.example.org.", Canned::Rcode(ResponseCode::Refused))
        .with("broken.example.org.", Canned::Rcode(ResponseCode::ServFail))
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff
            .udp_a("refused.example.org.")
            .await
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    assert_eq!(
        staff
            .udp_a("broken.example.org.")
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn large_answers_are_truncated_on_udp_and_whole_on_tcp() {
    let upstream = FakeUpstream::new()
        .with("big.example.org.", Canned::Txt(8))
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let udp = staff
        .udp(&question("big.example.org.", RecordType::TXT, false))
        .await;
    assert!(udp.metadata.truncation, "over 512 bytes without EDNS");
    assert!(udp.answers.is_empty(), "no partial RRsets");
    assert_eq!(udp.queries.len(), 1);
    let tcp = staff
        .tcp(&question("big.example.org.", RecordType::TXT, false))
        .await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 8);
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_answered_from_the_cache_briefly() {
    let upstream = FakeUpstream::new()
        .with("down.example.org.", Canned::Silent)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff
            .udp_a("down.example.org.")
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
    let asked = upstream.queries_for("down.example.org.");
    assert!(asked >= 1);
    let again = staff.tcp_a("down.example.org.").await;
    assert_eq!(again.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        upstream.queries_for("down.example.org."),
        asked,
        "no new upstream exchange within 2 s"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let upstream = FakeUpstream::new()
        .with_a("slow.example.org.", "192.0.2.90")
        .delay("slow.example.org.", Duration::from_millis(300))
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    // Five clients of two segments ask at once, while the first question is in flight.
    let askers: Vec<_> = [
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
    ]
    .into_iter()
    .map(|source| {
        let client = gateway.client_from(source);
        tokio::spawn(async move { client.udp_a("slow.example.org.").await })
    })
    .collect();
    for asker in askers {
        assert_eq!(asker.await.unwrap().addresses(), ["192.0.2.90"]);
    }
    assert_eq!(
        upstream.queries_for("slow.example.org."),
        1,
        "one upstream query for five"
    );
    gateway.shutdown().await;
}
