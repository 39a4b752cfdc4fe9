//! DNS over TLS upstream (RFC 7858) against a real DoT listener: a local Unbound with a
//! self-signed certificate made here. Answers come over one reused, pipelined connection;
//! a server whose certificate does not carry the configured name is never used.

use std::net::SocketAddr;

use hickory_proto::op::ResponseCode;

use crate::harness::{
    Answered, TestGateway, Unbound, certificate, found, present_or_skip, start_unbound,
};

/// A local Unbound answering `www.dot.example` over TLS only; refuses everything else, so it
/// never asks the internet.
struct DotServer {
    _unbound: Unbound,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

async fn dot_upstream() -> Option<DotServer> {
    if !present_or_skip(found("unbound") && found("openssl"), "unbound and openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path(), "dot.test");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let conf = format!(
        "server:\n  interface: 127.0.0.1@{port}\n  tls-port: {port}\n  do-udp: no\n\
         \x20 tls-service-key: \"{d}/key.pem\"\n  tls-service-pem: \"{d}/cert.pem\"\n\
         \x20 do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n\
         \x20 pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  num-threads: 1\n\
         \x20 so-reuseport: no\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n\
         \x20 local-zone: \".\" refuse\n  local-zone: \"dot.example.\" static\n\
         \x20 local-data: \"www.dot.example. 300 IN A 192.0.2.53\"\n"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let unbound = start_unbound(dir.path(), &conf, addr).await;
    Some(DotServer {
        _unbound: unbound,
        addr,
        ca: dir.path().join("ca.pem"),
        _dir: dir,
    })
}

fn config(server: &DotServer, name: &str) -> String {
    format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         segment = [{{ name = \"office\", networks = [\"127.0.0.3/32\"] }}]\n\
         [[upstream]]\nservers = [\"tls://{}#{name}\"]\nca_file = \"{}\"\ntimeout_ms = 3000\n",
        server.addr,
        server.ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_over_one_reused_pipelined_tls_connection() {
    let Some(unbound) = dot_upstream().await else {
        return;
    };
    let gateway = TestGateway::start_text(config(&unbound, "dot.test")).await;
    let office = gateway.client_from("127.0.0.3");
    let answer = office.udp_a("www.dot.example.").await;
    assert_eq!(answer.addresses(), ["192.0.2.53"]);
    // Concurrent misses (NXDOMAIN from Unbound's static zone) share the connection.
    let names: Vec<String> = (0..20).map(|i| format!("n{i}.dot.example.")).collect();
    let mut asking = tokio::task::JoinSet::new();
    for name in names {
        let client = gateway.client_from("127.0.0.3");
        asking.spawn(async move { (client.udp_a(&name).await, name) });
    }
    while let Some(asked) = asking.join_next().await {
        let (answer, name) = asked.unwrap();
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    let answer = office.tcp_a("www.dot.example.").await;
    assert_eq!(
        answer.addresses(),
        ["192.0.2.53"],
        "from the cache over TCP"
    );
    let server = format!("tls://{}", unbound.addr);
    let metrics = gateway.scrape().await;
    let ok = format!(
        "portvakt_upstream_server_queries_total{{group=\"default\",result=\"ok\",server=\"{server}\"}}"
    );
    let connections = format!(
        "portvakt_upstream_server_connections_total{{group=\"default\",server=\"{server}\"}}"
    );
    assert_eq!(metrics[&ok], 21.0);
    assert_eq!(metrics[&connections], 1.0, "one connection for every query");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_the_configured_name_is_refused() {
    let Some(unbound) = dot_upstream().await else {
        return;
    };
    let gateway = TestGateway::start_text(config(&unbound, "other.test")).await;
    let office = gateway.client_from("127.0.0.3");
    let answer = office.udp_a("www.dot.example.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.addresses().is_empty());
    gateway.shutdown().await;
}
