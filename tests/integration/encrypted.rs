//! DoT and DoH listeners against real clients (kdig, dig, curl) with a CA made here: the
//! same segments and policy as plain DNS, DDR advertising them, segments by listener, bad
//! requests, and a certificate swapped under load.

use portvakt::Transport;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::process::Command;

use crate::harness::{
    FakeUpstream, RunningUpstream, TestGateway, certificate, encode, found, present_or_skip,
    question, start_on_free_ports,
};

pub(crate) const NAME: &str = "dns.portvakt.test";

/// Staff (127.0.0.2) block the tiktok list and are advertised the encrypted endpoints
/// (so those listen on fixed ports); devices (127.0.0.3) block nothing. `server` is added
/// to `[server]`.
/// DDR advertises the encrypted listeners, so their ports are named in the config (`ports`:
/// DoT, DoH) before they are bound.
fn config(
    dir: &Path,
    upstream: &RunningUpstream,
    server: &str,
    segments: &str,
    [tls, https]: [u16; 2],
) -> String {
    let d = dir.display();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:{tls}\"]\n\
         https_listen = [\"127.0.0.1:{https}\"]\ntls_cert_file = \"{d}/cert.pem\"\n\
         tls_key_file = \"{d}/key.pem\"\ntls_name = \"{NAME}\"\n{server}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [lists.tiktok]\nfiles = [\"tests/fixtures/tiktok.txt\"]\n{segments}\n\
         [[upstream]]\nservers = [\"{}\"]\ntimeout_ms = 700\n",
        upstream.addr
    )
}

async fn start(
    dir: &Path,
    upstream: &RunningUpstream,
    server: &str,
    segments: &str,
) -> TestGateway {
    start_on_free_ports(|ports| config(dir, upstream, server, segments, ports))
        .await
        .0
}

const SEGMENTS: &str = "[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.2/32\"]\n\
                        block = [\"tiktok\"]\nadvertise_encrypted = true\n\
                        [[segment]]\nname = \"devices\"\nnetworks = [\"127.0.0.3/32\"]\n";

fn tools_present(tools: &[&str]) -> bool {
    let all = tools.iter().all(|t| found(t));
    present_or_skip(
        all && found("openssl"),
        &format!("{} and openssl", tools.join(", ")),
    )
}

async fn upstream() -> RunningUpstream {
    FakeUpstream::new()
        .with_a("www.tiktok.com.", "192.0.2.8")
        .with_a("web.tiktok.com.", "127.0.0.1")
        .start()
        .await
}

/// Runs a client tool; its stdout (it must exit 0 unless `may_fail`).
async fn run(program: &str, args: &[String]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .expect("the client finishes")
    .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

/// kdig and dig over TLS and HTTPS: (tool, arguments before the name).
fn dig_clients(
    gateway: &TestGateway,
    dir: &Path,
    source: &str,
) -> Vec<(&'static str, Vec<String>)> {
    let ca = format!("+tls-ca={}/ca.pem", dir.display());
    let host = format!("+tls-hostname={NAME}");
    let (tls, https) = (gateway.tls_addr(), gateway.addrs(Transport::Https)[0]);
    let at = |addr: SocketAddr| {
        vec![
            format!("@{}", addr.ip()),
            "-p".into(),
            addr.port().to_string(),
        ]
    };
    let with = |mut base: Vec<String>, more: &[&str]| {
        base.extend(more.iter().map(|s| s.to_string()));
        base.extend(["-b".to_owned(), source.to_owned()]);
        base
    };
    vec![
        ("kdig", with(at(tls), &["+tls", &ca, &host])),
        ("kdig", with(at(https), &["+https=/dns-query", &ca, &host])),
        ("kdig", with(at(https), &["+https-get", &ca, &host])),
        ("dig", with(at(tls), &["+tls"])),
        ("dig", with(at(https), &["+https"])),
        ("dig", with(at(https), &["+https-get"])),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdig_and_dig_get_the_segment_policy_over_tls_and_https() {
    if !tools_present(&["kdig", "dig"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let upstream = upstream().await;
    let gateway = start(dir.path(), &upstream, "", SEGMENTS).await;
    for (source, expect) in [("127.0.0.2", "NXDOMAIN"), ("127.0.0.3", "NOERROR")] {
        for (tool, mut args) in dig_clients(&gateway, dir.path(), source) {
            args.push("www.tiktok.com".into());
            let (ok, out) = run(tool, &args).await;
            assert!(ok, "{tool} {args:?} failed:\n{out}");
            assert!(
                out.contains(&format!("status: {expect}")),
                "{tool} {args:?} from {source}: expected {expect}\n{out}"
            );
            if expect == "NOERROR" {
                assert!(
                    out.contains("192.0.2.8"),
                    "{tool} {args:?}: no forwarded answer\n{out}"
                );
            } else {
                assert!(out.contains("EDE: 15"), "{tool} {args:?}: no EDE\n{out}");
            }
        }
    }
    // Staff were blocked over both, and each transport counted apart.
    let scrape = gateway.scrape().await;
    for transport in ["tls", "https"] {
        let key = format!(
            "portvakt_queries_total{{decision=\"blocked\",segment=\"staff\",transport=\"{transport}\"}}"
        );
        assert_eq!(
            scrape.get(&key),
            Some(&(if transport == "tls" { 2.0 } else { 4.0 })),
            "{key}"
        );
    }
    assert_eq!(
        upstream.queries_for("www.tiktok.com."),
        1,
        "one forward, then the cache"
    );
    // The certificate (made for 2 days) shows its notAfter, for the expiry alert.
    let expiry = scrape["portvakt_tls_certificate_expiry_timestamp_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let left = expiry - now;
    assert!(
        (86_400.0 * 1.9..86_400.0 * 2.1).contains(&left),
        "{left} s left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddr_advertises_the_encrypted_endpoints_to_staff_only() {
    if !tools_present(&["dig"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let upstream = upstream().await;
    let segments = format!(
        "{SEGMENTS}[[segment]]\nname = \"guests\"\nnetworks = [\"127.0.0.4/32\"]\nblock = [\"tiktok\"]\n"
    );
    let gateway = start(dir.path(), &upstream, "", &segments).await;
    let dig = |source: &str, name: &str| {
        let addr = gateway.addr();
        vec![
            format!("@{}", addr.ip()),
            "-p".into(),
            addr.port().to_string(),
            "-b".into(),
            source.to_owned(),
            name.to_owned(),
            "SVCB".into(),
        ]
    };
    let (tls, https) = (
        gateway.tls_addr().port(),
        gateway.addrs(Transport::Https)[0].port(),
    );
    for name in ["_dns.resolver.arpa", "_dns.dns.portvakt.test"] {
        let (ok, out) = run("dig", &dig("127.0.0.2", name)).await;
        assert!(ok && out.contains("status: NOERROR"), "{out}");
        let dot = format!("SVCB\t1 {NAME}. alpn=\"dot\" port={tls} ipv4hint=127.0.0.1");
        let doh = format!("SVCB\t2 {NAME}. alpn=\"h2\" port={https} ipv4hint=127.0.0.1");
        assert!(out.contains(&dot), "no DoT endpoint for {name}:\n{out}");
        assert!(out.contains(&doh), "no DoH endpoint for {name}:\n{out}");
        assert!(
            out.contains("/dns-query{?dns}"),
            "no dohpath for {name}:\n{out}"
        );
    }
    // A blocking segment without advertise_encrypted keeps the NODATA; devices are forwarded.
    let (_, guests) = run("dig", &dig("127.0.0.4", "_dns.resolver.arpa")).await;
    assert!(
        guests.contains("status: NOERROR") && guests.contains("ANSWER: 0"),
        "{guests}"
    );
    assert!(guests.contains("EDE: 15"), "{guests}");
    let (_, devices) = run("dig", &dig("127.0.0.3", "_dns.resolver.arpa")).await;
    assert!(
        !devices.contains(NAME),
        "devices were advertised:\n{devices}"
    );
}

/// curl as a DoH client, with its own DoH lookup of the URL's host: two listeners, the second
/// tied to the devices segment (curl's DoH requests come from 127.0.0.1 whatever `--interface`
/// says, so here the listener decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resolves_through_doh_by_the_listeners_segment() {
    if !tools_present(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let upstream = upstream().await;
    // The devices listener's port is named in the config before it is bound: another
    // test may take it meanwhile, so a few fresh ports are tried.
    let (gateway, [_, _, device_port]) = start_on_free_ports(|[tls, https, device_port]| {
        let server = format!("https_listen = [\"127.0.0.1:0\", \"127.0.0.1:{device_port}\"]");
        let segments = format!(
            "[[segment]]\nname = \"staff\"\nnetworks = [\"127.0.0.0/8\"]\nblock = [\"tiktok\"]\n\
             [[segment]]\nname = \"devices\"\nlisteners = [\"127.0.0.1:{device_port}\"]\n"
        );
        let text = config(dir.path(), &upstream, &server, &segments, [tls, https]);
        (text.lines())
            .filter(|l| *l != format!("https_listen = [\"127.0.0.1:{https}\"]"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    let admin = gateway.admin_addr().port();
    let staff_port = (gateway.addrs(Transport::Https).iter())
        .find(|a| a.port() != device_port)
        .unwrap()
        .port();
    let curl = |doh_port: u16| {
        vec![
            "-s".to_owned(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--cacert".into(),
            format!("{}/ca.pem", dir.path().display()),
            "--doh-url".into(),
            format!("https://127.0.0.1:{doh_port}/dns-query"),
            format!("http://web.tiktok.com:{admin}/healthz"),
        ]
    };
    // Through the devices listener the name resolves (to 127.0.0.1): curl reaches /healthz.
    let (ok, code) = run("curl", &curl(device_port)).await;
    assert!(ok && code == "200", "devices: curl got {code}");
    let forwarded = upstream.queries_for("web.tiktok.com.");
    assert!(forwarded >= 1);
    // Through the other, the source 127.0.0.1 is staff: blocked, so curl cannot resolve it.
    let (ok, code) = run("curl", &curl(staff_port)).await;
    assert!(!ok && code == "000", "staff: curl got {code}");
    assert_eq!(
        upstream.queries_for("web.tiktok.com."),
        forwarded,
        "staff's lookup forwarded"
    );
}

/// Raw DoH requests with curl: HTTP/1.1 and HTTP/2 POST and GET, and the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_answers_http1_and_http2_and_rejects_bad_requests() {
    if !tools_present(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), NAME);
    let upstream = upstream().await;
    let gateway = start(dir.path(), &upstream, "", SEGMENTS).await;
    let https = gateway.addrs(Transport::Https)[0];
    let query = encode(&question("www.tiktok.com.", RecordType::A, true));
    std::fs::write(dir.path().join("query.bin"), &query).unwrap();
    let ca = format!("{}/ca.pem", dir.path().display());
    let url = |rest: &str| format!("https://127.0.0.1:{}{rest}", https.port());
    let request = |version: &str, extra: Vec<String>, rest: &str| {
        let mut args = vec![
            "-s".to_owned(),
            version.to_owned(),
            "--interface".into(),
            "127.0.0.2".into(),
            "--cacert".into(),
            ca.clone(),
            "-o".into(),
            format!("{}/reply.bin", dir.path().display()),
            "-w".into(),
            "%{http_code} %{http_version} %{content_type} %header{content-length}".into(),
        ];
        args.extend(extra);
        args.push(url(rest));
        args
    };
    let post = vec![
        "-H".to_owned(),
        "content-type: application/dns-message".into(),
        "--data-binary".into(),
        format!("@{}/query.bin", dir.path().display()),
    ];
    use base64::Engine;
    let get = format!(
        "/dns-query?dns={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&query)
    );
    for version in ["--http1.1", "--http2"] {
        for (extra, rest) in [(post.clone(), "/dns-query"), (Vec::new(), get.as_str())] {
            let (ok, out) = run("curl", &request(version, extra, rest)).await;
            let shown = if version == "--http1.1" { "1.1" } else { "2" };
            assert!(ok, "curl {version} {rest}: {out}");
            let reply = std::fs::read(dir.path().join("reply.bin")).unwrap();
            assert_eq!(
                out,
                format!("200 {shown} application/dns-message {}", reply.len()),
                "{version} {rest}: status, version, type and content-length"
            );
            let reply = hickory_proto::op::Message::from_vec(&reply).expect("a DNS reply");
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        }
    }
    let bad: [(&str, Vec<String>, &str); 5] = [
        ("400", Vec::new(), "/dns-query?dns=%%%not-base64"),
        ("400", Vec::new(), "/dns-query?dns=AAAB"),
        ("400", Vec::new(), "/dns-query"),
        ("404", Vec::new(), "/other"),
        (
            "415",
            vec!["--data-binary".into(), "x".into()],
            "/dns-query",
        ),
    ];
    for (status, extra, rest) in bad {
        let (_, out) = run("curl", &request("--http2", extra, rest)).await;
        assert!(
            out.starts_with(status),
            "{rest}: expected {status}, got {out}"
        );
    }
    // The server is still answering.
    let (ok, out) = run("curl", &request("--http2", Vec::new(), &get)).await;
    assert!(ok && out.starts_with("200"), "{out}");
}

/// A DoT client trusting the CAs in `cas`.
pub(crate) fn client_config(cas: &[&Path]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

pub(crate) type DotStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub(crate) async fn dot_connect(
    addr: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<DotStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    let tcp = socket.connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
}

/// One query on `stream`; the reply's RCODE.
pub(crate) async fn dot_query(
    stream: &mut DotStream,
    id: u16,
    name: &str,
) -> std::io::Result<ResponseCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut query = question(name, RecordType::A, false);
    query.metadata.id = id;
    let packet = encode(&query);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    let reply = hickory_proto::op::Message::from_vec(&reply).expect("a DNS reply");
    assert_eq!(reply.metadata.id, id);
    Ok(reply.metadata.response_code)
}

/// A certificate swapped (and a broken one refused) while DoT clients keep asking, on open
/// connections and on new ones: no query is lost, and new handshakes get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swap_under_dot_load_drops_no_query() {
    if !tools_present(&[]) {
        return;
    }
    let (dir, first, second) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    certificate(first.path(), NAME);
    certificate(second.path(), NAME);
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(first.path().join(file), dir.path().join(file)).unwrap();
    }
    let upstream = upstream().await;
    let gateway = start(dir.path(), &upstream, "watch = false", SEGMENTS).await;
    let tls = gateway.tls_addr();
    let both = client_config(&[first.path(), second.path()]);
    let only_second = client_config(&[second.path()]);
    assert!(
        dot_connect(tls, &only_second).await.is_err(),
        "the first certificate is served"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4u16 {
        let (stop, both) = (stop.clone(), both.clone());
        load.push(tokio::spawn(async move {
            let (mut asked, mut stream) = (0u32, dot_connect(tls, &both).await.unwrap());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && asked < 20_000 {
                let id = worker.wrapping_mul(10_000).wrapping_add(asked as u16);
                let rcode = dot_query(&mut stream, id, "www.tiktok.com.").await.unwrap();
                assert_eq!(rcode, ResponseCode::NXDomain);
                asked += 1;
            }
            asked
        }));
    }
    let (stop_new, both_new) = (stop.clone(), both.clone());
    let fresh = tokio::spawn(async move {
        let mut asked = 0u32;
        while !stop_new.load(std::sync::atomic::Ordering::Relaxed) && asked < 2_000 {
            let mut stream = dot_connect(tls, &both_new).await.unwrap();
            let rcode = dot_query(&mut stream, 7, "www.tiktok.com.").await.unwrap();
            assert_eq!(rcode, ResponseCode::NXDomain);
            asked += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        asked
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A broken certificate: the reload fails and the first keeps being served.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    let trigger = portvakt::Trigger::Api;
    assert!(gateway.reloader().reload(trigger).await.is_err());
    assert!(
        dot_connect(tls, &only_second).await.is_err(),
        "still the first"
    );
    assert!(dot_connect(tls, &both).await.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The swap, by write-then-rename as a deploy tool does.
    for file in ["key.pem", "cert.pem"] {
        let staged = dir.path().join(format!("{file}.new"));
        std::fs::copy(second.path().join(file), &staged).unwrap();
        std::fs::rename(&staged, dir.path().join(file)).unwrap();
    }
    gateway
        .reloader()
        .reload(trigger)
        .await
        .expect("the new certificate loads");
    let mut swapped = dot_connect(tls, &only_second)
        .await
        .expect("the second is served");
    assert_eq!(
        dot_query(&mut swapped, 9, "www.tiktok.com.").await.unwrap(),
        ResponseCode::NXDomain
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for worker in load {
        let asked = worker
            .await
            .expect("a load worker lost a query or its connection");
        assert!(asked > 10, "a worker barely ran: {asked}");
        total += asked;
    }
    let new_connections = fresh.await.expect("a new connection failed");
    assert!(new_connections >= 10, "{new_connections} new connections");
    eprintln!("{total} queries on 4 open connections, {new_connections} new connections");
}
