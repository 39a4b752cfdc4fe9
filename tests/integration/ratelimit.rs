//! Rate limiting per client over UDP: a flooding client gets its burst, then most of its
//! answers dropped and every second one truncated (TC=1, so a real client retries over TCP,
//! which is not limited), while a second client at a normal rate is answered in full.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::harness::{FakeUpstream, TestGateway, encode, question};

const FLOOD: usize = 300;
const BURST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_and_another_is_answered_in_full() {
    let upstream = FakeUpstream::new().start().await;
    let policy = format!(
        r#"lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{{ name = "flooder", networks = ["127.0.0.2/32"], block = ["tiktok"] }},
           {{ name = "office", networks = ["127.0.0.3/32"], block = ["tiktok"] }}]
[rate_limit]
qps = 10
burst = {BURST}
slip = 2
"#
    );
    let gateway = TestGateway::start(&upstream, &policy).await;

    // The flood: blocked names (answered at once, no upstream), as fast as the socket goes.
    let flooder = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let mut query = question("www.tiktok.com.", RecordType::A, true);
    for i in 0..FLOOD {
        query.metadata.id = i as u16;
        flooder
            .send_to(&encode(&query), gateway.addr())
            .await
            .unwrap();
    }
    let (mut answered, mut truncated) = (0, 0);
    let mut buf = vec![0u8; 4096];
    let silence = Duration::from_millis(500);
    while let Ok(Ok((len, _))) = tokio::time::timeout(silence, flooder.recv_from(&mut buf)).await {
        assert!(len >= 12);
        if buf[2] & 0x02 != 0 {
            truncated += 1;
        } else {
            assert_eq!(buf[3] & 0x0F, 3, "NXDOMAIN: blocked");
            answered += 1;
        }
    }
    // The burst, and the few tokens that came back while the flood was sent.
    assert!(
        (BURST..BURST + 10).contains(&answered),
        "{answered} answered"
    );
    let over = FLOOD - answered;
    assert!(
        truncated >= over / 2 - 2 && truncated <= over / 2 + 2,
        "{truncated} of {over} truncated"
    );

    // The slip's point: over TCP the flooder is answered.
    let from_flooder = gateway.client_from("127.0.0.2");
    let answer = from_flooder.tcp_a("www.tiktok.com.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    // Another client at a normal rate: every answer, none truncated.
    let office = gateway.client_from("127.0.0.3");
    for _ in 0..10 {
        let answer = office.udp_a("www.tiktok.com.").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        assert!(!answer.metadata.truncation);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gateway.scrape().await;
    let limited =
        |segment: &str| metrics[&format!("portvakt_rate_limited_total{{segment=\"{segment}\"}}")];
    assert_eq!(limited("flooder"), over as f64);
    assert_eq!(limited("office"), 0.0);
    gateway.shutdown().await;
}
