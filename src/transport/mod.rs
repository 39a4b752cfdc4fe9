//! The transports: binds UDP and TCP on every listen address, and the encrypted listeners,
//! and feeds the gateway core. UDP is our own receive loop (`udp.rs`), TCP our own accept loop
//! and connections with their limits (`tcp.rs`; DoT and DoH on top), DoQ and DoH3 our own
//! accept loop on quinn under the same limits (`quic.rs`; `h3.rs` on top). DoH over every HTTP
//! version shares one core (`doh.rs`). All stop when the shutdown token they were given is
//! cancelled.

mod doh;
mod h3;
mod https;
pub mod quic;
mod stream;
mod tcp;
mod tls;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{EncryptedSettings, TcpLimits};
use crate::gateway::{Client, Gateway, Transport};
use stream::Connection;
use tcp::Tcp;
use udp::Udp;

/// Ports tried for a listen address with port 0 (UDP and TCP must share one).
const PORT_ATTEMPTS: u32 = 20;
/// In-flight queries get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind {proto} {addr}")]
pub struct BindError {
    pub proto: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The DNS listeners' addresses as bound (port 0 in the config resolved).
#[derive(Debug, Clone, Default)]
pub struct ListenAddrs(std::collections::BTreeMap<Transport, Vec<SocketAddr>>);

impl ListenAddrs {
    /// The listeners of `transport` as bound.
    pub fn of(&self, transport: Transport) -> &[SocketAddr] {
        self.0.get(&transport).map_or(&[], Vec::as_slice)
    }
}

/// The bound DNS listeners.
pub struct Listeners {
    pub addrs: ListenAddrs,
    /// Stops the transports once the shutdown token is cancelled.
    stopper: JoinHandle<()>,
}

impl Listeners {
    /// Binds every address for UDP and TCP and serves until `stop` is cancelled; then UDP
    /// stops receiving, in-flight queries get a grace period, and TCP stops. Must run
    /// inside the runtime.
    pub async fn bind(
        addrs: &[SocketAddr],
        encrypted: &EncryptedSettings,
        gateway: Arc<Gateway>,
        stop: CancellationToken,
    ) -> Result<Listeners, BindError> {
        // Every address is bound before any loop starts, so a failure leaves nothing running.
        let mut bound_all = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let udp_error = |source| BindError {
                proto: "UDP",
                addr,
                source,
            };
            // Port 0 means "any": every socket and TCP take the port the first UDP socket got.
            // That port may be taken for TCP; then another is tried.
            let mut attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
            let (sockets, bound, listener) = loop {
                let sockets = udp::bind(addr, udp::workers()).map_err(udp_error)?;
                let bound = sockets[0].local_addr().map_err(udp_error)?;
                attempts -= 1;
                match TcpListener::bind(bound).await {
                    Ok(listener) => break (sockets, bound, listener),
                    Err(err) if err.kind() == io::ErrorKind::AddrInUse && attempts > 0 => {}
                    Err(source) => {
                        return Err(BindError {
                            proto: "TCP",
                            addr: bound,
                            source,
                        });
                    }
                }
            };
            bound_all.push((sockets, bound, listener));
        }
        // DoT and DoH listen on TCP, DoQ and DoH3 on UDP.
        let limits = gateway.with_policy(|p| p.config().tcp);
        let mut encrypted_listeners = Vec::new();
        let mut quic_endpoints = Vec::new();
        let mut bound_encrypted = std::collections::BTreeMap::<_, Vec<_>>::new();
        for &(transport, addr) in &encrypted.listen {
            let bind_error = |source| BindError {
                proto: transport.name(),
                addr,
                source,
            };
            let bound = if transport.over_udp() {
                let no_certificate = || io::Error::other("no certificate for the QUIC listener");
                let tls = (encrypted.certificate.as_ref().map(|c| c.server(transport)))
                    .ok_or_else(|| bind_error(no_certificate()))?;
                let endpoint = quic::bind(addr, &tls, limits, transport).map_err(bind_error)?;
                let bound = endpoint.local_addr().map_err(bind_error)?;
                quic_endpoints.push((endpoint, transport));
                bound
            } else {
                let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
                let bound = listener.local_addr().map_err(bind_error)?;
                encrypted_listeners.push((listener, transport));
                bound
            };
            bound_encrypted.entry(transport).or_default().push(bound);
        }
        let mut udp = Udp::new();
        let tcp = Tcp::new(limits);
        let addrs: Vec<SocketAddr> = bound_all.iter().map(|(_, bound, _)| *bound).collect();
        for (sockets, addr, listener) in bound_all {
            for socket in sockets {
                if let Err(source) = udp.serve(socket, gateway.clone()) {
                    udp.stop(Duration::ZERO).await;
                    return Err(BindError {
                        proto: "UDP",
                        addr,
                        source,
                    });
                }
            }
            tcp.serve(listener, Transport::Tcp, gateway.clone());
        }
        for (listener, stream) in encrypted_listeners {
            tcp.serve(listener, stream, gateway.clone());
        }
        // DoQ and DoH3 connections count against the same caps.
        for (endpoint, kind) in quic_endpoints {
            let accept = quic::Accept {
                endpoint,
                caps: tcp.clone(),
                gateway: gateway.clone(),
                kind,
            };
            tcp.tasks.spawn(accept.run());
        }
        let stopper = tokio::spawn(async move {
            stop.cancelled().await;
            tokio::join!(udp.stop(SHUTDOWN_GRACE), tcp.stop(SHUTDOWN_GRACE));
        });
        let mut bound = bound_encrypted;
        bound.insert(Transport::Udp, addrs.clone());
        bound.insert(Transport::Tcp, addrs);
        Ok(Listeners {
            addrs: ListenAddrs(bound),
            stopper,
        })
    }

    /// Waits until both transports have stopped (after the shutdown token was cancelled).
    pub async fn stopped(self) {
        let _ = self.stopper.await;
    }
}

/// Serves DNS over one byte stream from `client` as over a TCP connection (RFC 7766: each
/// message after its two-byte length, pipelined, answered in any order) until the stream ends,
/// idles, or has spent its query budget. Public for the framing fuzz target.
pub async fn serve_stream<R, W>(
    gateway: Arc<Gateway>,
    client: Client,
    read: R,
    write: W,
    limits: TcpLimits,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let connection = Connection {
        gateway,
        client,
        transport: Transport::Tcp,
        limits,
        stop: CancellationToken::new(),
    };
    connection.serve(tokio::io::join(read, write)).await;
}
