//! TCP framing: any bytes as what one connection sends (lengths, pipelined queries, a frame
//! cut short), served as a TCP connection from a client of some segment or none. No panic and
//! no hang; what comes back is whole frames, each answering one of the whole queries sent, no
//! more of them than the connection's query budget allows.
#![no_main]
use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use portvakt::TcpLimits;
use tokio::io::AsyncReadExt;

#[path = "policy.rs"]
mod policy;

/// Splits `bytes` into its whole frames; the rest (a frame cut short) is left out.
fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if rest.len() < len {
            break;
        }
        out.push(&rest[..len]);
        bytes = &rest[len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, sent)) = data.split_first() else {
        return;
    };
    let client = policy::client(who);
    let limits = TcpLimits {
        queries: u32::from(who >> 2) + 1,
        ..TcpLimits::DEFAULT
    };
    let queries = frames(sent);
    let ids: HashSet<[u8; 2]> = queries
        .iter()
        .take(limits.queries as usize)
        .filter_map(|q| q.get(..2).map(|id| [id[0], id[1]]))
        .collect();
    let received = policy::runtime().block_on(async {
        let (write, mut far) = tokio::io::duplex(64 * 1024);
        let collect = tokio::spawn(async move {
            let mut bytes = Vec::new();
            far.read_to_end(&mut bytes)
                .await
                .expect("reading the replies");
            bytes
        });
        portvakt::serve_stream(policy::shared().clone(), client.into(), sent, write, limits).await;
        collect.await.expect("the collector")
    });
    let replies = frames(&received);
    let whole: usize = replies.iter().map(|r| r.len() + 2).sum();
    assert_eq!(whole, received.len(), "a reply frame cut short");
    assert!(replies.len() <= queries.len().min(limits.queries as usize));
    for reply in replies {
        assert!(reply.len() >= 12, "a reply without a header");
        assert!(
            ids.contains(&[reply[0], reply[1]]),
            "a reply to no query sent"
        );
    }
});
