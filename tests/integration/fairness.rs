//! Fairness: one client flooding names of a dead zone may borrow the room nobody else needs,
//! up to half of the gateway's in-flight budget; past that it gets SERVFAIL at once, while
//! another client's misses keep being answered.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, Canned, FakeUpstream, TestGateway, encode, question};

/// Forwards in flight from which each client is held to its own budget (`PRESSED_AT`): the
/// flooder borrows up to there.
const PRESSED_AT: usize = 2048;
const FLOOD: usize = 2600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_toward_a_dead_zone_does_not_starve_other_clients() {
    let good = FakeUpstream::new()
        .with_a("ok.example.org.", "192.0.2.60")
        .start()
        .await;
    let dead = FakeUpstream::new().otherwise(Canned::Silent).start().await;
    let policy = r#"
segment = [{ name = "flooder", networks = ["127.0.0.2/32"] },
           { name = "office",  networks = ["127.0.0.3/32"] }]
"#;
    let gateway =
        TestGateway::start_with_upstreams(&[(&good, &[]), (&dead, &["dead.example"])], policy)
            .await;
    let shed = r#"portvakt_shed_total{reason="client",segment="flooder"}"#;
    let before = gateway.scrape().await[shed];

    // The flood: distinct names under the dead zone, sent in bursts well inside the dead
    // group's 700 ms timeout, so the first ones are still in flight when the rest arrive.
    let flooder = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap());
    // Its replies are read as they come (a socket left unread drops them past its buffer).
    let receiver = {
        let flooder = flooder.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut servfail = 0;
            while servfail < FLOOD {
                let received =
                    tokio::time::timeout(Duration::from_secs(3), flooder.recv_from(&mut buf));
                let Ok(Ok((len, _))) = received.await else {
                    break;
                };
                if len > 12 && buf[3] & 0x0F == 2 {
                    servfail += 1;
                }
            }
            servfail
        })
    };
    for burst in 0..FLOOD / 50 {
        for i in 0..50 {
            let n = burst * 50 + i;
            let mut query = question(&format!("n{n}.dead.example."), RecordType::A, true);
            query.metadata.id = n as u16;
            flooder
                .send_to(&encode(&query), gateway.addr())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    // Meanwhile another client's misses are answered, not shed.
    let office = gateway.client_from("127.0.0.3");
    for _ in 0..5 {
        let answer = office.udp_a("ok.example.org.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.addresses(), ["192.0.2.60"]);
    }
    let other = office.udp_a("other.example.org.").await;
    assert_eq!(
        other.metadata.response_code,
        ResponseCode::NXDomain,
        "a miss answered"
    );

    // Every flood query gets a SERVFAIL: at once past the budget, after the timeout within it.
    assert_eq!(receiver.await.unwrap(), FLOOD);
    // All past the budget are shed (a few fewer if the first ones timed out before the last
    // burst: the margin is 700 ms against a few ms of sending).
    let shed = gateway.scrape().await[shed] - before;
    let most = (FLOOD - PRESSED_AT) as f64;
    assert!((most - 50.0..=most).contains(&shed), "{shed} shed");
    gateway.shutdown().await;
}
