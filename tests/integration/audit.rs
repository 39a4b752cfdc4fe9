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
