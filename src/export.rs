//! `portvakt export`: what DNS cannot stop, as firewall input. The apps' non-DNS paths
//! (Telegram's built-in data-centre addresses, DoT/DoQ on port 853 to other resolvers) need
//! the network to drop them; this renders the config's segments and IP lists for it:
//! an nftables ruleset of its own (`table inet portvakt`), plain CIDR lists for any firewall,
//! or JSON. Reads the config and the list files; serves nothing.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{Config, ListConfig, ListId};
use crate::lists::{self, Item, ListError};

/// The port of DNS over TLS and DNS over QUIC (RFC 7858, RFC 9250).
const ENCRYPTED_DNS_PORT: u16 = 853;

/// What `export` can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Nftables,
    Cidr,
    Json,
}

/// A segment that blocks something: the addresses it has (its networks less the more
/// specific networks of other segments, as the longest prefix decides), and the IP lists it
/// blocks and allows (indexes into the IP lists; allow beats block, as for answers).
struct Blocking<'a> {
    id: usize,
    name: &'a str,
    networks: Vec<IpNet>,
    ip_lists: Vec<usize>,
    allowed: Vec<usize>,
}

/// An IP list with its networks, in file order without repeats.
struct IpList<'a> {
    name: &'a str,
    networks: Vec<IpNet>,
}

/// Renders `config` (with the IP entries of its list files) as `format`.
pub fn export(config: &Config, format: ExportFormat) -> Result<String, ListError> {
    // Lists no segment blocks or allows (opt-in ones) are not the firewall's business.
    let used = |id: usize| {
        let is_id = |list: &ListId| list.index() == id;
        (config.segments.iter()).any(|s| s.block.iter().chain(&s.allow).any(is_id))
    };
    let lists: Vec<&ListConfig> = (config.lists.iter().enumerate())
        .filter(|&(id, _)| used(id))
        .map(|(_, l)| l)
        .collect();
    let ip_lists = read_ip_lists(&lists)?;
    let all: Vec<(usize, IpNet)> = (config.segments.iter().enumerate())
        .flat_map(|(id, s)| s.networks.iter().map(move |n| (id, n.trunc())))
        .collect();
    // The IP lists among `ids` (list ids of the config), as indexes into `ip_lists`.
    let ip_ids = |ids: &[ListId]| -> Vec<usize> {
        ids.iter()
            .filter_map(|id| {
                let name = &config.lists[id.index()].name;
                ip_lists.iter().position(|l| l.name == *name)
            })
            .collect()
    };
    let blocking: Vec<Blocking> = (config.segments.iter().enumerate())
        .filter(|(_, s)| !s.block.is_empty())
        .map(|(id, s)| Blocking {
            id,
            name: &s.name,
            networks: addresses_of(
                id,
                &all,
                config.unknown_clients.map(|u| u.index()) == Some(id),
            ),
            ip_lists: ip_ids(&s.block),
            allowed: ip_ids(&s.allow),
        })
        .collect();
    let resolvers = resolvers(config);
    Ok(match format {
        ExportFormat::Nftables => nftables(config, &blocking, &ip_lists, &resolvers),
        ExportFormat::Cidr => cidr(&blocking, &ip_lists),
        ExportFormat::Json => json(config, &blocking, &ip_lists, &resolvers),
    })
}

/// The networks whose addresses classify into segment `id`: its own networks without the more
/// specific networks of other segments inside them; with `catch_all` (it is `unknown_clients`)
/// also every address in no segment.
fn addresses_of(id: usize, all: &[(usize, IpNet)], catch_all: bool) -> Vec<IpNet> {
    let mut own: Vec<IpNet> = all
        .iter()
        .filter(|(s, _)| *s == id)
        .map(|(_, n)| *n)
        .collect();
    if catch_all {
        own.push("0.0.0.0/0".parse().expect("a network"));
        own.push("::/0".parse().expect("a network"));
    }
    let mut out = Vec::new();
    for net in own {
        // Networks inside `net` that decide otherwise: those of other segments, and for the
        // catch-all, every segment's (its own included, which appear on their own).
        let inner: Vec<IpNet> = all
            .iter()
            .filter(|(s, n)| (*s != id || net.prefix_len() == 0) && *n != net && net.contains(n))
            .map(|(_, n)| *n)
            .collect();
        out.extend(exclude(net, &inner));
    }
    IpNet::aggregate(&out)
}

/// `net` less every network of `inner` (each inside it), as CIDRs: halve `net` until the
/// halves are either free of `inner` (kept) or one of them (dropped).
fn exclude(net: IpNet, inner: &[IpNet]) -> Vec<IpNet> {
    let touching: Vec<IpNet> = inner
        .iter()
        .filter(|n| net.contains(*n) || n.contains(&net))
        .copied()
        .collect();
    if touching.is_empty() {
        return vec![net];
    }
    if touching.iter().any(|n| n.contains(&net)) {
        return Vec::new();
    }
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else {
        return Vec::new();
    };
    halves.flat_map(|half| exclude(half, &touching)).collect()
}

/// Every list with IP entries, read from its files (and downloaded copies).
fn read_ip_lists<'a>(lists: &[&'a ListConfig]) -> Result<Vec<IpList<'a>>, ListError> {
    let mut out = Vec::new();
    for list in lists {
        let mut seen = BTreeSet::new();
        let mut networks = Vec::new();
        for path in list.sources() {
            lists::read_with(path, lists::Limits::DEFAULT, |item, _line| {
                if let Item::Network(net) = item
                    && seen.insert(net)
                {
                    networks.push(net);
                }
            })?;
        }
        if !networks.is_empty() {
            out.push(IpList {
                name: &list.name,
                networks,
            });
        }
    }
    Ok(out)
}

/// Text safe inside an nftables `comment "…"` (at most 128 bytes there).
fn comment(text: &str) -> String {
    let mut out = String::new();
    for c in text
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
    {
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    out
}

/// A unique name nftables accepts for a set: the index keeps `byod-vpn` and `byod_vpn` apart,
/// the name (letters, digits and `_`, shortened) is for the reader.
fn set_name(kind: &str, index: usize, name: &str, family: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    format!("{kind}{index}_{safe}_{family}")
}

/// One `set` of `ipv4_addr` or `ipv6_addr` intervals; empty sets are valid.
fn push_set(out: &mut String, name: &str, v6: bool, elements: impl Iterator<Item = String>) {
    let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let elements: Vec<String> = elements.collect();
    let _ = writeln!(
        out,
        "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n\t\tauto-merge"
    );
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    let _ = writeln!(out, "\t}}");
}

fn nets(networks: &[IpNet], v6: bool) -> impl Iterator<Item = String> + '_ {
    networks
        .iter()
        .filter(move |n| matches!(n, IpNet::V6(_)) == v6)
        .map(|n| n.trunc().to_string())
}

/// portvakt's own addresses, where the blocking segments may still send encrypted DNS: the
/// specific addresses of every listener (plain, DoT, DoH), each once.
fn resolvers(config: &Config) -> Vec<IpAddr> {
    let mut resolvers: Vec<IpAddr> = listeners(config)
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    resolvers.sort();
    resolvers.dedup();
    resolvers
}

fn listeners(config: &Config) -> impl Iterator<Item = &std::net::SocketAddr> {
    (config.listen.iter()).chain(config.encrypted.listen.iter().map(|(_, addr)| addr))
}

/// What the export cannot know from `config`: listeners on a wildcard address, whose
/// address clients use must be added to `portvakt_v4`/`portvakt_v6` by hand.
pub fn warnings(config: &Config) -> Vec<String> {
    listeners(config)
        .filter(|a| a.ip().is_unspecified())
        .map(|a| {
            let family = if a.is_ipv6() { "v6" } else { "v4" };
            format!(
                "portvakt listens on {a}: the address clients reach it on is not in the config, so encrypted DNS to it is rejected until you add it: nft add element inet portvakt portvakt_{family} {{ ADDRESS }}"
            )
        })
        .collect()
}

fn nftables(
    config: &Config,
    blocking: &[Blocking],
    ip_lists: &[IpList],
    resolvers: &[IpAddr],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#!/usr/sbin/nft -f\n# portvakt export nftables, from {}.\n# Load on the router or firewall between the segments and the internet: `nft -f FILE`.\n# It replaces only its own table. Segments that block nothing are not in it.\n",
        config.origin
    );
    for warning in warnings(config) {
        let _ = writeln!(out, "# warning: {warning}");
    }
    out.push_str("table inet portvakt\ndelete table inet portvakt\n\ntable inet portvakt {\n");
    for family in ["v4", "v6"] {
        let v6 = family == "v6";
        for segment in blocking {
            let name = set_name("segment", segment.id, segment.name, family);
            push_set(&mut out, &name, v6, nets(&segment.networks, v6));
        }
        for (index, list) in ip_lists.iter().enumerate() {
            let name = set_name("list", index, list.name, family);
            push_set(&mut out, &name, v6, nets(&list.networks, v6));
        }
        let own = resolvers
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(ToString::to_string);
        push_set(&mut out, &format!("portvakt_{family}"), v6, own);
    }
    out.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
    );
    for segment in blocking {
        for (family, ip) in [("v4", "ip"), ("v6", "ip6")] {
            let source = set_name("segment", segment.id, segment.name, family);
            // Allow beats block: the segment's allowed ranges are accepted first.
            for &index in &segment.allowed {
                let target = set_name("list", index, ip_lists[index].name, family);
                let _ = writeln!(
                    out,
                    "\t\t{ip} saddr @{source} {ip} daddr @{target} accept comment \"{}\"",
                    comment(&format!("{} allows {}", segment.name, ip_lists[index].name))
                );
            }
            for &index in &segment.ip_lists {
                let target = set_name("list", index, ip_lists[index].name, family);
                let _ = writeln!(
                    out,
                    "\t\t{ip} saddr @{source} {ip} daddr @{target} counter reject comment \"{}\"",
                    comment(&format!(
                        "{} may not reach {}",
                        segment.name, ip_lists[index].name
                    ))
                );
            }
            for proto in ["tcp", "udp"] {
                let _ = writeln!(
                    out,
                    "\t\t{ip} saddr @{source} {ip} daddr != @portvakt_{family} {proto} dport {ENCRYPTED_DNS_PORT} counter reject comment \"{}\"",
                    comment(&format!("{}: encrypted DNS only to portvakt", segment.name))
                );
            }
        }
    }
    out.push_str("\t}\n}\n");
    out
}

/// `portvakt export json`: what the nftables ruleset holds, as data.
#[derive(Serialize)]
struct JsonExport<'a> {
    config: &'a str,
    segments: Vec<JsonSegment<'a>>,
    ip_lists: Vec<JsonList<'a>>,
    resolvers: Vec<String>,
    encrypted_dns_port: u16,
}

#[derive(Serialize)]
struct JsonSegment<'a> {
    name: &'a str,
    networks: Vec<String>,
    ip_lists: Vec<&'a str>,
    allowed_ip_lists: Vec<&'a str>,
}

#[derive(Serialize)]
struct JsonList<'a> {
    name: &'a str,
    networks: Vec<String>,
}

fn json(
    config: &Config,
    blocking: &[Blocking],
    ip_lists: &[IpList],
    resolvers: &[IpAddr],
) -> String {
    let texts = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect();
    let names = |ids: &[usize]| ids.iter().map(|&i| ip_lists[i].name).collect();
    let export = JsonExport {
        config: &config.origin,
        segments: (blocking.iter())
            .map(|s| JsonSegment {
                name: s.name,
                networks: texts(&s.networks),
                ip_lists: names(&s.ip_lists),
                allowed_ip_lists: names(&s.allowed),
            })
            .collect(),
        ip_lists: (ip_lists.iter())
            .map(|l| JsonList {
                name: l.name,
                networks: texts(&l.networks),
            })
            .collect(),
        resolvers: resolvers.iter().map(ToString::to_string).collect(),
        encrypted_dns_port: ENCRYPTED_DNS_PORT,
    };
    // Keys in name order, as before the export was typed.
    let value = serde_json::to_value(&export).expect("JSON of strings");
    serde_json::to_string_pretty(&value).expect("JSON of strings") + "\n"
}

fn cidr(blocking: &[Blocking], ip_lists: &[IpList]) -> String {
    let mut out = String::new();
    for (index, list) in ip_lists.iter().enumerate() {
        let segments: Vec<&str> = blocking
            .iter()
            .filter(|s| s.ip_lists.contains(&index))
            .map(|s| s.name)
            .collect();
        let _ = writeln!(
            out,
            "# list {}, blocked for: {}",
            list.name,
            segments.join(", ")
        );
        for net in &list.networks {
            let _ = writeln!(out, "{}", net.trunc());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(text: &[&str]) -> Vec<IpNet> {
        text.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn a_segment_has_its_networks_less_the_more_specific_ones_of_others() {
        // 0: staff 10.0.0.0/8 and 192.0.2.0/24; 1: devices 10.1.2.0/24 inside staff's /8.
        let all: Vec<(usize, IpNet)> = [(0, "10.0.0.0/8"), (0, "192.0.2.0/24"), (1, "10.1.2.0/24")]
            .iter()
            .map(|(s, n)| (*s, n.parse().unwrap()))
            .collect();
        let staff = addresses_of(0, &all, false);
        let inside = |addr: &str| {
            let addr: IpAddr = addr.parse().unwrap();
            staff.iter().any(|n| n.contains(&addr))
        };
        assert!(inside("10.0.0.1") && inside("10.1.3.1") && inside("192.0.2.9"));
        assert!(!inside("10.1.2.7"), "the devices' /24 is theirs");
        assert_eq!(staff.len(), 17, "{staff:?}");
        assert_eq!(addresses_of(1, &all, false), nets(&["10.1.2.0/24"]));
        // As unknown_clients, devices also get every address in no segment.
        let catch_all = addresses_of(1, &all, true);
        assert!(
            catch_all
                .iter()
                .any(|n| n.contains(&"203.0.113.1".parse::<IpAddr>().unwrap()))
        );
        assert!(
            !catch_all
                .iter()
                .any(|n| n.contains(&"10.0.0.1".parse::<IpAddr>().unwrap()))
        );
    }
}
