//! Every real published list under `../shared/data` (see its SOURCES.md) through the list
//! reader: no panic, the entry counts SOURCES.md states for clean files, identical name sets
//! for the same list in different syntaxes, and only genuinely unreadable lines rejected.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portvakt::core::{self, ListFile};

use crate::harness::present_or_skip;

const DATA: &str = "../shared/data";

/// The shared data, or `None` (see `present_or_skip`).
fn data_dir() -> Option<PathBuf> {
    let dir = Path::new(DATA);
    present_or_skip(dir.is_dir(), "../shared/data (beside the repository in CI)")
        .then(|| dir.to_owned())
}

fn read(rel: &str) -> ListFile {
    core::read(&Path::new(DATA).join(rel)).unwrap()
}

fn names(file: &ListFile) -> BTreeSet<String> {
    file.entries
        .iter()
        .map(|e| core::to_text(&e.name))
        .collect()
}

/// Independent of the reader: a line that is a plain name, optionally in hosts, AdBlock or
/// wildcard dress, with no modifiers, patterns or paths. The reader must never reject one.
fn is_plain_entry(text: &str) -> bool {
    let mut t = text.trim();
    if t.ends_with('^') && !t.starts_with('|') && !t.starts_with("@@|") {
        return false; // AdBlock without an anchor: a pattern, not a name
    }
    for prefix in ["@@", "0.0.0.0 ", "127.0.0.1 ", "||", "|", "*."] {
        t = t.strip_prefix(prefix).unwrap_or(t).trim();
    }
    let t = t
        .trim_end_matches('|')
        .trim_end_matches('^')
        .trim_end_matches('.');
    let labels: Vec<&str> = t.split('.').collect();
    !t.is_empty()
        && labels.len() > 1
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.len() < 64 && !l.starts_with('-') && !l.ends_with('-'))
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn every_shared_list_reads_without_rejecting_readable_lines() {
    let Some(dir) = data_dir() else { return };
    let mut files = 0;
    for sub in ["blocklists", "services"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let file = core::read(&path).unwrap();
            files += 1;
            let yaml = path.extension().is_some_and(|e| e == "yml");
            if yaml {
                assert_eq!(
                    file.entries.len(),
                    0,
                    "{}: YAML is not a list format",
                    path.display()
                );
            } else {
                assert!(!file.entries.is_empty(), "{}", path.display());
                assert!(
                    file.rejected.len() < file.entries.len(),
                    "{}: {} rejected",
                    path.display(),
                    file.rejected.len()
                );
            }
            for rejected in &file.rejected {
                assert!(!rejected.reason.is_empty());
                assert!(
                    !is_plain_entry(&rejected.text),
                    "{rejected} is a readable entry"
                );
            }
        }
    }
    assert!(files >= 40, "read {files} files");
}

#[test]
fn clean_lists_yield_the_entry_counts_their_sources_state() {
    if data_dir().is_none() {
        return;
    }
    // (file, entries per SOURCES.md)
    let cases = [
        ("blocklists/anudeepnd-adservers.hosts.txt", 42_531),
        ("blocklists/blocklistproject-basic.dnsmasq.txt", 76_036),
        ("blocklists/blocklistproject-basic.hosts.txt", 76_036),
        ("blocklists/blocklistproject-phishing.domains.txt", 190_215),
        ("blocklists/blocklistproject-tracking.adguard.txt", 143_876),
        ("blocklists/blocklistproject-tracking.domains.txt", 143_876),
        ("blocklists/hagezi-light.adblock.txt", 106_487),
        ("blocklists/hagezi-light.dnsmasq.txt", 106_487),
        ("blocklists/hagezi-light.wildcard.txt", 106_487),
        ("blocklists/hagezi-light.domains.txt", 176_041),
        ("blocklists/hagezi-personal.hosts.txt", 12_274),
        ("blocklists/hagezi-personal.unbound.conf", 9_642),
        ("blocklists/perflyst-smarttv.domains.txt", 245),
        (
            "blocklists/stevenblack-src.fademind-add.2o7net.hosts.txt",
            2_030,
        ),
        (
            "blocklists/stevenblack-src.fademind-add.risk.hosts.txt",
            2_189,
        ),
        ("services/doh-vpn-proxy-bypass.hagezi.adblock.txt", 714),
        ("services/doh-vpn-proxy-bypass.hagezi.domains.txt", 1_205),
        ("services/telegram.cframe1337.domains.txt", 63),
        ("services/telegram.nextdns.txt", 4),
        ("services/tiktok.hagezi-native.adblock.txt", 436),
        ("services/tiktok.nextdns.txt", 90),
    ];
    for (rel, entries) in cases {
        let file = read(rel);
        assert_eq!(
            (file.entries.len(), file.rejected.len()),
            (entries, 0),
            "{rel}"
        );
    }
    // adaway: 6,542 entries, of which `127.0.0.1 localhost` and `::1 localhost` are no rules.
    let adaway = read("blocklists/adaway.hosts.txt");
    assert_eq!((adaway.entries.len(), adaway.rejected.len()), (6_540, 0));
    assert!(!names(&adaway).contains("localhost"));
}

#[test]
fn one_list_in_different_syntaxes_gives_the_same_names() {
    if data_dir().is_none() {
        return;
    }
    let groups: [&[&str]; 3] = [
        &[
            "services/tiktok.blocklistproject.hosts.txt",
            "services/tiktok.blocklistproject.domains.txt",
            "services/tiktok.blocklistproject.adguard.txt",
            "services/tiktok.blocklistproject.dnsmasq.txt",
        ],
        &[
            "blocklists/hagezi-light.adblock.txt",
            "blocklists/hagezi-light.wildcard.txt",
            "blocklists/hagezi-light.dnsmasq.txt",
        ],
        &[
            "blocklists/blocklistproject-tracking.domains.txt",
            "blocklists/blocklistproject-tracking.adguard.txt",
        ],
    ];
    for group in groups {
        let first = names(&read(group[0]));
        assert!(!first.is_empty());
        for other in &group[1..] {
            assert!(
                first == names(&read(other)),
                "{} and {other} differ",
                group[0]
            );
        }
    }
}

#[test]
fn exception_lists_are_read_as_exceptions() {
    if data_dir().is_none() {
        return;
    }
    let file = read("blocklists/hagezi-whitelist-referral.adblock.txt");
    assert!(file.entries.len() > 400);
    assert!(
        file.entries
            .iter()
            .all(|e| e.kind == core::EntryKind::Exception)
    );
}
