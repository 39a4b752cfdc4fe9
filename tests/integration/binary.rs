//! The built `portvakt` binary, as a newcomer runs it: the shipped config (on free ports, so
//! that another portvakt on 5353 cannot answer in its place; each test checks the pid behind
//! the answers), and `check` / `explain` with their exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, Canned, FakeUpstream, question};

const BIN: &str = env!("CARGO_BIN_EXE_portvakt");

/// Kills the child when the test ends, whatever happens.
struct Child(std::process::Child);

impl Child {
    /// Waits (50 tries) until `dns` answers, then checks that this child is what answers.
    async fn serving(&self, dns: &str, admin: &str) {
        for _ in 0..50 {
            if rcode_of(dns, "up.example.").await.is_some() {
                break;
            }
        }
        assert_answered_by(self, admin).await;
    }

    fn terminate(&self) {
        let pid = self.0.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(kill.unwrap().success());
    }

    /// The exit status, which must come within 3 s.
    async fn exit_within_3s(&mut self) -> std::process::ExitStatus {
        for _ in 0..60 {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not exited within 3 s of SIGTERM");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `portvakt serve --config config`, its output discarded.
fn serve(config: &Path) -> Child {
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portvakt starts");
    Child(child)
}

/// The shipped config with its DNS and admin listeners moved to free ports: (config, dns, admin).
fn shipped_config_on_free_ports(dir: &Path) -> (PathBuf, String, String) {
    let (dns, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let shipped = std::fs::read_to_string("config/portvakt.toml").unwrap();
    let moved = shipped
        .replace(
            r#"listen = ["127.0.0.1:5353"]"#,
            &format!(r#"listen = ["{dns}"]"#),
        )
        .replace(
            r#"listen = "127.0.0.1:9153""#,
            &format!(r#"listen = "{admin}""#),
        );
    assert_ne!(moved, shipped, "the shipped listen addresses were found");
    let config = dir.join("portvakt.toml");
    std::fs::write(&config, moved).unwrap();
    (config, dns, admin)
}

/// Fails the test unless the process answering on `admin` is `child` (and not another
/// portvakt that held the port before the child could bind it).
async fn assert_answered_by(child: &Child, admin: &str) {
    let status = http_get(admin, "/api/v1/status").await;
    let pid = format!(r#""pid":{}"#, child.0.id());
    assert!(
        status.contains(&pid),
        "{admin} is not the spawned portvakt: {status}"
    );
}

#[tokio::test]
async fn shipped_config_blocks_tiktok_for_127_0_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let (config, dns, admin) = shipped_config_on_free_ports(dir.path());
    let mut child = serve(&config);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = question("tiktok.com.", RecordType::A, true)
        .to_vec()
        .unwrap();
    let mut answer = None;
    // Bounded: up to 50 tries, 100 ms apart, while the process starts.
    for _ in 0..50 {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("portvakt exited early with {status}");
        }
        socket.send_to(&query, &dns).await.unwrap();
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
        {
            answer = Some(Message::from_vec(&buf[..len]).unwrap());
            break;
        }
    }
    let answer = answer.expect("an answer within 5 s");
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answer.ede()[0].0, 15);
    assert_answered_by(&child, &admin).await;

    // SIGHUP (systemd's ExecReload) reloads the policy and must never stop the server.
    // Twice: the second reload must not wait on a policy the process itself still holds.
    for count in 1..=2 {
        let hup = Command::new("kill")
            .args(["-HUP", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
        let counted = format!(r#"portvakt_reloads_total{{result="success"}} {count}"#);
        let mut reloaded = false;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if http_get(&admin, "/metrics").await.contains(&counted) {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "SIGHUP reload {count} counted within 2 s");
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    socket.send_to(&query, &dns).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Message::from_vec(&buf[..len])
            .unwrap()
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

/// The whole HTTP/1.0 response to a GET, or "" if nothing listens.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut body)).await;
    body
}

/// A port free for UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The rcode of an A query for `name` from 127.0.0.1, or None after 300 ms.
async fn rcode_of(server: &str, name: &str) -> Option<ResponseCode> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = question(name, RecordType::A, true).to_vec().unwrap();
    socket.send_to(&query, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let received =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    let (len, _) = received.ok()?.unwrap();
    Some(
        Message::from_vec(&buf[..len])
            .unwrap()
            .metadata
            .response_code,
    )
}

#[tokio::test]
async fn sighup_applies_a_good_edit_and_keeps_the_policy_on_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    std::fs::write(&list, "tiktok.com\n").unwrap();
    let (dns, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = dir.path().join("portvakt.toml");
    let good = format!(
        "[server]\nlisten = [\"{dns}\"]\nwatch = false\n[admin]\nlisten = \"{admin}\"\n[lists.blocked]\nfiles = [{:?}]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\nblock = [\"blocked\"]\n[[upstream]]\nservers = [\"127.0.0.1:9\"]\n",
        list.display().to_string()
    );
    std::fs::write(&config, &good).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portvakt starts");
    let mut child = Child(child);
    let hup = |child: &Child| {
        let pid = child.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    // Bounded polls: 40 x (up to 300 ms + 50 ms).
    async fn within(what: &str, mut check: impl AsyncFnMut() -> bool) {
        for _ in 0..40 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within the deadline");
    }
    within("started", async || {
        rcode_of(&dns, "tiktok.com.").await == Some(ResponseCode::NXDomain)
    })
    .await;
    assert_answered_by(&child, &admin).await;
    let explain = "/api/v1/explain?client=127.0.0.1&name=example.org";
    assert!(
        http_get(&admin, explain)
            .await
            .contains(r#""verdict":"allowed""#)
    );

    std::fs::write(&list, "tiktok.com\nexample.org\n").unwrap();
    hup(&child);
    within("the edit in force", async || {
        rcode_of(&dns, "www.example.org.").await == Some(ResponseCode::NXDomain)
    })
    .await;

    std::fs::write(
        &config,
        good.replace("[[segment]]", "[[segment]]\nnetwork = \"typo\""),
    )
    .unwrap();
    hup(&child);
    within("the failure counted", async || {
        http_get(&admin, "/metrics")
            .await
            .contains(r#"portvakt_reloads_total{result="failure"} 1"#)
    })
    .await;
    assert_eq!(
        rcode_of(&dns, "www.example.org.").await,
        Some(ResponseCode::NXDomain),
        "old policy blocks"
    );
    let status = http_get(&admin, "/api/v1/status").await;
    assert!(status.contains("unknown field `network`"), "{status}");

    let _ = child.0.kill();
    let output = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let rejected = log
        .lines()
        .find(|l| l.contains("reload rejected"))
        .unwrap_or_else(|| panic!("no rejection in the log:\n{log}"));
    let at = format!("{}:", config.display());
    assert!(
        rejected.contains(&at) && rejected.contains("\"level\":\"ERROR\""),
        "{rejected}"
    );
}

#[test]
fn check_reports_every_config_mistake_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"[lists.tiktok]
files = ["blocklists/tiktok.txt", "blocklists/nope.txt"]
[[segment]]
name = "staff"
networks = ["10.10.0.0/16"]
block = ["tiktokk"]
[[segment]]
name = "byod"
networks = ["10.10.0.0/16"]
[[upstream]]
servers = ["9.9.9.9:53"]
"#,
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("bad.toml:")).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("bad.toml:2:35: list \"tiktok\": cannot read blocklists/nope.txt"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("bad.toml:6:10: segment \"staff\" blocks list \"tiktokk\""),
        "{stderr}"
    );
    assert!(
        lines[2].contains("bad.toml:9:13: network 10.10.0.0/16 is in segment \"staff\" already"),
        "{stderr}"
    );
}

#[test]
fn check_strict_fails_on_rejected_lines_and_explain_names_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "# test\ntiktok.com\n||bad*rule^\n").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[lists.tiktok]\nfiles = [{:?}]\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\nblock = [\"tiktok\"]\n[[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
            list.display().to_string()
        ),
    )
    .unwrap();
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    let stdout = String::from_utf8(check.stdout).unwrap();
    assert!(
        stdout.contains("list tiktok: 1 entries, 1 rejected lines"),
        "{stdout}"
    );
    assert!(
        stdout.contains("list.txt:3: wildcards inside a name are not supported"),
        "{stdout}"
    );
    let strict = Command::new(BIN)
        .args(["check", "--strict", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));

    let explain = Command::new(BIN)
        .args([
            "explain",
            "--client",
            "127.0.0.7",
            "www.TikTok.com",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(explain.status.code(), Some(0));
    let stdout = String::from_utf8(explain.stdout).unwrap();
    assert!(
        stdout.contains("segment: \"staff\" (by network "),
        "{stdout}"
    );
    assert!(
        stdout.contains("blocked by list \"tiktok\" (entry `tiktok.com` at"),
        "{stdout}"
    );
    assert!(stdout.contains("list.txt:2)"), "{stdout}");
    let refused = Command::new(BIN)
        .args(["explain", "--client", "192.0.2.1", "tiktok.com", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8(refused.stdout)
            .unwrap()
            .contains("verdict: refused")
    );
}

/// SIGTERM: no new query is taken, the ones in flight get their answers (within the grace),
/// then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_queries_in_flight_then_exits() {
    let upstream = crate::harness::FakeUpstream::new()
        .with_a("slow.example.", "192.0.2.44")
        .delay("slow.example.", Duration::from_millis(600))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (dns, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let config = dir.path().join("portvakt.toml");
    let text = format!(
        "[server]\nlisten = [\"{dns}\"]\nwatch = false\n[admin]\nlisten = \"{admin}\"\n[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\n[[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 1500\ntry_timeout_ms = 1500\n",
        upstream.addr
    );
    std::fs::write(&config, text).unwrap();
    let mut child = serve(&config);
    child.serving(&dns, &admin).await;

    // A miss the upstream answers only after 600 ms, in flight when SIGTERM comes.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = question("slow.example.", RecordType::A, true)
        .to_vec()
        .unwrap();
    socket.send_to(&query, &dns).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.terminate();
    let mut buf = vec![0u8; 4096];
    let received = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await;
    let (len, _) = received.expect("the query in flight was answered").unwrap();
    let answer = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(answer.addresses(), ["192.0.2.44"]);
    // Nothing new is taken, and the process is gone within the grace.
    assert_eq!(
        rcode_of(&dns, "after.example.").await,
        None,
        "a query after SIGTERM"
    );
    let status = child.exit_within_3s().await;
    assert!(status.success(), "{status}");
}

/// SIGTERM with a DoQ connection open: the listener closes it with DOQ_NO_ERROR, the client
/// hears that at once (not after its idle timeout), and the process exits 0 within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_quic_connections_where_the_client_hears_it() {
    let dir = tempfile::tempdir().unwrap();
    crate::harness::certificate(dir.path(), crate::encrypted::NAME);
    let upstream = FakeUpstream::new().start().await;
    let (dns, quic, admin) = (free_port(), free_port(), free_port());
    let d = dir.path().display();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{dns}\"]\nquic_listen = [\"127.0.0.1:{quic}\"]\n\
         tls_cert_file = \"{d}/cert.pem\"\ntls_key_file = \"{d}/key.pem\"\n\
         tls_name = \"{}\"\nwatch = false\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\n\
         [[upstream]]\nservers = [\"{}\"]\n",
        crate::encrypted::NAME,
        upstream.addr
    );
    let config = dir.path().join("portvakt.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = serve(&config);
    child
        .serving(&format!("127.0.0.1:{dns}"), &format!("127.0.0.1:{admin}"))
        .await;
    let to = format!("127.0.0.1:{quic}").parse().unwrap();
    let connection = crate::doq::connect("127.0.0.2", dir.path(), to).await;
    let reply = crate::doq::query(&connection, "www.example.", 0).await;
    assert!(reply.is_some(), "answered over DoQ before SIGTERM");

    child.terminate();
    let closed = tokio::time::timeout(Duration::from_secs(3), connection.closed()).await;
    match closed.expect("the connection was closed within 3 s of SIGTERM") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0), "DOQ_NO_ERROR");
        }
        other => panic!("expected the server's close, got {other}"),
    }
    let status = child.exit_within_3s().await;
    assert!(status.success(), "{status}");
}

/// `portvakt catalogue <command>` with `args`: (exit code, stdout, stderr).
fn catalogue<S: AsRef<std::ffi::OsStr>>(command: &str, args: &[S]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["catalogue", command])
        .args(args)
        .output()
        .expect("portvakt runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `portvakt catalogue diff` with `args`.
fn catalogue_diff<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    catalogue("diff", args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_diff_prints_what_a_list_lacks_from_a_file_or_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("tiktok.txt"),
        "tiktok.com\nbyteoversea.com\n@@ads.tiktok.com\n",
    )
    .unwrap();
    std::fs::write(d.join("other.txt"), "douyin.com\n").unwrap();
    let config = d.join("portvakt.toml");
    std::fs::write(
        &config,
        format!(
            "[lists.tiktok]\nfiles = [{:?}]\n[lists.other]\nfiles = [{:?}]\n\
             [[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\nblock = [\"tiktok\"]\n\
             [[upstream]]\nservers = [\"127.0.0.1:53\"]\n",
            d.join("tiktok.txt"),
            d.join("other.txt")
        ),
    )
    .unwrap();
    // An AdGuard service definition: covered by a zone above, excepted, in another list, new.
    let catalogue = "id: tiktok\nname: TikTok\nrules:\n  - '||tiktok.com^'\n  - '||api.tiktok.com^'\n  \
                     - '||ads.tiktok.com^'\n  - '||douyin.com^'\n  - '||tiktokv.eu^'\n  - '||tiktokv.eu^'\n";
    std::fs::write(d.join("catalogue.yml"), catalogue).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let config = config.as_str();
    let file = d.join("catalogue.yml");
    let file = file.to_str().unwrap();

    let (code, missing, summary) = catalogue_diff(&[file, "--list", "tiktok", "--config", config]);
    assert_eq!(code, 1, "{summary}");
    assert_eq!(missing, "ads.tiktok.com\ndouyin.com\ntiktokv.eu\n");
    assert!(
        summary.contains("5 names") && summary.contains("blocked by list tiktok: 2, missing: 3"),
        "{summary}"
    );
    // Every list a segment blocks: `other` is blocked by none, so the same.
    let (code, all, _) = catalogue_diff(&[file, "--config", config]);
    assert_eq!((code, all), (1, missing.clone()));

    // The same over HTTP; a catalogue it covers whole exits 0.
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/services.yml",
            axum::routing::get(move || async move { catalogue }),
        )
        .route(
            "/covered.txt",
            axum::routing::get(|| async { "www.tiktok.com\nbyteoversea.com\n" }),
        );
    let server = tokio::spawn(async move { axum::serve(http, router).await.unwrap() });
    let owned = |url: String| -> [String; 5] {
        [
            url,
            "--list".into(),
            "tiktok".into(),
            "--config".into(),
            config.to_owned(),
        ]
    };
    let args = owned(format!("{base}/services.yml"));
    let (code, over_http, _) = tokio::task::spawn_blocking(move || catalogue_diff(&args))
        .await
        .unwrap();
    assert_eq!((code, over_http), (1, missing));
    let args = owned(format!("{base}/covered.txt"));
    let (code, none, summary) = tokio::task::spawn_blocking(move || catalogue_diff(&args))
        .await
        .unwrap();
    assert_eq!((code, none.as_str()), (0, ""), "{summary}");

    // Mistakes: exit 2 with the reason.
    let (code, _, error) = catalogue_diff(&[file, "--list", "nope", "--config", config]);
    assert_eq!(code, 2);
    assert!(error.contains("no list named \"nope\""), "{error}");
    let (code, _, error) = catalogue_diff(&["/nonexistent/catalogue.txt", "--config", config]);
    assert_eq!(code, 2);
    assert!(error.contains("cannot read"), "{error}");
    server.abort();
}

/// `portvakt catalogue resolve` with `args`, off the runtime (its upstream is in this test).
async fn catalogue_resolve(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || catalogue("resolve", &args))
        .await
        .unwrap()
}

/// What blocking ByteDance's networks in answers would take, measured through the upstream:
/// the names resolving into the shipped `tiktok-ip`, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_resolve_names_the_sites_that_resolve_into_an_ip_list() {
    let upstream = FakeUpstream::new()
        .with_a("api.unknown-app.example.", "71.18.1.9")
        .with(
            "shop.example.",
            Canned::Cname(
                "cdn.example.net.".into(),
                Box::new(Canned::A(vec!["192.0.2.10".parse().unwrap()], 60)),
            ),
        )
        .with_a("video.example.", "130.44.212.1")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lists = std::env::current_dir().unwrap().join("blocklists");
    let config = |upstream: &str| {
        format!(
            "[lists.tiktok-ip]\nfiles = [{:?}]\nkind = \"ip\"\n[lists.tiktok]\nfiles = [{:?}]\n\
             [[upstream]]\nservers = [\"{upstream}\"]\ntimeout_ms = 500\n",
            lists.join("tiktok-ip.txt"),
            lists.join("tiktok.txt"),
        )
    };
    std::fs::write(d.join("live.toml"), config(&upstream.addr.to_string())).unwrap();
    // A top-sites list: plain names and `rank,name`, a repeat, a comment, a name that is not.
    std::fs::write(
        d.join("top.txt"),
        "api.unknown-app.example\nshop.example\n# comment\nnx.example\nshop.example\n5,video.example\n",
    )
    .unwrap();
    let args = |config: &str, list: &str| -> Vec<String> {
        let path = |f: &str| d.join(f).to_str().unwrap().to_owned();
        vec![
            path("top.txt"),
            "--list".into(),
            list.into(),
            "--config".into(),
            path(config),
        ]
    };

    let (code, inside, summary) = catalogue_resolve(args("live.toml", "tiktok-ip")).await;
    assert_eq!(code, 1, "{summary}");
    assert_eq!(
        inside,
        "api.unknown-app.example\t71.18.1.9\nvideo.example\t130.44.212.1\n"
    );
    assert!(
        summary.contains("4 names, 1 without an address; inside list tiktok-ip: 2"),
        "{summary}"
    );
    assert!(upstream.queries_for("shop.example.") >= 1);

    // Nothing resolves (a dead upstream): an error, never "nothing inside".
    let dead = FakeUpstream::new().otherwise(Canned::Silent).start().await;
    std::fs::write(d.join("dead.toml"), config(&dead.addr.to_string())).unwrap();
    let (code, inside, error) = catalogue_resolve(args("dead.toml", "tiktok-ip")).await;
    assert_eq!((code, inside.as_str()), (2, ""), "{error}");
    assert!(error.contains("no name resolved"), "{error}");
    // A list of names is no IP list.
    let (code, _, error) = catalogue_resolve(args("live.toml", "tiktok")).await;
    assert_eq!(code, 2);
    assert!(error.contains("holds no addresses or networks"), "{error}");
}
