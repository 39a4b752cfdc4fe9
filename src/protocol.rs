//! The ways of asking portvakt, each one value that knows what it is: its `transport` label,
//! the `[server]` key of its listeners, whether its queries come as datagrams (cut to the
//! client's size, rate-limited and PROXY-headed one by one) or over streams (held to the
//! `tcp_*` limits), and, when encrypted, what DDR advertises for it. A new transport is a
//! variant here and its listener in `transport/`; the config, DDR, the export, the metrics,
//! the status view and the gateway read it from here.

/// How a query came and its reply leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
    /// DNS over QUIC (RFC 9250).
    Quic,
    /// DNS over HTTPS on HTTP/3 (RFC 8484 over RFC 9114).
    H3,
}

impl Transport {
    pub const ALL: [Transport; 6] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Https,
        Transport::Quic,
        Transport::H3,
    ];

    /// The value of the `transport` label, and the name in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Https => "https",
            Transport::Quic => "quic",
            Transport::H3 => "h3",
        }
    }

    /// Its name in messages (`failed to bind TLS 0.0.0.0:853`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Https => "HTTPS",
            Transport::Quic => "QUIC",
            Transport::H3 => "HTTP/3",
        }
    }

    /// The `[server]` key that lists its listeners (UDP and TCP share `listen`).
    pub fn listen_key(self) -> &'static str {
        match self {
            Transport::Udp | Transport::Tcp => "listen",
            Transport::Tls => "tls_listen",
            Transport::Https => "https_listen",
            Transport::Quic => "quic_listen",
            Transport::H3 => "h3_listen",
        }
    }

    /// Queries as datagrams: a reply larger than the client takes is cut (TC=1), and each
    /// datagram is rate-limited and may carry its own PROXY v2 header. Otherwise a stream,
    /// held to the connection limits (`tcp_*`) and reading a PROXY header once.
    pub fn is_datagram(self) -> bool {
        self == Transport::Udp
    }

    /// Whether its listeners are UDP sockets (else TCP): a UDP and a TCP listener may share
    /// an address.
    pub fn over_udp(self) -> bool {
        matches!(self, Transport::Udp | Transport::Quic | Transport::H3)
    }

    /// For an encrypted transport, the ALPN that DDR advertises (RFC 9461); `None` for the
    /// plain ones.
    pub fn alpn(self) -> Option<&'static str> {
        match self {
            Transport::Udp | Transport::Tcp => None,
            Transport::Tls => Some("dot"),
            Transport::Https => Some("h2"),
            Transport::Quic => Some("doq"),
            Transport::H3 => Some("h3"),
        }
    }

    /// For an encrypted transport, the ALPN protocols its TLS server offers (`None` for the
    /// plain ones).
    pub fn server_alpn(self) -> Option<&'static [&'static [u8]]> {
        match self {
            Transport::Udp | Transport::Tcp => None,
            Transport::Tls => Some(&[b"dot"]),
            Transport::Https => Some(&[b"h2", b"http/1.1"]),
            Transport::Quic => Some(&[b"doq"]),
            Transport::H3 => Some(&[b"h3"]),
        }
    }

    /// Whether its TLS is 1.3 only (inside QUIC, RFC 9001).
    pub fn tls13_only(self) -> bool {
        self.over_udp()
    }

    /// Whether DDR advertises its path (`dohpath`, RFC 9461) with it.
    pub fn has_path(self) -> bool {
        matches!(self, Transport::Https | Transport::H3)
    }

    /// The encrypted transports, in the order DDR advertises them.
    pub fn encrypted() -> impl Iterator<Item = Transport> {
        Transport::ALL.into_iter().filter(|t| t.alpn().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_has_its_own_label_and_the_encrypted_ones_a_key_of_their_own() {
        let labels: std::collections::BTreeSet<&str> =
            Transport::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(labels.len(), Transport::ALL.len());
        let encrypted: Vec<Transport> = Transport::encrypted().collect();
        assert_eq!(
            encrypted,
            [
                Transport::Tls,
                Transport::Https,
                Transport::Quic,
                Transport::H3
            ]
        );
        // The metrics index by `transport as usize`: `ALL` is in declaration order.
        for (i, t) in Transport::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i, "{t:?}");
        }
        for t in encrypted {
            assert_ne!(t.listen_key(), "listen");
            assert!(!t.is_datagram());
        }
        assert!(Transport::Udp.is_datagram() && !Transport::Tcp.is_datagram());
    }
}
