//! `portvakt catalogue diff`: what a published catalogue of a service's names (AdGuard's
//! services, NextDNS, HaGeZi, any list format portvakt reads) has that a list of ours does not
//! block, for the list repository's CI. A catalogue name counts as covered when the list holds
//! it or a zone above it (and no exception of the list takes it out).
//! `portvakt catalogue resolve`: which names of a list (a top-sites list) resolve into an IP
//! list's networks, to measure what blocking them in answers would take.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use futures_util::stream::{self, StreamExt};

use crate::lists::{self, EntryKind};
use crate::metrics::Metrics;
use crate::name;
use crate::policy::Policy;
use crate::policy::index::ListSet;
use crate::upstream::Upstreams;

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
    #[error("list \"{0}\" holds no addresses or networks")]
    NoNetworks(String),
}

/// Host names resolved and held against an IP list (`portvakt catalogue resolve`).
#[derive(Debug, PartialEq, Eq)]
pub struct Reach {
    /// Distinct names asked.
    pub names: usize,
    /// Of those, the ones with no address (no such name, no A or AAAA, no answer).
    pub unresolved: usize,
    /// The names with an address inside the list, with the first such address, in the
    /// names' order.
    pub inside: Vec<(String, IpAddr)>,
}

/// Resolves `names` (host names as text) through the config's upstream groups, A and AAAA,
/// at most `parallel` at a time, and finds those with an address inside the IP list `list`:
/// what blocking that list's networks in answers would take from a segment.
pub async fn reach(
    policy: &Policy,
    list: &str,
    names: &[String],
    parallel: usize,
) -> Result<Reach, CatalogueError> {
    let id = (policy.list_id(list)).ok_or_else(|| CatalogueError::NoSuchList(list.to_owned()))?;
    if !policy.address_lists().contains(id) {
        return Err(CatalogueError::NoNetworks(list.to_owned()));
    }
    let upstreams = Upstreams::new(&policy.config().upstreams, &Metrics::new());
    let mut seen = HashSet::new();
    let names: Vec<&String> = names.iter().filter(|n| seen.insert(n.as_str())).collect();
    let resolved: Vec<Option<Vec<IpAddr>>> = stream::iter(names.iter())
        .map(|name| {
            let upstreams = &upstreams;
            async move { upstreams.resolve(name).await.ok() }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    let mut reach = Reach {
        names: names.len(),
        unresolved: resolved.iter().filter(|r| r.is_none()).count(),
        inside: Vec::new(),
    };
    for (name, addresses) in names.iter().zip(&resolved) {
        let inside = (addresses.iter().flatten())
            .find(|&&addr| policy.lists_containing_address(addr).contains(id));
        if let Some(&addr) = inside {
            reach.inside.push(((*name).clone(), addr));
        }
    }
    Ok(reach)
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
