//! DNS over HTTPS (RFC 8484): HTTP/2 or HTTP/1.1 (by ALPN) over TLS, on hyper; each request
//! goes to the DoH core (`doh.rs`), one query through the gateway like on any transport. A connection closes
//! when idle, after its query budget, or when the listeners stop (in-flight requests finish).
//! Every part a client could stall has a deadline: HTTP/1.1 headers and each request (body
//! and answer) within `https_request_timeout_ms`, each write within `tcp_write_timeout_ms`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use super::doh::{BodyError, Handler, Head, MAX_MESSAGE};
use super::stream::Connection;
use super::tls;
use crate::metrics::TcpLimit;

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 100;

/// Serves one DoH connection.
pub(super) async fn serve(conn: Connection, stream: TcpStream) {
    let Some(stream) = tls::handshake(&conn, stream).await else {
        return;
    };
    let (limits, stop) = (conn.limits, conn.stop.clone());
    let idle = limits.idle;
    let metrics = conn.gateway.metrics().clone();
    let handler = Arc::new(Handler::new(conn));
    let activity = handler.activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let started = tokio::time::Instant::now();
            let (parts, body) = request.into_parts();
            let head = Head {
                method: &parts.method,
                uri: &parts.uri,
                content_type: parts.headers.get(CONTENT_TYPE),
            };
            let body = async move {
                (Limited::new(body, MAX_MESSAGE).collect().await)
                    .map(|collected| collected.to_bytes())
                    .map_err(|_| BodyError)
            };
            let response = handler.respond(started, head, body).await;
            Ok::<_, Infallible>(response.map(Full::new))
        }
    });
    // The streams' futures are polled here, in the connection's task, not spawned: no task
    // per request, and replies ready together go out together.
    let (executor, mut spawned) = mpsc::unbounded_channel();
    let mut streams = FuturesUnordered::new();
    let mut builder = Builder::new(StreamExecutor(executor));
    builder.http2().max_concurrent_streams(MAX_STREAMS);
    // HTTP/1.1: a request's headers within the request deadline (HTTP/2 sends them in one
    // frame; a stream that never completes is held by the request deadline below).
    (builder.http1())
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request);
    let stream = WriteDeadline::new(stream, limits.write, metrics.clone());
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_seen = activity.requests.load(Ordering::Relaxed);
    let mut closing = false;
    // Made once: a new one each turn of the loop would join and leave a waiter list (under
    // its lock) per request.
    let (stopped, spent) = (stop.cancelled(), activity.spent.notified());
    tokio::pin!(stopped, spent);
    loop {
        // In this order: new streams, then every stream that can answer, then hyper's
        // connection, so that the replies of one read go out in one write.
        tokio::select! {
            biased;
            Some(stream) = spawned.recv() => streams.push(stream),
            Some(()) = streams.next(), if !streams.is_empty() => {}
            result = served.as_mut() => {
                if let Err(err) = result {
                    let timed_out = (err.downcast_ref::<hyper::Error>()).is_some_and(hyper::Error::is_timeout);
                    if timed_out {
                        metrics.tcp.hit(TcpLimit::Request); // HTTP/1.1 headers too slow
                    }
                    debug!(%err, "https connection ended");
                }
                break;
            }
            () = &mut stopped, if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut spent, if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            () = idle_timer.as_mut(), if !closing => {
                let seen = activity.requests.load(Ordering::Relaxed);
                if seen == last_seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                    metrics.tcp.hit(TcpLimit::Idle);
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
                last_seen = seen;
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
            }
        }
    }
    // Streams still answering finish (their replies are lost with the connection anyway).
    while streams.next().await.is_some() {}
}

/// A stream whose writes must make progress within `limit`: hyper writes replies itself, so
/// a client that never reads would hold the connection; instead the write fails (counted) and
/// the connection closes.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits; cleared by any progress.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration, metrics: Arc<crate::metrics::Metrics>) -> Self {
        WriteDeadline {
            inner,
            limit,
            timer: None,
            metrics,
        }
    }

    /// `poll` (a write, flush or shutdown) once more, failing it when it has waited `limit`.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if let Poll::Ready(result) = poll(Pin::new(&mut self.inner), cx) {
            self.timer = None;
            return Poll::Ready(result);
        }
        let limit = self.limit;
        let timer = (self.timer).get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.tcp.hit(TcpLimit::Write);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its replies",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.deadline(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.deadline(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.deadline(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.deadline(cx, |s, cx| s.poll_shutdown(cx))
    }
}

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for HTTP/2 streams: hands each to the connection's own loop.
#[derive(Clone)]
struct StreamExecutor(mpsc::UnboundedSender<StreamFuture>);

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let _ = self.0.send(Box::pin(future));
    }
}
