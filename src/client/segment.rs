//! Which segment a client is in. A listen address tied to a segment (`listeners`) decides for
//! every query that arrives on it; elsewhere it is a longest-prefix match of the source address
//! over every segment's networks. IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`, from dual-stack
//! sockets) are matched as the IPv4 address they carry.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::ops::BitAnd;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// The name that stands for "in no segment" (the `segment` label of refused clients), so no
/// configured segment may have it.
pub const NO_SEGMENT: &str = "none";

/// A segment's index in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentId(pub u16);

impl SegmentId {
    /// Its place in the policy's segments (and in tables kept per segment).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Networks to segments; built once per policy.
#[derive(Debug, Clone, Default)]
pub struct SegmentTable {
    v4: Prefixes<u32>,
    v6: Prefixes<u128>,
    /// Where clients in no segment go; `None` refuses them.
    unknown: Option<SegmentId>,
    /// Listen addresses tied to a segment (a handful at most).
    listeners: Vec<(SocketAddr, SegmentId)>,
    /// Every network as configured, for [`SegmentTable::member`].
    networks: Vec<(IpNet, SegmentId)>,
}

/// What placed a client in its segment (or in none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The listen address the query arrived on.
    Listener(SocketAddr),
    /// The longest network of a segment holding the source address.
    Network(IpNet),
    /// No network holds it: `unknown_clients`.
    Unknown,
}

/// One exact-match map per prefix length in use, longest first: a lookup masks the address
/// once per length (a config has a handful) and stops at the first hit.
#[derive(Debug, Clone)]
struct Prefixes<K> {
    by_length: Vec<(u8, K, FxHashMap<K, SegmentId>)>,
}

impl<K> Default for Prefixes<K> {
    fn default() -> Self {
        Prefixes {
            by_length: Vec::new(),
        }
    }
}

impl<K: Copy + Eq + Hash + BitAnd<Output = K>> Prefixes<K> {
    fn insert(&mut self, len: u8, mask: K, network: K, id: SegmentId) {
        let at = match self.by_length.binary_search_by(|(l, _, _)| len.cmp(l)) {
            Ok(at) => at,
            Err(at) => {
                self.by_length.insert(at, (len, mask, FxHashMap::default()));
                at
            }
        };
        self.by_length[at].2.insert(network & mask, id);
    }

    /// The longest match's prefix length and segment.
    #[inline]
    fn longest(&self, addr: K) -> Option<(u8, SegmentId)> {
        (self.by_length.iter())
            .find_map(|(len, mask, map)| map.get(&(addr & *mask)).map(|id| (*len, *id)))
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Listener(addr) => write!(f, "listener {addr}"),
            Placement::Network(net) => write!(f, "network {net}"),
            Placement::Unknown => f.write_str("unknown_clients"),
        }
    }
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
            table.networks.push((net, id));
            match net {
                IpNet::V4(net) => table.v4.insert(
                    net.prefix_len(),
                    u32::from(net.netmask()),
                    u32::from(net.network()),
                    id,
                ),
                IpNet::V6(net) => table.v6.insert(
                    net.prefix_len(),
                    u128::from(net.netmask()),
                    u128::from(net.network()),
                    id,
                ),
            }
        }
        table
    }

    /// Ties `listeners` to their segments; they decide before the source address does.
    pub fn with_listeners(mut self, listeners: Vec<(SocketAddr, SegmentId)>) -> Self {
        self.listeners = listeners;
        self
    }

    /// The segment of a query from `client` that arrived on `listener` (if known): the
    /// listener's segment, else [`SegmentTable::classify`].
    pub fn classify_at(&self, client: IpAddr, listener: Option<SocketAddr>) -> Option<SegmentId> {
        if self.listeners.is_empty() {
            return self.classify(client); // the usual config: no listener decides
        }
        self.by_listener(listener).or_else(|| self.classify(client))
    }

    /// The segment `listener` is tied to, if any.
    fn by_listener(&self, listener: Option<SocketAddr>) -> Option<SegmentId> {
        let at = listener?;
        (self.listeners.iter()).find_map(|&(addr, id)| (addr == at).then_some(id))
    }

    /// The longest network holding `client`: its prefix length and segment.
    #[inline]
    fn longest(&self, client: IpAddr) -> Option<(u8, SegmentId)> {
        match client {
            IpAddr::V4(addr) => self.v4.longest(u32::from(addr)),
            IpAddr::V6(addr) => self.v6.longest(u128::from(addr)),
        }
    }

    /// A client this table places in `id`: an address of one of its networks that no longer
    /// network of another segment holds, or else any address on a listener tied to it. Nested
    /// segments (staff `10.10.0.0/16`, printers `10.10.0.0/24`) take the first address of the
    /// outer network, so the addresses next to each nested network are tried too. `None`:
    /// every address of the segment is another segment's.
    pub fn member(&self, id: SegmentId) -> Option<(IpAddr, Option<SocketAddr>)> {
        let own = self
            .networks
            .iter()
            .filter(|(_, s)| *s == id)
            .map(|(n, _)| n);
        for net in own {
            let nested = (self.networks.iter().map(|(n, _)| n))
                .filter(|m| m.prefix_len() > net.prefix_len() && net.contains(*m));
            let beside = nested.flat_map(|m| [step(m.network(), -1), step(m.broadcast(), 1)]);
            let candidates = [Some(net.network()), Some(net.broadcast())]
                .into_iter()
                .chain(beside)
                .flatten()
                .filter(|a| net.contains(a));
            for addr in candidates {
                if self.classify_at(addr, None) == Some(id) {
                    return Some((addr, None));
                }
            }
        }
        let listener = self.listeners.iter().find(|(_, s)| *s == id)?.0;
        Some((listener.ip(), Some(listener)))
    }

    /// The segment, and what decided it.
    pub fn place(
        &self,
        client: IpAddr,
        listener: Option<SocketAddr>,
    ) -> (Option<SegmentId>, Placement) {
        if let (Some(id), Some(at)) = (self.by_listener(listener), listener) {
            return (Some(id), Placement::Listener(at));
        }
        let client = client.to_canonical();
        match self.longest(client) {
            Some((len, id)) => {
                let net = IpNet::new(client, len)
                    .expect("a prefix length in range")
                    .trunc();
                (Some(id), Placement::Network(net))
            }
            None => (self.unknown, Placement::Unknown),
        }
    }

    /// The client's segment by source: the longest prefix containing it, else the
    /// `unknown_clients` segment, else `None` (refused).
    pub fn classify(&self, client: IpAddr) -> Option<SegmentId> {
        // Matched on the address as given (not through `to_canonical`, which rebuilds an
        // `IpAddr` byte by byte on this path).
        let found = match client {
            IpAddr::V4(v4) => self.v4.longest(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4.longest(u32::from(v4)),
                None => self.v6.longest(u128::from(v6)),
            },
        };
        found.map(|(_, id)| id).or(self.unknown)
    }
}

/// The address `by` away from `addr`, if there is one.
fn step(addr: IpAddr, by: i8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) => u32::from(a)
            .checked_add_signed(i32::from(by))
            .map(|a| IpAddr::from(std::net::Ipv4Addr::from(a))),
        IpAddr::V6(a) => {
            let a = u128::from(a);
            let moved = if by < 0 {
                a.checked_sub(1)
            } else {
                a.checked_add(1)
            };
            moved.map(|a| IpAddr::from(std::net::Ipv6Addr::from(a)))
        }
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
            ("10.20.0.0/16", 3),
            ("10.20.30.0/24", 4),
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
            ("10.20.1.1", Some(3)),
            ("10.20.30.40", Some(4)),
            ("10.21.30.40", Some(2)),
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
    fn default_routes_match_everything_else() {
        let nets = [("0.0.0.0/0", 0), ("10.0.0.0/8", 1), ("::/0", 2)];
        let table = SegmentTable::new(
            nets.iter()
                .map(|(n, id)| (n.parse().unwrap(), SegmentId(*id))),
            None,
        );
        for (addr, want) in [("192.0.2.1", 0), ("10.1.1.1", 1), ("2001:db8::1", 2)] {
            assert_eq!(
                table.classify(addr.parse().unwrap()),
                Some(SegmentId(want)),
                "{addr}"
            );
        }
    }

    #[test]
    fn a_member_is_an_address_the_segment_wins() {
        let table = table(None);
        let cases = [
            // 127.0.0.0 is won by 0 (its /32 child is 127.0.0.3 only).
            (0, Some("127.0.0.0")),
            (1, Some("127.0.0.3")),
            (2, Some("10.0.0.0")),
            (3, Some("10.20.0.0")),
            (4, Some("10.20.30.0")),
        ];
        for (id, want) in cases {
            let got = table.member(SegmentId(id)).map(|(a, _)| a);
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "segment {id}");
        }
        // Staff holds 10.10.0.0/16, printers its first /24 and a device its last address.
        let nets = [
            ("10.10.0.0/16", 0),
            ("10.10.0.0/24", 1),
            ("10.10.255.255/32", 2),
        ];
        let nested = SegmentTable::new(
            nets.iter()
                .map(|(n, id)| (n.parse().unwrap(), SegmentId(*id))),
            None,
        );
        let staff = nested.member(SegmentId(0)).unwrap().0;
        assert_eq!(staff, "10.10.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(nested.classify(staff), Some(SegmentId(0)));
        // A segment wholly inside others wins nothing.
        let shadowed = SegmentTable::new(
            [("10.0.0.0/31", 0), ("10.0.0.0/32", 1), ("10.0.0.1/32", 2)]
                .iter()
                .map(|(n, id)| (n.parse().unwrap(), SegmentId(*id))),
            None,
        );
        assert_eq!(shadowed.member(SegmentId(0)), None);
    }

    #[test]
    fn unknown_clients_can_be_given_a_segment() {
        assert_eq!(
            table(Some(SegmentId(2))).classify("192.0.2.1".parse().unwrap()),
            Some(SegmentId(2))
        );
    }
}
