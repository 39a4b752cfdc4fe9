//! DNS over QUIC to one upstream server (RFC 9250), on hickory's QUIC client: one connection,
//! opened on first use and shared by every query (each on a stream of its own), opened again
//! after a query finds it failed. The certificate is verified against the server's name with
//! the group's roots, as for `tls://`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message};
use hickory_resolver::net::quic::QuicClientStream;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use prometheus::IntCounter;
use tracing::debug;

use super::answers;

type Exchange = DnsExchange<TokioRuntimeProvider>;

/// The QUIC connection to one server.
pub(super) struct Quic {
    server: SocketAddr,
    /// The name the certificate must carry.
    name: Arc<str>,
    /// The group's roots; hickory sets the ALPN (`doq`).
    config: rustls::ClientConfig,
    current: tokio::sync::Mutex<Option<Exchange>>,
    /// Counts connections opened.
    opened: IntCounter,
}

impl Quic {
    pub fn new(
        server: SocketAddr,
        name: &str,
        config: &rustls::ClientConfig,
        opened: IntCounter,
    ) -> Quic {
        Quic {
            server,
            name: name.into(),
            config: config.clone(),
            current: tokio::sync::Mutex::new(None),
            opened,
        }
    }

    /// Asks `request` (no length prefix) and returns the answer with the request's ID, when
    /// it answers the request's question.
    pub async fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let message = Message::from_vec(request).map_err(io::Error::other)?;
        let exchange = self.exchange().await?;
        let sent = exchange.send(DnsRequest::new(message, DnsRequestOptions::default()));
        let mut answer = match sent.first_answer().await {
            Ok(response) => response.into_buffer(),
            Err(err) => {
                debug!(server = %self.server, %err, "quic upstream failed; reconnecting next time");
                self.current.lock().await.take();
                return Err(io::Error::other(err));
            }
        };
        // DoQ carries Message ID 0: the answer takes the request's back.
        if answer.len() < 12 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        answer[..2].copy_from_slice(&request[..2]);
        match answers(request, &answer) {
            true => Ok(answer),
            false => Err(io::ErrorKind::InvalidData.into()),
        }
    }

    /// The open connection, or a new one.
    async fn exchange(&self) -> io::Result<Exchange> {
        let mut current = self.current.lock().await;
        if let Some(exchange) = current.as_ref() {
            return Ok(exchange.clone());
        }
        let connect = QuicClientStream::builder()
            .crypto_config(self.config.clone())
            .build(self.server, self.name.clone());
        let stream = connect.await.map_err(io::Error::other)?;
        let (exchange, background) = Exchange::from_stream(stream);
        tokio::spawn(background);
        self.opened.inc();
        *current = Some(exchange.clone());
        Ok(exchange)
    }
}
