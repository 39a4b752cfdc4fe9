//! Reading one list file: each line's format is detected on its own, entries come out as
//! lowercase wire names, and lines that cannot be read come back as values with their line
//! number and reason. Which list a file belongs to, and what a list means, is `policy/`'s.
//!
//! Accepted per line (`#`, `!` and `;` start comments):
//! `example.com` · `*.example.com` · hosts `0.0.0.0 a.example b.example` · AdBlock DNS
//! `||example.com^` (and `|example.com^`, `$important`) · exceptions `@@||example.com^` ·
//! dnsmasq `address=/example.com/…`, `server=/example.com/…` · Unbound
//! `local-zone: "example.com" static` · RPZ `example.com CNAME .`.
//! Every entry matches its name and all names below it. A line that is only an address or a
//! network (`149.154.160.0/20`, `2001:b28:f23d::/48`, `91.108.4.1`) is an IP entry: for segments
//! that block the list, answers with an address inside it are blocked too.
//!
//! Lists downloaded from `urls` are `remote.rs`'s; the policy reads their copies like any file.

pub(crate) mod remote;

use std::fmt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::config::ListKind;
use crate::name::{self, NameError};

/// One entry as the reader hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A name in lowercase wire format.
    Name(&'a [u8], EntryKind),
    /// An address or network (an address is its /32 or /128).
    Network(IpNet),
}

/// Whether an entry puts names in the list or takes them out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Block,
    /// `@@||name^`: this name and those below it are not in the list, whatever else matches.
    Exception,
}

/// One readable entry of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lowercase wire format.
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub line: u32,
}

/// A line that could not be read, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub path: PathBuf,
    pub line: u32,
    pub reason: String,
    pub text: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {:?}",
            self.path.display(),
            self.line,
            self.reason,
            self.text
        )
    }
}

/// Everything read from one file.
#[derive(Debug, Default)]
pub struct ListFile {
    pub entries: Vec<Entry>,
    /// IP entries, with their line.
    pub networks: Vec<(IpNet, u32)>,
    pub rejected: Vec<Rejected>,
}

impl ListFile {
    fn add(&mut self, item: Item, line: u32) {
        match item {
            Item::Name(name, kind) => self.entries.push(Entry {
                name: name.to_vec(),
                kind,
                line,
            }),
            Item::Network(net) => self.networks.push((net, line)),
        }
    }
}

/// A list file that could not be read at all (or was refused: over a limit).
#[derive(Debug, thiserror::Error)]
#[error("failed to read list file {}{}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ListError {
    pub path: PathBuf,
    /// The line it stopped at, for a line over the limit.
    pub line: Option<u32>,
    #[source]
    pub source: std::io::Error,
}

pub use crate::config::ListLimits as Limits;

/// Reads and parses one list file.
pub fn read(path: &Path) -> Result<ListFile, ListError> {
    let mut file = ListFile::default();
    file.rejected = read_with(path, Limits::DEFAULT, |item, line| file.add(item, line))?;
    Ok(file)
}

/// Parses the text of a list file; `path` only labels rejected lines.
pub fn parse(path: &Path, text: &str) -> ListFile {
    let mut file = ListFile::default();
    file.rejected = parse_with(path, text, |item, line| file.add(item, line));
    file
}

/// Reads one list file of `kind` as [`read_with`] does. What the kind means is here: a list
/// of kind `ip` holds addresses and networks only, so a name in it is a rejected line (and is
/// not handed over).
pub fn read_as(
    path: &Path,
    kind: ListKind,
    limits: Limits,
    mut on_entry: impl FnMut(Item, u32),
) -> Result<Vec<Rejected>, ListError> {
    let mut names_in_ip_list = Vec::new();
    let mut rejected = read_with(path, limits, |item, line| match item {
        Item::Name(name, _) if kind == ListKind::Ip => {
            names_in_ip_list.push((line, name::to_text(name)));
        }
        item => on_entry(item, line),
    })?;
    if !names_in_ip_list.is_empty() {
        rejected.extend(names_in_ip_list.into_iter().map(|(line, text)| Rejected {
            path: path.to_owned(),
            line,
            reason: "a name in a list of kind \"ip\" (only addresses and networks)".into(),
            text,
        }));
        rejected.sort_by_key(|r| r.line);
    }
    Ok(rejected)
}

/// Reads one list file and hands each entry to `on_entry` (the item and its line) as it is read, without keeping it: the file is streamed line by line, so a million-line
/// list costs no memory here beyond one line. Returns the rejected lines.
/// A file over `limits` is refused before it is read; a line over its `max_line` refuses it
/// where it stands (entries already handed over are the caller's to drop: the read failed).
pub fn read_with(
    path: &Path,
    limits: Limits,
    mut on_entry: impl FnMut(Item, u32),
) -> Result<Vec<Rejected>, ListError> {
    use std::io::{BufRead, Read};
    let failed = |line, source| ListError {
        path: path.to_owned(),
        line,
        source,
    };
    let refused = |line, message: String| {
        failed(
            line,
            std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| failed(None, e))?;
    let size = file.metadata().map_err(|e| failed(None, e))?.len();
    if size > limits.max_bytes {
        let max = limits.max_bytes;
        return Err(refused(
            None,
            format!("{size} bytes, more than the list's max_bytes ({max}); not read"),
        ));
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut lines = Lines::new(path);
    let mut bytes = Vec::with_capacity(256);
    loop {
        bytes.clear();
        let read = (&mut reader)
            .take(limits.max_line as u64 + 1)
            .read_until(b'\n', &mut bytes);
        if read.map_err(|e| failed(None, e))? == 0 {
            break;
        }
        if bytes.len() > limits.max_line && bytes.last() != Some(&b'\n') {
            let (line, max) = (lines.line + 1, limits.max_line);
            let message = format!("line longer than {max} bytes; the file is refused");
            return Err(refused(Some(line), message));
        }
        let text = String::from_utf8_lossy(&bytes);
        let raw = text.strip_suffix('\n').unwrap_or(&text);
        lines.visit(raw.strip_suffix('\r').unwrap_or(raw), &mut on_entry);
    }
    Ok(lines.rejected)
}

/// As [`read_with`], over text already read.
pub fn parse_with(path: &Path, text: &str, mut on_entry: impl FnMut(Item, u32)) -> Vec<Rejected> {
    let mut lines = Lines::new(path);
    for raw in text.lines() {
        lines.visit(raw, &mut on_entry);
    }
    lines.rejected
}

/// Line-by-line state of one file: the line number, a reused name buffer, what was rejected.
struct Lines<'a> {
    path: &'a Path,
    line: u32,
    wire: Vec<u8>,
    rejected: Vec<Rejected>,
}

impl<'a> Lines<'a> {
    fn new(path: &'a Path) -> Self {
        Lines {
            path,
            line: 0,
            wire: Vec::with_capacity(crate::name::MAX_WIRE_LEN),
            rejected: Vec::new(),
        }
    }

    /// One line, without its line ending.
    fn visit(&mut self, raw: &str, on_entry: &mut impl FnMut(Item, u32)) {
        self.line += 1;
        let line = self.line;
        let raw = if line == 1 {
            raw.strip_prefix('\u{feff}').unwrap_or(raw)
        } else {
            raw
        };
        let mut push = |item: Item| on_entry(item, line);
        if let Err(reason) = parse_line(raw, &mut self.wire, &mut push) {
            self.rejected.push(Rejected {
                path: self.path.to_owned(),
                line,
                reason,
                text: raw.trim().chars().take(200).collect(),
            });
        }
    }
}

/// Names that hosts files map for the machine itself; they are not blocklist entries.
const HOSTS_SELF_NAMES: [&str; 9] = [
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-allnodes",
    "ip6-allrouters",
];

fn parse_line(raw: &str, wire: &mut Vec<u8>, push: &mut impl FnMut(Item)) -> Result<(), String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with(['#', '!', ';']) || line.starts_with("[Adblock") {
        return Ok(());
    }
    // A trailing comment after white space, as hosts files and plain lists write them.
    let line = match line.find(" #").or_else(|| line.find("\t#")) {
        Some(at) => line[..at].trim_end(),
        None => line,
    };
    if let Some(rule) = line.strip_prefix("@@") {
        return push_name(adblock_name(rule)?, EntryKind::Exception, wire, push);
    }
    if line.starts_with('|') {
        return push_name(adblock_name(line)?, EntryKind::Block, wire, push);
    }
    if line.ends_with('^') || line.contains("^$") {
        return Err("AdBlock rule without `||` also matches inside names; write `||name^`".into());
    }
    if line.starts_with('/') && line.len() > 1 {
        return Err("regular expressions are not supported".into());
    }
    if let Some(rest) = ["address=/", "server=/", "local=/"]
        .iter()
        .find_map(|p| line.strip_prefix(p))
    {
        return dnsmasq_names(rest, wire, push);
    }
    if let Some(rest) = line.strip_prefix("local-zone:") {
        let zone = rest
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches('"');
        return push_name(zone, EntryKind::Block, wire, push);
    }
    if line == "server:" {
        return Ok(());
    }
    let mut fields = line.split_whitespace();
    let first = fields.next().unwrap_or_default();
    if let Ok(addr) = first.parse::<std::net::IpAddr>() {
        let names: Vec<&str> = fields.collect();
        if names.is_empty() {
            push(Item::Network(IpNet::from(addr)));
            return Ok(());
        }
        for host in names {
            if !HOSTS_SELF_NAMES.contains(&host) {
                push_name(host, EntryKind::Block, wire, push)?;
            }
        }
        return Ok(());
    }
    let Some(second) = fields.next() else {
        if let Ok(net) = first.parse::<IpNet>() {
            // A stray `0.0.0.0/0` would block every answer (and, exported, all traffic).
            let widest = if net.addr().is_ipv4() { 8 } else { 16 };
            if net.prefix_len() < widest {
                return Err(format!("a network wider than /{widest} is not accepted"));
            }
            push(Item::Network(net.trunc()));
            return Ok(());
        }
        return push_name(
            first.strip_prefix("*.").unwrap_or(first),
            EntryKind::Block,
            wire,
            push,
        );
    };
    let rest: Vec<&str> = std::iter::once(second).chain(fields).collect();
    match rest.as_slice() {
        // RPZ: `name CNAME .` (NXDOMAIN) or `name CNAME *.` (NODATA), optional TTL and class.
        [.., "CNAME", "." | "*."] => push_name(
            first.strip_prefix("*.").unwrap_or(first),
            EntryKind::Block,
            wire,
            push,
        ),
        [.., "CNAME", "rpz-passthru."] => push_name(
            first.strip_prefix("*.").unwrap_or(first),
            EntryKind::Exception,
            wire,
            push,
        ),
        _ => Err("not a domain name".into()),
    }
}

/// The name of an AdBlock-style DNS rule: `||name^`, `|name^`, `||name^$important`.
fn adblock_name(rule: &str) -> Result<&str, String> {
    let (rule, modifiers) = match rule.split_once('$') {
        Some((rule, modifiers)) => (rule, Some(modifiers)),
        None => (rule, None),
    };
    if let Some(modifiers) = modifiers {
        for modifier in modifiers.split(',') {
            if modifier != "important" {
                return Err(format!("unsupported modifier ${modifier}"));
            }
        }
    }
    let name = rule.trim_start_matches('|');
    let name = name.trim_end_matches('|');
    let name = name.strip_suffix('^').unwrap_or(name);
    if name.contains('*') {
        return Err("wildcards inside a name are not supported".into());
    }
    Ok(name.strip_prefix("*.").unwrap_or(name))
}

/// dnsmasq: `/a.example/b.example/target` after the option name; the last field is the
/// answer or upstream, not a name.
fn dnsmasq_names(
    rest: &str,
    wire: &mut Vec<u8>,
    push: &mut impl FnMut(Item),
) -> Result<(), String> {
    let Some((names, _target)) = rest.rsplit_once('/') else {
        return Err("dnsmasq line without a closing /".into());
    };
    for host in names.split('/').filter(|h| !h.is_empty()) {
        push_name(host, EntryKind::Block, wire, push)?;
    }
    Ok(())
}

fn push_name(
    text: &str,
    kind: EntryKind,
    wire: &mut Vec<u8>,
    push: &mut impl FnMut(Item),
) -> Result<(), String> {
    match name::from_text_into(text, wire) {
        Ok(()) => {
            push(Item::Name(wire, kind));
            Ok(())
        }
        Err(NameError::IpAddress) => Err("an IP address is not a domain name".into()),
        Err(err) => Err(format!("not a domain name ({err})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Read = (Vec<(String, EntryKind)>, Vec<(u32, String)>);

    fn names(text: &str) -> Read {
        let file = parse(Path::new("t.txt"), text);
        let entries = file
            .entries
            .iter()
            .map(|e| (name::to_text(&e.name), e.kind))
            .collect();
        let rejected = file
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.clone()))
            .collect();
        (entries, rejected)
    }

    #[test]
    fn every_format_yields_the_same_name() {
        let lines = [
            "example.com",
            "Example.COM.",
            "*.example.com",
            "0.0.0.0 example.com",
            "127.0.0.1\texample.com # tracker",
            ":: example.com",
            "||example.com^",
            "||example.com^$important",
            "|example.com^",
            "address=/example.com/#",
            "server=/example.com/127.0.0.1",
            "local-zone: \"example.com.\" always_null",
            "example.com CNAME .",
            "*.example.com CNAME .",
            "@@|example.com|",
        ];
        for line in lines {
            let (entries, rejected) = names(line);
            let kind = if line.starts_with("@@") {
                EntryKind::Exception
            } else {
                EntryKind::Block
            };
            assert_eq!(entries, [("example.com".to_string(), kind)], "{line}");
            assert!(rejected.is_empty(), "{line}");
        }
    }

    #[test]
    fn exceptions_comments_bom_and_crlf() {
        let (entries, rejected) =
            names("\u{feff}# title\r\n! adblock comment\r\n@@||ok.example^\r\n\r\nb.example\r\n");
        assert_eq!(
            entries,
            [
                ("ok.example".into(), EntryKind::Exception),
                ("b.example".into(), EntryKind::Block)
            ]
        );
        assert!(rejected.is_empty());
    }

    #[test]
    fn hosts_lines_with_several_names_and_self_names() {
        let (entries, rejected) =
            names("127.0.0.1 localhost\n::1 ip6-localhost\n0.0.0.0 a.example b.example\n");
        let got: Vec<String> = entries.into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, ["a.example", "b.example"]);
        assert!(rejected.is_empty());
    }

    #[test]
    fn unicode_names_are_stored_as_punycode() {
        let (entries, _) = names("bücher.example\n");
        assert_eq!(entries[0].0, "xn--bcher-kva.example");
    }

    #[test]
    fn lines_of_only_an_address_or_network_are_ip_entries() {
        let file = parse(
            Path::new("t.txt"),
            "149.154.160.0/20\n2001:b28:f23d::/48\n91.108.4.1\n10.1.2.3/8\n0.0.0.0 10.0.0.1\n0.0.0.0/0\n::/8\n",
        );
        let networks: Vec<(String, u32)> = file
            .networks
            .iter()
            .map(|(net, line)| (net.to_string(), *line))
            .collect();
        let want = [
            ("149.154.160.0/20", 1),
            ("2001:b28:f23d::/48", 2),
            ("91.108.4.1/32", 3),
            ("10.0.0.0/8", 4),
        ];
        assert_eq!(networks, want.map(|(n, l)| (n.to_owned(), l)));
        assert!(file.entries.is_empty());
        let rejected: Vec<(u32, &str)> = (file.rejected.iter())
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (5, "an IP address is not a domain name"),
                (6, "a network wider than /8 is not accepted"),
                (7, "a network wider than /16 is not accepted"),
            ]
        );
    }

    #[test]
    fn unreadable_lines_are_rejected_with_line_and_reason() {
        let (entries, rejected) = names(
            "good.example\nok.example CNAME rpz-passthru.\nads.example^\n||ads.example^$third-party\n/ad[0-9]+\\.example/\n10.1.2.3\nnot a name\n||p16-*.example^\nbad/path.example\n0.0.0.0 10.0.0.1\n",
        );
        assert_eq!(entries[1], ("ok.example".into(), EntryKind::Exception));
        let got: Vec<(u32, &str)> = rejected.iter().map(|(l, r)| (*l, r.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    3,
                    "AdBlock rule without `||` also matches inside names; write `||name^`"
                ),
                (4, "unsupported modifier $third-party"),
                (5, "regular expressions are not supported"),
                (7, "not a domain name"),
                (8, "wildcards inside a name are not supported"),
                (
                    9,
                    "not a domain name (character '/' is not allowed in a domain name)"
                ),
                (10, "an IP address is not a domain name"),
            ]
        );
        let file = parse(Path::new("lists/t.txt"), "x y z\n");
        assert_eq!(
            file.rejected[0].to_string(),
            "lists/t.txt:1: not a domain name: \"x y z\""
        );
    }
}
