//! PROXY protocol v2 from a load balancer (`proxy_protocol_from`): the client is the one the
//! header names, over UDP (a header per datagram) and TCP (one per connection). Without a
//! valid header a trusted source gets nothing; from any other source a header is no key.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use crate::harness::{Answered, FakeUpstream, TestGateway, encode, question};

const BALANCER: &str = "127.0.0.9";

const POLICY: &str = r#"server.proxy_protocol_from = ["127.0.0.9"]
[lists.tiktok]
files = ["blocklists/tiktok.txt"]
[[segment]]
name = "staff"
networks = ["127.0.0.2/32", "127.0.0.4/32"]
block = ["tiktok"]
[[segment]]
name = "tiktok-devices"
networks = ["127.0.0.3/32"]
"#;

fn header(command: Command, client: &str, protocol: Protocol) -> Vec<u8> {
    let from: SocketAddr = format!("{client}:40000").parse().unwrap();
    let to: SocketAddr = "127.0.0.1:53".parse().unwrap();
    Builder::with_addresses(Version::Two | command, protocol, (from, to))
        .build()
        .unwrap()
}

fn tiktok() -> Vec<u8> {
    encode(&question("www.tiktok.com.", RecordType::A, true))
}

/// Sends one datagram from `source`; the reply, if one comes within a second.
async fn datagram(gateway: &TestGateway, source: &str, bytes: &[u8]) -> Option<Message> {
    let socket = UdpSocket::bind((source.parse::<std::net::IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    socket.send_to(bytes, gateway.addr()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..len]).unwrap())
}

/// One TCP connection from `source` that sends `prefix` then `queries` framed; every reply
/// until the server closes or a second passes.
async fn connection(
    gateway: &TestGateway,
    source: &str,
    prefix: &[u8],
    queries: &[Vec<u8>],
) -> Vec<Message> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(gateway.addr()).await.unwrap();
    let mut bytes = prefix.to_vec();
    for query in queries {
        bytes.extend_from_slice(&(query.len() as u16).to_be_bytes());
        bytes.extend_from_slice(query);
    }
    let _ = stream.write_all(&bytes).await;
    let mut replies = Vec::new();
    while replies.len() < queries.len() {
        let read = async {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.ok()?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Some(reply)) => replies.push(Message::from_vec(&reply).unwrap()),
            _ => break,
        }
    }
    replies
}

#[tokio::test]
async fn a_balancers_datagrams_are_placed_by_the_client_their_header_names() {
    let upstream = FakeUpstream::new()
        .with_a("www.tiktok.com.", "192.0.2.7")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let with = |command, client| {
        let mut bytes = header(command, client, Protocol::Datagram);
        bytes.extend_from_slice(&tiktok());
        bytes
    };

    let staff = datagram(&gateway, BALANCER, &with(Command::Proxy, "127.0.0.2"))
        .await
        .expect("an answer for the staff client");
    assert_eq!(staff.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(staff.ede()[0].0, 15, "blocked, with its EDE");

    let device = datagram(&gateway, BALANCER, &with(Command::Proxy, "127.0.0.3"))
        .await
        .expect("an answer for the device");
    assert_eq!(device.addresses(), ["192.0.2.7"]);

    // The balancer's own health check: placed by its own address, in no segment.
    let local = datagram(&gateway, BALANCER, &with(Command::Local, "127.0.0.3"))
        .await
        .expect("an answer to the health check");
    assert_eq!(local.metadata.response_code, ResponseCode::Refused);

    // From the balancer without a header: dropped and counted.
    assert!(datagram(&gateway, BALANCER, &tiktok()).await.is_none());
    let metrics = gateway.scrape().await;
    assert_eq!(metrics["portvakt_proxy_header_errors_total"], 1.0);

    // A staff client's own header claiming the device segment is no key.
    let forged = datagram(&gateway, "127.0.0.4", &with(Command::Proxy, "127.0.0.3")).await;
    assert!(
        forged
            .as_ref()
            .is_none_or(|m| m.metadata.response_code != ResponseCode::NoError),
        "{forged:?}"
    );
    let metrics = gateway.scrape().await;
    assert_eq!(
        metrics[r#"portvakt_queries_total{decision="allowed",segment="tiktok-devices",transport="udp"}"#],
        1.0,
        "only the balancer's device query was forwarded"
    );
}

#[tokio::test]
async fn a_balancers_tcp_connection_is_placed_by_its_header() {
    let upstream = FakeUpstream::new()
        .with_a("www.tiktok.com.", "192.0.2.7")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let two = [tiktok(), tiktok()];

    let stream = header(Command::Proxy, "127.0.0.2", Protocol::Stream);
    let staff = connection(&gateway, BALANCER, &stream, &two).await;
    assert_eq!(staff.len(), 2, "both pipelined queries answered");
    assert!(
        (staff.iter()).all(|m| m.metadata.response_code == ResponseCode::NXDomain),
        "{staff:?}"
    );

    let stream = header(Command::Proxy, "127.0.0.3", Protocol::Stream);
    let device = connection(&gateway, BALANCER, &stream, &two[..1]).await;
    assert_eq!(device[0].addresses(), ["192.0.2.7"]);

    // No header from the balancer: the connection is closed unanswered.
    assert!(connection(&gateway, BALANCER, &[], &two).await.is_empty());
    // A header from a client of its own is read as DNS, and places nobody elsewhere.
    let stream = header(Command::Proxy, "127.0.0.3", Protocol::Stream);
    let forged = connection(&gateway, "127.0.0.4", &stream, &two[..1]).await;
    assert!(
        (forged.iter()).all(|m| m.metadata.response_code != ResponseCode::NoError),
        "{forged:?}"
    );
    let metrics = gateway.scrape().await;
    assert_eq!(metrics["portvakt_proxy_header_errors_total"], 1.0);
    assert_eq!(
        metrics[r#"portvakt_queries_total{decision="blocked",segment="staff",transport="tcp"}"#],
        2.0
    );
}
