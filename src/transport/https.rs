//! DNS over HTTPS (RFC 8484): HTTP/2 or HTTP/1.1 (by ALPN) over TLS; `GET` with `?dns=`
//! (base64url) and `POST` with an `application/dns-message` body, on `https_path`. Each
//! request is one query through the core, like a query on any transport. A connection closes
//! when idle, after its query budget, or when the listeners stop (in-flight requests finish).
//! Every part a client could stall has a deadline: HTTP/1.1 headers and each request (body
//! and answer) within `https_request_timeout_ms`, each write within `tcp_write_timeout_ms`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::stream::Connection;
use super::tls;
use crate::gateway::Step;
use crate::metrics::TcpLimit;

/// The media type of a DNS message over HTTP.
const DNS_MESSAGE: &str = "application/dns-message";
/// A DNS message is at most this long.
const MAX_MESSAGE: usize = 65_535;
/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS: u32 = 100;

/// Serves one DoH connection.
pub(super) async fn serve(conn: Connection, stream: TcpStream) {
    let Some(stream) = tls::handshake(&conn, stream).await else {
        return;
    };
    let path: Arc<str> = conn
        .gateway
        .with_policy(|p| p.config().encrypted.https_path.as_str().into());
    let activity = Arc::new(Activity::default());
    let (limits, stop) = (conn.limits, conn.stop.clone());
    let idle = limits.idle;
    let metrics = conn.gateway.metrics().clone();
    let handler = Arc::new(Handler {
        conn,
        path,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |request| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.respond(request).await) }
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
        tokio::select! {
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

/// What the idle watch and the query budget see of a connection's requests.
#[derive(Default)]
struct Activity {
    requests: AtomicU32,
    in_flight: AtomicUsize,
    /// Notified once the query budget is spent.
    spent: Notify,
}

struct Handler {
    conn: Connection,
    path: Arc<str>,
    activity: Arc<Activity>,
}

impl Handler {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let count = self.activity.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= self.conn.limits.queries {
            if count == self.conn.limits.queries {
                self.conn.gateway.metrics().tcp.hit(TcpLimit::Queries);
                self.activity.spent.notify_one();
            } else {
                return status(StatusCode::SERVICE_UNAVAILABLE, "query budget spent");
            }
        }
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        // The body, the answer and all: a POST whose body never comes is not held past this.
        let deadline = self.conn.limits.request;
        let response = match tokio::time::timeout(deadline, self.answer(request)).await {
            Ok(response) => response,
            Err(_) => {
                self.conn.gateway.metrics().tcp.hit(TcpLimit::Request);
                status(StatusCode::REQUEST_TIMEOUT, "the request took too long")
            }
        };
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        response
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        if parts.uri.path() != &*self.path {
            return status(StatusCode::NOT_FOUND, "not the DNS query path");
        }
        let posted = match parts.method {
            Method::GET => None,
            Method::POST => {
                let media = parts.headers.get(CONTENT_TYPE);
                let is_dns = media.and_then(|m| m.to_str().ok()) == Some(DNS_MESSAGE);
                // The body is read either way: an answer before it is read resets the stream,
                // which some clients report as a failure instead of the status.
                let body = match Limited::new(body, MAX_MESSAGE).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE, "not a DNS message"),
                };
                if !is_dns {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "the body must be application/dns-message",
                    );
                }
                Some(body)
            }
            _ => {
                let mut response = status(StatusCode::METHOD_NOT_ALLOWED, "GET or POST");
                (response.headers_mut()).insert(ALLOW, HeaderValue::from_static("GET, POST"));
                return response;
            }
        };
        let conn = &self.conn;
        let mut reply = Vec::with_capacity(512);
        // The decoded query lives in this block only: it is not kept in the request's future
        // across the miss path's await (answer_now copies what a miss needs).
        let step = {
            let decoded;
            let query = match &posted {
                Some(body) => &body[..],
                None => match dns_parameter(parts.uri.query().unwrap_or("")) {
                    Ok(query) => {
                        decoded = query;
                        &decoded[..]
                    }
                    Err(message) => return status(StatusCode::BAD_REQUEST, message),
                },
            };
            (conn.gateway).answer_now(query, conn.client, conn.transport, &mut reply)
        };
        match step {
            Step::Reply => {}
            Step::Drop => return status(StatusCode::BAD_REQUEST, "not a DNS query"),
            // Boxed: the miss path's state stays out of the future of every request (hyper
            // moves that future into a task of its own per HTTP/2 stream).
            Step::Forward(pending) => Box::pin(conn.gateway.forward(pending, &mut reply)).await,
        }
        let ttl = crate::wire::min_ttl(&reply).unwrap_or(0);
        let mut response = Response::new(Full::new(Bytes::from(reply)));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
        headers.insert(CACHE_CONTROL, max_age(ttl));
        response
    }
}

/// TTLs whose `max-age` value comes from a table made once per process (about 50 KB).
const TABLED_AGES: u32 = 3600;

/// `max-age=<ttl>`: from the table (a clone of a static value: no allocation, no count), or
/// for longer TTLs written on the stack and copied.
fn max_age(ttl: u32) -> HeaderValue {
    use std::io::Write as _;
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if ttl <= TABLED_AGES {
        let ages = AGES.get_or_init(|| {
            let texts: Vec<String> = (0..=TABLED_AGES).map(|t| format!("max-age={t}")).collect();
            let all: &'static str = Box::leak(texts.concat().into_boxed_str());
            let mut at = 0;
            (texts.iter())
                .map(|t| {
                    at += t.len();
                    HeaderValue::from_static(&all[at - t.len()..at])
                })
                .collect()
        });
        return ages[ttl as usize].clone();
    }
    let mut text = [0u8; 24];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "max-age={ttl}").expect("24 bytes hold max-age and a u32");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&text[..len]).expect("ASCII is a header value")
}

/// A GET's query, decoded: inline when it is as short as queries are.
type Decoded = SmallVec<[u8; 512]>;

/// The query of a GET: the `dns` parameter, base64url (RFC 4648 section 5; padding tolerated).
fn dns_parameter(query: &str) -> Result<Decoded, &'static str> {
    let value = (query.split('&'))
        .find_map(|pair| pair.strip_prefix("dns="))
        .ok_or("no dns parameter")?;
    if value.len() > MAX_MESSAGE / 3 * 4 + 4 {
        return Err("the dns parameter is not a DNS message");
    }
    let engine = if value.ends_with('=') {
        &URL_SAFE
    } else {
        &URL_SAFE_NO_PAD
    };
    let mut decoded = Decoded::from_elem(0, base64::decoded_len_estimate(value.len()));
    match engine.decode_slice(value, &mut decoded) {
        Ok(len) if (12..=MAX_MESSAGE).contains(&len) => {
            decoded.truncate(len);
            Ok(decoded)
        }
        Ok(_) => Err("the dns parameter is not a DNS message"),
        Err(_) => Err("the dns parameter is not base64url"),
    }
}

fn status(code: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_the_ttl_from_the_table_and_beyond_it() {
        for ttl in [0, 1, 299, TABLED_AGES, TABLED_AGES + 1, u32::MAX] {
            assert_eq!(max_age(ttl), format!("max-age={ttl}").as_str());
        }
    }

    #[test]
    fn the_dns_parameter_is_base64url_with_or_without_padding() {
        let query = [0x12u8, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let bare = URL_SAFE_NO_PAD.encode(query);
        let padded = URL_SAFE.encode(query);
        assert!(padded.ends_with('='));
        for value in [bare, padded] {
            let decoded = dns_parameter(&format!("x=1&dns={value}")).unwrap();
            assert_eq!(&decoded[..], &query[..]);
        }
        let long = URL_SAFE_NO_PAD.encode(vec![0u8; 2000]);
        assert_eq!(dns_parameter(&format!("dns={long}")).unwrap().len(), 2000);
        assert!(
            dns_parameter("dns=AAAA").is_err(),
            "3 bytes are no DNS message"
        );
        assert!(dns_parameter("dns=!!!!!!!!!!!!!!!!").is_err());
        assert!(dns_parameter(&format!("dns={}", "A".repeat(90_000))).is_err());
        assert!(dns_parameter("name=x").is_err());
    }
}
