//! The DNS side of DoH (RFC 8484), the same over HTTP/1.1, HTTP/2 (`https.rs`) and HTTP/3
//! (`h3.rs`): the query path, `GET` with `?dns=` (base64url) or `POST` with an
//! `application/dns-message` body, the connection's query budget, the request deadline (body
//! and answer) and the reply with `cache-control: max-age` of its lowest TTL.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode, Uri};
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::stream::Connection;
use crate::gateway::Step;
use crate::metrics::TcpLimit;

/// The media type of a DNS message over HTTP.
const DNS_MESSAGE: &str = "application/dns-message";
/// A DNS message is at most this long.
pub(super) const MAX_MESSAGE: usize = 65_535;

/// What the idle watch and the query budget see of a connection's requests.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) requests: AtomicU32,
    pub(super) in_flight: AtomicUsize,
    /// Notified once the query budget is spent.
    pub(super) spent: Notify,
}

/// What DoH reads of a request's head, the same from every HTTP version.
pub(super) struct Head<'a> {
    pub(super) method: &'a Method,
    pub(super) uri: &'a Uri,
    pub(super) content_type: Option<&'a HeaderValue>,
}

/// A POST's body could not be read whole within [`MAX_MESSAGE`].
pub(super) struct BodyError;

/// One connection's requests: its queries, path and activity.
pub(super) struct Handler {
    pub(super) conn: Connection,
    pub(super) path: Arc<str>,
    pub(super) activity: Arc<Activity>,
}

impl Handler {
    /// A handler for `conn`, on the DoH path of the policy in force.
    pub(super) fn new(conn: Connection) -> Handler {
        let path = (conn.gateway).with_policy(|p| p.config().encrypted.https_path.as_str().into());
        Handler {
            conn,
            path,
            activity: Arc::new(Activity::default()),
        }
    }

    /// The query budget, the in-flight count and the request deadline (counted from
    /// `started`) around the answer: 503 past the budget, 408 past the deadline. `body` is
    /// polled for a POST on the path only.
    pub(super) async fn respond<B>(
        &self,
        started: Instant,
        head: Head<'_>,
        body: B,
    ) -> Response<Bytes>
    where
        B: Future<Output = Result<Bytes, BodyError>>,
    {
        let limits = &self.conn.limits;
        let count = self.activity.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= limits.queries {
            if count == limits.queries {
                self.conn.limit_metrics().hit(TcpLimit::Queries);
                self.activity.spent.notify_one();
            } else {
                return status(StatusCode::SERVICE_UNAVAILABLE, "query budget spent");
            }
        }
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        // The body, the answer and all: a POST whose body never comes is not held past this.
        let answered = tokio::time::timeout_at(started + limits.request, self.answer(head, body));
        let response = match answered.await {
            Ok(response) => response,
            Err(_) => {
                self.conn.limit_metrics().hit(TcpLimit::Request);
                status(StatusCode::REQUEST_TIMEOUT, "the request took too long")
            }
        };
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        response
    }

    async fn answer<B>(&self, head: Head<'_>, body: B) -> Response<Bytes>
    where
        B: Future<Output = Result<Bytes, BodyError>>,
    {
        if head.uri.path() != &*self.path {
            return status(StatusCode::NOT_FOUND, "not the DNS query path");
        }
        let posted = match *head.method {
            Method::GET => None,
            Method::POST => {
                let is_dns = head.content_type.and_then(|m| m.to_str().ok()) == Some(DNS_MESSAGE);
                // The body is read either way: an answer before it is read resets the stream,
                // which some clients report as a failure instead of the status.
                let Ok(body) = body.await else {
                    return status(StatusCode::PAYLOAD_TOO_LARGE, "not a DNS message");
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
                None => match dns_parameter(head.uri.query().unwrap_or("")) {
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
            // Boxed: the miss path's state stays out of the future of every request (each
            // HTTP/2 or HTTP/3 stream's future is held apart).
            Step::Forward(pending) => Box::pin(conn.gateway.forward(pending, &mut reply)).await,
        }
        let ttl = crate::wire::min_ttl(&reply).unwrap_or(0);
        let length = content_length(reply.len());
        let mut response = Response::new(Bytes::from(reply));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
        headers.insert(CONTENT_LENGTH, length);
        headers.insert(CACHE_CONTROL, max_age(ttl));
        response
    }
}

const HOUR: u32 = 3600;
const DAY: u32 = 86_400;
/// Reply lengths whose `content-length` value comes from a table.
const TABLED_LENGTHS: u32 = 4096;

/// `max-age=<ttl>`, from a table made once per process (about 250 KB): every second up to an
/// hour, then every minute up to a day, a TTL between two minutes given the one below (a
/// client may ask again up to 59 s early, never late). Longer TTLs are written and copied.
fn max_age(ttl: u32) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if ttl > DAY {
        return written("max-age=", ttl.into());
    }
    let ages = AGES.get_or_init(|| {
        let minutes = (HOUR + 60..=DAY).step_by(60);
        statics("max-age=", (0..=HOUR).chain(minutes))
    });
    let at = if ttl <= HOUR {
        ttl
    } else {
        HOUR + (ttl - HOUR) / 60
    };
    ages[at as usize].clone()
}

/// A reply's `content-length`, from a table (about 180 KB) up to [`TABLED_LENGTHS`] (hyper
/// would otherwise format and allocate one for every reply).
fn content_length(len: usize) -> HeaderValue {
    static LENGTHS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if len > TABLED_LENGTHS as usize {
        return written("", len as u64);
    }
    LENGTHS.get_or_init(|| statics("", 0..=TABLED_LENGTHS))[len].clone()
}

/// `<prefix><n>` for each `n`, as static values (their text leaked once): a clone allocates
/// nothing and counts nothing.
fn statics(prefix: &str, numbers: impl Iterator<Item = u32>) -> Vec<HeaderValue> {
    let texts: Vec<String> = numbers.map(|n| format!("{prefix}{n}")).collect();
    let all: &'static str = Box::leak(texts.concat().into_boxed_str());
    let mut at = 0;
    (texts.iter())
        .map(|t| {
            at += t.len();
            HeaderValue::from_static(&all[at - t.len()..at])
        })
        .collect()
}

/// `<prefix><n>`, written on the stack and copied.
fn written(prefix: &str, n: u64) -> HeaderValue {
    use std::io::Write as _;
    let mut text = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    write!(cursor, "{prefix}{n}").expect("32 bytes hold the prefix and a u64");
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

fn status(code: StatusCode, message: &'static str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(message.as_bytes()));
    *response.status_mut() = code;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_the_ttl_to_the_second_up_to_an_hour_then_to_the_minute_below() {
        let age = |ttl| {
            let value = max_age(ttl);
            let text = value.to_str().unwrap().strip_prefix("max-age=").unwrap();
            text.parse::<u32>().unwrap()
        };
        for ttl in [0, 1, 299, HOUR, DAY + 1, u32::MAX] {
            assert_eq!(age(ttl), ttl);
        }
        for ttl in [
            HOUR + 1,
            HOUR + 59,
            HOUR + 60,
            HOUR + 61,
            7199,
            7200,
            DAY - 1,
            DAY,
        ] {
            assert_eq!(age(ttl), ttl - (ttl - HOUR) % 60, "{ttl}");
        }
    }

    #[test]
    fn content_length_is_the_length_from_the_table_and_beyond_it() {
        for len in [0, 1, 512, 4096, 4097, 65535] {
            assert_eq!(content_length(len), len.to_string().as_str());
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
