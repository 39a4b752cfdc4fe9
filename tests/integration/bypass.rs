//! Bypass handling per segment: Firefox's canary, iCloud Private Relay (every type) and DDR
//! are answered negatively where the segment blocks anything, ECH is removed from HTTPS
//! answers there, each switch can be turned off, and every attempt is counted by kind.
//! Telegram's fallback configuration in a TXT answer is blocked under any name where the
//! segment blocks the list tagged `telegram_fallback`.

use std::collections::HashMap;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::svcb::SvcParamKey;
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Answered, Canned, FakeUpstream, RunningUpstream, TestGateway, question};

const POLICY: &str = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
lists.doh = { files = ["tests/fixtures/doh.txt"], bypass = "encrypted_dns_endpoint" }
lists.fallback = { files = ["tests/fixtures/telegram-fallback.txt"], bypass = "telegram_fallback" }
segment = [
  { name = "staff",   networks = ["127.0.0.2/32"], block = ["tiktok", "doh", "fallback"] },
  { name = "open",    networks = ["127.0.0.3/32"] },
  { name = "lenient", networks = ["127.0.0.4/32"], block = ["tiktok"], bypass = { canary = false, strip_ech = false } },
]
"#;

async fn upstream() -> RunningUpstream {
    let https = Canned::Https {
        hints: vec!["192.0.2.30".parse().unwrap()],
        ech: true,
    };
    FakeUpstream::new()
        .with_a("use-application-dns.net.", "192.0.2.50")
        .with_a("mask.icloud.com.", "192.0.2.51")
        .with_a("_dns.resolver.arpa.", "192.0.2.52")
        .with("ech.example.org.", https)
        .start()
        .await
}

fn attempts(scrape: &HashMap<String, f64>, segment: &str, kind: &str) -> f64 {
    let series = format!(r#"portvakt_bypass_attempts_total{{kind="{kind}",segment="{segment}"}}"#);
    *scrape
        .get(&series)
        .unwrap_or_else(|| panic!("{series} missing"))
}

/// Whether the first answer record is HTTPS with an `ech` parameter.
fn has_ech(answer: &hickory_proto::op::Message) -> bool {
    match &answer.answers[0].data {
        RData::HTTPS(https) => https
            .0
            .svc_params
            .iter()
            .any(|(key, _)| *key == SvcParamKey::EchConfigList),
        other => panic!("not HTTPS: {other:?}"),
    }
}

#[tokio::test]
async fn bypass_names_are_answered_negatively_where_the_segment_blocks() {
    let upstream = upstream().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let open = gateway.client_from("127.0.0.3");
    let lenient = gateway.client_from("127.0.0.4");
    let before = gateway.scrape().await;

    // The canary: NXDOMAIN with EDE 15 for staff; forwarded where it is off.
    let canary = staff.udp_a("use-application-dns.net.").await;
    assert_eq!(canary.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(canary.ede()[0].0, 15);
    assert_eq!(
        open.udp_a("use-application-dns.net.").await.addresses(),
        ["192.0.2.50"]
    );
    assert_eq!(
        lenient.udp_a("use-application-dns.net.").await.addresses(),
        ["192.0.2.50"],
        "canary = false"
    );

    // Private Relay: negative for A, AAAA and HTTPS, over UDP and TCP.
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::HTTPS] {
        let answer = staff.udp(&question("mask.icloud.com.", qtype, true)).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{qtype}"
        );
    }
    let h2 = staff
        .tcp(&question("mask-h2.icloud.com.", RecordType::HTTPS, true))
        .await;
    assert_eq!(h2.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        open.udp_a("mask.icloud.com.").await.addresses(),
        ["192.0.2.51"]
    );

    // DDR: NODATA (the name exists, no SVCB), with the SOA for negative caching.
    let ddr = staff
        .udp(&question("_dns.resolver.arpa.", RecordType::SVCB, true))
        .await;
    assert_eq!(ddr.metadata.response_code, ResponseCode::NoError);
    assert!(ddr.answers.is_empty());
    assert_eq!(ddr.soa_owner().as_deref(), Some("_dns.resolver.arpa."));
    let below = staff
        .udp(&question("x._dns.resolver.arpa.", RecordType::SVCB, true))
        .await;
    assert_eq!(
        below.metadata.response_code,
        ResponseCode::NXDomain,
        "names below do not exist"
    );
    assert_eq!(below.soa_owner().as_deref(), Some("_dns.resolver.arpa."));

    // Lists tagged with a bypass kind: blocked, and counted as a bypass attempt too.
    let doh = staff.udp_a("dns.google.").await;
    assert_eq!(doh.metadata.response_code, ResponseCode::NXDomain);
    for name in ["apv3.stel.com.", "tapv3.stel.com."] {
        let txt = staff.udp(&question(name, RecordType::TXT, true)).await;
        assert_eq!(txt.metadata.response_code, ResponseCode::NXDomain);
    }

    assert_eq!(upstream.queries_for("mask-h2.icloud.com."), 0);
    assert_eq!(upstream.queries_for("_dns.resolver.arpa."), 0);
    assert_eq!(upstream.queries_for("dns.google."), 0);
    let after = gateway.scrape().await;
    let moved = |segment, kind| attempts(&after, segment, kind) - attempts(&before, segment, kind);
    assert_eq!(moved("staff", "canary"), 1.0);
    assert_eq!(moved("staff", "private_relay"), 4.0);
    assert_eq!(moved("staff", "ddr"), 2.0);
    assert_eq!(moved("staff", "encrypted_dns_endpoint"), 1.0);
    assert_eq!(moved("staff", "telegram_fallback"), 2.0);
    assert_eq!(moved("open", "canary"), 0.0);
    assert_eq!(moved("lenient", "canary"), 0.0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn ech_is_stripped_for_staff_and_kept_where_it_is_off() {
    let upstream = upstream().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let https = question("ech.example.org.", RecordType::HTTPS, true);
    let before = gateway.scrape().await;

    let open = gateway.client_from("127.0.0.3").udp(&https).await;
    assert!(has_ech(&open), "a segment that blocks nothing keeps ECH");
    // From the cache now: the same entry serves both versions.
    for client in ["127.0.0.2", "127.0.0.2"] {
        let staff = gateway.client_from(client).udp(&https).await;
        assert_eq!(staff.metadata.response_code, ResponseCode::NoError);
        assert!(!has_ech(&staff), "staff gets no ECH");
        let RData::HTTPS(record) = &staff.answers[0].data else {
            panic!("not HTTPS")
        };
        assert!(
            (record.0.svc_params.iter()).any(|(key, _)| *key == SvcParamKey::Ipv4Hint),
            "the other parameters stay"
        );
    }
    let lenient = gateway.client_from("127.0.0.4").udp(&https).await;
    assert!(has_ech(&lenient), "strip_ech = false");
    assert_eq!(upstream.queries_for("ech.example.org."), 1);

    let after = gateway.scrape().await;
    let moved = |segment| attempts(&after, segment, "ech") - attempts(&before, segment, "ech");
    assert_eq!(moved("staff"), 2.0);
    assert_eq!(moved("open"), 0.0);
    assert_eq!(moved("lenient"), 0.0);
    gateway.shutdown().await;
}

/// Telegram's fallback configuration as published: 256 bytes in base64, served as two TXT
/// records of 250 and 94 characters (the bytes here are made up; only the shape matters).
fn telegram_config_records() -> Vec<String> {
    use base64::Engine;
    let blob: Vec<u8> = (0..256u32).map(|i| (i * 89 + 7) as u8).collect();
    let text = base64::engine::general_purpose::STANDARD.encode(blob);
    assert_eq!(text.len(), 344);
    vec![text[250..].to_owned(), text[..250].to_owned()]
}

#[tokio::test]
async fn telegrams_fallback_configuration_is_blocked_under_any_name() {
    let config = Canned::TxtRecords(telegram_config_records());
    let ordinary = Canned::TxtRecords(vec!["v=spf1 include:_spf.example.com ~all".into()]);
    let upstream = FakeUpstream::new()
        .with("cfg.unknown-cdn.example.", config)
        .with("mail.example.org.", ordinary)
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let before = gateway.scrape().await;
    let staff = gateway.client_from("127.0.0.2");
    let open = gateway.client_from("127.0.0.3");
    let txt = |name| question(name, RecordType::TXT, true);

    // Staff block the fallback list: the answer is blocked, with that list's EDE.
    let blocked = staff.udp(&txt("cfg.unknown-cdn.example.")).await;
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert!(blocked.answers.is_empty());
    assert_eq!(blocked.ede().len(), 1, "{:?}", blocked.ede());
    let over_tcp = staff.tcp(&txt("cfg.unknown-cdn.example.")).await;
    assert_eq!(over_tcp.metadata.response_code, ResponseCode::NXDomain);
    // A segment that blocks nothing gets it as it came; ordinary TXT passes for staff.
    let served = open.udp(&txt("cfg.unknown-cdn.example.")).await;
    assert_eq!(served.metadata.response_code, ResponseCode::NoError);
    assert_eq!(served.answers.len(), 2);
    let spf = staff.udp(&txt("mail.example.org.")).await;
    assert_eq!(spf.metadata.response_code, ResponseCode::NoError);
    assert_eq!(spf.answers.len(), 1);

    let after = gateway.scrape().await;
    let moved = |segment, kind| attempts(&after, segment, kind) - attempts(&before, segment, kind);
    assert_eq!(
        moved("staff", "telegram_fallback"),
        2.0,
        "counted: UDP and TCP"
    );
    assert_eq!(moved("open", "telegram_fallback"), 0.0);
    gateway.shutdown().await;
}
