//! The audit log under state_dir: start, an API reload that changed a list and a segment
//! (with the token's id, never the token), a rejected reload; no client address anywhere.

use crate::harness::{FakeUpstream, TestGateway};

#[tokio::test]
async fn every_policy_change_is_appended_with_what_changed_and_no_address() {
    let upstream = FakeUpstream::new()
        .with_a("www.allowed.test.", "192.0.2.9")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (list, token) = (
        dir.path().join("blocked.txt"),
        dir.path().join("admin.token"),
    );
    std::fs::write(&list, "tiktok.com\nt.me\n").unwrap();
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let policy = |networks: &str| {
        format!(
            "server.state_dir = {:?}\nserver.watch = false\nadmin.token_file = {:?}\n\
             lists.blocked.files = [{:?}]\n\
             segment = [{{ name = \"staff\", networks = [{networks}], block = [\"blocked\"] }},\n\
                        {{ name = \"devices\", networks = [\"127.0.0.3/32\"] }}]\n",
            dir.path().display().to_string(),
            token.display().to_string(),
            list.display().to_string()
        )
    };
    let gateway = TestGateway::start(&upstream, &policy("\"127.0.0.2/32\"")).await;
    let staff = gateway.client_from("127.0.0.2");
    let device = gateway.client_from("127.0.0.3");
    staff.udp_a("www.tiktok.com.").await;
    device.udp_a("www.allowed.test.").await;

    // One entry more, and staff gains a network: through the API, with the token.
    std::fs::write(&list, "tiktok.com\nt.me\ntelegram.org\n").unwrap();
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    let edited = text.replace("\"127.0.0.2/32\"]", "\"127.0.0.2/32\", \"10.1.0.0/16\"]");
    assert_ne!(text, edited);
    std::fs::write(gateway.config_path(), edited).unwrap();
    let bearer = ["Authorization: Bearer s3cret-token"];
    let (code, body) = gateway
        .admin_request("POST", "/api/v1/reload", &bearer)
        .await;
    assert_eq!(code, 200, "{body}");
    // A broken list: rejected, and logged as such.
    std::fs::write(&list, format!("{}\n", "a".repeat(5000))).unwrap();
    let (code, _) = gateway
        .admin_request("POST", "/api/v1/reload", &bearer)
        .await;
    assert_eq!(code, 422);
    staff.udp_a("t.me.").await;

    let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{log}");
    let (start, reload, rejected) = (&records[0], &records[1], &records[2]);
    assert_eq!(start["event"], "start");
    assert_eq!(start["lists"]["blocked"], 2);
    assert_eq!(reload["event"], "reload");
    assert_eq!(reload["trigger"], "api");
    assert_eq!(reload["previous_hash"], start["hash"]);
    assert_ne!(reload["hash"], start["hash"]);
    assert_eq!(reload["lists"]["blocked"]["before"], 2);
    assert_eq!(reload["lists"]["blocked"]["after"], 3);
    assert_eq!(reload["segments"]["changed"], serde_json::json!(["staff"]));
    assert_eq!(reload["segments"]["added"], serde_json::json!([]));
    let token_id = reload["token_id"].as_str().expect("the token's id");
    assert_eq!(token_id.len(), 8);
    assert_eq!(rejected["event"], "rejected");
    assert_eq!(rejected["running_hash"], reload["hash"]);
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("blocked.txt:1"),
        "{rejected}"
    );
    assert!(!log.contains("s3cret"), "the token itself is in the log");
    for address in ["127.0.0.2", "127.0.0.3", "127.0.0.1"] {
        assert!(!log.contains(address), "{address} in the audit log:\n{log}");
    }
    gateway.shutdown().await;
}

/// The compliance report counts exactly the blocks and bypass attempts sent, per segment and
/// list, over the API and from the command line after a restart of nothing but the reader;
/// no address of the traffic appears in any format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_matches_the_traffic_and_holds_no_address() {
    let upstream = FakeUpstream::new()
        .with_a("www.allowed.test.", "192.0.2.9")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "server.state_dir = {:?}\n\
         report.top_clients = 5\n\
         report.top_clients_min = 3\n\
         lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
         lists.telegram.files = [\"tests/fixtures/telegram.txt\"]\n\
         segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\"], block = [\"tiktok\", \"telegram\"] }},\n\
                    {{ name = \"devices\", networks = [\"127.0.0.3/32\"], block = [\"telegram\"] }}]\n",
        dir.path().display().to_string()
    );
    let gateway = TestGateway::start(&upstream, &policy).await;
    let (staff, device) = (
        gateway.client_from("127.0.0.2"),
        gateway.client_from("127.0.0.3"),
    );
    for _ in 0..2 {
        staff.udp_a("www.tiktok.com.").await;
    }
    staff.tcp_a("tiktokcdn.com.").await;
    staff.udp_a("t.me.").await;
    staff.tcp_a("telegram.org.").await;
    staff.udp_a("use-application-dns.net.").await;
    device.udp_a("t.me.").await;
    device.udp_a("www.tiktok.com.").await; // forwarded: not blocked there
    gateway
        .client_from("127.0.0.9")
        .udp_a("www.tiktok.com.")
        .await; // refused

    let (code, json) = gateway.admin_get("/api/v1/report").await;
    assert_eq!(code, 200, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = |section: &str| -> Vec<(String, String, u64)> {
        let mut rows: Vec<_> = (report[section].as_array().unwrap().iter())
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap().to_owned();
                (text("segment"), text("item"), r["count"].as_u64().unwrap())
            })
            .collect();
        rows.sort();
        rows
    };
    let row = |s: &str, i: &str, c: u64| (s.to_owned(), i.to_owned(), c);
    assert_eq!(
        rows("blocked"),
        [
            row("devices", "telegram", 1),
            row("staff", "telegram", 2),
            row("staff", "tiktok", 3)
        ]
    );
    assert_eq!(rows("bypass_attempts"), [row("staff", "canary", 1)]);
    let hash = gateway.gateway().with_policy(|p| p.hash().to_owned());
    assert_eq!(report["policies"][0]["hash"], hash.as_str());
    let today = report["to"].as_str().unwrap().to_owned();
    assert_eq!(report["blocked"][0]["day"], today.as_str());
    // Top clients: staff's 6 attempts (5 blocked, 1 canary) under a pseudonym; the device's
    // one attempt is under the minimum.
    let top = &report["top_clients"];
    assert_eq!(top["day"], today.as_str());
    assert_eq!(top["clients"].as_array().unwrap().len(), 1, "{top}");
    assert_eq!(top["clients"][0]["attempts"], 6);
    let pseudonym = top["clients"][0]["pseudonym"].as_str().unwrap().to_owned();
    assert!(pseudonym.len() == 16 && pseudonym.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_, text) = gateway.admin_get("/api/v1/report?format=text").await;
    let (_, csv) = gateway.admin_get("/api/v1/report?format=csv").await;
    assert!(text.contains(&format!("{pseudonym}           6")), "{text}");
    assert!(
        csv.contains(&format!("top_client,{today},,{pseudonym},6")),
        "{csv}"
    );
    assert!(
        csv.contains("blocked,") && csv.contains(",staff,tiktok,3"),
        "{csv}"
    );
    assert_eq!(
        gateway.admin_get("/api/v1/report?from=yesterday").await.0,
        400
    );
    gateway.shutdown().await;

    // The command line reads the same store after the gateway is gone.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_portvakt"))
        .args(["report", "--format", "csv", "--config"])
        .arg(dir.path().parent().unwrap().join("unused"))
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(2), "a missing config is refused");
    let config = dir.path().join("report.toml");
    std::fs::write(
        &config,
        format!("{policy}[[upstream]]\nservers = [\"192.0.2.1\"]\n"),
    )
    .unwrap();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_portvakt"))
        .args(["report", "--format", "csv", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let cli_csv = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(
        cli.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        cli_csv.contains(",staff,tiktok,3") && cli_csv.contains(",devices,telegram,1"),
        "{cli_csv}"
    );
    assert!(
        !cli_csv.contains("top_client"),
        "the key died with the gateway"
    );
    assert!(String::from_utf8_lossy(&cli.stderr).contains("only from the running gateway"));
    for output in [&json, &text, &csv, &cli_csv] {
        for address in ["127.0.0.2", "127.0.0.3", "127.0.0.9", "192.0.2.9"] {
            assert!(
                !output.contains(address),
                "{address} in the report:\n{output}"
            );
        }
    }
}

/// `portvakt audit verify` on the log of `state_dir` (through `config`): exit code, output.
fn verify(config: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvakt"))
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_reloads_in_a_minute_are_all_reported_and_the_chain_names_an_edit() {
    let upstream = FakeUpstream::new().start().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let gateway = TestGateway::start(
        &upstream,
        &format!(
            "server.state_dir = {:?}\nserver.watch = false\nlists.blocked.files = [{:?}]\n\
             segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\"], block = [\"blocked\"] }}]\n",
            dir.path().display().to_string(),
            list.display().to_string()
        ),
    )
    .await;
    let mut hashes = vec![status_hash(&gateway).await];
    for n in 1..=8 {
        // Each reload adds a name: a new policy each time (and no shrink).
        let names: Vec<String> = (0..=n).map(|i| format!("n{i}.example")).collect();
        std::fs::write(&list, format!("tiktok.com\n{}\n", names.join("\n"))).unwrap();
        let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
        assert_eq!(code, 200, "{body}");
        hashes.push(status_hash(&gateway).await);
    }
    let (code, body) = gateway.admin_get("/api/v1/report").await;
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reported: Vec<&str> = (report["policies"].as_array().unwrap().iter())
        .map(|p| p["hash"].as_str().unwrap())
        .collect();
    assert_eq!(reported, hashes, "every policy of the run, in order");
    let changes = report["changes"].as_array().unwrap();
    let changed: Vec<&str> = changes
        .iter()
        .map(|c| c["hash"].as_str().unwrap())
        .collect();
    assert_eq!(changed, hashes, "the audit log's changes are in the report");
    gateway.shutdown().await;

    // The config the gateway ran with names the same state_dir.
    let config = dir.path().join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "server.state_dir = {:?}\nlists.blocked.files = [{:?}]\n[[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
            dir.path().display().to_string(),
            list.display().to_string()
        ),
    )
    .unwrap();
    let (code, out) = verify(&config);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log intact: 9 lines"), "{out}");

    let log_path = dir.path().join("audit.jsonl");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // An edit of line 4 (a hash changed by hand) shows at line 5.
    let mut edited = lines.clone();
    let forged = lines[3].replace(&hashes[3], "0000000000000000");
    assert_ne!(forged, lines[3]);
    edited[3] = &forged;
    std::fs::write(&log_path, edited.join("\n") + "\n").unwrap();
    let (code, out) = verify(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit.jsonl:5:"), "{out}");
    // Line 4 removed: the line that now stands at 4 does not follow line 3.
    let mut removed = lines.clone();
    removed.remove(3);
    std::fs::write(&log_path, removed.join("\n") + "\n").unwrap();
    let (code, out) = verify(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit.jsonl:4:"), "{out}");
    // The first line removed: the chain no longer starts at its start.
    std::fs::write(&log_path, lines[1..].join("\n") + "\n").unwrap();
    let (code, out) = verify(&config);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit.jsonl:1:"), "{out}");
}

async fn status_hash(gateway: &TestGateway) -> String {
    let (_, body) = gateway.admin_get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["policy"]["hash"].as_str().unwrap().to_owned()
}

/// Names blocked only by what their answer held are listed per day and list, names only, so
/// the ops team can add them; the names blocked by their own entry are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_the_names_only_their_answer_blocked() {
    let alias = crate::harness::Canned::Cname(
        "edge.tiktokcdn.com.".into(),
        Box::new(crate::harness::Canned::A(
            vec!["192.0.2.40".parse().unwrap()],
            300,
        )),
    );
    let upstream = FakeUpstream::new()
        .with("video.unlisted-cdn.example.", alias)
        .with_a("www.allowed.test.", "192.0.2.9")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "server.state_dir = {:?}\n\
         lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
         segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\"], block = [\"tiktok\"] }}]\n",
        dir.path().display().to_string()
    );
    let gateway = TestGateway::start(&upstream, &policy).await;
    let staff = gateway.client_from("127.0.0.2");
    for _ in 0..3 {
        let answer = staff.udp_a("video.unlisted-cdn.example.").await;
        assert_eq!(
            answer.metadata.response_code,
            hickory_proto::op::ResponseCode::NXDomain
        );
    }
    staff.udp_a("www.tiktok.com.").await; // blocked by its own entry: not listed
    staff.udp_a("www.allowed.test.").await;

    let (code, json) = gateway.admin_get("/api/v1/report").await;
    assert_eq!(code, 200, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let today = report["to"].as_str().unwrap();
    assert_eq!(
        report["answer_blocked"],
        serde_json::json!([{ "day": today, "list": "tiktok", "name": "video.unlisted-cdn.example", "count": 3 }])
    );
    let (_, csv) = gateway.admin_get("/api/v1/report?format=csv").await;
    assert!(
        csv.contains(&format!(
            "answer_blocked,{today},tiktok,video.unlisted-cdn.example,3"
        )),
        "{csv}"
    );
    let (_, text) = gateway.admin_get("/api/v1/report?format=text").await;
    assert!(text.contains("video.unlisted-cdn.example"), "{text}");
    for output in [&json, &csv, &text] {
        assert!(
            !output.contains("127.0.0.2"),
            "a client address in the report"
        );
    }
    gateway.shutdown().await;
}
