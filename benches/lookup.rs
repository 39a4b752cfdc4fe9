//! The lookup core and segment classification, one core, no I/O:
//!   cargo bench --bench lookup
//! `index`: 1,000,000 synthetic names (as `../shared/bench`'s portvakt-big list) plus the
//! shipped TikTok list; queries of 3 to 5 labels, half under a listed name, half not, from a
//! set small enough to stay in the CPU caches and from one of 2^20 names that does not.
//! Throughput is reported as decisions per second.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portvakt::core::{self, EntryKind, IndexBuilder, ListId, SegmentId, SegmentTable, SuffixIndex};

const NAMES: u32 = 1_000_000;
/// Distinct queries per iteration: a small set stays in the CPU caches; the large one makes
/// every probe go to memory, as a busy resolver's traffic does.
const QUERIES: usize = 4096;
const COLD_QUERIES: usize = 1 << 20;

/// A fixed-seed generator, so every run measures the same names.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

fn index() -> SuffixIndex {
    let mut builder = IndexBuilder::default();
    for i in 0..NAMES {
        let wire = core::from_text(&format!("blk{i:07}.example-ads.test")).unwrap();
        builder.insert(&wire, ListId(0), EntryKind::Block);
    }
    let shipped = core::read(std::path::Path::new("blocklists/tiktok.txt")).unwrap();
    for entry in &shipped.entries {
        builder.insert(&entry.name, ListId(1), entry.kind);
    }
    builder.build()
}

/// 3-5 label names: hits under listed names and misses that share their suffixes.
fn queries(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Lcg(42);
    (0..count)
        .map(|i| {
            let n = rng.next();
            let text = match i % 4 {
                0 => format!("x{}.blk{:07}.example-ads.test", n % 100, n % NAMES),
                1 => format!("v{}.api.tiktokv.eu", n % 1000),
                2 => format!("host{}.miss{:07}.example-ads.test", n % 100, n % NAMES),
                _ => format!("www{}.example{}.org", n % 10, n % 1000),
            };
            core::from_text(&text).unwrap()
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let index = index();
    let mut group = c.benchmark_group("index");
    for (label, count) in [("cache-hot", QUERIES), ("cache-cold", COLD_QUERIES)] {
        let queries = queries(count);
        let hits = queries
            .iter()
            .filter(|q| !index.lookup(q).lists.is_empty())
            .count();
        assert_eq!(
            hits,
            count / 2,
            "half of the queries are under a listed name"
        );
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(
            format!("1M names, 3-5 labels, 50% hits, {label} ({count} distinct)"),
            |b| {
                b.iter(|| {
                    let mut found = 0u64;
                    for q in &queries {
                        found += black_box(index.lookup(black_box(q))).lists.0.count_ones() as u64;
                    }
                    found
                })
            },
        );
    }
    group.finish();
}

fn classify(c: &mut Criterion) {
    // A municipality-sized table: 200 networks in 50 segments, nested /16s and /24s, IPv4 and IPv6.
    let mut networks = Vec::new();
    for s in 0..50u16 {
        networks.push((format!("10.{s}.0.0/16").parse().unwrap(), SegmentId(s)));
        networks.push((
            format!("10.{s}.99.0/24").parse().unwrap(),
            SegmentId((s + 1) % 50),
        ));
        networks.push((format!("172.16.{s}.0/24").parse().unwrap(), SegmentId(s)));
        networks.push((format!("fd00:{s:x}::/48").parse().unwrap(), SegmentId(s)));
    }
    let table = SegmentTable::new(networks, None);
    let mut rng = Lcg(7);
    let clients: Vec<IpAddr> = (0..QUERIES)
        .map(|i| {
            let n = rng.next();
            match i % 4 {
                0 => format!("10.{}.{}.{}", n % 50, (n >> 8) % 256, n >> 24)
                    .parse()
                    .unwrap(),
                1 => format!("10.{}.99.{}", n % 50, n >> 24).parse().unwrap(),
                2 => format!("fd00:{:x}::{:x}", n % 50, n >> 16).parse().unwrap(),
                _ => format!("192.0.2.{}", n % 256).parse().unwrap(),
            }
        })
        .collect();
    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Elements(QUERIES as u64));
    group.bench_function("classify, 200 networks", |b| {
        b.iter(|| {
            clients
                .iter()
                .filter(|c| table.classify(black_box(**c)).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, lookup, classify);
criterion_main!(benches);
