//! The reload path: edits to watched files apply within a second or two without losing a
//! query, broken edits are rejected while the running policy keeps blocking (visible in
//! metrics and status), the API needs its token, requests coalesce, and a query in flight
//! never makes a reload wait.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use portvakt::Trigger;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

use crate::harness::{
    Answered, Canned, FakeUpstream, RunningUpstream, TestGateway, encode, question,
};

/// How soon an edit must be in force.
const EDIT_DEADLINE: Duration = Duration::from_secs(2);

fn staff_config(list: &Path, extra: &str) -> String {
    format!(
        "{extra}\n[lists.blocked]\nfiles = [{:?}]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"blocked\"]\n",
        list.display().to_string()
    )
}

/// A gateway whose staff segment (127.0.0.2) blocks one list file, which starts as
/// `tiktok.com`; www.example.org and stable.example.net resolve upstream, slow.example.net
/// never answers. Bind `dir` and
/// `_upstream` to names: they must live as long as the gateway.
struct Staff {
    gateway: TestGateway,
    list: PathBuf,
    dir: tempfile::TempDir,
    _upstream: RunningUpstream,
}

/// `extra` gives top-level TOML keys; it may write files into the fixture's directory first.
async fn staff(extra: impl FnOnce(&Path) -> String) -> Staff {
    let upstream = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .with_a("stable.example.net.", "192.0.2.2")
        .with("slow.example.net.", Canned::Silent)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let config = staff_config(&list, &extra(dir.path()));
    let gateway = TestGateway::start(&upstream, &config).await;
    Staff {
        gateway,
        list,
        dir,
        _upstream: upstream,
    }
}

/// Waits until `check` holds, polling; fails the test after `deadline`.
pub async fn eventually<F: AsyncFnMut() -> bool>(deadline: Duration, what: &str, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_list_edits_under_steady_load_lose_no_query() {
    let Staff {
        gateway,
        list,
        dir,
        _upstream,
    } = staff(|_| String::new()).await;
    let server = gateway.addr();

    // The stream: one staff client asking three names in turn, each answer awaited (1 s).
    #[derive(Default)]
    struct Seen {
        sent: usize,
        lost: usize,
        servfail: usize,
        /// (sent at, blocked?) of the last answer for the name the edits toggle.
        toggled: Option<(Instant, bool)>,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.2:0").await.unwrap();
            let names = ["www.example.org.", "tiktok.com.", "stable.example.net."];
            let mut buf = vec![0u8; 4096];
            for i in 0..200_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = names[i % names.len()];
                let mut query = question(name, RecordType::A, true);
                query.metadata.id = i as u16;
                let sent_at = Instant::now();
                socket.send_to(&encode(&query), server).await.unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        let (len, _) = socket.recv_from(&mut buf).await.unwrap();
                        let reply = Message::from_vec(&buf[..len]).unwrap();
                        if reply.metadata.id == i as u16 {
                            return reply;
                        }
                    }
                })
                .await;
                let mut seen = seen.lock().await;
                seen.sent += 1;
                match answer {
                    Err(_) => seen.lost += 1,
                    Ok(reply) => {
                        let rcode = reply.metadata.response_code;
                        if rcode == ResponseCode::ServFail {
                            seen.servfail += 1;
                        }
                        if i % names.len() == 0 {
                            seen.toggled = Some((sent_at, rcode == ResponseCode::NXDomain));
                        }
                    }
                }
                drop(seen);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut slowest = Duration::ZERO;
    for edit in 0..20 {
        let block = edit % 2 == 0;
        let text = if block {
            "tiktok.com\nexample.org\n"
        } else {
            "tiktok.com\n"
        };
        // Half the edits replace the file by rename (editors, git), half rewrite it in place.
        if edit % 4 < 2 {
            let tmp = dir.path().join(".blocked.txt.new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &list).unwrap();
        } else {
            std::fs::write(&list, text).unwrap();
        }
        let edited = Instant::now();
        eventually(
            EDIT_DEADLINE,
            &format!("edit {edit} (block={block})"),
            async || {
                matches!(seen.lock().await.toggled, Some((at, b)) if at > edited && b == block)
            },
        )
        .await;
        slowest = slowest.max(edited.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();

    let seen = seen.lock().await;
    assert!(seen.sent > 100, "the stream ran: {} queries", seen.sent);
    assert_eq!(seen.lost, 0, "queries lost out of {}", seen.sent);
    assert_eq!(seen.servfail, 0, "SERVFAIL answers out of {}", seen.sent);
    let scrape = gateway.scrape().await;
    assert!(
        scrape[r#"portvakt_reloads_total{result="success"}"#] >= 20.0,
        "every edit reloaded"
    );
    assert_eq!(scrape[r#"portvakt_reloads_total{result="failure"}"#], 0.0);
    eprintln!(
        "20 edits, {} queries, slowest edit in force after {slowest:?}",
        seen.sent
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn broken_edits_keep_the_running_policy_and_show_everywhere() {
    let Staff {
        gateway,
        list,
        dir: _dir,
        _upstream,
    } = staff(|_| "server.watch = false".to_owned()).await;
    let staff = gateway.client_from("127.0.0.2");
    assert_eq!(
        staff.udp_a("www.example.org.").await.addresses(),
        ["192.0.2.1"]
    );

    // A good edit, applied by the API.
    std::fs::write(&list, "tiktok.com\nexample.org\n").unwrap();
    let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""generation":2"#), "{body}");
    assert_eq!(
        staff.udp_a("www.example.org.").await.metadata.response_code,
        ResponseCode::NXDomain,
        "the edit is in force"
    );

    // A broken config edit: rejected with file:line, the old policy keeps blocking.
    let config = gateway.config_path();
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("[[segment]]", "[[segment]]\nnetwork = \"typo\""),
    )
    .unwrap();
    let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("portvakt.toml:"), "names file:line: {body}");
    assert_eq!(
        staff.udp_a("www.example.org.").await.metadata.response_code,
        ResponseCode::NXDomain,
        "old policy keeps blocking"
    );
    let (_, status) = gateway.admin_get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let error = status["reload"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("unknown field `network`"), "{status}");
    assert_eq!(status["policy"]["generation"], 2);

    // A missing list file is rejected the same way, also through the in-process trigger.
    std::fs::write(&config, &good).unwrap();
    std::fs::remove_file(&list).unwrap();
    let err = gateway
        .reloader()
        .reload(Trigger::Signal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("blocked.txt"), "{err}");
    assert_eq!(
        staff.udp_a("www.example.org.").await.metadata.response_code,
        ResponseCode::NXDomain,
        "old policy keeps blocking"
    );
    let scrape = gateway.scrape().await;
    assert_eq!(scrape[r#"portvakt_reloads_total{result="success"}"#], 1.0);
    assert_eq!(scrape[r#"portvakt_reloads_total{result="failure"}"#], 2.0);

    // Fixed: the error clears.
    std::fs::write(&list, "tiktok.com\n").unwrap();
    assert_eq!(
        gateway.reloader().reload(Trigger::Signal).await.ok(),
        Some(3)
    );
    let (_, status) = gateway.admin_get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["reload"]["last_error"].is_null(), "{status}");
    assert_eq!(
        staff.udp_a("www.example.org.").await.addresses(),
        ["192.0.2.1"]
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn api_reload_needs_the_token_when_one_is_set() {
    let Staff {
        gateway,
        dir: _dir,
        _upstream,
        ..
    } = staff(|dir| {
        let token = dir.join("admin.token");
        std::fs::write(&token, "s3cret-token\n").unwrap();
        format!(
            "admin.token_file = {:?}\nserver.watch = false",
            token.display().to_string()
        )
    })
    .await;

    for headers in [
        &[][..],
        &["Authorization: Bearer wrong-token"][..],
        &["Authorization: Basic czNjcmV0LXRva2Vu"][..],
        &["Authorization: Bearer s3cret-toke"][..],
    ] {
        let (code, body) = gateway
            .admin_request("POST", "/api/v1/reload", headers)
            .await;
        assert_eq!(code, 401, "{headers:?}: {body}");
    }
    let (code, body) = gateway
        .admin_request(
            "POST",
            "/api/v1/reload",
            &["Authorization: Bearer s3cret-token"],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // Read-only endpoints stay open.
    assert_eq!(gateway.admin_get("/api/v1/status").await.0, 200);
    let scrape = gateway.scrape().await;
    assert_eq!(scrape[r#"portvakt_reloads_total{result="success"}"#], 1.0);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_in_flight_never_stalls_a_reload_and_is_decided_under_the_new_policy() {
    let Staff {
        gateway,
        list,
        dir: _dir,
        _upstream,
    } = staff(|_| "server.watch = false".to_owned()).await;
    // A miss whose upstream never answers stays in flight for the group's timeout (700 ms).
    let staff = gateway.client_from("127.0.0.2");
    let in_flight = tokio::spawn(async move { staff.udp_a("slow.example.net.").await });
    eventually(
        Duration::from_secs(2),
        "the miss reached upstream",
        async || _upstream.queries_for("slow.example.net.") > 0,
    )
    .await;

    std::fs::write(&list, "tiktok.com\nslow.example.net\n").unwrap();
    let generation = gateway.reloader().reload(Trigger::Api).await.unwrap();
    assert_eq!(generation, 2);
    assert!(
        !in_flight.is_finished(),
        "the reload finished only after the query in flight"
    );
    // The answer is decided under the policy in force when it comes, which blocks the name.
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.ede()[0].0, 15);
    assert_eq!(gateway.gateway().generation(), 2);
    gateway.shutdown().await;
}

// One runtime thread: the build worker cannot run until all ten requests are in.
#[tokio::test(flavor = "current_thread")]
async fn reload_requests_coalesce() {
    let Staff {
        gateway,
        dir: _dir,
        _upstream,
        ..
    } = staff(|_| "server.watch = false".to_owned()).await;
    let reloader = gateway.reloader();
    let before = reloader.status();
    // Ten requests, each polled once before the worker runs: one build serves them all.
    let r = || reloader.reload(Trigger::Api);
    let results = tokio::join!(r(), r(), r(), r(), r(), r(), r(), r(), r(), r());
    let generations = [
        results.0, results.1, results.2, results.3, results.4, results.5, results.6, results.7,
        results.8, results.9,
    ]
    .map(|result| result.unwrap());
    assert_eq!(generations, [2; 10]);
    let after = reloader.status();
    assert_eq!(after.requests - before.requests, 10);
    assert_eq!(after.builds - before.builds, 1, "ten requests, one build");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_reload_drops_the_series_of_what_it_removed() {
    let Staff {
        gateway,
        dir: _dir,
        _upstream,
        ..
    } = staff(|_| "server.watch = false".to_owned()).await;
    let staff_queries =
        r#"portvakt_queries_total{decision="blocked",segment="staff",transport="udp"}"#;
    assert!(gateway.scrape().await.contains_key(staff_queries));

    let config = gateway.config_path();
    let renamed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"staff\"", "name = \"office\"")
        .replace("[lists.blocked]", "[lists.apps]")
        .replace("block = [\"blocked\"]", "block = [\"apps\"]");
    std::fs::write(&config, renamed).unwrap();
    assert_eq!(gateway.reloader().reload(Trigger::Api).await.ok(), Some(2));

    let scrape = gateway.scrape().await;
    let stale: Vec<&String> = scrape
        .keys()
        .filter(|k| k.contains(r#"segment="staff""#) || k.contains(r#"list="blocked""#))
        .collect();
    assert!(
        stale.is_empty(),
        "series of removed names remain: {stale:?}"
    );
    assert!(scrape.contains_key(
        r#"portvakt_queries_total{decision="blocked",segment="office",transport="udp"}"#
    ));
    assert!(scrape.contains_key(r#"portvakt_list_entries{list="apps"}"#));
    assert!(scrape.contains_key(
        r#"portvakt_queries_total{decision="refused",segment="none",transport="udp"}"#
    ));
    gateway.shutdown().await;
}

/// A list over its limits is refused with its file and line, before it is read into memory,
/// and the running policy keeps blocking: a line over `max_line_bytes`, more entries than
/// `max_entries`, a file larger than `max_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_list_is_refused_with_file_and_line_and_the_old_policy_keeps_serving() {
    let upstream = FakeUpstream::new()
        .with_a("a.example.", "192.0.2.5")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "tiktok.com\nt.me\n").unwrap();
    let policy = format!(
        "server.watch = false\n[lists.blocked]\nfiles = [{:?}]\nmax_entries = 4\nmax_bytes = 150000\nmax_line_bytes = 200\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"blocked\"]\n",
        list.display().to_string()
    );
    let gateway = TestGateway::start(&upstream, &policy).await;
    let staff = gateway.client_from("127.0.0.2");
    let rcode = async |name: &str| staff.udp_a(name).await.metadata.response_code;
    assert_eq!(rcode("www.tiktok.com.").await, ResponseCode::NXDomain);
    let shown = list.display().to_string();

    let refused = async |text: String, expected: &str| {
        std::fs::write(&list, text).unwrap();
        let (code, body) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
        assert_eq!(code, 422, "{body}");
        assert!(body.contains(expected), "{expected:?} in {body}");
        // The running policy: t.me blocked, a.example (in every edit) not.
        assert_eq!(rcode("t.me.").await, ResponseCode::NXDomain);
        assert_eq!(rcode("a.example.").await, ResponseCode::NoError);
    };
    let long_line = format!("a.example\nb.example\n{}\n", "x".repeat(300));
    refused(long_line, &format!("{shown}:3: line longer than 200 bytes")).await;
    let many = "a.example\nb.example\nc.example\nd.example\ne.example\nf.example\n".to_owned();
    refused(
        many,
        &format!("{shown}:5: list \\\"blocked\\\" has more than its max_entries (4)"),
    )
    .await;
    let large = format!(
        "a.example\n{}",
        "# a comment line of forty bytes .......\n".repeat(4000)
    );
    refused(
        large,
        "bytes, more than the list's max_bytes (150000); not read",
    )
    .await;

    let scrape = gateway.scrape().await;
    assert_eq!(scrape[r#"portvakt_reloads_total{result="failure"}"#], 3.0);
    assert_eq!(
        scrape[r#"portvakt_reloads_rejected_total{reason="list"}"#],
        3.0
    );
    gateway.shutdown().await;
}

/// An admin request that declares a body over `[admin] max_body_bytes` is refused unread
/// (413, counted): no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_admin_request_is_refused_unread() {
    let Staff {
        gateway,
        dir: _dir,
        _upstream,
        ..
    } = staff(|_| "server.watch = false\nadmin.max_body_bytes = 500".to_owned()).await;
    // Under the default (64 KiB), over the configured 500 bytes.
    let request = "POST /api/v1/reload HTTP/1.0\r\nHost: admin\r\nContent-Length: 1000\r\n\r\n";
    let (code, body) = gateway.admin_raw(request).await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(gateway.gateway().generation(), 1, "no reload ran");
    let metrics = gateway.scrape().await;
    assert_eq!(
        metrics.get(r#"portvakt_admin_limit_hits_total{limit="body"}"#),
        Some(&1.0),
        "counted"
    );
    let (code, _) = gateway.admin_request("POST", "/api/v1/reload", &[]).await;
    assert_eq!(code, 200, "a request without a body still reloads");
    gateway.shutdown().await;
}

/// A Kubernetes ConfigMap volume: each file a link through `..data` to a versioned directory,
/// updated by swapping `..data` (no event names the file). Each swap is a reload.
#[tokio::test]
async fn a_configmap_style_link_swap_reloads() {
    let upstream = FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let volume = tempfile::tempdir().unwrap();
    let swap_to = |version: &str, list: &str| {
        let dir = volume.path().join(format!("..{version}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("blocked.txt"), list).unwrap();
        let tmp = volume.path().join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, volume.path().join("..data")).unwrap();
    };
    swap_to("v1", "tiktok.com\n");
    let list = volume.path().join("blocked.txt");
    std::os::unix::fs::symlink("..data/blocked.txt", &list).unwrap();
    let gateway = TestGateway::start(&upstream, &staff_config(&list, "")).await;
    let staff = gateway.client_from("127.0.0.2");
    let blocked =
        async |name: &str| staff.udp_a(name).await.metadata.response_code == ResponseCode::NXDomain;
    assert!(blocked("www.tiktok.com.").await);
    assert!(!blocked("www.example.org.").await);

    for (version, text) in [("v2", "tiktok.com\nexample.org\n"), ("v3", "tiktok.com\n")] {
        swap_to(version, text);
        let previous = volume
            .path()
            .join(if version == "v2" { "..v1" } else { "..v2" });
        std::fs::remove_dir_all(previous).unwrap();
        let want = version == "v2";
        eventually(EDIT_DEADLINE, "the swapped list in force", async || {
            blocked("www.example.org.").await == want
        })
        .await;
    }
    assert_eq!(gateway.gateway().generation(), 3, "one reload per swap");
}
