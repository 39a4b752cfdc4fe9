//! An ops mistake never silently opens TikTok: an emptied list is refused by the shrink guard,
//! a reload that breaks an `[[expect]]` is refused naming it (or let in with `on_fail =
//! "warn"`, and `portvakt_expectation_ok` says so), nested segments raise nothing, and
//! `explain` answers as the wire does.

use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{
    Canned, FakeUpstream, RunningUpstream, TestGateway, certificate, found, present_or_skip,
    question, start_on_free_ports,
};
use crate::reload::eventually;

/// Staff (127.0.0.2) block the tiktok list read from `list`; devices (127.0.0.3) block
/// nothing. `expect` is appended as it is.
fn config(upstream: &RunningUpstream, list: &Path, block: &str, expect: &str) -> String {
    format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [{:?}]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [{block}]\n\
         [[segment]]\nname = \"devices\"\nnetworks = [\"127.0.0.3/32\"]\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 700\n{expect}",
        list.display().to_string(),
        upstream.addr
    )
}

const EXPECT_STAFF: &str = "[[expect]]\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\n\
    [[expect]]\nsegment = \"devices\"\nresolves = [\"tiktok.com\"]\n";

async fn upstream() -> RunningUpstream {
    FakeUpstream::new()
        .with_a("tiktok.com.", "192.0.2.7")
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await
}

/// The real TikTok list, copied where the test may overwrite it.
fn tiktok_list(dir: &Path) -> std::path::PathBuf {
    let list = dir.join("tiktok.txt");
    std::fs::copy("blocklists/tiktok.txt", &list).unwrap();
    list
}

async fn status(gateway: &TestGateway) -> serde_json::Value {
    let (code, body) = gateway.admin_get("/api/v1/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_list_under_the_file_watch_is_refused() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let list = tiktok_list(dir.path());
    let gateway =
        TestGateway::start_text(config(&upstream, &list, "\"tiktok\"", EXPECT_STAFF)).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let before = gateway.scrape().await;
    assert_eq!(before.get("portvakt_reload_failing"), Some(&0.0));

    // `echo x > tiktok.txt`: a `>` meant as `>>`.
    std::fs::write(&list, "x\n").unwrap();
    eventually(Duration::from_secs(5), "the shrink refused", async || {
        let m = gateway.scrape().await;
        m.get("portvakt_list_shrink_refused{list=\"tiktok\"}") == Some(&1.0)
    })
    .await;
    let metrics = gateway.scrape().await;
    assert_eq!(metrics.get("portvakt_reload_failing"), Some(&1.0));
    assert_eq!(
        metrics.get("portvakt_reloads_total{result=\"failure\"}"),
        Some(&1.0)
    );
    assert_eq!(
        metrics.get("portvakt_reloads_rejected_total{reason=\"shrink\"}"),
        Some(&1.0)
    );
    let error = status(&gateway).await["reload"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("list \"tiktok\" would shrink from")
            && error.contains(&list.display().to_string()),
        "the reason names the list and its file: {error}"
    );
    assert!(
        error.contains("expectation broken: `tiktok.com` must be blocked"),
        "and the expectation it breaks: {error}"
    );
    assert_eq!(
        staff.udp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain,
        "the running policy keeps blocking"
    );
    assert_eq!(upstream.queries_for("tiktok.com."), 0);

    // The operator accepts a shrink (to one entry that keeps the expectation) with a reason:
    // it goes in, and the marks clear.
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let (code, body) = gateway
        .admin_request(
            "POST",
            "/api/v1/reload?allow_shrink=tiktok&reason=list%20moved%20to%20a%20catalogue",
            &[],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let metrics = gateway.scrape().await;
    assert_eq!(metrics.get("portvakt_reload_failing"), Some(&0.0));
    assert_eq!(
        metrics.get("portvakt_list_shrink_refused{list=\"tiktok\"}"),
        None
    );
    let (code, body) = gateway
        .admin_request("POST", "/api/v1/reload?allow_shrink=tiktok", &[])
        .await;
    assert_eq!(code, 400, "a shrink accepted without a reason: {body}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_an_expectation_is_refused_naming_it() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let list = tiktok_list(dir.path());
    let gateway =
        TestGateway::start_text(config(&upstream, &list, "\"tiktok\"", EXPECT_STAFF)).await;
    let path = gateway.config_path();
    // Staff's `block` loses "tiktok".
    std::fs::write(&path, config(&upstream, &list, "", EXPECT_STAFF)).unwrap();
    let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 422, "{body}");
    let want = format!(
        "{}:17: expectation broken: `tiktok.com` must be blocked for segment \"staff\", but the policy forwards it",
        path.display()
    );
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = error["error"].as_str().unwrap();
    assert!(error.contains(&want), "{error}\nwant: {want}");
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("tiktok.com.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let metrics = gateway.scrape().await;
    assert_eq!(metrics.get("portvakt_reload_failing"), Some(&1.0));
    assert_eq!(
        metrics.get("portvakt_reloads_rejected_total{reason=\"expectation\"}"),
        Some(&1.0)
    );
    assert_eq!(
        metrics.get("portvakt_expectation_ok{segment=\"staff\"}"),
        Some(&1.0),
        "the policy in force still holds"
    );

    // With on_fail = "warn", the same edit goes in and the gauge says what broke.
    let warn = EXPECT_STAFF.replacen(
        "blocked = [\"tiktok.com\"]\n",
        "blocked = [\"tiktok.com\"]\non_fail = \"warn\"\n",
        1,
    );
    std::fs::write(&path, config(&upstream, &list, "", &warn)).unwrap();
    let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 200, "{body}");
    let metrics = gateway.scrape().await;
    assert_eq!(
        metrics.get("portvakt_expectation_ok{segment=\"staff\"}"),
        Some(&0.0)
    );
    assert_eq!(
        metrics.get("portvakt_expectation_ok{segment=\"devices\"}"),
        Some(&1.0)
    );
    assert_eq!(metrics.get("portvakt_reload_failing"), Some(&0.0));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_segments_raise_nothing() {
    let upstream = upstream().await;
    let gateway = TestGateway::start(
        &upstream,
        "lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
         lists.exceptions.files = [\"tests/fixtures/allow.txt\"]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.2.0/24\"]\nblock = [\"tiktok\"]\nallow = [\"exceptions\"]\n\
         [[segment]]\nname = \"printers\"\nnetworks = [\"127.0.2.0/28\"]\n\
         [[expect]]\nsegment = \"staff\"\nblocked = [\"tiktok.com\"]\nresolves = [\"www.example.org\"]\n\
         [[expect]]\nsegment = \"printers\"\nresolves = [\"tiktok.com\"]\n",
    )
    .await;
    let metrics = gateway.scrape().await;
    let probes: Vec<(&String, &f64)> = (metrics.iter())
        .filter(|(k, _)| k.starts_with("portvakt_policy_probe_ok{"))
        .collect();
    assert!(!probes.is_empty());
    assert!(probes.iter().all(|(_, v)| **v == 1.0), "{probes:?}");
    for segment in ["staff", "printers"] {
        let key = format!("portvakt_expectation_ok{{segment=\"{segment}\"}}");
        assert_eq!(metrics.get(&key), Some(&1.0), "{segment}");
    }
    gateway.shutdown().await;
}

/// What dig shows of an answer: its RCODE and how many answer records.
fn seen(message: &hickory_proto::op::Message) -> (ResponseCode, usize) {
    (message.metadata.response_code, message.answers.len())
}

/// What `explain`'s `answer` promises on the wire: (RCODE, answers present).
fn promised(answer: &str) -> (ResponseCode, bool) {
    match answer {
        "nxdomain" => (ResponseCode::NXDomain, false),
        "nodata" => (ResponseCode::NoError, false),
        "refused" => (ResponseCode::Refused, false),
        "advertised" | "forwarded" => (ResponseCode::NoError, true),
        other => panic!("unexpected answer {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_the_wire_agree() {
    if !present_or_skip(found("openssl"), "openssl") {
        return;
    }
    let upstream = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .with_a("tiktok.com.", "192.0.2.7")
        .with_a("www.tiktok.com.", "192.0.2.8")
        .with(
            "video.partner.example.",
            Canned::Cname(
                "tiktok.com.".into(),
                Box::new(Canned::A(vec!["192.0.2.7".parse().unwrap()], 60)),
            ),
        )
        .with_a("chat.example.net.", "149.154.167.50")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "dns.portvakt.test");
    let d = dir.path().display();
    std::fs::write(dir.path().join("allow.txt"), "www.tiktok.com\n").unwrap();
    let text = |[tls]: [u16; 1]| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:{tls}\"]\n\
         tls_cert_file = \"{d}/cert.pem\"\ntls_key_file = \"{d}/key.pem\"\ntls_name = \"dns.portvakt.test\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [\"tests/fixtures/tiktok.txt\"]\n\
         [lists.telegram-ip]\nfiles = [\"blocklists/telegram-ip.txt\"]\nkind = \"ip\"\n\
         [lists.exceptions]\nfiles = [\"{d}/allow.txt\"]\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"tiktok\", \"telegram-ip\"]\n\
         allow = [\"exceptions\"]\nadvertise_encrypted = true\n\
         [[segment]]\nname = \"byod\"\nnetworks = [\"127.0.0.4/32\"]\nblock = [\"tiktok\"]\n\
         [[segment]]\nname = \"devices\"\nnetworks = [\"127.0.0.3/32\"]\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 700\n",
            upstream.addr
        )
    };
    let (gateway, _) = start_on_free_ports(text).await;
    let cases = [
        (
            "127.0.0.2",
            "_dns.resolver.arpa.",
            RecordType::SVCB,
            "advertised",
        ),
        (
            "127.0.0.4",
            "_dns.resolver.arpa.",
            RecordType::SVCB,
            "nodata",
        ),
        (
            "127.0.0.4",
            "x._dns.resolver.arpa.",
            RecordType::A,
            "nxdomain",
        ),
        ("127.0.0.2", "tiktok.com.", RecordType::A, "nxdomain"),
        ("127.0.0.2", "www.tiktok.com.", RecordType::A, "forwarded"),
        (
            "127.0.0.2",
            "video.partner.example.",
            RecordType::A,
            "nxdomain",
        ),
        ("127.0.0.2", "chat.example.net.", RecordType::A, "nxdomain"),
        (
            "127.0.0.3",
            "video.partner.example.",
            RecordType::A,
            "forwarded",
        ),
        ("127.0.0.2", "www.example.org.", RecordType::A, "forwarded"),
        ("127.0.0.9", "www.example.org.", RecordType::A, "refused"),
    ];
    for (client, name, qtype, want) in cases {
        let wire = gateway
            .client_from(client)
            .udp(&question(name, qtype, true))
            .await;
        let path = format!("/api/v1/explain?client={client}&name={name}");
        let (code, body) = gateway.admin_get(&path).await;
        assert_eq!(code, 200, "{body}");
        let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
        let answer = explained["answer"].as_str().unwrap();
        assert_eq!(answer, want, "{client} {name}: {body}");
        let (rcode, answers) = promised(answer);
        assert_eq!(
            (seen(&wire).0, seen(&wire).1 > 0),
            (rcode, answers),
            "{client} {name}: explain says {body}, the wire {wire:?}"
        );
    }
    // The answer's blocks say where: the CNAME target and the address, with their lists.
    let (_, body) = gateway
        .admin_get("/api/v1/explain?client=127.0.0.2&name=video.partner.example")
        .await;
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explained["in_answer"], "tiktok.com", "{body}");
    assert_eq!(explained["decided_by"]["list"], "tiktok", "{body}");
    let (_, body) = gateway
        .admin_get("/api/v1/explain?client=127.0.0.2&name=chat.example.net")
        .await;
    let explained: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(explained["in_answer"], "149.154.167.50", "{body}");
    assert_eq!(explained["decided_by"]["list"], "telegram-ip", "{body}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_lines_are_counted_and_an_accepted_shrink_is_audited_with_its_reason() {
    let upstream = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tiktok.txt");
    let lines = "tiktok.com\ntiktokv.com\ntiktokcdn.com\nbad..name\n||*^$third-party\n";
    std::fs::write(&list, lines).unwrap();
    let state = format!(
        "server.state_dir = {:?}\nserver.watch = false\n",
        dir.path().display().to_string()
    );
    let text = format!(
        "{state}{}",
        config(&upstream, &list, "\"tiktok\"", EXPECT_STAFF)
    );
    let gateway = TestGateway::start_text(text).await;
    let metrics = gateway.scrape().await;
    assert_eq!(
        metrics.get("portvakt_list_rejected_lines{list=\"tiktok\"}"),
        Some(&2.0)
    );
    // Down to one entry (tiktok.com, which the expectation needs): refused as it stands,
    // accepted with a reason.
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 422, "{body}");
    let path = "/api/v1/reload?allow_shrink=tiktok&reason=case%202026-118";
    let (code, body) = gateway.admin_request("POST", path, &[]).await;
    assert_eq!(code, 200, "{body}");
    let metrics = gateway.scrape().await;
    assert_eq!(
        metrics.get("portvakt_list_rejected_lines{list=\"tiktok\"}"),
        Some(&0.0)
    );
    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "reload", "{last}");
    assert_eq!(last["accepted"]["allow_shrink"][0], "tiktok", "{last}");
    assert_eq!(last["accepted"]["reason"], "case 2026-118", "{last}");
    gateway.shutdown().await;
}
