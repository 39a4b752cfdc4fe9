//! The upstream-answer path: any bytes as the upstream's answer to a miss (parsed, cached,
//! CNAME targets and addresses checked against the lists, served), then the same question
//! again (a cache hit, or a fresh miss). The question's name is new for every input (a label
//! from a hash of the input and the run count), so every input reaches the upstream-answer
//! path, not a cache hit left by an earlier one. No panic; every reply answers the query.
#![no_main]
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use portvakt::{Datagram, Gateway, Step, Transport};

#[path = "policy.rs"]
mod policy;

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(policy::gateway)
}

/// A query for `<label>.www.example.org` (type from `qtype`), with EDNS; `label` is 16 hex
/// digits of the input's hash.
fn query(id: u16, label: u64, qtype: u16) -> Vec<u8> {
    let mut name = vec![16];
    name.extend_from_slice(format!("{label:016x}").as_bytes());
    name.extend_from_slice(b"\x03www\x07example\x03org\x00");
    policy::query(id, &name, qtype)
}

/// FNV-1a of `data` and of how many inputs ran before: every input asks a name no earlier one
/// asked (so it is never a cache hit), and an input run alone asks the same name each time.
fn label(data: &[u8]) -> u64 {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed).to_le_bytes();
    (run.iter().chain(data)).fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fuzz_target!(|data: &[u8]| {
    let gateway = gateway();
    let client: IpAddr = "127.0.0.2".parse().unwrap();
    let qtype = match data.get(1) {
        Some(b) if b % 3 == 0 => 28,
        Some(b) if b % 3 == 1 => 65,
        _ => 1,
    };
    let label = label(data);
    let packet = query(0x4242, label, qtype);
    let mut reached = false;
    let mut out = Vec::new();
    // The UDP receive loop's calls: the miss begun, its first try's answer settled.
    if let Datagram::Watch(watched) = gateway.answer_datagram(&packet, client, &mut out) {
        reached = true;
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
        gateway.settle_answer(watched, &answer, &mut out);
        assert!(out.len() >= 12 && out[..2] == packet[..2]);
    }
    assert!(reached, "every input is a miss led upstream");
    let again = query(0x4343, label, qtype);
    if let Step::Reply = gateway.answer_now(&again, client, Transport::Udp, &mut out) {
        assert!(out.len() >= 12 && out[..2] == again[..2]);
    }
});
