//! DNS over QUIC (RFC 9250), and the QUIC side of DoH3 (`h3.rs`): our own accept loop on
//! quinn, under the limits of the stream
//! listeners (their caps on connections in total and per client are shared; the client's is
//! taken once the handshake has proved its address). hickory-server's
//! DoQ listener awaits each handshake inside its accept loop and each stream's answer before
//! it takes the next stream, and caps no connection; here every connection's handshake runs in
//! its own task under `tls_handshake_timeout_ms`, and a connection's streams are answered
//! concurrently, at most `STREAMS` at once (the peer may not open more).
//!
//! A stream carries one query (its two-byte length, then the message, Message ID 0) and one
//! reply. A connection ends when idle, after its query budget, or at shutdown, closed with
//! DOQ_NO_ERROR; a stream that sends its query too slowly is reset (counted as `slow`), one
//! whose reply is not taken in time too (`write`). A new certificate applies from the next
//! handshake, as for DoT.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::stream::Connection;
use super::tcp::Tcp;
use crate::client::budget::ClientBudget;
use crate::config::TcpLimits;
use crate::gateway::{Client, Gateway, Step, Transport};
use crate::metrics::{Handshake, TcpLimit};

/// Streams one DoQ connection may have open at once (the QUIC transport parameter).
pub const STREAMS: u32 = 64;
/// Request streams one DoH3 connection may have open at once (RFC 9114 §6.1: at least 100).
const H3_STREAMS: u32 = 100;
/// A DoH3 client's unidirectional streams: control and QPACK's two, and room for GREASE.
const H3_UNI_STREAMS: u32 = 8;

/// RFC 9250 §4.3 error codes.
const DOQ_NO_ERROR: u32 = 0x0;
const DOQ_INTERNAL_ERROR: u32 = 0x1;
const DOQ_PROTOCOL_ERROR: u32 = 0x2;
const DOQ_EXCESSIVE_LOAD: u32 = 0x4;
/// RFC 9114 §8.1.
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// What one stream may have in flight towards us: a query, its length and a little more.
const STREAM_WINDOW: u32 = 65_537 + 1024;
/// What one connection may have in flight towards us, over all its streams: sixteen whole
/// queries, or many small ones.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;
/// Our replies not yet acknowledged, per connection.
const SEND_WINDOW: u64 = 1 << 20;

/// Binds a QUIC endpoint for `kind` (DoQ or DoH3) on `addr` with `tls` (TLS 1.3).
pub(super) fn bind(
    addr: SocketAddr,
    tls: &Arc<rustls::ServerConfig>,
    limits: TcpLimits,
    kind: Transport,
) -> std::io::Result<Endpoint> {
    Endpoint::server(server_config(tls, limits, kind)?, addr)
}

/// The QUIC side of `tls`: streams per connection (unidirectional ones only for HTTP/3's
/// control and QPACK streams), flow-control
/// windows sized for DNS messages (quinn's defaults let a connection buffer megabytes), the
/// idle timeout with keep-alives, and a client held to the address it started from.
fn server_config(
    tls: &Arc<rustls::ServerConfig>,
    limits: TcpLimits,
    kind: Transport,
) -> std::io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls.clone())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let mut transport = quinn::TransportConfig::default();
    let (bidi, uni) = match kind {
        Transport::H3 => (H3_STREAMS, H3_UNI_STREAMS),
        _ => (STREAMS, 0),
    };
    transport.max_concurrent_bidi_streams(VarInt::from_u32(bidi));
    transport.max_concurrent_uni_streams(VarInt::from_u32(uni));
    transport.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    transport.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    transport.send_window(SEND_WINDOW);
    // The listener's own idle deadline closes (and counts) a connection without streams; the
    // transport's, past it, ends a peer that vanished. Keep-alives stop the transport's from
    // ending a connection whose queries wait on a slow upstream.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle * 2).ok());
    transport.keep_alive_interval(Some(limits.idle / 2));
    transport.datagram_receive_buffer_size(None);
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    // A connection's segment is decided by the address it came from; it may not move.
    config.migration(false);
    Ok(config)
}

/// One DoQ or DoH3 listener's accept loop, with the caps it shares with the stream listeners.
pub(super) struct Accept {
    pub(super) endpoint: Endpoint,
    pub(super) caps: Tcp,
    pub(super) gateway: Arc<Gateway>,
    /// `Quic` or `H3`.
    pub(super) kind: Transport,
}

impl Accept {
    pub(super) async fn run(self) {
        let local = self.endpoint.local_addr().ok();
        // The QUIC config of the certificate in force, made again when a reload swaps it.
        let mut current: Option<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)> = None;
        loop {
            let incoming = tokio::select! {
                () = self.caps.stop.cancelled() => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let metrics = &self.gateway.metrics().quic;
            let Some(config) = self.config(&mut current) else {
                incoming.refuse();
                continue;
            };
            // Under pressure, a client proves its address first (a Retry round trip), so
            // forged sources cannot hold the connection slots.
            let pressed = self.caps.total.available_permits() < self.caps.limits.connections / 2;
            if pressed && !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            let Ok(connection) = self.caps.total.clone().try_acquire_owned() else {
                metrics.hit(TcpLimit::Total);
                incoming.refuse();
                continue;
            };
            let served = Connection {
                gateway: self.gateway.clone(),
                client: Client {
                    addr: incoming.remote_address().ip(),
                    listener: local,
                },
                transport: self.kind,
                limits: self.caps.limits,
                stop: self.caps.stop.clone(),
            };
            let clients = self.caps.clients.clone();
            self.caps.tasks.spawn(async move {
                let _held = connection;
                connection_of(served, incoming, config, &clients).await;
            });
        }
        // New connections are refused from now on; open ones finish their streams and are
        // closed by their tasks. Their close frames leave before the endpoint goes (within
        // the shutdown grace that bounds this task).
        self.endpoint.set_server_config(None);
        self.endpoint.wait_idle().await;
    }

    /// The QUIC config for the certificate in force (`None`: there is none).
    fn config(
        &self,
        current: &mut Option<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)>,
    ) -> Option<Arc<quinn::ServerConfig>> {
        let tls = (self.gateway).with_policy(|p| {
            p.config()
                .encrypted
                .certificate
                .as_ref()
                .map(|c| c.server(self.kind))
        })?;
        if let Some((made_from, config)) = current
            && Arc::ptr_eq(made_from, &tls)
        {
            return Some(config.clone());
        }
        let config = Arc::new(server_config(&tls, self.caps.limits, self.kind).ok()?);
        *current = Some((tls, config.clone()));
        Some(config)
    }
}

/// The handshake, then the connection's streams (DoQ's or DoH3's) until it idles, spends its
/// budget, is closed by the client or the listener stops; then its answers in flight. The
/// client's own cap is taken once the handshake has proved its address: forged Initials
/// cannot spend another client's connections.
async fn connection_of(
    conn: Connection,
    incoming: Incoming,
    config: Arc<quinn::ServerConfig>,
    clients: &Arc<ClientBudget>,
) {
    let metrics = conn.limit_metrics();
    let connecting = match incoming.accept_with(config) {
        Ok(connecting) => connecting,
        Err(err) => {
            debug!(%err, "quic connection failed");
            return;
        }
    };
    let connection = match tokio::time::timeout(conn.limits.handshake, connecting).await {
        Ok(Ok(connection)) => {
            metrics.handshake(Handshake::Ok);
            connection
        }
        Ok(Err(err)) => {
            debug!(%err, "quic handshake failed");
            metrics.handshake(Handshake::Failed);
            return;
        }
        Err(_) => {
            metrics.handshake(Handshake::Timeout);
            return;
        }
    };
    let Some(_client) = clients.admit(conn.client.addr, true) else {
        metrics.hit(TcpLimit::Client);
        let code = match conn.transport {
            Transport::H3 => H3_EXCESSIVE_LOAD,
            _ => DOQ_EXCESSIVE_LOAD,
        };
        connection.close(VarInt::from_u32(code), b"too many connections");
        return;
    };
    metrics.open.inc();
    match conn.transport {
        Transport::H3 => super::h3::serve(conn.clone(), connection).await,
        _ => conn.doq(connection).await,
    }
    metrics.open.dec();
}

impl Connection {
    /// A DoQ connection's streams, each one query, answered concurrently.
    async fn doq(&self, connection: quinn::Connection) {
        let streams = TaskTracker::new();
        let mut queries = 0u32;
        let code = loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => break DOQ_NO_ERROR,
                accepted = tokio::time::timeout(self.limits.idle, connection.accept_bi()) => accepted,
            };
            let (send, recv) = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(quinn::ConnectionError::TimedOut)) => {
                    self.limit_metrics().hit(TcpLimit::Idle);
                    break DOQ_NO_ERROR;
                }
                Ok(Err(_)) => break DOQ_NO_ERROR, // closed by the client
                Err(_) if streams.is_empty() => {
                    self.limit_metrics().hit(TcpLimit::Idle);
                    break DOQ_NO_ERROR;
                }
                Err(_) => continue, // answers still in flight: not idle
            };
            streams.spawn(self.clone().stream(connection.clone(), send, recv));
            queries += 1;
            if queries >= self.limits.queries {
                self.limit_metrics().hit(TcpLimit::Queries);
                break DOQ_NO_ERROR;
            }
        };
        streams.close();
        streams.wait().await;
        connection.close(VarInt::from_u32(code), b"");
        debug!(client = %self.client.addr, queries, "quic connection closed");
    }

    /// One stream: its query within the read deadline, its reply within the write deadline.
    async fn stream(
        self,
        connection: quinn::Connection,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let served = exchange(
            &self.gateway,
            self.client,
            self.limits,
            &mut recv,
            &mut send,
        )
        .await;
        let reset = match served {
            Ok(()) => {
                // Held until the reply is acknowledged, so that closing the connection after
                // its last stream cannot cut the reply off.
                let _ = tokio::time::timeout(self.limits.write, send.stopped()).await;
                return;
            }
            // The query cut short by the stream's end (RFC 9250 §4.3.3), or the client
            // gave the stream up.
            Err(Exchange::Closed) => DOQ_PROTOCOL_ERROR,
            Err(Exchange::NonzeroId) => {
                // RFC 9250 §4.2.1: a connection error.
                connection.close(VarInt::from_u32(DOQ_PROTOCOL_ERROR), b"message id not 0");
                return;
            }
            Err(Exchange::Slow) => {
                self.limit_metrics().hit(TcpLimit::Slow);
                let _ = recv.stop(VarInt::from_u32(DOQ_NO_ERROR));
                DOQ_NO_ERROR
            }
            Err(Exchange::Write) => {
                self.limit_metrics().hit(TcpLimit::Write);
                DOQ_NO_ERROR
            }
            // Not a query (a response, or shorter than a header).
            Err(Exchange::Dropped) => DOQ_PROTOCOL_ERROR,
            Err(Exchange::TooLarge) => DOQ_INTERNAL_ERROR,
        };
        let _ = send.reset(VarInt::from_u32(reset));
    }
}

/// Why a stream's exchange ended without a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    /// The stream ended or was reset before a whole query.
    Closed,
    /// The query's Message ID is not 0 (RFC 9250 §4.2.1).
    NonzeroId,
    /// The query did not arrive within the read deadline.
    Slow,
    /// The gateway answers nothing (a response, not a query).
    Dropped,
    /// The reply is longer than a length field holds.
    TooLarge,
    /// The reply was not taken within the write deadline.
    Write,
}

/// One DoQ stream's exchange: the query (two-byte length, message with ID 0) read from `read`
/// within `limits.read`, answered by the gateway, the reply written to `write` within
/// `limits.write` and the stream finished. Public for the framing fuzz target.
pub async fn exchange<R, W>(
    gateway: &Gateway,
    client: Client,
    limits: TcpLimits,
    read: &mut R,
    write: &mut W,
) -> Result<(), Exchange>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let packet = (tokio::time::timeout(limits.read, read_query(read)).await)
        .map_err(|_| Exchange::Slow)??;
    let mut reply = Vec::with_capacity(512);
    match gateway.answer_now(&packet, client, Transport::Quic, &mut reply) {
        Step::Reply => {}
        Step::Drop => return Err(Exchange::Dropped),
        Step::Forward(pending) => gateway.forward(pending, &mut reply).await,
    }
    let len = u16::try_from(reply.len()).map_err(|_| Exchange::TooLarge)?;
    let mut out = Vec::with_capacity(2 + reply.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&reply);
    let written = async {
        write.write_all(&out).await?;
        write.shutdown().await
    };
    match tokio::time::timeout(limits.write, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Exchange::Closed),
        Err(_) => Err(Exchange::Write),
    }
}

/// One DoQ query from a stream: its two-byte length, then the message, whose ID must be 0.
async fn read_query<R: AsyncRead + Unpin>(read: &mut R) -> Result<Vec<u8>, Exchange> {
    let mut len = [0u8; 2];
    read.read_exact(&mut len)
        .await
        .map_err(|_| Exchange::Closed)?;
    // Grown as bytes arrive: a length alone reserves nothing.
    let len = u16::from_be_bytes(len);
    let mut packet = Vec::with_capacity(usize::from(len.min(512)));
    let mut body = read.take(u64::from(len));
    body.read_to_end(&mut packet)
        .await
        .map_err(|_| Exchange::Closed)?;
    if packet.len() < usize::from(len) {
        return Err(Exchange::Closed);
    }
    match packet.get(..2) {
        Some([0, 0]) | None => Ok(packet),
        Some(_) => Err(Exchange::NonzeroId),
    }
}
