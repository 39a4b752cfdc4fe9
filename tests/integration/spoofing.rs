//! Answers from upstream are accepted only when they cannot have been forged off-path: an
//! upstream that delays its real answer while the same address floods forged answers, for
//! every ID, to every port portvakt used for its earlier queries. No client ever gets the
//! forged address, and the cache never holds it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use tokio::net::{TcpListener, UdpSocket};

use crate::harness::{Answered, TestGateway};

const REAL: &str = "192.0.2.80";
const FORGED: &str = "203.0.113.66";

/// The answer to `request` with `addr`, as wire bytes.
fn answer(request: &Message, addr: &str) -> Vec<u8> {
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = true;
    response.metadata.recursion_available = true;
    let query = request.queries[0].clone();
    response.add_query(query.clone());
    let a = RData::A(A(addr.parse().unwrap()));
    response.add_answer(Record::from_rdata(query.name().clone(), 300, a));
    response.to_vec().unwrap()
}

/// Starts the attacking upstream on 127.0.0.1; returns its address.
async fn spoofing_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, addr, tcp);
        }
    };
    let udp = Arc::new(udp);
    let task = tokio::spawn(async move {
        let _tcp = tcp; // held, never answered
        let seen: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            // Every port seen so far for another question, each once: a port portvakt used
            // before and might use again is where a blind attacker would aim. (A port still
            // open for this very question is not forgery's: a late answer there is heard, and
            // only an attacker who sees the traffic knows it.)
            let name = request.queries[0].name().to_string();
            let earlier: Vec<u16> = {
                let mut seen = seen.lock().unwrap();
                let earlier = (seen.iter())
                    .filter(|(_, asked)| *asked != name)
                    .map(|&(port, _)| port)
                    .collect();
                if !seen.iter().any(|&(port, _)| port == from.port()) {
                    seen.push((from.port(), name));
                }
                earlier
            };
            let udp = udp.clone();
            tokio::spawn(async move {
                // Forged answers for every ID to each earlier port, then the real one.
                let mut forged = answer(&request, FORGED);
                for port in earlier {
                    let target = SocketAddr::from(([127, 0, 0, 1], port));
                    for id in 0..=u16::MAX {
                        forged[..2].copy_from_slice(&id.to_be_bytes());
                        let _ = udp.send_to(&forged, target).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = udp.send_to(&answer(&request, REAL), from).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_to_earlier_ports_are_never_accepted() {
    let (upstream, task) = spoofing_upstream().await;
    let config = format!(
        "server.listen = [\"127.0.0.1:0\"]\nadmin.listen = \"127.0.0.1:0\"\n\
         segment = [{{ name = \"office\", networks = [\"127.0.0.3/32\"] }}]\n\
         [[upstream]]\nservers = [\"{upstream}\"]\ntimeout_ms = 5000\ntry_timeout_ms = 5000\n"
    );
    let gateway = TestGateway::start_text(config).await;
    let office = gateway.client_from("127.0.0.3");
    let names: Vec<String> = (0..5).map(|i| format!("q{i}.spoof.example.")).collect();
    for name in &names {
        assert_eq!(office.udp_a(name).await.addresses(), [REAL], "{name}");
    }
    // From the cache now: it holds the real answers only.
    for name in &names {
        assert_eq!(
            office.tcp_a(name).await.addresses(),
            [REAL],
            "{name} cached"
        );
    }
    task.abort();
    gateway.shutdown().await;
}
