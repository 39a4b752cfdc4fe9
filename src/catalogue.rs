//! `portvakt catalogue diff`: what a published catalogue of a service's names (AdGuard's
//! services, NextDNS, HaGeZi, any list format portvakt reads) has that a list of ours does not
//! block, for the list repository's CI. A catalogue name counts as covered when the list holds
//! it or a zone above it (and no exception of the list takes it out).

use std::path::Path;

use crate::lists::{self, EntryKind};
use crate::name;
use crate::policy::Policy;
use crate::policy::index::ListSet;

/// A catalogue compared with a policy's lists.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff {
    /// Distinct names the catalogue blocks.
    pub names: usize,
    /// Of those, the ones no compared list blocks, in the catalogue's order.
    pub missing: Vec<String>,
    /// Lines neither a name nor an address (reported, not compared).
    pub rejected: usize,
    /// Address and network entries (not compared: they are for IP lists).
    pub addresses: usize,
}

/// Why a catalogue cannot be compared.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("no list named \"{0}\" in the config")]
    NoSuchList(String),
}

/// Compares `text` (the catalogue, labelled `source`) with the list named `list`, or with every
/// list a segment blocks when `None`.
pub fn diff(
    policy: &Policy,
    list: Option<&str>,
    source: &Path,
    text: &str,
) -> Result<Diff, CatalogueError> {
    let compared = match list {
        Some(name) => {
            let id = policy
                .list_id(name)
                .ok_or_else(|| CatalogueError::NoSuchList(name.to_owned()))?;
            let mut set = ListSet::default();
            set.insert(id);
            set
        }
        None => policy.blocked_lists(),
    };
    let file = lists::parse(source, &rule_lines(text));
    let mut seen = std::collections::HashSet::new();
    let mut diff = Diff {
        names: 0,
        missing: Vec::new(),
        rejected: file.rejected.len(),
        addresses: file.networks.len(),
    };
    for entry in file.entries.iter().filter(|e| e.kind == EntryKind::Block) {
        if !seen.insert(entry.name.as_slice()) {
            continue;
        }
        diff.names += 1;
        if policy
            .lists_containing(&entry.name)
            .intersect(compared)
            .is_empty()
        {
            diff.missing.push(name::to_text(&entry.name));
        }
    }
    Ok(diff)
}

/// The catalogue's text with AdGuard's service definitions (YAML: `rules:` then `- '||x^'`
/// items) unwrapped into rule lines; other formats pass as they are.
fn rule_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        let rule = match trimmed.strip_prefix("- ") {
            Some(item) => item.trim().trim_matches(['\'', '"']),
            // A YAML key (`id: tiktok`, `rules:`) is no rule.
            None if is_yaml_key(trimmed) => continue,
            None => line,
        };
        out.push_str(rule);
        out.push('\n');
    }
    out
}

fn is_yaml_key(line: &str) -> bool {
    line.split_once(':').is_some_and(|(key, rest)| {
        !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && (rest.is_empty() || rest.starts_with(' '))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adguard_service_definitions_become_rule_lines() {
        let yaml =
            "id: tiktok\nname: TikTok\nrules:\n  - '||tiktok.com^'\n  - \"||byteoversea.com^\"\n";
        assert_eq!(rule_lines(yaml), "||tiktok.com^\n||byteoversea.com^\n");
        // Plain and hosts lines pass untouched; `host:port`-like text is no YAML key.
        assert_eq!(
            rule_lines("t.me\n0.0.0.0 x.example\n"),
            "t.me\n0.0.0.0 x.example\n"
        );
        assert!(!is_yaml_key("a.example:443"));
        assert!(is_yaml_key("rules:"));
    }
}
