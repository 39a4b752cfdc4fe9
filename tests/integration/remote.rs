//! Lists with `urls`: downloaded at start from an HTTP server on loopback, refreshed with a
//! conditional GET, a shrunken download rejected (the old copy keeps blocking), and the last
//! good copy used when the source is down at the next start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hickory_proto::op::ResponseCode;

use crate::harness::{Answered, FakeUpstream, TestGateway};
use crate::reload::eventually;

#[derive(Default)]
struct Served {
    body: String,
    etag: String,
    requests: usize,
    conditional: usize,
    /// Requests that carried the Last-Modified date back.
    since: usize,
}

const LAST_MODIFIED: &str = "Sun, 22 Nov 2026 08:00:00 GMT";

async fn list(State(served): State<Arc<Mutex<Served>>>, headers: HeaderMap) -> Response {
    let mut served = served.lock().unwrap();
    served.requests += 1;
    let offered = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if offered.is_some() {
        served.conditional += 1;
    }
    let since = headers.get(header::IF_MODIFIED_SINCE);
    if since.and_then(|v| v.to_str().ok()) == Some(LAST_MODIFIED) {
        served.since += 1;
    }
    if offered == Some(served.etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let headers = [
        (header::ETAG, served.etag.clone()),
        (header::LAST_MODIFIED, LAST_MODIFIED.to_owned()),
    ];
    (headers, served.body.clone()).into_response()
}

fn serve(served: &Arc<Mutex<Served>>, body: &str, etag: &str) {
    let mut served = served.lock().unwrap();
    served.body = body.to_owned();
    served.etag = format!("\"{etag}\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_lists_refresh_guard_against_shrinking_and_survive_the_source_going_down() {
    let served = Arc::new(Mutex::new(Served::default()));
    serve(
        &served,
        "# ten names\ntiktok.com\nt.me\na.example\nb.example\nc.example\nd.example\ne.example\nf.example\ng.example\nh.example\n",
        "v1",
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tiktok.txt", http.local_addr().unwrap());
    let router = Router::new()
        .route("/tiktok.txt", get(list))
        .with_state(served.clone());
    let http_task = tokio::spawn(async move { axum::serve(http, router).await.unwrap() });

    let upstream = FakeUpstream::new()
        .with_a("added.example.", "192.0.2.9")
        .start()
        .await;
    let state = tempfile::tempdir().unwrap();
    let policy = format!(
        "server.state_dir = {:?}\n[lists.remote]\nurls = [{url:?}]\nrefresh = \"1s\"\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"remote\"]\n",
        state.path().display().to_string()
    );
    let gateway = TestGateway::start(&upstream, &policy).await;
    let staff = gateway.client_from("127.0.0.2");
    let rcode = async |name: &str| staff.udp_a(name).await.metadata.response_code;
    assert_eq!(rcode("www.tiktok.com.").await, ResponseCode::NXDomain);
    assert_eq!(rcode("added.example.").await, ResponseCode::NoError);

    // The refresh asks with the ETag it has, and the server says 304.
    eventually(Duration::from_secs(4), "a conditional GET", async || {
        let served = served.lock().unwrap();
        served.conditional > 0 && served.since > 0
    })
    .await;
    eventually(Duration::from_secs(2), "not_modified counted", async || {
        gateway.scrape().await[r#"portvakt_list_updates_total{list="remote",result="not_modified"}"#]
            >= 1.0
    })
    .await;

    // A changed list is downloaded and put in force.
    let grown = format!("{}added.example\n", served.lock().unwrap().body);
    serve(&served, &grown, "v2");
    eventually(Duration::from_secs(4), "the new entry blocks", async || {
        rcode("added.example.").await == ResponseCode::NXDomain
    })
    .await;

    // A truncated download (1 of 11 names) is rejected: everything stays blocked.
    serve(&served, "tiktok.com\n", "v3");
    eventually(Duration::from_secs(4), "the shrink guard", async || {
        gateway.scrape().await[r#"portvakt_list_updates_total{list="remote",result="rejected"}"#]
            >= 1.0
    })
    .await;
    assert_eq!(rcode("t.me.").await, ResponseCode::NXDomain);
    assert_eq!(rcode("added.example.").await, ResponseCode::NXDomain);
    let scrape = gateway.scrape().await;
    assert_eq!(
        scrape[r#"portvakt_list_updates_total{list="remote",result="updated"}"#], 2.0,
        "the first download and the grown list"
    );
    assert_eq!(scrape[r#"portvakt_list_entries{list="remote"}"#], 11.0);
    gateway.shutdown().await;

    // The source goes down; a new start uses the last good copy.
    http_task.abort();
    let _ = http_task.await;
    let gateway = TestGateway::start(&upstream, &policy).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("added.example.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    let scrape = gateway.scrape().await;
    assert_eq!(
        scrape[r#"portvakt_list_updates_total{list="remote",result="failed"}"#],
        1.0
    );
    assert_eq!(scrape[r#"portvakt_list_entries{list="remote"}"#], 11.0);
    assert!(
        staff
            .udp_a("t.me.")
            .await
            .ede()
            .iter()
            .any(|(code, _)| *code == 15)
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_list_url_without_a_copy_and_no_source_stops_the_start() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "server.listen = [\"127.0.0.1:0\"]\nserver.state_dir = {:?}\n[lists.remote]\nurls = [\"http://127.0.0.1:{port}/list.txt\"]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"remote\"]\n[[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
        state.path().display().to_string()
    );
    let config = portvakt::Config::parse("t.toml", &text).unwrap();
    let source = portvakt::ConfigSource::Embedded;
    let err = match portvakt::start(config, source).await {
        Ok(_) => panic!("started without the list"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("list \"remote\": no copy of http://127.0.0.1:"),
        "{err}"
    );
}

/// A list URL's host name is resolved through portvakt's own upstream groups (here the
/// conditional group of its zone), not the host's resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_host_is_resolved_through_the_upstream_groups() {
    let served = Arc::new(Mutex::new(Served::default()));
    serve(&served, "tiktok.com\nt.me\n", "v1");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = http.local_addr().unwrap().port();
    let router = Router::new()
        .route("/tiktok.txt", get(list))
        .with_state(served.clone());
    let http_task = tokio::spawn(async move { axum::serve(http, router).await.unwrap() });

    let default = FakeUpstream::new().start().await;
    let internal = FakeUpstream::new()
        .with_a("lists.kommune.test.", "127.0.0.1")
        .start()
        .await;
    let state = tempfile::tempdir().unwrap();
    let policy = format!(
        "server.state_dir = {:?}\n[lists.remote]\nurls = [\"http://lists.kommune.test:{port}/tiktok.txt\"]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"remote\"]\n",
        state.path().display().to_string()
    );
    let gateway = TestGateway::start_with_upstreams(
        &[(&default, &[]), (&internal, &["kommune.test"])],
        &policy,
    )
    .await;
    assert!(
        internal.queries_for("lists.kommune.test.") >= 1,
        "asked the zone's group"
    );
    assert_eq!(default.queries_for("lists.kommune.test."), 0);
    assert_eq!(served.lock().unwrap().requests, 1, "downloaded");
    let staff = gateway.client_from("127.0.0.2");
    let answer = staff.udp_a("www.tiktok.com.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    gateway.shutdown().await;
    http_task.abort();
}

/// A server that sends a list without a length (chunked) and never ends it: the download is
/// refused at the list's `max_bytes` while it streams, not read whole first. The server stops
/// by itself after 64 MiB or 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_sent_without_a_length_is_refused_at_max_bytes_while_it_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/endless.txt", http.local_addr().unwrap());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    let server = tokio::spawn(async move {
        let (mut stream, _) = http.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        let lines = "a.example\n".repeat(6_500); // 65,000 bytes a chunk
        let chunk = format!("{:x}\r\n{lines}\r\n", lines.len());
        let started = std::time::Instant::now();
        while counted.load(std::sync::atomic::Ordering::Relaxed) < 64 << 20
            && started.elapsed() < Duration::from_secs(20)
        {
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                break; // the client hung up
            }
            counted.fetch_add(lines.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        "server.listen = [\"127.0.0.1:0\"]\nserver.state_dir = {:?}\n\
         [lists.remote]\nurls = [{url:?}]\nmax_bytes = 1048576\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"remote\"]\n\
         [[upstream]]\nservers = [\"127.0.0.1:9\"]\n",
        state.path().display().to_string()
    );
    let config = portvakt::Config::parse("remote.toml", &text).unwrap();
    let started = std::time::Instant::now();
    let source = portvakt::ConfigSource::Embedded;
    let err = match portvakt::start(config, source).await {
        Ok(_) => panic!("started with a list over max_bytes"),
        Err(err) => portvakt::error_chain(&err),
    };
    assert!(
        err.contains("larger than the list's max_bytes (1048576 bytes)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused while streaming"
    );
    server.await.unwrap();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 16 << 20,
        "the server sent {sent} bytes before the client hung up"
    );
}
