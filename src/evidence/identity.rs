//! The policy's identity: a hash of what decides answers (segments with their networks,
//! listeners, lists and bypass settings; the block answer; each list's entries), not of file
//! paths, timestamps or the order of lines. Two replicas that enforce the same policy show the
//! same hash (`portvakt_policy_info{hash}`, `/api/v1/status`, `portvakt check`).

use std::fmt::Write as _;

use aws_lc_rs::digest::{SHA256, digest};

use crate::config::{Config, ListKind};

/// Hex digits of the hash shown (64 bits of SHA-256).
const SHOWN: usize = 16;

/// Entries of every list, summed as they are read: the same entries in any order (and in any
/// split across a list's files) give the same sum.
#[derive(Debug, Clone, Default)]
pub struct EntryDigest {
    sums: Vec<u128>,
}

impl EntryDigest {
    pub fn new(lists: usize) -> EntryDigest {
        EntryDigest {
            sums: vec![0; lists],
        }
    }

    /// Adds one entry of `list`: `tag` tells its kind, `bytes` its normalized form.
    pub fn add(&mut self, list: usize, tag: u8, bytes: &[u8]) {
        let mut input = Vec::with_capacity(bytes.len() + 1);
        input.push(tag);
        input.extend_from_slice(bytes);
        let hash = digest(&SHA256, &input);
        let low = u128::from_be_bytes(hash.as_ref()[..16].try_into().expect("16 bytes"));
        self.sums[list] = self.sums[list].wrapping_add(low);
    }

    /// Each list's entry sum, by list id.
    pub fn sums(&self) -> &[u128] {
        &self.sums
    }

    /// The policy's hash: SHA-256 over the canonical encoding (docs/evidence.md), a version
    /// line first, then the block answer, `unknown_clients`, each list with its entry sum, and
    /// each segment; the first [`SHOWN`] hex digits are shown.
    pub fn finish(&self, config: &Config) -> String {
        let hash = digest(&SHA256, canonical(config, &self.sums).as_bytes());
        let mut shown = String::with_capacity(SHOWN);
        for byte in &hash.as_ref()[..SHOWN / 2] {
            let _ = write!(shown, "{byte:02x}");
        }
        shown
    }
}

/// The version of the canonical encoding: it changes only when what the hash covers does.
pub const ENCODING: &str = "portvakt-policy v1";

/// The canonical encoding of what decides answers, one fact a line; `sums` are the lists'
/// entry sums by list id. Text is written as JSON strings, so no value can forge a line.
pub fn canonical(config: &Config, sums: &[u128]) -> String {
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
    let mut text = format!("{ENCODING}\n");
    let block = &config.block;
    let mut sinkhole: Vec<String> = block.sinkhole.iter().map(ToString::to_string).collect();
    sinkhole.sort();
    let _ = writeln!(
        text,
        "block response={} ttl={} sinkhole={} message={}",
        block.response.as_str(),
        block.ttl,
        sinkhole.join(","),
        quoted(&block.message)
    );
    let unknown = config.unknown_clients.map_or("refuse".to_owned(), |id| {
        quoted(&config.segments[id.index()].name)
    });
    let _ = writeln!(text, "unknown_clients={unknown}");
    for (list, sum) in config.lists.iter().zip(sums) {
        let kind = match list.kind {
            ListKind::Any => "any",
            ListKind::Ip => "ip",
        };
        let _ = writeln!(
            text,
            "list {} kind={kind} bypass={} message={} entries={sum:032x}",
            quoted(&list.name),
            list.bypass.map_or("-", |b| b.as_str()),
            list.message.as_deref().map_or("-".to_owned(), quoted),
        );
    }
    for segment in &config.segments {
        let _ = writeln!(
            text,
            "segment {} {}",
            quoted(&segment.name),
            segment.deciding(config)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_order_does_not_matter_and_every_entry_does() {
        let config = Config::parse(
            "t.toml",
            "lists.a.files = [\"tests/fixtures/tiktok.txt\"]\n\
             segment = [{ name = \"s\", networks = [\"10.0.0.0/8\"], block = [\"a\"] }]\n\
             [[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
        )
        .unwrap();
        let hash = |entries: &[&str]| {
            let mut digest = EntryDigest::new(1);
            entries.iter().for_each(|e| digest.add(0, 0, e.as_bytes()));
            digest.finish(&config)
        };
        let one = hash(&["a.example", "b.example"]);
        assert_eq!(one.len(), SHOWN);
        assert_eq!(one, hash(&["b.example", "a.example"]));
        assert_ne!(one, hash(&["a.example"]));
        assert_ne!(one, hash(&["a.example", "c.example"]));
        let mut other = config.clone();
        other.segments[0].networks = vec!["10.0.0.0/9".parse().unwrap()];
        let mut digest = EntryDigest::new(1);
        ["a.example", "b.example"]
            .iter()
            .for_each(|e| digest.add(0, 0, e.as_bytes()));
        assert_ne!(one, digest.finish(&other), "a segment's networks count");
    }

    /// The hash of a fixed policy under encoding v1. If this changes, every replica's and
    /// auditor's pinned hash changes: bump `ENCODING` and say so in docs/evidence.md.
    #[test]
    fn the_v1_encoding_gives_the_golden_hash() {
        let config = Config::parse(
            "t.toml",
            "block.message = \"Blocked\"\n\
             lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
             lists.exceptions.files = [\"tests/fixtures/allow.txt\"]\n\
             segment = [{ name = \"staff\", networks = [\"10.10.0.0/16\", \"fd00:10::/48\"], block = [\"tiktok\"], allow = [\"exceptions\"] }]\n\
             [[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
        )
        .unwrap();
        let mut digest = EntryDigest::new(2);
        digest.add(0, 0, b"\x06tiktok\x03com\x00");
        digest.add(1, 1, b"\x07example\x03org\x00");
        let text = canonical(&config, digest.sums());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "portvakt-policy v1");
        assert_eq!(
            lines[1],
            "block response=nxdomain ttl=300 sinkhole= message=\"Blocked\""
        );
        assert_eq!(lines[2], "unknown_clients=refuse");
        assert_eq!(
            lines[5],
            "segment \"staff\" networks=10.10.0.0/16,fd00:10::/48 listeners= block=tiktok \
             allow=exceptions bypass=canary:1,private_relay:1,ddr:1,strip_ech:1 advertise=0 rate=-"
        );
        assert_eq!(digest.finish(&config), "a96c48c679481baf");
    }
}
