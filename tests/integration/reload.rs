//! The reload path: a good edit is in force for the next query, a broken one is rejected
//! while the running policy keeps blocking, and both are counted.

use hickory_proto::op::ResponseCode;
use portvakt::config::Config;
use portvakt::reload::{ConfigSource, reload};

use crate::harness::{Answered, FakeUpstream, TestGateway};

#[tokio::test]
async fn good_edits_apply_and_broken_ones_keep_the_running_policy() {
    let upstream = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let config_text = format!(
        "[lists.blocked]\nfiles = [{:?}]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"blocked\"]\n",
        list.display().to_string()
    );
    let gateway = TestGateway::start(&upstream, &config_text).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("www.example.org.").await.addresses(),
        ["192.0.2.1"]
    );

    // The reload reads the file the harness would have written: the same text, as a file.
    let config_path = dir.path().join("portvakt.toml");
    let full = gateway.config_text();
    std::fs::write(&config_path, &full).unwrap();
    Config::load(&config_path).expect("the harness config is valid as a file");
    let source = ConfigSource::File(config_path.clone());

    std::fs::write(&list, "tiktok.com\nexample.org\n").unwrap();
    assert_eq!(reload(gateway.gateway(), &source).await.unwrap(), 2);
    let blocked = staff.udp_a("www.example.org.").await;
    assert_eq!(
        blocked.metadata.response_code,
        ResponseCode::NXDomain,
        "the edit is in force"
    );

    std::fs::write(
        &config_path,
        full.replace("[[segment]]", "[[segment]]\nnetwork = \"typo\""),
    )
    .unwrap();
    let err = reload(gateway.gateway(), &source).await.unwrap_err();
    assert!(err.to_string().contains("portvakt.toml:"), "{err}");
    assert_eq!(
        staff.udp_a("www.example.org.").await.metadata.response_code,
        ResponseCode::NXDomain,
        "old policy keeps blocking"
    );

    let scrape = gateway.scrape().await;
    assert_eq!(scrape[r#"portvakt_reloads_total{result="success"}"#], 1.0);
    assert_eq!(scrape[r#"portvakt_reloads_total{result="failure"}"#], 1.0);
    let (_, status) = gateway.admin_get("/api/v1/status").await;
    assert!(status.contains(r#""generation":2"#), "{status}");
    gateway.shutdown().await;
}
