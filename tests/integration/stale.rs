//! Serve-stale (RFC 8767): when the upstream fails, an answer that expired less than
//! `[cache] stale_for` ago is served with TTL 30 and EDE 3, from then on without waiting for
//! the upstream again while the failure is kept; with `stale_for = "0s"` the client gets the
//! SERVFAIL.

use std::time::Duration;

use hickory_proto::op::ResponseCode;

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway};

const POLICY: &str = r#"
segment = [{ name = "open", networks = ["127.0.0.3/32"] }]
"#;

async fn expired_then_silent(policy: &str) -> (crate::harness::RunningUpstream, TestGateway) {
    let short = Canned::A(vec!["192.0.2.40".parse().unwrap()], 1);
    let upstream = FakeUpstream::new()
        .with("short.example.org.", short)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, policy).await;
    let client = gateway.client_from("127.0.0.3");
    assert_eq!(
        client.udp_a("short.example.org.").await.addresses(),
        ["192.0.2.40"]
    );
    // The answer's TTL is 1 s: past it, the cache holds it only as a stale copy.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    upstream.set("short.example.org.", Canned::Silent);
    (upstream, gateway)
}

#[tokio::test]
async fn an_expired_answer_is_served_stale_when_the_upstream_fails() {
    let (upstream, gateway) = expired_then_silent(POLICY).await;
    let client = gateway.client_from("127.0.0.3");
    let stale_served = r#"portvakt_stale_answers_total"#;
    let before = gateway.scrape().await[stale_served];

    let stale = client.udp_a("short.example.org.").await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(stale.addresses(), ["192.0.2.40"]);
    assert_eq!(stale.answers[0].ttl, 30);
    assert_eq!(stale.ede()[0].0, 3, "EDE 3: Stale Answer");
    // Meanwhile the same question is answered stale at once, without asking upstream.
    let asked = upstream.queries_for("short.example.org.");
    let again = client.tcp_a("short.example.org.").await;
    assert_eq!(again.addresses(), ["192.0.2.40"]);
    assert_eq!(again.ede()[0].0, 3);
    assert_eq!(upstream.queries_for("short.example.org."), asked);

    let after = gateway.scrape().await[stale_served];
    assert_eq!(after - before, 2.0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn stale_for_zero_turns_serve_stale_off() {
    let policy = format!("cache.stale_for = \"0s\"\n{POLICY}");
    let (_upstream, gateway) = expired_then_silent(&policy).await;
    let answer = gateway
        .client_from("127.0.0.3")
        .udp_a("short.example.org.")
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    gateway.shutdown().await;
}
