//! TCP (RFC 7766): our own accept loop and connections, so that connections can be capped
//! (hickory-server's listener accepts without limit and cannot be filtered). A connection is
//! refused at accept when the total or its client's count is full; one is closed when it is
//! idle, when a query arrives too slowly, or after its query budget. Queries on a connection
//! are answered concurrently (pipelining, at most `IN_FLIGHT` at once), each reply written as
//! the core returns it, in whatever order they finish.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::budget::ClientBudget;
use crate::config::TcpLimits;
use crate::gateway::{Gateway, Transport};
use crate::metrics::TcpLimit;

/// Queries of one connection answered at once; the next waits for one of them.
const IN_FLIGHT: usize = 16;
/// A query's bytes must all arrive within this, once its length has.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// After an accept error (out of descriptors), wait this long before the next accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The TCP listeners and their connections.
pub(super) struct Tcp {
    limits: TcpLimits,
    total: Arc<Semaphore>,
    clients: Arc<ClientBudget>,
    /// Accept loops and connections.
    tasks: TaskTracker,
    /// Cancelled when the listeners stop accepting; connections then take no new query.
    stop: CancellationToken,
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
    pub(super) fn serve(&self, listener: TcpListener, gateway: Arc<Gateway>) {
        let accept = Accept {
            limits: self.limits,
            total: self.total.clone(),
            clients: self.clients.clone(),
            tasks: self.tasks.clone(),
            stop: self.stop.clone(),
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
    limits: TcpLimits,
    total: Arc<Semaphore>,
    clients: Arc<ClientBudget>,
    tasks: TaskTracker,
    stop: CancellationToken,
    gateway: Arc<Gateway>,
}

impl Accept {
    async fn run(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                () = self.stop.cancelled() => return,
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
            let Ok(connection) = self.total.clone().try_acquire_owned() else {
                metrics.hit(TcpLimit::Total);
                continue; // dropped: closed at once
            };
            let Some(client) = self.clients.admit(peer.ip(), true) else {
                metrics.hit(TcpLimit::Client);
                continue;
            };
            let conn = Connection {
                gateway: self.gateway.clone(),
                client: peer.ip(),
                limits: self.limits,
                stop: self.stop.clone(),
            };
            self.tasks.spawn(async move {
                let _held = (connection, client);
                conn.gateway.metrics().tcp.open.inc();
                if let Err(err) = conn.serve(stream, peer).await {
                    debug!(%err, "tcp connection failed");
                }
                conn.gateway.metrics().tcp.open.dec();
            });
        }
    }
}

struct Connection {
    gateway: Arc<Gateway>,
    client: IpAddr,
    limits: TcpLimits,
    stop: CancellationToken,
}

impl Connection {
    /// Reads queries until the client closes, the connection idles or reads too slowly, its
    /// query budget is spent or the listeners stop; then waits for the answers in flight.
    async fn serve(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let writer = tokio::spawn(async move {
            while let Some(reply) = outgoing.recv().await {
                let mut framed = Vec::with_capacity(reply.len() + 2);
                framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
                framed.extend_from_slice(&reply);
                if write.write_all(&framed).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let metrics = &self.gateway.metrics().tcp;
        let mut queries = 0u32;
        loop {
            let mut len = [0u8; 2];
            let first = tokio::select! {
                () = self.stop.cancelled() => break,
                read = tokio::time::timeout(self.limits.idle, read.read_exact(&mut len)) => read,
            };
            match first {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break, // closed by the client
                Err(_) => {
                    metrics.hit(TcpLimit::Idle);
                    break;
                }
            }
            let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
            match tokio::time::timeout(READ_TIMEOUT, read.read_exact(&mut packet)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    metrics.hit(TcpLimit::Slow);
                    break;
                }
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let (gateway, replies, client) = (self.gateway.clone(), replies.clone(), self.client);
            tokio::spawn(async move {
                if let Some(reply) = gateway.answer(&packet, client, Transport::Tcp).await {
                    let _ = replies.send(reply).await;
                }
                drop(permit);
            });
            queries += 1;
            if queries >= self.limits.queries {
                metrics.hit(TcpLimit::Queries);
                break;
            }
        }
        // The answers in flight still go out; the writer ends with the last of them.
        drop(replies);
        let _ = writer.await;
        debug!(%peer, queries, "tcp connection closed");
        Ok(())
    }
}
