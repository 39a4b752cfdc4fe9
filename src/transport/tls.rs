//! DNS over TLS (RFC 7858): a TLS handshake under the certificate of the config in force,
//! then the framing and connection of TCP. A reload that swaps the certificate applies from
//! the next handshake; open connections keep theirs.

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use super::stream::Connection;
use crate::metrics::Handshake;

/// Serves one DoT connection.
pub(super) async fn serve(conn: Connection, stream: TcpStream) {
    if let Some(stream) = handshake(&conn, stream).await {
        conn.serve(stream).await;
    }
}

/// The server side of a TLS handshake with the running config's certificate, for the
/// connection's transport (DoT or DoH: their ALPN differ), counted by result.
pub(super) async fn handshake(
    conn: &Connection,
    stream: TcpStream,
) -> Option<TlsStream<TcpStream>> {
    let config = (conn.gateway).with_policy(|p| {
        let certificate = p.config().encrypted.certificate.as_ref();
        certificate.map(|c| c.server(conn.transport))
    })?;
    let metrics = &conn.gateway.metrics().tcp;
    let accept = TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(conn.limits.handshake, accept).await {
        Ok(Ok(stream)) => {
            metrics.handshake(Handshake::Ok);
            Some(stream)
        }
        Ok(Err(err)) => {
            debug!(%err, "tls handshake failed");
            metrics.handshake(Handshake::Failed);
            None
        }
        Err(_) => {
            metrics.handshake(Handshake::Timeout);
            None
        }
    }
}
