//! A datagram from a trusted load balancer (`proxy_protocol_from`): any bytes as its PROXY v2
//! header and the query after it. No panic; what does not begin with the v2 signature is
//! dropped, never answered as the balancer's own query; every reply is a DNS message.
#![no_main]
use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portvakt::{Gateway, Step, Transport};

#[path = "policy.rs"]
mod policy;

/// The v2 signature every header begins with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY
        .get_or_init(|| policy::gateway_with("server.proxy_protocol_from = [\"127.0.0.1/32\"]\n"))
}

fuzz_target!(|data: &[u8]| {
    let balancer: IpAddr = "127.0.0.1".parse().unwrap();
    let mut out = Vec::new();
    match gateway().answer_now(data, balancer, Transport::Udp, &mut out) {
        Step::Drop => {}
        Step::Reply => {
            assert!(
                data.starts_with(SIGNATURE),
                "answered without a PROXY header"
            );
            assert!(out.len() >= 12, "a reply is at least a header");
        }
        // A miss: the client named by the header was placed and admitted upstream.
        Step::Forward(_) => assert!(data.starts_with(SIGNATURE)),
    }
});
