//! Which segment a client is in: a longest-prefix match of its source address over every
//! segment's networks. IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`, from dual-stack sockets)
//! are matched as the IPv4 address they carry.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// A segment's index in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentId(pub u16);

/// Networks to segments; built once per policy.
#[derive(Debug, Clone, Default)]
pub struct SegmentTable {
    v4: PrefixMap<Ipv4Net, SegmentId>,
    v6: PrefixMap<Ipv6Net, SegmentId>,
    /// Where clients in no segment go; `None` refuses them.
    unknown: Option<SegmentId>,
}

impl SegmentTable {
    /// `networks` must not repeat (the config checks that); nested networks are fine.
    pub fn new(
        networks: impl IntoIterator<Item = (IpNet, SegmentId)>,
        unknown: Option<SegmentId>,
    ) -> Self {
        let mut table = SegmentTable {
            unknown,
            ..SegmentTable::default()
        };
        for (net, id) in networks {
            match net {
                IpNet::V4(net) => table.v4.insert(net, id),
                IpNet::V6(net) => table.v6.insert(net, id),
            };
        }
        table
    }

    /// The client's segment: the longest prefix containing it, else the `unknown_clients`
    /// segment, else `None` (refused).
    pub fn classify(&self, client: IpAddr) -> Option<SegmentId> {
        let found = match client.to_canonical() {
            IpAddr::V4(addr) => self.v4.get_lpm(&Ipv4Net::from(addr)).map(|(_, id)| *id),
            IpAddr::V6(addr) => self.v6.get_lpm(&Ipv6Net::from(addr)).map(|(_, id)| *id),
        };
        found.or(self.unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(unknown: Option<SegmentId>) -> SegmentTable {
        let nets = [
            ("127.0.0.0/8", 0),
            ("127.0.0.3/32", 1),
            ("10.0.0.0/8", 2),
            ("fd00:10::/48", 0),
            ("::1/128", 1),
        ];
        SegmentTable::new(
            nets.iter()
                .map(|(n, id)| (n.parse().unwrap(), SegmentId(*id))),
            unknown,
        )
    }

    #[test]
    fn longest_prefix_wins_and_mapped_addresses_are_ipv4() {
        let table = table(None);
        let cases = [
            ("127.0.0.2", Some(0)),
            ("127.0.0.3", Some(1)),
            ("::ffff:127.0.0.3", Some(1)),
            ("::ffff:127.0.0.9", Some(0)),
            ("10.200.1.1", Some(2)),
            ("fd00:10::42", Some(0)),
            ("::1", Some(1)),
            ("192.0.2.1", None),
            ("2001:db8::1", None),
        ];
        for (addr, want) in cases {
            assert_eq!(
                table.classify(addr.parse().unwrap()),
                want.map(SegmentId),
                "{addr}"
            );
        }
    }

    #[test]
    fn unknown_clients_can_be_given_a_segment() {
        assert_eq!(
            table(Some(SegmentId(2))).classify("192.0.2.1".parse().unwrap()),
            Some(SegmentId(2))
        );
    }
}
