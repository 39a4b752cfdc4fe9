//! The gateway both query targets run against: a name list and an IP list blocked for
//! `staff` (127.0.0.2 and ::1), nothing for `devices` (127.0.0.3), every other client refused;
//! the cache holding answers for `www.example.com` (A) and `example.net` (AAAA); an upstream
//! that refuses at once (nothing listens on 127.0.0.1:9) within a 50 ms timeout.
#![allow(dead_code)] // each target uses a part
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use portvakt::{Config, Datagram, Gateway, Metrics, Policy};

/// The names cached by [`gateway`], with their types.
pub const CACHED: [(&[u8], u16); 2] = [
    (b"\x03www\x07example\x03com\x00", 1),
    (b"\x07example\x03net\x00", 28),
];

pub fn gateway() -> Gateway {
    gateway_with("")
}

/// [`gateway`], made once for the run, for the targets that serve connections.
pub fn shared() -> &'static Arc<Gateway> {
    static GATEWAY: OnceLock<Arc<Gateway>> = OnceLock::new();
    GATEWAY.get_or_init(|| Arc::new(gateway()))
}

/// A current-thread runtime, made once for the run.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// [`gateway`] with `extra` (top-level TOML keys) before the rest of the config.
pub fn gateway_with(extra: &str) -> Gateway {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let text = format!(
        "{extra}lists.tiktok.files = [\"{fixtures}/tiktok.txt\"]\n\
         lists.ips.files = [\"{fixtures}/telegram-ip.txt\"]\n\
         lists.ips.kind = \"ip\"\n\
         segment = [{{ name = \"staff\", networks = [\"127.0.0.2/32\", \"::1/128\"], block = [\"tiktok\", \"ips\"] }},\n\
                    {{ name = \"devices\", networks = [\"127.0.0.3/32\"] }}]\n\
         cache.max_entries = 1000\n\
         [[upstream]]\nservers = [\"127.0.0.1:9\"]\ntimeout_ms = 50\n"
    );
    let metrics = Arc::new(Metrics::new());
    let config = Config::parse("fuzz.toml", &text).expect("the fuzz config");
    let policy = Policy::compile(config, &metrics, 1).expect("the fuzz policy");
    let gateway = Gateway::new(policy, metrics);
    for (name, qtype) in CACHED {
        cache(&gateway, name, qtype);
    }
    assert_eq!(
        gateway.cache_len(),
        CACHED.len(),
        "the fuzz cache is filled"
    );
    gateway
}

/// The client a fuzz input's first byte stands for: staff, devices, staff over IPv6, or a
/// client in no segment.
pub fn client(who: u8) -> IpAddr {
    let text = match who % 4 {
        0 => "127.0.0.2",
        1 => "127.0.0.3",
        2 => "::1",
        _ => "127.0.0.9",
    };
    text.parse().expect("an address")
}

/// A query for `name` (wire form) of type `qtype`, with EDNS.
pub fn query(id: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(name);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

/// Puts an answer with one record for `name` into the cache, as if the upstream had sent it.
fn cache(gateway: &Gateway, name: &[u8], qtype: u16) {
    let client: IpAddr = "127.0.0.3".parse().unwrap();
    let packet = query(1, name, qtype);
    let mut out = Vec::new();
    // The UDP receive loop's calls: the miss begun, its first try's answer settled.
    let Datagram::Watch(watched) = gateway.answer_datagram(&packet, client, &mut out) else {
        panic!("a fuzz cache name is not a miss led upstream over UDP");
    };
    let data: &[u8] = if qtype == 28 {
        &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    } else {
        &[192, 0, 2, 1]
    };
    let mut answer = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    answer.extend_from_slice(&packet[12..packet.len() - 11]);
    answer.extend_from_slice(&[0xc0, 12]);
    answer.extend_from_slice(&qtype.to_be_bytes());
    answer.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10, 0, data.len() as u8]);
    answer.extend_from_slice(data);
    gateway.settle_answer(watched, &answer, &mut out);
}
