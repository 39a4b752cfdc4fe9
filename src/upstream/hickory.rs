//! DNS over QUIC (RFC 9250) and over HTTPS (RFC 8484, HTTP/2 or HTTP/3) to one upstream server, on
//! hickory's clients: one connection, opened on first use and shared by every query (each on
//! a stream of its own), opened again after a query finds it failed (only that one: a failure
//! seen late on an old connection leaves its successor alone). The certificate is verified against the server's name with
//! the group's roots, as for `tls://`. A server given by host name is looked up each time a
//! connection opens, through the groups' servers given by address (`resolve.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message};
use hickory_resolver::net::h2::HttpsClientStream;
use hickory_resolver::net::h3::H3ClientStream;
use hickory_resolver::net::quic::QuicClientStream;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsExchange, DnsHandle, FirstAnswer};
use prometheus::IntCounter;
use tracing::debug;

use super::{Upstreams, answers};

type Exchange = DnsExchange<TokioRuntimeProvider>;

/// How the server is spoken to.
pub(super) enum Link {
    Quic,
    /// DoH on HTTP/2, on this path.
    Https(Arc<str>),
    /// DoH on HTTP/3, on this path.
    H3(Arc<str>),
}

/// A server's host name, and the upstreams (servers given by address) that find it.
pub(super) type Host = (Arc<str>, Arc<Upstreams>);

/// The DoQ or DoH connection to one server.
pub(super) struct Hickory {
    /// Its address; for a server given by host name, the port.
    server: SocketAddr,
    host: Option<Host>,
    link: Link,
    /// The name the certificate must carry.
    name: Arc<str>,
    /// The group's roots; hickory sets the ALPN (`doq`, `h2`, `h3`).
    config: rustls::ClientConfig,
    /// The connection, with its generation (the count of connections opened when it was).
    current: tokio::sync::Mutex<Option<(u64, Exchange)>>,
    /// Counts connections opened.
    opened: IntCounter,
}

impl Hickory {
    pub fn new(
        server: SocketAddr,
        link: Link,
        name: &str,
        config: &rustls::ClientConfig,
        opened: IntCounter,
    ) -> Hickory {
        Hickory {
            server,
            host: None,
            link,
            name: name.into(),
            config: config.clone(),
            current: tokio::sync::Mutex::new(None),
            opened,
        }
    }

    /// Looked up by `host` when it connects.
    pub fn found_by(mut self, host: Option<Host>) -> Hickory {
        self.host = host;
        self
    }

    /// Asks `request` (no length prefix) and returns the answer with the request's ID, when
    /// it answers the request's question. A query that finds a reused connection failed is
    /// asked once more on a new one (the server may have closed it as idle).
    pub async fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let (generation, exchange, fresh) = self.exchange().await?;
        match self.ask_on(&exchange, request).await {
            Err(err) if !fresh => {
                debug!(server = %self.server, %err, "reused connection failed; reconnecting");
                self.forget(generation).await;
                let (generation, exchange, _) = self.exchange().await?;
                let answer = self.ask_on(&exchange, request).await;
                if answer.is_err() {
                    self.forget(generation).await;
                }
                answer
            }
            Err(err) => {
                self.forget(generation).await;
                Err(err)
            }
            answer => answer,
        }
    }

    async fn ask_on(&self, exchange: &Exchange, request: &[u8]) -> io::Result<Vec<u8>> {
        let message = Message::from_vec(request).map_err(io::Error::other)?;
        let sent = exchange.send(DnsRequest::new(message, DnsRequestOptions::default()));
        let mut answer = (sent.first_answer().await)
            .map_err(io::Error::other)?
            .into_buffer();
        // DoQ and DoH carry Message ID 0: the answer takes the request's back.
        if answer.len() < 12 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        answer[..2].copy_from_slice(&request[..2]);
        match answers(request, &answer) {
            true => Ok(answer),
            false => Err(io::ErrorKind::InvalidData.into()),
        }
    }

    /// Drops connection `generation`, unless a newer one has replaced it already.
    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// The open connection (its generation), or a new one (`true`).
    async fn exchange(&self) -> io::Result<(u64, Exchange, bool)> {
        let mut current = self.current.lock().await;
        if let Some((generation, exchange)) = current.as_ref() {
            return Ok((*generation, exchange.clone(), false));
        }
        let server = match &self.host {
            None => self.server,
            Some((host, upstreams)) => {
                let found = upstreams.resolve(host).await?;
                SocketAddr::new(found[0], self.server.port())
            }
        };
        let (name, config) = (self.name.clone(), self.config.clone());
        let exchange = match &self.link {
            Link::Quic => {
                let connect = QuicClientStream::builder().crypto_config(config);
                started(connect.build(server, name).await)?
            }
            Link::Https(path) => {
                let builder =
                    HttpsClientStream::builder(Arc::new(config), TokioRuntimeProvider::new());
                started(builder.build(server, name, path.clone()).await)?
            }
            Link::H3(path) => {
                let connect = H3ClientStream::builder().crypto_config(config);
                started(connect.build(server, name, path.clone()).await)?
            }
        };
        self.opened.inc();
        let generation = self.opened.get();
        *current = Some((generation, exchange.clone()));
        Ok((generation, exchange, true))
    }
}

/// The exchange over a connected stream, its background task spawned.
fn started<S, E>(connected: Result<S, E>) -> io::Result<Exchange>
where
    S: hickory_resolver::net::xfer::DnsRequestSender,
    E: std::error::Error + Send + Sync + 'static,
{
    let (exchange, background) = Exchange::from_stream(connected.map_err(io::Error::other)?);
    tokio::spawn(background);
    Ok(exchange)
}
