//! The five block responses, the SOA on negative blocks and the EDE text.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Answered, FakeUpstream, TestGateway, question};

fn policy(block: &str) -> String {
    format!(
        r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
lists.tiktok.message = "TikTok only on the device network"
lists.telegram.files = ["tests/fixtures/telegram.txt"]
segment = [{{ name = "staff", networks = ["127.0.0.2/32"], block = ["tiktok", "telegram"] }}]
[block]
ttl = 120
message = "Blocked by test policy"
{block}
"#
    )
}

async fn ask(block: &str, name: &str, qtype: RecordType) -> Message {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, &policy(block)).await;
    let answer = gateway
        .client_from("127.0.0.2")
        .udp(&question(name, qtype, true))
        .await;
    assert_eq!(
        upstream.queries_for(name),
        0,
        "blocked names must not reach upstream"
    );
    gateway.shutdown().await;
    answer
}

#[tokio::test]
async fn nxdomain_carries_soa_of_the_matched_zone_and_ede_15() {
    let answer = ask(
        r#"response = "nxdomain""#,
        "api16.tiktokv.eu.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.metadata.recursion_available && !answer.metadata.authoritative);
    assert_eq!(answer.soa_owner().as_deref(), Some("tiktokv.eu."));
    let soa = &answer.authorities[0];
    assert_eq!(soa.ttl, 120);
    let RData::SOA(data) = &soa.data else {
        panic!("not an SOA: {soa:?}")
    };
    assert_eq!(data.minimum, 120, "negative caching TTL is block.ttl");
    assert_eq!(
        answer.ede(),
        [(15, "TikTok only on the device network".to_owned())]
    );
}

#[tokio::test]
async fn lists_without_a_message_use_the_global_one() {
    let answer = ask("", "t.me.", RecordType::AAAA).await;
    assert_eq!(
        answer.metadata.response_code,
        ResponseCode::NXDomain,
        "nxdomain is the default"
    );
    assert_eq!(answer.ede(), [(15, "Blocked by test policy".to_owned())]);
}

#[tokio::test]
async fn nodata_is_noerror_with_soa() {
    let answer = ask(r#"response = "nodata""#, "tiktok.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.soa_owner().as_deref(), Some("tiktok.com."));
    assert_eq!(answer.ede().len(), 1);
}

#[tokio::test]
async fn refused_response_has_no_records_but_keeps_ede() {
    let answer = ask(r#"response = "refused""#, "tiktok.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    assert!(answer.answers.is_empty() && answer.authorities.is_empty());
    assert_eq!(answer.ede()[0].0, 15);
}

#[tokio::test]
async fn zero_ip_answers_unspecified_addresses_and_nodata_otherwise() {
    let a = ask(r#"response = "zero-ip""#, "www.tiktok.com.", RecordType::A).await;
    assert_eq!(a.addresses(), ["0.0.0.0"]);
    assert_eq!(a.answers[0].ttl, 120);
    let aaaa = ask(
        r#"response = "zero-ip""#,
        "www.tiktok.com.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(aaaa.addresses(), ["::"]);
    let mx = ask(r#"response = "zero-ip""#, "www.tiktok.com.", RecordType::MX).await;
    assert_eq!(
        (mx.metadata.response_code, mx.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert_eq!(mx.soa_owner().as_deref(), Some("tiktok.com."));
}

#[tokio::test]
async fn sinkhole_answers_the_configured_addresses() {
    let block = r#"response = "sinkhole"
sinkhole = ["192.0.2.80", "192.0.2.81", "2001:db8::80"]"#;
    assert_eq!(
        ask(block, "tiktok.com.", RecordType::A).await.addresses(),
        ["192.0.2.80", "192.0.2.81"]
    );
    assert_eq!(
        ask(block, "tiktok.com.", RecordType::AAAA)
            .await
            .addresses(),
        ["2001:db8::80"]
    );
    let txt = ask(block, "tiktok.com.", RecordType::TXT).await;
    assert!(txt.answers.is_empty() && txt.soa_owner().is_some());
}

#[tokio::test]
async fn clients_without_edns_get_no_opt_and_no_ede() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, &policy("")).await;
    let staff = gateway.client_from("127.0.0.2");
    for answer in [
        staff
            .udp(&question("tiktok.com.", RecordType::A, false))
            .await,
        staff
            .tcp(&question("tiktok.com.", RecordType::A, false))
            .await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer.edns.is_none());
        assert!(answer.soa_owner().is_some());
    }
    gateway.shutdown().await;
}
