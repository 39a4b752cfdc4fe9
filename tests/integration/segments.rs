//! Who gets what: segments by source address, allow beats block, unknown clients.

use hickory_proto::op::ResponseCode;

use crate::harness::{Answered, FakeUpstream, TestGateway};

const POLICY: &str = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
lists.telegram.files = ["tests/fixtures/telegram.txt"]
lists.exceptions.files = ["tests/fixtures/allow.txt"]
segment = [{ name = "staff",          networks = ["127.0.0.0/8", "::1/128"], block = ["tiktok", "telegram"], allow = ["exceptions"] },
           { name = "tiktok-devices", networks = ["127.0.0.3/32"], block = ["telegram"] },
           { name = "guests",         networks = ["127.0.0.4/32"] }]
"#;

#[tokio::test]
async fn staff_is_blocked_while_tiktok_devices_are_forwarded() {
    let upstream = FakeUpstream::new()
        .with_a("tiktok.com.", "192.0.2.7")
        .with_a("www.tiktok.com.", "192.0.2.8")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let device = gateway.client_from("127.0.0.3");

    for answer in [
        staff.udp_a("www.tiktok.com.").await,
        staff.tcp_a("www.tiktok.com.").await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer.answers.is_empty());
    }
    assert_eq!(
        upstream.queries_for("www.tiktok.com."),
        0,
        "blocked names must not reach upstream"
    );

    assert_eq!(device.udp_a("tiktok.com.").await.addresses(), ["192.0.2.7"]);
    assert_eq!(
        device.tcp_a("www.tiktok.com.").await.addresses(),
        ["192.0.2.8"]
    );
    assert_eq!(
        device.udp_a("t.me.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn longest_prefix_wins_and_ipv6_clients_are_classified() {
    let upstream = FakeUpstream::new()
        .with_a("t.me.", "192.0.2.9")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    // 127.0.0.4/32 (guests) sits inside staff's 127.0.0.0/8 and blocks nothing.
    assert_eq!(
        gateway
            .client_from("127.0.0.4")
            .udp_a("t.me.")
            .await
            .addresses(),
        ["192.0.2.9"]
    );
    assert_eq!(
        gateway
            .client_from("127.0.0.5")
            .udp_a("t.me.")
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let v6 = gateway.client_from("::1");
    assert_eq!(
        v6.udp_a("t.me.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        v6.tcp_a("telegram.org.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn allow_list_beats_block_list() {
    let upstream = FakeUpstream::new()
        .with_a("business.tiktok.com.", "192.0.2.10")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("business.tiktok.com.").await.addresses(),
        ["192.0.2.10"]
    );
    assert_eq!(
        staff
            .udp_a("other.tiktok.com.")
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn exception_inside_a_list_takes_the_name_out_of_that_list() {
    let upstream = FakeUpstream::new()
        .with_a("ads.tiktok.com.", "192.0.2.11")
        .start()
        .await;
    let policy = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt", "tests/fixtures/tiktok-with-exception.txt"]
segment = [{ name = "staff", networks = ["127.0.0.0/8"], block = ["tiktok"] }]
"#;
    let gateway = TestGateway::start(&upstream, policy).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("ads.tiktok.com.").await.addresses(),
        ["192.0.2.11"]
    );
    assert_eq!(
        staff.udp_a("www.tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(upstream.queries_for("www.tiktok.com."), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn clients_in_no_segment_are_refused_with_ede_18() {
    let upstream = FakeUpstream::new()
        .with_a("example.org.", "192.0.2.1")
        .start()
        .await;
    let policy = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{ name = "staff", networks = ["127.0.0.2/32"], block = ["tiktok"] }]
"#;
    let gateway = TestGateway::start(&upstream, policy).await;
    let stranger = gateway.client_from("127.0.0.9");
    for answer in [
        stranger.udp_a("example.org.").await,
        stranger.tcp_a("example.org.").await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
        assert!(answer.answers.is_empty());
        assert_eq!(
            answer.ede(),
            [(18, "client is not in any segment".to_owned())]
        );
    }
    let plain = stranger
        .udp(&crate::harness::question(
            "example.org.",
            hickory_proto::rr::RecordType::A,
            false,
        ))
        .await;
    assert_eq!(plain.metadata.response_code, ResponseCode::Refused);
    assert!(
        plain.edns.is_none(),
        "no OPT in answer to a query without EDNS"
    );
    assert_eq!(
        upstream.queries_for("example.org."),
        0,
        "never an open resolver"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn unknown_clients_can_be_put_in_a_segment() {
    let upstream = FakeUpstream::new()
        .with_a("example.org.", "192.0.2.1")
        .with_a("tiktok.com.", "192.0.2.7")
        .start()
        .await;
    let policy = r#"
server.unknown_clients = "guests"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{ name = "staff", networks = ["127.0.0.2/32"] },
           { name = "guests", networks = ["10.50.0.0/16"], block = ["tiktok"] }]
"#;
    let gateway = TestGateway::start(&upstream, policy).await;
    let stranger = gateway.client_from("127.0.0.9");
    assert_eq!(
        stranger.udp_a("example.org.").await.addresses(),
        ["192.0.2.1"]
    );
    assert_eq!(
        stranger.udp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        gateway
            .client_from("127.0.0.2")
            .udp_a("tiktok.com.")
            .await
            .addresses(),
        ["192.0.2.7"]
    );
    gateway.shutdown().await;
}
