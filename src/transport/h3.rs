//! DNS over HTTPS on HTTP/3 (RFC 8484 over RFC 9114), on h3 and h3-quinn: a connection comes
//! from the QUIC accept loop (`quic.rs`: its caps, Retry and handshake deadline), and each of
//! its requests goes to the DoH core (`doh.rs`) in a task of its own. HTTP/3's own setup (the
//! SETTINGS and the three unidirectional streams a client could hold up) runs under the
//! handshake deadline; a request's head, body and answer under the request deadline; its
//! reply under the write deadline. A connection ends when idle, after its query budget, or
//! when the listeners stop: GOAWAY first, then the requests it took finish.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h3::error::Code;
use hyper::Response;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use quinn::VarInt;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::doh::{BodyError, Handler, Head, MAX_MESSAGE};
use super::stream::Connection;
use crate::metrics::{Handshake, TcpLimit};

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type H3Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// H3_NO_ERROR (RFC 9114 §8.1).
pub(super) const H3_NO_ERROR: u32 = 0x100;
/// The largest header block taken (a GET's `dns=` included).
const MAX_FIELD_SECTION: u64 = 16 * 1024;

/// Serves one DoH3 connection whose QUIC handshake is done and whose client was admitted.
pub(super) async fn serve(conn: Connection, quic: quinn::Connection) {
    let limits = conn.limits;
    let mut builder = h3::server::builder();
    builder
        .max_field_section_size(MAX_FIELD_SECTION)
        .send_grease(false);
    let setup = builder.build::<_, Bytes>(h3_quinn::Connection::new(quic.clone()));
    let mut h3: H3Connection = match timeout(limits.handshake, setup).await {
        Ok(Ok(h3)) => h3,
        Ok(Err(err)) => {
            debug!(%err, "h3 connection setup failed");
            return;
        }
        Err(_) => {
            conn.limit_metrics().handshake(Handshake::Timeout);
            quic.close(VarInt::from_u32(H3_NO_ERROR), b"");
            return;
        }
    };
    let stop = conn.stop.clone();
    let handler = Arc::new(Handler::new(conn));
    let activity = handler.activity.clone();
    let requests = TaskTracker::new();
    let (stopped, spent) = (stop.cancelled(), activity.spent.notified());
    tokio::pin!(stopped, spent);
    let mut last_seen = 0;
    // `true`: the listener ends the connection (GOAWAY first); `false`: the client or the
    // transport did.
    let ours = loop {
        let accepted = tokio::select! {
            () = &mut stopped => break true,
            () = &mut spent => break true,
            accepted = timeout(limits.idle, h3.accept()) => accepted,
        };
        match accepted {
            Ok(Ok(Some(resolver))) => {
                requests.spawn(request(handler.clone(), resolver));
            }
            Ok(Ok(None)) => break false, // the client's GOAWAY, its requests answered
            Ok(Err(err)) => {
                if !err.is_h3_no_error() {
                    debug!(%err, "h3 connection ended");
                }
                break false;
            }
            Err(_) => {
                let seen = activity.requests.load(Ordering::Relaxed);
                if seen == last_seen && requests.is_empty() {
                    handler.conn.limit_metrics().hit(TcpLimit::Idle);
                    break true;
                }
                last_seen = seen;
            }
        }
    };
    if ours {
        // GOAWAY names the first request not taken: the client retries the rest elsewhere.
        let _ = timeout(limits.write, h3.shutdown(1)).await;
    }
    requests.close();
    requests.wait().await; // each under the request and write deadlines
    if ours {
        // The replies are finished but maybe not acknowledged; after a GOAWAY the client
        // closes once it has them. Closing first could cut them off.
        let _ = timeout(limits.write, quic.closed()).await;
    }
    drop(h3); // CONNECTION_CLOSE with H3_NO_ERROR
}

/// One request: its head within the request deadline, then the DoH core, then the reply
/// within the write deadline.
async fn request(handler: Arc<Handler>, resolver: Resolver) {
    let started = Instant::now();
    let limits = handler.conn.limits;
    let resolved = timeout_at(started + limits.request, resolver.resolve_request()).await;
    let (head, mut stream) = match resolved {
        Ok(Ok(resolved)) => resolved,
        Ok(Err(err)) => {
            debug!(%err, "h3 request without a valid head"); // h3 has reset it or sent 431
            return;
        }
        Err(_) => {
            handler.conn.limit_metrics().hit(TcpLimit::Request);
            return; // dropped: quinn resets our side and stops theirs
        }
    };
    let (parts, ()) = head.into_parts();
    let head = Head {
        method: &parts.method,
        uri: &parts.uri,
        content_type: parts.headers.get(CONTENT_TYPE),
    };
    // Polled for a POST on the path only. Once a read is dropped mid-way, h3-quinn 0.0.10
    // panics in stop_sending() and id(): neither is called after.
    let response = handler.respond(started, head, read_body(&mut stream)).await;
    match timeout(limits.write, send(&mut stream, response)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(%err, "h3 reply not sent"),
        Err(_) => {
            handler.conn.limit_metrics().hit(TcpLimit::Write);
            stream.stop_stream(Code::H3_REQUEST_CANCELLED);
        }
    }
}

/// A POST's body, at most one DNS message.
async fn read_body(stream: &mut H3Stream) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.recv_data().await.map_err(|_| BodyError)? {
        if body.len() + chunk.remaining() > MAX_MESSAGE {
            return Err(BodyError);
        }
        body.put(chunk);
    }
    Ok(body.freeze())
}

/// The head (with the content-length h3 does not add, unless the answer has it), the body,
/// the end of the stream.
async fn send(
    stream: &mut H3Stream,
    response: Response<Bytes>,
) -> Result<(), h3::error::StreamError> {
    let (mut parts, body) = response.into_parts();
    (parts.headers.entry(CONTENT_LENGTH)).or_insert_with(|| HeaderValue::from(body.len()));
    stream
        .send_response(Response::from_parts(parts, ()))
        .await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await
}
