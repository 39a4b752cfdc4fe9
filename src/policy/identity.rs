//! The policy's identity: a hash of what decides answers (segments with their networks,
//! listeners, lists and bypass settings; the block answer; each list's entries), not of file
//! paths, timestamps or the order of lines. Two replicas that enforce the same policy show the
//! same hash (`portvakt_policy_info{hash}`, `/api/v1/status`, `portvakt check`).

use std::fmt::Write as _;

use aws_lc_rs::digest::{SHA256, digest};

use crate::config::Config;

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

    /// The policy's hash: the config's deciding parts in a canonical text, then every list's
    /// entry sum.
    pub fn finish(&self, config: &Config) -> String {
        let mut text = String::new();
        let block = &config.block;
        let _ = writeln!(
            text,
            "block {} ttl {} sinkhole {:?} message {:?}",
            block.response.as_str(),
            block.ttl,
            block.sinkhole,
            block.message
        );
        let unknown = config.unknown_clients.map(|id| &config.segments[id].name);
        let _ = writeln!(text, "unknown_clients {unknown:?}");
        for (list, sum) in config.lists.iter().zip(&self.sums) {
            let _ = writeln!(
                text,
                "list {} {:?} {:?} message {:?} entries {sum:032x}",
                list.name, list.kind, list.bypass, list.message
            );
        }
        for segment in &config.segments {
            let _ = writeln!(
                text,
                "segment {} {}",
                segment.name,
                segment.deciding(config)
            );
        }
        let hash = digest(&SHA256, text.as_bytes());
        let mut shown = String::with_capacity(SHOWN);
        for byte in &hash.as_ref()[..SHOWN / 2] {
            let _ = write!(shown, "{byte:02x}");
        }
        shown
    }
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
}
