//! Prints the suffix index's memory for N synthetic names: cargo run --release --example index_memory [N]
use portvakt::core::{self, EntryKind, IndexBuilder, ListId};

/// Resident memory of this process, from /proc/self/status.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    kb.unwrap_or(0) * 1024
}

fn main() {
    let before = rss_bytes();
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("a count"));
    let mut builder = IndexBuilder::default();
    let mut wire_bytes = 0;
    for i in 0..n {
        let wire = core::from_text(&format!("blk{i:07}.example-ads.test")).expect("valid name");
        wire_bytes += wire.len();
        builder.insert(&wire, ListId(0), EntryKind::Block);
    }
    let index = builder.build();
    let rss = rss_bytes() - before;
    println!(
        "RSS growth: {rss} bytes = {:.1} bytes/name",
        rss as f64 / index.len() as f64
    );
    let bytes = index.memory_bytes();
    println!(
        "{} names, {} bytes of wire names: index {} bytes = {:.1} bytes/name",
        index.len(),
        wire_bytes,
        bytes,
        bytes as f64 / index.len() as f64
    );
}
