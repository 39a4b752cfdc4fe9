//! One connection's DNS messages over a byte stream (RFC 7766 framing: each after its two-byte
//! length): TCP's, and DoT's inside TLS. A connection is closed when it is idle, when a query
//! arrives too slowly, when its client does not read its replies, or after its query budget. Queries on a connection are answered
//! concurrently (pipelining: those that need no upstream at once, at most `IN_FLIGHT` misses at
//! once), the replies written as they are ready, in whatever order.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::TcpLimits;
use crate::gateway::{Client, Gateway, Step, Transport};
use crate::metrics::{TcpLimit, TcpMetrics};

/// Misses of one connection waiting for the upstream at once; the next waits for one of them.
const IN_FLIGHT: usize = 16;
/// Bytes a read takes at once (pipelined queries arrive together).
const READ_CHUNK: usize = 8192;

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
    /// query budget is spent or the listeners stop; then waits for the answers in flight. One
    /// task reads, answers and writes: every whole query a read brought is answered, and the
    /// replies ready then go out in one write (one TLS record for DoT); misses answer through a
    /// channel into the same loop.
    pub(super) async fn serve<S>(&self, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let metrics = self.limit_metrics();
        let mut input = BytesMut::with_capacity(READ_CHUNK);
        let mut out = Vec::with_capacity(READ_CHUNK);
        let (missed, mut misses) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut queries = 0u32;
        // When the query now partly read began to arrive (the read deadline runs from there).
        let mut partial_since: Option<Instant> = None;
        // Made once, not per query (each would join and leave the token's waiter list).
        let stopped = self.stop.cancelled();
        tokio::pin!(stopped);
        loop {
            // Every whole query read so far; blocked, refused and cached answers at once.
            let (mut spent, mut answered) = (false, false);
            while let Some(len) = whole_frame(&input) {
                answered = true;
                let frame = input.split_to(2 + len);
                let mut reply = Vec::with_capacity(512);
                let packet = &frame[2..];
                match (self.gateway).answer_now(packet, self.client, self.transport, &mut reply) {
                    Step::Reply => push_framed(&mut out, &reply),
                    Step::Drop => {}
                    Step::Forward(pending) => {
                        // At most IN_FLIGHT misses at once. Waiting for one to end, the replies
                        // ready go out and those of misses are taken (a miss holds its permit
                        // until its reply is in the channel).
                        let permit = match in_flight.clone().try_acquire_owned() {
                            Ok(permit) => permit,
                            Err(_) => loop {
                                if !out.is_empty() && !self.write(&mut stream, &mut out).await {
                                    return;
                                }
                                tokio::select! {
                                    permit = in_flight.clone().acquire_owned() => {
                                        break permit.expect("the semaphore is never closed");
                                    }
                                    Some(reply) = misses.recv() => push_framed(&mut out, &reply),
                                }
                            },
                        };
                        let (gateway, missed) = (self.gateway.clone(), missed.clone());
                        tokio::spawn(async move {
                            gateway.forward(pending, &mut reply).await;
                            let _ = missed.send(reply).await;
                            drop(permit);
                        });
                    }
                }
                queries += 1;
                if queries >= self.limits.queries {
                    metrics.hit(TcpLimit::Queries);
                    spent = true;
                    break;
                }
            }
            while let Ok(reply) = misses.try_recv() {
                push_framed(&mut out, &reply);
            }
            if !out.is_empty() && !self.write(&mut stream, &mut out).await {
                return;
            }
            if spent {
                break;
            }
            // The read deadline runs from when the query left over began: now, if a whole
            // one came before it.
            partial_since = match (input.is_empty(), partial_since) {
                (true, _) => None,
                (false, None) => Some(Instant::now()),
                (false, _) if answered => Some(Instant::now()),
                (false, since) => since,
            };
            let deadline = match partial_since {
                None => Instant::now() + self.limits.idle,
                Some(since) => since + self.limits.read,
            };
            if input.capacity() - input.len() < READ_CHUNK / 4 {
                input.reserve(READ_CHUNK);
            }
            tokio::select! {
                () = &mut stopped => break,
                Some(reply) = misses.recv() => push_framed(&mut out, &reply),
                read = tokio::time::timeout_at(deadline, stream.read_buf(&mut input)) => match read {
                    Ok(Ok(0)) | Ok(Err(_)) => break, // closed by the client
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        let limit = if partial_since.is_some() { TcpLimit::Slow } else { TcpLimit::Idle };
                        metrics.hit(limit);
                        break;
                    }
                },
            }
        }
        // The answers in flight still go out, each as it comes.
        drop(missed);
        while let Some(reply) = misses.recv().await {
            push_framed(&mut out, &reply);
            if !self.write(&mut stream, &mut out).await {
                return;
            }
        }
        if !out.is_empty() && !self.write(&mut stream, &mut out).await {
            return;
        }
        let _ = tokio::time::timeout(self.limits.write, stream.shutdown()).await;
        debug!(client = %self.client.addr, queries, "stream connection closed");
    }

    /// Writes `out` within the write deadline and empties it; `false` when the connection is
    /// lost (a client that does not read its replies loses it at the deadline, counted).
    async fn write<S: AsyncWrite + Unpin>(&self, stream: &mut S, out: &mut Vec<u8>) -> bool {
        let written = async {
            stream.write_all(out).await?;
            stream.flush().await
        };
        let result = tokio::time::timeout(self.limits.write, written).await;
        out.clear();
        match result {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.limit_metrics().hit(TcpLimit::Write);
                false
            }
        }
    }
}

/// The length of the first query in `input` when all of it has arrived.
fn whole_frame(input: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*input.first()?, *input.get(1)?]));
    (input.len() >= 2 + len).then_some(len)
}

/// Appends `reply` after its two-byte length.
fn push_framed(out: &mut Vec<u8>, reply: &[u8]) {
    out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
    out.extend_from_slice(reply);
}
