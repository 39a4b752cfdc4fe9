//! PROXY protocol v2 (haproxy.org's `proxy-protocol.txt`) from trusted load balancers: dnsdist
//! (`useProxyProtocol`), HAProxy, a cloud load balancer. Sources in `[server]
//! proxy_protocol_from` must begin every UDP datagram, and every TCP connection (before TLS,
//! for DoT and DoH), with a header; the client is then the source the header names. A `LOCAL`
//! header (the balancer's own health check) keeps the balancer as the client. What lacks a
//! valid header is dropped: a trusted source must not be able to speak for itself by accident.
//! From any other source a header is not looked for.

use std::net::IpAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header, ParseError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The fixed part of a v2 header: signature, version and command, family, length.
const FIXED: usize = 16;
/// Longest header accepted on a stream (addresses plus TLVs; dnsdist sends under 100 bytes).
const MAX_STREAM_HEADER: usize = 1024;
/// A stream's header must arrive within this.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why what a trusted source sent was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no valid PROXY v2 header: {0}")]
    Header(#[from] ParseError),
    #[error("PROXY v2 header of {0} bytes is too long")]
    TooLong(usize),
    #[error("PROXY v2 header not received in time")]
    Timeout,
    #[error("connection failed before its PROXY v2 header: {0}")]
    Io(#[from] std::io::Error),
}

/// The client a header names (`None`: the sender itself), and the header's length.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Option<IpAddr>, usize), ProxyError> {
    let header = Header::try_from(bytes)?;
    Ok((client(&header), header.len()))
}

fn client(header: &Header<'_>) -> Option<IpAddr> {
    if header.command == Command::Local {
        return None;
    }
    match header.addresses {
        Addresses::IPv4(a) => Some(a.source_address.into()),
        // A v4 client behind a dual-stack balancer may come as ::ffff:a.b.c.d.
        Addresses::IPv6(a) => Some(a.source_address.to_canonical()),
        // No address to place the client by (spec: use the connection's).
        Addresses::Unspecified | Addresses::Unix(_) => None,
    }
}

/// Reads a stream's header, and nothing after it; the client it names, or `peer`.
pub(crate) async fn read_stream_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: IpAddr,
) -> Result<IpAddr, ProxyError> {
    let read = async {
        let mut buf = [0u8; MAX_STREAM_HEADER];
        stream.read_exact(&mut buf[..FIXED]).await?;
        let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if FIXED + rest > MAX_STREAM_HEADER {
            // Checked before reading more, so the signature is checked first where it is wrong.
            Header::try_from(&buf[..FIXED])?;
            return Err(ProxyError::TooLong(FIXED + rest));
        }
        stream.read_exact(&mut buf[FIXED..FIXED + rest]).await?;
        let (client, _) = parse(&buf[..FIXED + rest])?;
        Ok(client.unwrap_or(peer))
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};
    use std::net::SocketAddr;

    fn header(command: Command, from: &str, to: &str) -> Vec<u8> {
        let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
        Builder::with_addresses(Version::Two | command, Protocol::Datagram, (from, to))
            .build()
            .unwrap()
    }

    #[test]
    fn a_proxy_header_names_the_client_and_its_length() {
        let mut datagram = header(Command::Proxy, "10.1.2.3:5000", "10.0.0.53:53");
        let len = datagram.len();
        datagram.extend_from_slice(b"query");
        let (client, used) = parse(&datagram).unwrap();
        assert_eq!(client, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(&datagram[used..], b"query");
        assert_eq!(used, len);

        let v6 = header(Command::Proxy, "[2001:db8::7]:5000", "[2001:db8::53]:53");
        assert_eq!(parse(&v6).unwrap().0, Some("2001:db8::7".parse().unwrap()));
        let mapped = header(Command::Proxy, "[::ffff:10.1.2.3]:1", "[::1]:53");
        assert_eq!(parse(&mapped).unwrap().0, Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn a_local_header_keeps_the_sender_and_garbage_is_refused() {
        let local = header(Command::Local, "10.1.2.3:5000", "10.0.0.53:53");
        assert_eq!(parse(&local).unwrap().0, None);
        // A DNS query where a header should be; a header cut short.
        assert!(parse(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        let full = header(Command::Proxy, "10.1.2.3:5000", "10.0.0.53:53");
        assert!(parse(&full[..full.len() - 1]).is_err());
    }

    #[tokio::test]
    async fn a_stream_header_is_read_exactly() {
        let mut bytes = header(Command::Proxy, "10.1.2.3:5000", "10.0.0.53:53");
        bytes.extend_from_slice(&[0, 12]);
        let mut stream = &bytes[..];
        let peer = "127.0.0.1".parse().unwrap();
        let client = read_stream_header(&mut stream, peer).await.unwrap();
        assert_eq!(client, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(stream, &[0, 12], "what follows the header is left to read");

        let mut local = &header(Command::Local, "10.1.2.3:5000", "10.0.0.53:53")[..];
        assert_eq!(read_stream_header(&mut local, peer).await.unwrap(), peer);

        let mut plain: &[u8] = &[0, 29, 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(read_stream_header(&mut plain, peer).await.is_err());
    }
}
