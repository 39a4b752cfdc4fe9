//! The query path: wire bytes from a client of some segment (or none) through the gateway's
//! synchronous answer, under a fixed policy with name and IP lists. No panic; every reply
//! starts with the query's ID.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portvakt::{Gateway, Step, Transport};

#[path = "policy.rs"]
mod policy;

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(policy::gateway)
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, packet)) = data.split_first() else {
        return;
    };
    let client = policy::client(who);
    let transport = if who & 0x80 != 0 {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let mut out = Vec::new();
    match gateway().answer_now(packet, client, transport, &mut out) {
        Step::Reply => assert!(out.len() >= 12 && out[..2] == packet[..2]),
        Step::Drop | Step::Forward(_) => {}
    }
});
