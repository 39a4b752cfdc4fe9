//! The policy hash: equal on two gateways whose lists hold the same entries in another order
//! and at other paths, different once one list changes, one series at a time.

use crate::harness::{FakeUpstream, TestGateway};

fn policy_info(scrape: &std::collections::HashMap<String, f64>) -> Vec<String> {
    let mut hashes: Vec<String> = (scrape.keys())
        .filter_map(|k| k.strip_prefix("portvakt_policy_info{hash=\""))
        .map(|k| k.trim_end_matches("\"}").to_owned())
        .collect();
    hashes.sort();
    hashes
}

#[tokio::test]
async fn replicas_with_the_same_entries_show_the_same_hash() {
    let upstream = FakeUpstream::new().start().await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let orders = [
        "tiktok.com\nt.me\n||telegram.org^\n",
        "# the same, reordered\n||telegram.org^\ntiktok.com\n\nt.me\n",
    ];
    let mut gateways = Vec::new();
    for (dir, lines) in dirs.iter().zip(orders) {
        let list = dir.path().join("blocked.txt");
        std::fs::write(&list, lines).unwrap();
        let policy = format!(
            "lists.blocked.files = [\"{}\"]\n\
             segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\"], block = [\"blocked\"] }}]\n",
            list.display()
        );
        gateways.push((TestGateway::start(&upstream, &policy).await, list));
    }
    let scrape = gateways[0].0.scrape().await;
    let probe = r#"portvakt_policy_probe_ok{list="blocked",segment="staff"}"#;
    assert_eq!(scrape.get(probe), Some(&1.0), "the self-test passes");
    let first = policy_info(&scrape);
    let second = policy_info(&gateways[1].0.scrape().await);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first, second, "the same entries, the same hash");
    let (_, status) = gateways[0].0.admin_get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["policy"]["hash"], first[0].as_str());

    // One more entry on the second: its hash moves, and only its new one is shown.
    let (gateway, list) = &gateways[1];
    std::fs::write(list, format!("{}example.net\n", orders[1])).unwrap();
    gateway
        .reloader()
        .reload(portvakt::Trigger::Api)
        .await
        .unwrap();
    let changed = policy_info(&gateway.scrape().await);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_ne!(changed, first);
    for (gateway, _) in gateways {
        gateway.shutdown().await;
    }
}

/// `portvakt check`'s policy hash for the config `text` (lists relative to the repository).
fn checked_hash(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvakt"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{name}: {stdout}{output:?}");
    let line = stdout.lines().find_map(|l| l.strip_prefix("policy hash: "));
    line.unwrap_or_else(|| panic!("{name}: no hash in {stdout}"))
        .to_owned()
}

/// The shipped deployments (the example, one container, the compose replicas, Kubernetes)
/// differ in how they listen and where their files are, and enforce one policy: one hash, and
/// word for word the example's policy text (lists, segments, expectations, rate limit).
#[test]
fn the_shipped_deployments_enforce_one_policy() {
    let dir = tempfile::tempdir().unwrap();
    let read = |path| std::fs::read_to_string(path).unwrap();
    let manifest = read("docker/kubernetes/portvakt.yaml");
    let embedded: String = (manifest.lines())
        .skip_while(|l| l.trim() != "portvakt.toml: |")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(embedded.contains("[[segment]]"), "{embedded}");
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();
    // The deployments' paths, as the repository has them.
    let local = |text: &str| {
        (text.replace("/etc/portvakt/lists/", "blocklists/"))
            .replace("/etc/portvakt/blocklists/", "blocklists/")
            .replace("/etc/portvakt/token/token", &token.display().to_string())
            .replace("/var/lib/portvakt", &dir.path().display().to_string())
    };
    let kubernetes = local(&embedded);
    let example = read("config/portvakt.toml");
    let policy_text = |text: &str| {
        let at = text.find("\n[block]\n").expect("a [block] section");
        text[at..].trim_end().to_owned()
    };
    for (name, text) in [
        ("docker/portvakt.toml", local(&read("docker/portvakt.toml"))),
        (
            "docker/portvakt-ha.toml",
            local(&read("docker/portvakt-ha.toml")),
        ),
        ("docker/kubernetes/portvakt.yaml", kubernetes.clone()),
    ] {
        assert_eq!(
            policy_text(&text),
            policy_text(&example),
            "{name}: the example's policy"
        );
    }

    let single = checked_hash(
        dir.path(),
        "single.toml",
        &local(&read("docker/portvakt.toml")),
    );
    let compose = checked_hash(
        dir.path(),
        "ha.toml",
        &local(&read("docker/portvakt-ha.toml")),
    );
    let k8s = checked_hash(dir.path(), "k8s.toml", &kubernetes);
    let shipped = checked_hash(dir.path(), "example.toml", &example);
    assert_eq!(single, shipped, "docker/portvakt.toml");
    assert_eq!(single, compose, "docker/portvakt-ha.toml");
    assert_eq!(single, k8s, "docker/kubernetes/portvakt.yaml");
    // And it can fail: one segment's lists changed is another policy (its expectation that
    // the internal zones are blocked goes too, or the change would be refused).
    let other = (kubernetes.replacen("block = [\"internal\"]", "block = []", 1)).replacen(
        "blocked = [\"kommune.internal\", \"dc01.kommune.internal\"]\n",
        "",
        1,
    );
    assert_ne!(checked_hash(dir.path(), "other.toml", &other), single);
}
