//! Heap allocations on the answer paths that must not allocate: blocked, refused and cache
//! hit, counted by a global allocator (its own test binary, so no other test is affected).
//! Counting is per thread and only inside the measured calls.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::RecordType;
use portvakt::{Config, Gateway, Metrics, Policy, Step, Transport};

#[allow(dead_code)]
#[path = "integration/harness.rs"]
mod harness;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// 1000 answers to `packet` from `client`, after one to warm the reused buffer.
fn allocations_per_answer(gateway: &Gateway, packet: &[u8], client: &str) -> usize {
    let client: IpAddr = client.parse().unwrap();
    let mut out = Vec::with_capacity(4096);
    assert!(matches!(
        gateway.answer_now(packet, client, Transport::Udp, &mut out),
        Step::Reply
    ));
    allocations(|| {
        for _ in 0..1000 {
            let step = gateway.answer_now(packet, client, Transport::Udp, &mut out);
            assert!(matches!(step, Step::Reply));
        }
    })
}

#[tokio::test]
async fn blocked_refused_and_cached_answers_do_not_allocate() {
    let upstream = harness::FakeUpstream::new()
        .with_a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let text = format!(
        r#"lists.tiktok.files = ["tests/fixtures/tiktok.txt"]
segment = [{{ name = "staff", networks = ["127.0.0.2/32"], block = ["tiktok"] }},
           {{ name = "devices", networks = ["127.0.0.3/32"] }}]
[[upstream]]
servers = ["{}"]
"#,
        upstream.addr
    );
    let metrics = Arc::new(Metrics::new());
    let config = Config::parse("alloc.toml", &text).unwrap();
    let policy = Policy::compile(config, &metrics, 1).unwrap();
    let gateway = Gateway::new(policy, metrics);

    let blocked = harness::encode(&harness::question("www.TikTok.com.", RecordType::A, true));
    assert_eq!(
        allocations_per_answer(&gateway, &blocked, "127.0.0.2"),
        0,
        "blocked path"
    );
    let no_edns = harness::encode(&harness::question(
        "www.tiktok.com.",
        RecordType::AAAA,
        false,
    ));
    assert_eq!(
        allocations_per_answer(&gateway, &no_edns, "127.0.0.2"),
        0,
        "blocked path, no EDNS"
    );
    assert_eq!(
        allocations_per_answer(&gateway, &blocked, "127.0.0.9"),
        0,
        "refused path"
    );

    let allowed = harness::encode(&harness::question("www.Example.org.", RecordType::A, true));
    let client: IpAddr = "127.0.0.3".parse().unwrap();
    let first = gateway
        .answer(&allowed, client, Transport::Udp)
        .await
        .expect("forwarded answer");
    assert_eq!(first[3] & 0x0F, 0, "NOERROR from the upstream");
    assert_eq!(
        allocations_per_answer(&gateway, &allowed, "127.0.0.3"),
        0,
        "cache-hit path"
    );

    // The counter itself works: a path that allocates is seen.
    assert!(allocations(|| drop(vec![0u8; 64])) > 0);
}
