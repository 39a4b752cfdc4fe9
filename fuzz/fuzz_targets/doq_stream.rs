//! DoQ stream framing: any bytes as what one QUIC stream carries (a length, a query, too few
//! bytes, a nonzero Message ID, trailing bytes), served by the exchange the DoQ listener runs
//! for every stream, from a client of some segment or none. No panic and no hang; a reply is
//! one whole frame with a header and Message ID 0, and only a whole query with ID 0 gets one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portvakt::{DoqExchange, TcpLimits};
use tokio::io::AsyncReadExt;

#[path = "policy.rs"]
mod policy;

fuzz_target!(|data: &[u8]| {
    let Some((&who, mut sent)) = data.split_first() else {
        return;
    };
    let client = policy::client(who);
    let query = match sent {
        [hi, lo, rest @ ..] if rest.len() >= usize::from(u16::from_be_bytes([*hi, *lo])) => {
            Some(&rest[..usize::from(u16::from_be_bytes([*hi, *lo]))])
        }
        _ => None,
    };
    let (served, received) = policy::runtime().block_on(async {
        let (mut write, mut far) = tokio::io::duplex(128 * 1024);
        let collect = tokio::spawn(async move {
            let mut bytes = Vec::new();
            far.read_to_end(&mut bytes)
                .await
                .expect("reading the reply");
            bytes
        });
        let served = portvakt::serve_doq_stream(
            policy::shared(),
            client.into(),
            TcpLimits::DEFAULT,
            &mut sent,
            &mut write,
        )
        .await;
        drop(write);
        (served, collect.await.expect("the collector"))
    });
    match served {
        Ok(()) => {
            let query = query.expect("a reply only to a whole query");
            assert_eq!(
                query.get(..2),
                Some(&[0u8, 0][..]),
                "a reply to a nonzero ID"
            );
            let [hi, lo, reply @ ..] = received.as_slice() else {
                panic!("a reply without its length");
            };
            assert_eq!(usize::from(u16::from_be_bytes([*hi, *lo])), reply.len());
            assert!(reply.len() >= 12, "a reply without a header");
            assert_eq!(&reply[..2], &[0, 0], "the reply keeps Message ID 0");
        }
        Err(DoqExchange::NonzeroId) => {
            assert!(query.is_some_and(|q| q.len() >= 2 && q[..2] != [0, 0]));
            assert!(received.is_empty());
        }
        Err(DoqExchange::Closed) => assert!(query.is_none() && received.is_empty()),
        Err(other) => assert!(received.is_empty(), "{other:?} after a reply"),
    }
});
