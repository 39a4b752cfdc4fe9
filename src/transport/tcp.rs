//! TCP (RFC 7766): our own accept loop and connections, so that connections can be capped
//! (hickory-server's listener accepts without limit and cannot be filtered). A connection is
//! refused at accept when the total or its client's count is full; one is closed when it is
//! idle, when a query arrives too slowly, or after its query budget. Queries on a connection
//! are answered concurrently (pipelining: those that need no upstream at once, at most
//! `IN_FLIGHT` misses at once), each reply written as it is ready, in whatever order.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::budget::ClientBudget;
use crate::config::TcpLimits;
use crate::gateway::{Gateway, Step, Transport};
use crate::metrics::TcpLimit;

/// Misses of one connection waiting for the upstream at once; the next waits for one of them.
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
                match stream.set_nodelay(true) {
                    Ok(()) => {
                        let (read, write) = stream.into_split();
                        conn.serve(read, write).await;
                    }
                    Err(err) => debug!(%err, "tcp connection failed"),
                }
                conn.gateway.metrics().tcp.open.dec();
            });
        }
    }
}

/// One stream's queries: a TCP connection's, or (through [`serve_stream`]) any byte stream's.
pub(super) struct Connection {
    pub(super) gateway: Arc<Gateway>,
    pub(super) client: IpAddr,
    pub(super) limits: TcpLimits,
    pub(super) stop: CancellationToken,
}

impl Connection {
    /// Reads queries until the client closes, the connection idles or reads too slowly, its
    /// query budget is spent or the listeners stop; then waits for the answers in flight.
    pub(super) async fn serve<R, W>(&self, read: R, mut write: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // Pipelined queries arrive in one read, not two reads each.
        let mut read = tokio::io::BufReader::with_capacity(8192, read);
        let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(4096);
            while let Some(reply) = outgoing.recv().await {
                // Every reply ready now goes out in one write.
                batch.clear();
                let mut next = Some(reply);
                while let Some(reply) = next {
                    batch.extend_from_slice(&(reply.len() as u16).to_be_bytes());
                    batch.extend_from_slice(&reply);
                    next = outgoing.try_recv().ok();
                }
                if write.write_all(&batch).await.is_err() {
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
            // Blocked, refused and cached answers are written here; only misses wait apart.
            let mut out = Vec::with_capacity(512);
            match self
                .gateway
                .answer_now(&packet, self.client, Transport::Tcp, &mut out)
            {
                Step::Reply => {
                    if replies.send(out).await.is_err() {
                        break;
                    }
                }
                Step::Drop => {}
                Step::Forward(pending) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let (gateway, replies) = (self.gateway.clone(), replies.clone());
                    tokio::spawn(async move {
                        gateway.forward(pending, &mut out).await;
                        let _ = replies.send(out).await;
                        drop(permit);
                    });
                }
            }
            queries += 1;
            if queries >= self.limits.queries {
                metrics.hit(TcpLimit::Queries);
                break;
            }
        }
        // The answers in flight still go out; the writer ends with the last of them.
        drop(replies);
        let _ = writer.await;
        debug!(client = %self.client, queries, "tcp connection closed");
    }
}
