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
