//! The upstream-answer path: any bytes as the upstream's answer to a fixed miss (parsed,
//! cached, CNAME targets and addresses checked against the lists, served), then the same
//! question again (a cache hit, or a fresh miss). No panic; every reply answers the query.
#![no_main]
use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portvakt::{Forwarding, Gateway, Step, Transport};

#[path = "policy.rs"]
mod policy;

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(policy::gateway)
}

/// A query for `www.example.org` (type from `qtype`), with EDNS.
fn query(id: u16, qtype: u16) -> Vec<u8> {
    policy::query(id, b"\x03www\x07example\x03org\x00", qtype)
}

fuzz_target!(|data: &[u8]| {
    let gateway = gateway();
    let client: IpAddr = "127.0.0.2".parse().unwrap();
    let qtype = match data.get(1) {
        Some(b) if b % 3 == 0 => 28,
        Some(b) if b % 3 == 1 => 65,
        _ => 1,
    };
    let packet = query(0x4242, qtype);
    let mut out = Vec::new();
    if let Step::Forward(pending) = gateway.answer_now(&packet, client, Transport::Udp, &mut out) {
        if let Forwarding::Lead(leading) = gateway.join(pending) {
            // The upstream's answer: flags and section counts from the input, our question,
            // then the input's bytes as the records (odd inputs: the bytes as they are).
            let answer = match data.len() {
                len if len >= 9 && data[8] % 2 == 0 => {
                    let mut m = vec![0, 0, data[0] | 0x80, data[1], 0, 1];
                    m.extend_from_slice(&data[2..8]);
                    m.extend_from_slice(&packet[12..packet.len() - 11]);
                    m.extend_from_slice(&data[9..]);
                    m
                }
                _ => data.to_vec(),
            };
            gateway.settle(leading, Ok(&answer), &mut out);
            assert!(out.len() >= 12 && out[..2] == packet[..2]);
        }
    }
    let again = query(0x4343, qtype);
    if let Step::Reply = gateway.answer_now(&again, client, Transport::Udp, &mut out) {
        assert!(out.len() >= 12 && out[..2] == again[..2]);
    }
});
