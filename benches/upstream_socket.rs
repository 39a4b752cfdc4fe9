//! What a fresh port per upstream query costs the kernel, beside one long-lived socket (what
//! dnsdist does): the floor under portvakt's miss path, which opens, connects, registers
//! and closes one UDP socket per try so that no port outlives its query.
//!   cargo bench --bench upstream_socket
//! Loopback only: the sends go to a socket of the bench's own.

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use criterion::{Criterion, criterion_group, criterion_main};
use socket2::{Domain, Protocol, Socket, Type};

fn bench(c: &mut Criterion) {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_nonblocking(true).unwrap();
    let target: SocketAddr = sink.local_addr().unwrap();
    let query = [0u8; 40];
    let poll = mio::Poll::new().unwrap();
    let mut drained = [0u8; 64];
    let mut drain = || while sink.recv(&mut drained).is_ok() {};

    let mut group = c.benchmark_group("upstream_socket");
    group.bench_function("send on one long-lived socket", |b| {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(target).unwrap();
        b.iter(|| socket.send(black_box(&query)).unwrap());
    });
    drain();
    group.bench_function(
        "fresh socket: open, bind a random port, connect, send, poll, close",
        |b| {
            b.iter(|| {
                let socket =
                    Socket::new(Domain::IPV4, Type::DGRAM.nonblocking(), Some(Protocol::UDP))
                        .unwrap();
                let port = rand::random_range(1024..=u16::MAX);
                let _ = socket.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into());
                socket.connect(&target.into()).unwrap();
                socket.send(black_box(&query)).unwrap();
                let fd = socket.as_raw_fd();
                let mut source = mio::unix::SourceFd(&fd);
                poll.registry()
                    .register(&mut source, mio::Token(1), mio::Interest::READABLE)
                    .unwrap();
                drop(socket);
            });
        },
    );
    drain();
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
