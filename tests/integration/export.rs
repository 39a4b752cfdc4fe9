//! `portvakt export` on the shipped config: nftables accepts the ruleset (`nft -c`, in a
//! network namespace of its own), and the CIDR and JSON forms carry the same ranges.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_portvakt");

fn export(format: &str) -> String {
    let output = Command::new(BIN)
        .args(["export", format, "--config", "config/portvakt.toml"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Whether `nft` can be run; in CI it must be there.
fn have_nft() -> bool {
    let found = Command::new("nft").arg("--version").output().is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "nft (Debian package nftables) is missing, and CI is set"
    );
    if !found {
        eprintln!("skipping: nft is not installed");
    }
    found
}

#[test]
fn nft_accepts_the_exported_ruleset() {
    let ruleset = export("nftables");
    assert!(ruleset.contains("table inet portvakt {"));
    assert!(ruleset.contains("149.154.160.0/20"), "Telegram's ranges");
    assert!(ruleset.contains("tcp dport 853"));
    if !have_nft() {
        return;
    }
    let mut check = Command::new("unshare")
        .args(["--net", "nft", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "nft -c rejected the export: {}\n{ruleset}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And it can fail: a broken ruleset is rejected.
    let broken = ruleset.replace("flags interval", "flags nonsense");
    let mut check = Command::new("unshare")
        .args(["--net", "nft", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(broken.as_bytes())
        .unwrap();
    assert!(!check.wait().unwrap().success());
}

#[test]
fn cidr_and_json_exports_list_the_same_ranges() {
    let cidr = export("cidr");
    assert!(
        cidr.starts_with("# list telegram-ip, blocked for: staff, byod-vpn\n"),
        "{cidr}"
    );
    let ranges: Vec<&str> = cidr.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(ranges.len(), 14, "{cidr}");
    let json: serde_json::Value = serde_json::from_str(&export("json")).unwrap();
    let listed = json["ip_lists"][0]["networks"].as_array().unwrap();
    let listed: Vec<&str> = listed.iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(listed, ranges);
    let staff = &json["segments"][0];
    assert_eq!(staff["name"], "staff");
    assert_eq!(staff["ip_lists"][0], "telegram-ip");
    assert_eq!(json["encrypted_dns_port"], 853);
}
