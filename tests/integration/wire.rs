//! On the wire: ID and question echoed, malformed packets, EDNS versions, RD=0, pipelining.

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Answered, FakeUpstream, TestGateway, encode, question};

const POLICY: &str = r#"
lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{ name = "staff", networks = ["127.0.0.2/32"], block = ["tiktok"] }]
"#;

#[tokio::test]
async fn id_and_question_case_are_echoed_as_sent() {
    let upstream = FakeUpstream::new()
        .with_a("mixed.example.org.", "192.0.2.5")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    // Blocked, then forwarded (miss), then the same name again from the cache.
    for name in [
        "wWw.TiKtOk.CoM.",
        "MiXeD.eXaMpLe.OrG.",
        "mIxEd.ExAmPlE.oRg.",
    ] {
        let mut query = question(name, RecordType::A, true);
        query.metadata.id = 0xBEEF;
        let raw = encode(&query);
        assert_eq!(
            &raw[13..16],
            &name.as_bytes()[..3],
            "the query itself carries mixed case"
        );
        for reply in [
            staff.udp_raw(&raw).await.unwrap(),
            staff.tcp_raw(std::slice::from_ref(&raw)).await.remove(0),
        ] {
            assert_eq!(&reply[..2], &[0xBE, 0xEF]);
            assert_eq!(
                &reply[12..12 + name.len() + 1 + 4],
                &raw[12..12 + name.len() + 1 + 4],
                "question bytes of {name}"
            );
        }
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn malformed_packets_never_stop_the_server() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let good = question("tiktok.com.", RecordType::A, false)
        .to_vec()
        .unwrap();

    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let formerr = staff.udp_raw(&two_questions).await.unwrap();
    assert_eq!(formerr[3] & 0x0F, 1, "FORMERR");
    assert_eq!(&formerr[..2], &good[..2]);

    let mut notify = good.clone();
    notify[2] = 4 << 3; // opcode NOTIFY
    assert_eq!(staff.udp_raw(&notify).await.unwrap()[3] & 0x0F, 4, "NOTIMP");

    // Deterministic garbage, bounded: truncations, bit flips, responses, random bytes.
    let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let mut seed = 0x1234_5678_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for i in 0..2000 {
        let mut packet = good.clone();
        match i % 4 {
            0 => packet.truncate(next() as usize % good.len()),
            1 => packet[next() as usize % good.len()] ^= 1 << (next() % 8),
            2 => packet[2] |= 0x80,
            _ => packet = (0..next() % 600).map(|_| next() as u8).collect(),
        }
        socket.send_to(&packet, gateway.addr()).await.unwrap();
    }
    // A garbage message (a "response") gets no reply, as over UDP; the connection goes on.
    let tcp_garbage = (staff.tcp_raw_replies(&[vec![0xFF; 40], good.clone()], 1)).await;
    assert_eq!(
        tcp_garbage[0][..2],
        good[..2],
        "TCP connection survives a garbage message"
    );

    // Like any DNS client, retry a datagram: right after a flood one may be dropped.
    let query = question("tiktok.com.", RecordType::A, false);
    let mut still = None;
    for _ in 0..3 {
        still = staff.udp_raw(&crate::harness::encode(&query)).await;
        if still.is_some() {
            break;
        }
    }
    let still = still.expect("the server still answers over UDP");
    assert_eq!(still[3] & 0x0F, 3, "NXDOMAIN");
    gateway.shutdown().await;
}

#[tokio::test]
async fn edns_version_above_zero_gets_badvers() {
    let upstream = FakeUpstream::new().start().await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let mut query = question("tiktok.com.", RecordType::A, false);
    let mut edns = Edns::new();
    edns.set_version(1);
    query.set_edns(edns);
    let answer = gateway.client_from("127.0.0.2").udp(&query).await;
    // Extended RCODE 16 (BADVERS; hickory decodes 16 under its other name, BADSIG).
    assert_eq!(u16::from(answer.metadata.response_code), 16);
    gateway.shutdown().await;
}

#[tokio::test]
async fn recursion_not_desired_is_served_from_cache_only() {
    let upstream = FakeUpstream::new()
        .with_a("rd.example.org.", "192.0.2.6")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let staff = gateway.client_from("127.0.0.2");
    let mut no_rd = question("rd.example.org.", RecordType::A, true);
    no_rd.metadata.recursion_desired = false;
    assert_eq!(
        staff.udp(&no_rd).await.metadata.response_code,
        ResponseCode::Refused
    );
    assert_eq!(upstream.queries_for("rd.example.org."), 0);
    staff.udp_a("rd.example.org.").await;
    let cached = staff.udp(&no_rd).await;
    assert_eq!(cached.addresses(), ["192.0.2.6"]);
    assert!(!cached.metadata.recursion_desired);
    gateway.shutdown().await;
}

/// Pipelined queries on one connection are answered concurrently (RFC 7766 §6.2.1.1): every
/// one is answered, in the order they finish (the blocked one need not wait for the upstream),
/// and the client matches them by ID.
#[tokio::test]
async fn pipelined_tcp_queries_are_all_answered_matched_by_id() {
    let upstream = FakeUpstream::new()
        .with_a("a.example.org.", "192.0.2.21")
        .with_a("b.example.org.", "192.0.2.22")
        .start()
        .await;
    let gateway = TestGateway::start(&upstream, POLICY).await;
    let names = ["a.example.org.", "tiktok.com.", "b.example.org."];
    let queries: Vec<Vec<u8>> = names
        .iter()
        .map(|n| question(n, RecordType::A, true).to_vec().unwrap())
        .collect();
    let replies = gateway.client_from("127.0.0.2").tcp_raw(&queries).await;
    assert_eq!(replies.len(), 3);
    let reply = |query: &[u8]| {
        let found = replies
            .iter()
            .find(|r| r[..2] == query[..2])
            .expect("answered");
        Message::from_vec(found).unwrap()
    };
    assert_eq!(reply(&queries[0]).addresses(), ["192.0.2.21"]);
    assert_eq!(
        reply(&queries[1]).metadata.response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(reply(&queries[2]).addresses(), ["192.0.2.22"]);
    gateway.shutdown().await;
}
