//! The IP entries of every list in one structure: for an answer's address, which lists hold a
//! network containing it. One exact-match map per prefix length in use (a list of published
//! ranges has a handful of lengths); a lookup masks the address once per length and collects
//! the list bits of every match.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::policy::{ListId, ListSet};

/// Networks of each prefix length, to the lists that hold them.
#[derive(Debug, Clone, Default)]
struct ByLength<K> {
    lengths: Vec<(u32, FxHashMap<K, u64>)>,
}

/// Which lists hold a network containing an address.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetworkIndex {
    v4: ByLength<u32>,
    v6: ByLength<u128>,
    /// Lists that hold any network.
    lists: ListSet,
}

fn mask4(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

fn mask6(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

impl<K: Copy + Eq + std::hash::Hash> ByLength<K> {
    fn insert(&mut self, len: u32, network: K, list: ListId) {
        let at = match self.lengths.iter().position(|(l, _)| *l == len) {
            Some(at) => at,
            None => {
                self.lengths.push((len, FxHashMap::default()));
                self.lengths.len() - 1
            }
        };
        *self.lengths[at].1.entry(network).or_default() |= 1 << list.0;
    }
}

impl NetworkIndex {
    pub(crate) fn insert(&mut self, network: IpNet, list: ListId) {
        // An IPv4-mapped IPv6 network is the IPv4 network it maps (lookups map back too).
        let network = match network {
            IpNet::V6(net) if net.prefix_len() >= 96 => match net.network().to_ipv4_mapped() {
                Some(v4) => IpNet::new(v4.into(), net.prefix_len() - 96).unwrap_or(network),
                None => network,
            },
            other => other,
        };
        match network {
            IpNet::V4(net) => {
                let len = u32::from(net.prefix_len());
                let bits = u32::from(net.network()) & mask4(len);
                self.v4.insert(len, bits, list);
            }
            IpNet::V6(net) => {
                let len = u32::from(net.prefix_len());
                let bits = u128::from(net.network()) & mask6(len);
                self.v6.insert(len, bits, list);
            }
        }
        self.lists.insert(list);
    }

    /// Lists that hold any network at all.
    pub(crate) fn lists(&self) -> ListSet {
        self.lists
    }

    /// The lists holding a network that contains `addr` (IPv4-mapped IPv6 as IPv4).
    pub(crate) fn lookup(&self, addr: IpAddr) -> ListSet {
        let mut found = 0u64;
        match addr.to_canonical() {
            IpAddr::V4(addr) => {
                let addr = u32::from(addr);
                for (len, map) in &self.v4.lengths {
                    found |= map.get(&(addr & mask4(*len))).copied().unwrap_or(0);
                }
            }
            IpAddr::V6(addr) => {
                let addr = u128::from(addr);
                for (len, map) in &self.v6.lengths {
                    found |= map.get(&(addr & mask6(*len))).copied().unwrap_or(0);
                }
            }
        }
        ListSet(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_list_holding_a_containing_network_is_found() {
        let mut index = NetworkIndex::default();
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        index.insert(net("149.154.160.0/20"), ListId(0));
        index.insert(net("149.154.167.0/24"), ListId(1));
        index.insert(net("2001:b28:f23d::/48"), ListId(0));
        index.insert(net("0.0.0.0/0"), ListId(2));
        index.insert(net("::ffff:192.0.2.0/120"), ListId(3));
        let cases = [
            ("149.154.167.51", ListSet(0b111)),
            ("149.154.160.1", ListSet(0b101)),
            ("149.154.176.1", ListSet(0b100)),
            ("::ffff:149.154.167.51", ListSet(0b111)),
            ("2001:b28:f23d:f001::a", ListSet(0b001)),
            ("2001:b28:f23e::1", ListSet(0)),
            ("192.0.2.7", ListSet(0b1100)),
            ("::ffff:192.0.2.7", ListSet(0b1100)),
        ];
        for (addr, want) in cases {
            assert_eq!(index.lookup(addr.parse().unwrap()), want, "{addr}");
        }
        assert_eq!(index.lists(), ListSet(0b1111));
    }
}
