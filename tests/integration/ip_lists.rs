//! IP lists: an answer whose address (A, AAAA, or an HTTPS/SVCB address hint) falls inside a
//! list's network is blocked for segments that block that list, like a name, whether it
//! comes from upstream or from the cache, over UDP and TCP.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway, question};

const POLICY: &str = r#"
lists.telegram-ip = { files = ["tests/fixtures/telegram-ip.txt"], message = "Telegram network" }
segment = [{ name = "staff",          networks = ["127.0.0.2/32"], block = ["telegram-ip"] },
           { name = "tiktok-devices", networks = ["127.0.0.3/32"] }]
"#;

fn blocked_by_list(scrape: &HashMap<String, f64>) -> f64 {
    scrape[r#"portvakt_blocked_total{list="telegram-ip",segment="staff"}"#]
}

#[tokio::test]
async fn an_answer_address_in_an_ip_list_is_blocked_for_staff_only() {
    let upstream = FakeUpstream::new()
        .with_a("mirror.example.org.", "149.154.167.51")
        .with_a("fine.example.org.", "192.0.2.8")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let device = gateway.client_from("127.0.0.3");
    let before = blocked_by_list(&gateway.scrape().await);

    // Forwarded, then from the cache, then over TCP: blocked each time.
    for answer in [
        staff.udp_a("mirror.example.org.").await,
        staff.udp_a("mirror.example.org.").await,
        staff.tcp_a("mirror.example.org.").await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(answer.ede(), [(15, "Telegram network".to_owned())]);
        assert!(answer.addresses().is_empty());
    }
    assert_eq!(
        upstream.queries_for("mirror.example.org."),
        1,
        "then cached"
    );
    assert_eq!(
        device.udp_a("mirror.example.org.").await.addresses(),
        ["149.154.167.51"]
    );
    assert_eq!(
        staff.udp_a("fine.example.org.").await.addresses(),
        ["192.0.2.8"]
    );
    let after = blocked_by_list(&gateway.scrape().await);
    assert_eq!(after - before, 3.0, "each blocked answer counted once");
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_ipv4hint_in_an_https_answer_is_blocked_like_an_address() {
    let upstream = FakeUpstream::new()
        .with(
            "svc.example.org.",
            Canned::Https {
                hints: vec!["149.154.167.99".parse().unwrap()],
                ech: false,
            },
        )
        .with(
            "web.example.org.",
            Canned::Https {
                hints: vec!["192.0.2.9".parse().unwrap()],
                ech: false,
            },
        )
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let device = gateway.client_from("127.0.0.3");
    let https = |name| question(name, RecordType::HTTPS, true);

    let blocked = staff.udp(&https("svc.example.org.")).await;
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(blocked.ede()[0].0, 15);
    let allowed = device.udp(&https("svc.example.org.")).await;
    assert_eq!(allowed.metadata.response_code, ResponseCode::NoError);
    assert_eq!(allowed.answers.len(), 1);
    let other = staff.udp(&https("web.example.org.")).await;
    assert_eq!(other.answers.len(), 1, "hints outside the list pass");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_name_in_a_list_of_kind_ip_is_a_rejected_line() {
    let upstream = FakeUpstream::new()
        .with_a("example.org.", "192.0.2.10")
        .start()
        .await;
    let policy = r#"
lists.ips = { files = ["tests/fixtures/ip-with-name.txt"], kind = "ip" }
segment = [{ name = "staff", networks = ["127.0.0.2/32"], block = ["ips"] }]
"#;
    let gateway = TestGateway::start(&upstream, policy).await;
    let (_, status) = gateway.admin_get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["lists"][0]["entries"], 1);
    assert_eq!(status["lists"][0]["rejected_lines"], 1);
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("example.org.").await.addresses(),
        ["192.0.2.10"],
        "the name is not blocked"
    );
    gateway.shutdown().await;
}

#[test]
fn explain_names_the_network_that_blocks_or_exempts_an_address() {
    let text = r#"
lists.telegram-ip = { files = ["tests/fixtures/telegram-ip.txt"], kind = "ip" }
lists.partner = { files = ["tests/fixtures/partner-ip.txt"], kind = "ip" }
segment = [{ name = "staff", networks = ["127.0.0.2/32"], block = ["telegram-ip"], allow = ["partner"] }]
[[upstream]]
servers = ["127.0.0.1:53"]
"#;
    let config = portvakt::Config::parse("t.toml", text).unwrap();
    let policy = portvakt::Policy::compile(config, &portvakt::Metrics::new(), 0).unwrap();
    let staff: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let explain = |addr| policy.explain(staff, None, addr).unwrap().locate().verdict;
    let portvakt::Verdict::Blocked(blocked) = explain("149.154.160.9") else {
        panic!("not blocked")
    };
    assert_eq!(
        (blocked.list.as_str(), blocked.entry.as_str()),
        ("telegram-ip", "149.154.160.0/20")
    );
    assert_eq!(blocked.at.unwrap().1, 2);
    let portvakt::Verdict::AllowedByList(allowed) = explain("149.154.167.9") else {
        panic!("not allowed by the partner list")
    };
    assert_eq!(
        (allowed.list.as_str(), allowed.entry.as_str()),
        ("partner", "149.154.167.0/24")
    );
    assert_eq!(explain("192.0.2.1"), portvakt::Verdict::Allowed);
}

/// The shipped `tiktok-ip` list: an unknown name whose answer lies in ByteDance's own networks
/// is blocked for staff and answered for the TikTok devices.
#[tokio::test]
async fn an_unknown_name_resolving_into_bytedance_networks_is_blocked_for_staff() {
    let upstream = FakeUpstream::new()
        .with_a("edge.unlisted-video.example.", "71.18.1.20")
        .with_a("fine.example.org.", "192.0.2.8")
        .start()
        .await;
    let policy = r#"
lists.tiktok-ip = { files = ["blocklists/tiktok-ip.txt"], kind = "ip" }
segment = [{ name = "staff",          networks = ["127.0.0.2/32"], block = ["tiktok-ip"] },
           { name = "tiktok-devices", networks = ["127.0.0.3/32"] }]
"#;
    let gateway = TestGateway::start(&upstream, policy).await;
    let (staff, device) = (
        gateway.client_from("127.0.0.2"),
        gateway.client_from("127.0.0.3"),
    );
    let blocked = staff.udp_a("edge.unlisted-video.example.").await;
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert!(blocked.addresses().is_empty());
    let answered = device.udp_a("edge.unlisted-video.example.").await;
    assert_eq!(answered.addresses(), ["71.18.1.20"]);
    assert_eq!(
        staff.udp_a("fine.example.org.").await.addresses(),
        ["192.0.2.8"]
    );
    let scrape = gateway.scrape().await;
    assert_eq!(
        scrape[r#"portvakt_blocked_total{list="tiktok-ip",segment="staff"}"#],
        1.0
    );
    gateway.shutdown().await;
}
