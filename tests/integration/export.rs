//! `portvakt export` on the shipped config: nftables accepts the ruleset (`nft -c`, in a
//! network namespace of its own), and the CIDR and JSON forms carry the same ranges.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::present_or_skip;

const BIN: &str = env!("CARGO_BIN_EXE_portvakt");

fn export(format: &str) -> String {
    export_config(format, "config/portvakt.toml")
}

fn export_config(format: &str, config: &str) -> String {
    let output = Command::new(BIN)
        .args(["export", format, "--config", config])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Whether `nft` can be run (see `present_or_skip`).
fn have_nft() -> bool {
    let found = Command::new("nft").arg("--version").output().is_ok();
    present_or_skip(found, "nft (Debian package nftables)")
}

/// `nft -c` on `ruleset`, in a network namespace of its own: Ok, or nft's complaint.
fn nft_check(ruleset: &str) -> Result<(), String> {
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
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

#[test]
fn nft_accepts_the_exported_ruleset() {
    let ruleset = export("nftables");
    assert!(ruleset.contains("table inet portvakt {"));
    assert!(ruleset.contains("149.154.160.0/20"), "Telegram's ranges");
    assert!(ruleset.contains("tcp dport 853"));
    // TikTok's built-in resolver (DoH to Google by address), every port, both families.
    for (set, address) in [
        ("doh_bypass_ip_v4", "8.8.8.8/32"),
        ("doh_bypass_ip_v6", "2001:4860:4860::8888/128"),
    ] {
        let at = ruleset.find(&format!("_{set} {{")).expect(set);
        let elements = ruleset[at..]
            .lines()
            .find(|l| l.contains("elements"))
            .unwrap();
        assert!(elements.contains(address), "{elements}");
        let family = if set.ends_with("v4") { "ip" } else { "ip6" };
        let rule = format!(
            "{family} saddr @segment0_staff_{} {family} daddr @",
            &set[set.len() - 2..]
        );
        let line = (ruleset.lines())
            .find(|l| l.contains(&rule) && l.contains(set))
            .expect("staff's reject");
        assert!(
            line.ends_with("counter reject comment \"staff may not reach doh-bypass-ip\""),
            "{line}"
        );
    }
    if !have_nft() {
        return;
    }
    if let Err(err) = nft_check(&ruleset) {
        panic!("nft -c rejected the export: {err}\n{ruleset}");
    }
    // And it can fail: a broken ruleset is rejected.
    let broken = ruleset.replace("flags interval", "flags nonsense");
    assert!(nft_check(&broken).is_err());
}

#[test]
fn names_that_differ_only_in_punctuation_and_allowed_ranges_export_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        r#"[lists.telegram-ip]
files = ["blocklists/telegram-ip.txt"]
[lists.partner]
files = ["tests/fixtures/partner-ip.txt"]
[[segment]]
name = "byod-vpn"
networks = ["10.20.0.0/16"]
block = ["telegram-ip"]
[[segment]]
name = "byod_vpn"
networks = ["10.30.0.0/16", "10.30.5.0/24"]
block = ["telegram-ip"]
allow = ["partner"]
[[upstream]]
servers = ["127.0.0.1:53"]
"#,
    )
    .unwrap();
    let ruleset = export_config("nftables", config.to_str().unwrap());
    assert!(ruleset.contains("set segment0_byod_vpn_v4"), "{ruleset}");
    assert!(ruleset.contains("set segment1_byod_vpn_v4"), "{ruleset}");
    // Allow beats block, as for answers: the partner range is accepted before the reject.
    let accept = ruleset
        .find("daddr @list0_partner_v4 accept")
        .expect("an accept rule");
    let reject = (ruleset.find("ip saddr @segment1_byod_vpn_v4 ip daddr @list1_telegram_ip_v4"))
        .expect("a reject rule");
    assert!(accept < reject, "{ruleset}");
    // Every port: the apps try 443, 80 and 5222 of their data centres.
    let line = ruleset[reject..].lines().next().unwrap();
    assert!(
        line.contains("counter reject") && !line.contains("dport"),
        "{line}"
    );
    if have_nft()
        && let Err(err) = nft_check(&ruleset)
    {
        panic!("nft -c rejected the export: {err}\n{ruleset}");
    }
}

#[test]
fn cidr_and_json_exports_list_the_same_ranges() {
    let cidr = export("cidr");
    let lists: Vec<(&str, Vec<&str>)> = (cidr.split("# list ").skip(1))
        .map(|section| {
            let (head, ranges) = section.split_once('\n').unwrap();
            (head, ranges.lines().collect())
        })
        .collect();
    // By name: doh-bypass-ip, telegram-ip; the opt-in tiktok-ip is left out.
    let heads: Vec<&str> = lists.iter().map(|(head, _)| *head).collect();
    assert_eq!(
        heads,
        [
            "doh-bypass-ip, blocked for: staff, byod-vpn",
            "telegram-ip, blocked for: staff, byod-vpn"
        ],
        "{cidr}"
    );
    assert_eq!(lists[0].1.len(), 4, "{cidr}");
    // The 14 published ranges and data centre 2's built-in address outside them.
    assert_eq!(lists[1].1.len(), 15, "{cidr}");
    assert!(lists[1].1.contains(&"95.161.76.100/32"), "{cidr}");
    let json: serde_json::Value = serde_json::from_str(&export("json")).unwrap();
    for (index, (_, ranges)) in lists.iter().enumerate() {
        let listed = json["ip_lists"][index]["networks"].as_array().unwrap();
        let listed: Vec<&str> = listed.iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(&listed, ranges);
    }
    let staff = &json["segments"][0];
    assert_eq!(staff["name"], "staff");
    assert_eq!(staff["ip_lists"][0], "telegram-ip");
    assert_eq!(staff["ip_lists"][1], "doh-bypass-ip");
    assert_eq!(json["encrypted_dns_port"], 853);
}

#[test]
fn every_encrypted_listener_is_admitted_and_a_wildcard_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    crate::harness::certificate(dir.path(), "dns.kommune.example");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = ["0.0.0.0:53"]
tls_listen = ["10.0.0.53:853"]
https_listen = ["[fd00::53]:443"]
quic_listen = ["10.0.0.54:853"]
h3_listen = ["[fd00::54]:443"]
tls_cert_file = "{0}/cert.pem"
tls_key_file = "{0}/key.pem"
[lists.telegram-ip]
files = ["blocklists/telegram-ip.txt"]
[[segment]]
name = "staff"
networks = ["10.10.0.0/16"]
block = ["telegram-ip"]
[[upstream]]
servers = ["127.0.0.1:53"]
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["export", "nftables", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let ruleset = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let set = |family: &str| {
        let start = ruleset.find(&format!("set portvakt_{family} {{")).unwrap();
        ruleset[start..start + ruleset[start..].find('}').unwrap()].to_owned()
    };
    assert!(
        set("v4").contains("10.0.0.53"),
        "the DoT listener: {ruleset}"
    );
    assert!(
        set("v6").contains("fd00::53"),
        "the DoH listener: {ruleset}"
    );
    assert!(
        set("v4").contains("10.0.0.54"),
        "the DoQ listener: {ruleset}"
    );
    assert!(
        set("v6").contains("fd00::54"),
        "the DoH3 listener: {ruleset}"
    );
    // DoQ elsewhere is UDP 853; DoH3 to a known resolver meets the IP lists on any port.
    assert!(
        ruleset.contains("udp dport 853 counter reject"),
        "{ruleset}"
    );
    assert!(
        stderr.contains("portvakt listens on 0.0.0.0:53"),
        "the wildcard is warned about: {stderr}"
    );
    assert!(ruleset.contains("# warning: portvakt listens on 0.0.0.0:53"));
    if have_nft()
        && let Err(err) = nft_check(&ruleset)
    {
        panic!("nft -c rejected the export: {err}\n{ruleset}");
    }
}
