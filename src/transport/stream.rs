//! One connection's DNS messages over a byte stream (RFC 7766 framing: each after its two-byte
//! length): TCP's, and DoT's inside TLS. A connection is closed when it is idle, when a query
//! arrives too slowly, when its client does not read its replies, or after its query budget. Queries on a connection are answered
//! concurrently (pipelining: those that need no upstream at once, at most `IN_FLIGHT` misses at
//! once), each reply written as it is ready, in whatever order.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::TcpLimits;
use crate::gateway::{Client, Gateway, Step, Transport};
use crate::metrics::{TcpLimit, TcpMetrics};

/// Misses of one connection waiting for the upstream at once; the next waits for one of them.
const IN_FLIGHT: usize = 16;

/// One stream's queries: a TCP or TLS connection's, or (through [`serve_stream`]) any byte
/// stream's; for HTTPS, what its requests are answered with.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) gateway: Arc<Gateway>,
    pub(super) client: Client,
    pub(super) transport: Transport,
    pub(super) limits: TcpLimits,
    pub(super) stop: CancellationToken,
}

impl Connection {
    /// The counters of its limits: QUIC's for DoQ and DoH3, else TCP's.
    pub(super) fn limit_metrics(&self) -> &TcpMetrics {
        let metrics = self.gateway.metrics();
        if self.transport.over_udp() {
            &metrics.quic
        } else {
            &metrics.tcp
        }
    }

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
        let (write_limit, metrics) = (self.limits.write, self.gateway.metrics().clone());
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
                // A client that does not read would hold the connection (and, through the full
                // channel, its reader) forever: it gets `write_limit` per write.
                match tokio::time::timeout(write_limit, write.write_all(&batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        metrics.tcp.hit(TcpLimit::Write);
                        return; // dropping `write` closes it; a shutdown could wait too
                    }
                }
            }
            let _ = tokio::time::timeout(write_limit, write.shutdown()).await;
        });
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let metrics = &self.gateway.metrics().tcp;
        let mut queries = 0u32;
        // Made once, not per query (each would join and leave the token's waiter list).
        let stopped = self.stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let mut len = [0u8; 2];
            let first = tokio::select! {
                () = &mut stopped => break,
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
            match tokio::time::timeout(self.limits.read, read.read_exact(&mut packet)).await {
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
                .answer_now(&packet, self.client, self.transport, &mut out)
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
        debug!(client = %self.client.addr, queries, "stream connection closed");
    }
}
