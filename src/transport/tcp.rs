//! TCP listeners (RFC 7766) and the DoT and DoH listeners on top: our own accept loop, so that
//! connections can be capped (hickory-server's listener accepts without limit and cannot be
//! filtered). A connection is refused at accept when the total or its client's count is full
//! (the caps are shared by the three kinds of listener); then it is served as plain DNS over
//! TCP (`stream.rs`), after a TLS handshake (`tls.rs`), or as HTTPS (`https.rs`). A load
//! balancer's connection first gives its PROXY v2 header (`proxy.rs`), and counts against the
//! client the header names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::stream::Connection;
use crate::client::budget::ClientBudget;
use crate::client::proxy;
use crate::config::TcpLimits;
use crate::gateway::{Client, Gateway, Transport};
use crate::metrics::TcpLimit;

/// After an accept error (out of descriptors), wait this long before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connection listeners (TCP, TLS, HTTPS, QUIC) and their connections: the limits and
/// caps they share. Each accept loop holds a clone.
#[derive(Clone)]
pub(super) struct Tcp {
    pub(super) limits: TcpLimits,
    pub(super) total: Arc<Semaphore>,
    pub(super) clients: Arc<ClientBudget>,
    /// Accept loops and connections.
    pub(super) tasks: TaskTracker,
    /// Cancelled when the listeners stop accepting; connections then take no new query.
    pub(super) stop: CancellationToken,
}

impl Tcp {
    pub(super) fn new(limits: TcpLimits) -> Tcp {
        Tcp {
            total: Arc::new(Semaphore::new(limits.connections)),
            clients: ClientBudget::new(limits.per_client),
            limits,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Accepts on `listener` until stopped.
    pub(super) fn serve(&self, listener: TcpListener, stream: Transport, gateway: Arc<Gateway>) {
        let accept = Accept {
            stream,
            local: listener.local_addr().ok(),
            caps: self.clone(),
            gateway,
        };
        self.tasks.spawn(accept.run(listener));
    }

    /// Stops accepting and reading; queries in flight get up to `grace` for their answers.
    pub(super) async fn stop(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

struct Accept {
    /// What the listener speaks: TCP, TLS or HTTPS.
    stream: Transport,
    local: Option<SocketAddr>,
    caps: Tcp,
    gateway: Arc<Gateway>,
}

impl Accept {
    async fn run(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                () = self.caps.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    debug!(%err, "tcp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let metrics = &self.gateway.metrics().tcp;
            let Ok(connection) = self.caps.total.clone().try_acquire_owned() else {
                metrics.hit(TcpLimit::Total);
                continue; // dropped: closed at once
            };
            // A load balancer's connection counts against the client its header names.
            let proxied = self.gateway.with_policy(|p| p.behind_proxy(peer.ip()));
            let admitted = match proxied {
                true => None,
                false => match self.caps.clients.admit(peer.ip(), true) {
                    Some(permit) => Some(permit),
                    None => {
                        metrics.hit(TcpLimit::Client);
                        continue;
                    }
                },
            };
            let mut conn = Connection {
                gateway: self.gateway.clone(),
                client: Client {
                    addr: peer.ip(),
                    listener: self.local,
                },
                transport: self.stream,
                limits: self.caps.limits,
                stop: self.caps.stop.clone(),
            };
            let (kind, clients) = (self.stream, self.caps.clients.clone());
            self.caps.tasks.spawn(async move {
                let mut stream = stream;
                let client = match admitted {
                    Some(permit) => permit,
                    None => {
                        let metrics = conn.gateway.metrics();
                        match proxy::read_stream_header(&mut stream, peer.ip()).await {
                            Ok(named) => conn.client.addr = named,
                            Err(err) => {
                                debug!(%err, "dropped a connection from a load balancer");
                                metrics.query.proxy_errors.inc();
                                return;
                            }
                        }
                        let Some(permit) = clients.admit(conn.client.addr, true) else {
                            metrics.tcp.hit(TcpLimit::Client);
                            return;
                        };
                        permit
                    }
                };
                let _held = (connection, client);
                conn.gateway.metrics().tcp.open.inc();
                if let Err(err) = stream.set_nodelay(true) {
                    debug!(%err, "tcp connection failed");
                } else {
                    match kind {
                        Transport::Tls => super::tls::serve(conn.clone(), stream).await,
                        Transport::Https => super::https::serve(conn.clone(), stream).await,
                        // DNS over TCP (a TCP listener serves no datagrams and no QUIC).
                        Transport::Tcp | Transport::Udp | Transport::Quic | Transport::H3 => {
                            conn.serve(stream).await;
                        }
                    }
                }
                conn.gateway.metrics().tcp.open.dec();
            });
        }
    }
}
