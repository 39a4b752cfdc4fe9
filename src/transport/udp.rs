//! UDP: our own receive loop, one per CPU on SO_REUSEPORT sockets, each a thread blocking in
//! `recvfrom`: blocked and cached answers are sent from the loop itself, misses go to a task
//! on the tokio runtime that sends its answer on the same socket. All of portvakt's FFI is here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::gateway::{Gateway, Step, Transport};

/// Tries for a forwarded answer while the socket's send buffer is full.
const SEND_RETRIES: u32 = 20;

/// The UDP sockets of every listen address, their receive loops and forwarded queries.
pub(super) struct Udp {
    /// Raised by `stop`; the receive loops check it after every receive.
    stopped: Arc<AtomicBool>,
    /// Every socket: `stop` shuts their read side to wake a blocked receive.
    sockets: Vec<Arc<std::net::UdpSocket>>,
    /// Forwarded (cache-miss) queries, on the main runtime.
    forwards: TaskTracker,
    /// The receive loops' threads.
    loops: TaskTracker,
}

impl Udp {
    pub(super) fn new() -> Udp {
        Udp {
            stopped: Arc::default(),
            sockets: Vec::new(),
            forwards: TaskTracker::new(),
            loops: TaskTracker::new(),
        }
    }

    /// Runs `socket`'s receive loop on a thread of its own, blocking in `recvfrom`: per query
    /// one receive and one send, with no poller or async scheduler on the path. Misses are
    /// forwarded on the runtime this is called from.
    pub(super) fn serve(
        &mut self,
        socket: std::net::UdpSocket,
        gateway: Arc<Gateway>,
    ) -> io::Result<()> {
        // No receive timeout: `stop` wakes the receive by shutting the socket's read side.
        socket.set_nonblocking(false)?;
        let socket = Arc::new(socket);
        self.sockets.push(socket.clone());
        let runtime = tokio::runtime::Handle::current();
        let (stopped, forwards, done) = (
            self.stopped.clone(),
            self.forwards.clone(),
            self.loops.token(),
        );
        std::thread::Builder::new()
            .name("portvakt-udp".into())
            .spawn(move || {
                receive_loop(&socket, &gateway, &stopped, &forwards, &runtime);
                drop(done);
            })?;
        Ok(())
    }

    /// Stops receiving, then gives forwarded queries up to `grace` to send their answers.
    pub(super) async fn stop(self, grace: Duration) {
        self.stopped.store(true, Ordering::Relaxed);
        for socket in &self.sockets {
            let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
        }
        self.forwards.close();
        let _ = tokio::time::timeout(grace, self.forwards.wait()).await;
        self.loops.close();
        self.loops.wait().await;
    }
}

/// UDP receive loops per listen address: one per CPU this process may run on, so that the
/// kernel spreads clients over the CPUs.
pub(super) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `count` UDP sockets on one address with SO_REUSEPORT (the kernel hashes each client's flow
/// to one of them). A plain bind first checks the address is free: with SO_REUSEPORT alone, a
/// second portvakt would silently share the port instead of failing. Port 0 gets one socket.
pub(super) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let probe = std::net::UdpSocket::bind(addr)?;
    if addr.port() == 0 {
        // A port picked by the kernel could be picked again, between the probe and the
        // SO_REUSEPORT binds, by another listener of this user: which would then share our
        // traffic. So an "any port" listener keeps its one exclusive socket.
        return Ok(vec![probe]);
    }
    let bound = probe.local_addr()?;
    drop(probe);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::DGRAM, Some(Protocol::UDP))?;
        if bound.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}

fn receive_loop(
    socket: &Arc<std::net::UdpSocket>,
    gateway: &Arc<Gateway>,
    stopped: &AtomicBool,
    forwards: &TaskTracker,
    runtime: &tokio::runtime::Handle,
) {
    let mut packet = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    while !stopped.load(Ordering::Relaxed) {
        let (len, client) = match receive(socket, &mut packet) {
            Ok((len, Some(client))) => (len, client),
            // Woken by `stop`: no datagram, no sender.
            Ok((_, None)) => continue,
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted {
                    debug!(%err, "udp receive failed");
                }
                continue;
            }
        };
        // A bug must not take a receive loop, and its share of clients, down with it.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gateway.answer_now(&packet[..len], client.ip(), Transport::Udp, &mut out)
        }));
        let Ok(step) = step else {
            error!("panic while answering a UDP query; the loop goes on");
            continue;
        };
        match step {
            Step::Reply => {
                if let Err(err) = socket.send_to(&out, client) {
                    debug!(%err, %client, "udp send failed");
                }
            }
            Step::Drop => {}
            Step::Forward(pending) => {
                let (socket, gateway) = (socket.clone(), gateway.clone());
                forwards.spawn_on(
                    async move {
                        let mut out = Vec::with_capacity(512);
                        gateway.forward(pending, &mut out).await;
                        send_later(&socket, &out, client).await;
                    },
                    runtime,
                );
            }
        }
    }
}

/// One datagram and its sender; `None` for the sender when `stop` woke the receive. (std's
/// `recv_from` asserts on the empty address that wake-up returns.)
#[allow(unsafe_code)]
fn receive(
    socket: &std::net::UdpSocket,
    packet: &mut [u8],
) -> io::Result<(usize, Option<SocketAddr>)> {
    // SAFETY: an initialized buffer viewed as maybe-uninitialized: recv only writes bytes
    // into it, never de-initializes them.
    let buffer = unsafe { &mut *(packet as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let (len, from) = socket2::SockRef::from(socket).recv_from(buffer)?;
    Ok((len, from.as_socket()))
}

/// Sends without blocking the runtime: if the send buffer is full, waits a little and tries
/// again, then gives up (the client retries, as with any lost datagram).
async fn send_later(socket: &std::net::UdpSocket, reply: &[u8], client: SocketAddr) {
    let socket = socket2::SockRef::from(socket);
    let client = socket2::SockAddr::from(client);
    for _ in 0..SEND_RETRIES {
        match socket.send_to_with_flags(reply, &client, libc::MSG_DONTWAIT) {
            Ok(_) => return,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(err) => {
                debug!(%err, "udp send failed");
                return;
            }
        }
    }
    debug!("udp send buffer full; answer dropped");
}
