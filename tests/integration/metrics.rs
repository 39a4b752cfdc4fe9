//! The admin listener: exact counter deltas in a real scrape of /metrics after known
//! traffic, series that exist before any traffic, health, status and explain.

use std::collections::HashMap;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway, question};

const POLICY: &str = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
lists.telegram.files = ["tests/fixtures/telegram.txt"]
segment = [{ name = "staff",          networks = ["127.0.0.2/32"], block = ["tiktok", "telegram"] },
           { name = "tiktok-devices", networks = ["127.0.0.3/32"] }]
"#;

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    let value = |m: &HashMap<String, f64>| m.get(series).copied();
    let after = value(after).unwrap_or_else(|| panic!("{series} missing from the scrape"));
    after - value(before).unwrap_or(0.0)
}

#[tokio::test]
async fn malformed_notimp_and_badvers_replies_are_counted_like_any_other() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let good = question("tiktok.com.", RecordType::A, false)
        .to_vec()
        .unwrap();
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let mut notify = good.clone();
    notify[2] = 4 << 3; // opcode NOTIFY
    let mut badvers = question("tiktok.com.", RecordType::A, false);
    let mut edns = Edns::new();
    edns.set_version(1);
    badvers.set_edns(edns);
    let badvers = badvers.to_vec().unwrap();
    let before = gateway.scrape().await;

    let staff = gateway.client_from("127.0.0.2");
    let stranger = gateway.client_from("127.0.0.9");
    for (client, packet, rcode) in [
        (&staff, &two_questions, 1),
        (&staff, &notify, 4),
        (&stranger, &two_questions, 1),
    ] {
        let reply = client.udp_raw(packet).await.expect("an answer");
        assert_eq!(reply[3] & 0x0F, rcode);
    }
    let reply = staff.udp_raw(&badvers).await.expect("an answer");
    let rcode = Message::from_vec(&reply).unwrap().metadata.response_code;
    assert_eq!(u16::from(rcode), 16, "BADVERS");

    let after = gateway.scrape().await;
    let expected = [
        (r#"portvakt_responses_total{rcode="FORMERR"}"#, 2.0),
        (r#"portvakt_responses_total{rcode="NOTIMP"}"#, 1.0),
        (r#"portvakt_responses_total{rcode="BADVERS"}"#, 1.0),
        (
            r#"portvakt_queries_total{decision="allowed",segment="staff",transport="udp"}"#,
            3.0,
        ),
        (
            r#"portvakt_queries_total{decision="refused",segment="none",transport="udp"}"#,
            1.0,
        ),
        (
            r#"portvakt_query_duration_seconds_count{decision="allowed"}"#,
            3.0,
        ),
        (
            r#"portvakt_query_duration_seconds_count{decision="refused"}"#,
            1.0,
        ),
    ];
    for (series, want) in expected {
        assert_eq!(delta(&before, &after, series), want, "{series}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn counters_move_by_exactly_the_traffic_sent() {
    let upstream = FakeUpstream::new()
        .with(
            "tiktok.com.",
            Canned::A(vec!["192.0.2.7".parse().unwrap()], 300),
        )
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let before = gateway.scrape().await;

    // Pre-created series: zeros, not gaps, before any query of that kind.
    for series in [
        r#"portvakt_queries_total{decision="blocked",segment="tiktok-devices",transport="udp"}"#,
        r#"portvakt_queries_total{decision="refused",segment="none",transport="udp"}"#,
        r#"portvakt_blocked_total{list="telegram",segment="staff"}"#,
        r#"portvakt_upstream_queries_total{group="default",result="timeout"}"#,
        r#"portvakt_reloads_total{result="failure"}"#,
    ] {
        assert_eq!(before.get(series), Some(&0.0), "{series}");
    }
    assert_eq!(
        before.get(r#"portvakt_list_entries{list="tiktok"}"#),
        Some(&3.0)
    );
    assert_eq!(
        before.get(&format!(
            r#"portvakt_build_info{{commit="{}",version="{}"}}"#,
            env!("PORTVAKT_COMMIT"),
            env!("CARGO_PKG_VERSION")
        )),
        Some(&1.0)
    );
    assert!(before[r#"portvakt_last_reload_success_timestamp_seconds"#] > 1.7e9);

    let staff = gateway.client_from("127.0.0.2");
    let device = gateway.client_from("127.0.0.3");
    let stranger = gateway.client_from("127.0.0.9");
    for _ in 0..3 {
        assert_eq!(
            staff.udp_a("www.tiktok.com.").await.metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    assert_eq!(
        staff.tcp_a("t.me.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    for _ in 0..4 {
        assert_eq!(device.udp_a("tiktok.com.").await.addresses(), ["192.0.2.7"]);
    }
    for _ in 0..2 {
        assert_eq!(
            stranger.udp_a("tiktok.com.").await.metadata.response_code,
            ResponseCode::Refused
        );
    }

    let after = gateway.scrape().await;
    let expected = [
        (
            r#"portvakt_queries_total{decision="blocked",segment="staff",transport="udp"}"#,
            3.0,
        ),
        (
            r#"portvakt_queries_total{decision="blocked",segment="staff",transport="tcp"}"#,
            1.0,
        ),
        (
            r#"portvakt_blocked_total{list="tiktok",segment="staff"}"#,
            3.0,
        ),
        (
            r#"portvakt_blocked_total{list="telegram",segment="staff"}"#,
            1.0,
        ),
        (
            r#"portvakt_queries_total{decision="allowed",segment="tiktok-devices",transport="udp"}"#,
            4.0,
        ),
        (
            r#"portvakt_queries_total{decision="refused",segment="none",transport="udp"}"#,
            2.0,
        ),
        (
            r#"portvakt_queries_total{decision="allowed",segment="staff",transport="udp"}"#,
            0.0,
        ),
        (r#"portvakt_responses_total{rcode="NXDOMAIN"}"#, 4.0),
        (r#"portvakt_responses_total{rcode="NOERROR"}"#, 4.0),
        (r#"portvakt_responses_total{rcode="REFUSED"}"#, 2.0),
        (
            r#"portvakt_query_duration_seconds_count{decision="blocked"}"#,
            4.0,
        ),
        (
            r#"portvakt_query_duration_seconds_count{decision="allowed"}"#,
            4.0,
        ),
        (
            r#"portvakt_query_duration_seconds_count{decision="refused"}"#,
            2.0,
        ),
        (
            r#"portvakt_query_duration_seconds_bucket{decision="blocked",le="2"}"#,
            4.0,
        ),
        (r#"portvakt_cache_lookups_total{result="miss"}"#, 1.0),
        (r#"portvakt_cache_lookups_total{result="hit"}"#, 3.0),
        (
            r#"portvakt_upstream_queries_total{group="default",result="ok"}"#,
            1.0,
        ),
        (
            r#"portvakt_upstream_duration_seconds_count{group="default"}"#,
            1.0,
        ),
    ];
    for (series, want) in expected {
        assert_eq!(delta(&before, &after, series), want, "{series}");
    }
    assert_eq!(after["portvakt_cache_entries"], 1.0);
    assert_eq!(upstream.queries_for("tiktok.com."), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_timeouts_are_counted_per_group() {
    let upstream = FakeUpstream::new()
        .with("slow.example.org.", Canned::Silent)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let before = gateway.scrape().await;
    let answer = gateway
        .client_from("127.0.0.3")
        .udp_a("slow.example.org.")
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    let after = gateway.scrape().await;
    assert_eq!(
        delta(
            &before,
            &after,
            r#"portvakt_upstream_queries_total{group="default",result="timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            r#"portvakt_responses_total{rcode="SERVFAIL"}"#
        ),
        1.0
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn health_status_and_explain_answer_as_json() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    assert_eq!(gateway.admin_get("/healthz").await.0, 200);
    assert_eq!(gateway.admin_get("/readyz").await.0, 200);

    let (code, body) = gateway.admin_get("/api/v1/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["policy"]["generation"], 1);
    assert_eq!(
        status["config"],
        gateway.config_path().display().to_string()
    );
    assert_eq!(status["segments"][0]["name"], "staff");
    assert_eq!(
        status["segments"][0]["block"],
        serde_json::json!(["tiktok", "telegram"])
    );
    let tiktok = status["lists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "tiktok")
        .unwrap();
    assert_eq!(
        (
            tiktok["entries"].as_u64(),
            tiktok["rejected_lines"].as_u64()
        ),
        (Some(3), Some(0))
    );

    let (code, body) = gateway
        .admin_get("/api/v1/explain?client=127.0.0.2&name=api16.TikTokv.eu")
        .await;
    assert_eq!(code, 200);
    let explain: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explain["segment"], "staff");
    assert_eq!(explain["verdict"], "blocked");
    assert_eq!(explain["decided_by"]["entry"], "tiktokv.eu");
    assert_eq!(explain["decided_by"]["file"], "tests/fixtures/tiktok.txt");
    assert_eq!(explain["decided_by"]["line"], 3);
    assert_eq!(explain["answer"], "nxdomain");

    let (code, body) = gateway
        .admin_get("/api/v1/explain?client=nope&name=x.example")
        .await;
    assert_eq!(code, 400, "{body}");
    gateway.shutdown().await;
}
