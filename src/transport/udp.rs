//! UDP: our own receive loop, one per CPU on SO_REUSEPORT sockets, each a thread. With no miss
//! in flight it blocks in `recvfrom`: blocked and cached answers are sent from the loop
//! itself, with no poller on the path. A miss's first try upstream is sent from the loop too,
//! and the loop then polls (mio) its client socket and its misses' sockets: the answer is
//! read, cached and sent to the client by the thread that received the query, with no task
//! and no hand-over. What a first try leaves to do (a timeout, a truncated answer, an error,
//! a TLS server), and misses that follow another's, go on as tasks on the tokio runtime that
//! send their answer on the same socket. All of portvakt's FFI is here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::gateway::{Client, Datagram, Gateway, Later, Watched};

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
        grow_receive_buffer(&socket2::SockRef::from(&probe));
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
        grow_receive_buffer(&socket2::SockRef::from(&socket));
        socket.bind(&bound.into())?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}

/// Client datagrams read in one go while upstream answers wait.
const BURST: usize = 64;

/// How long a loop that was stopped keeps reading the answers to its misses in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The poller token of the client socket; a miss in flight has its slot's index + 1.
const CLIENT: mio::Token = mio::Token(0);

/// A miss this loop leads, waiting for its first UDP try's answer.
struct Miss {
    watched: Watched,
    client: SocketAddr,
    /// Told apart from a later miss in the same slot (for the timer heap).
    serial: u64,
}

/// The misses one receive loop has in flight upstream, and what watches them.
struct Misses {
    poll: mio::Poll,
    events: mio::Events,
    slots: slab::Slab<Miss>,
    /// (deadline, slot, serial), earliest first; entries of misses already done are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    serial: u64,
}

/// The receive buffer a listener asks for: a burst of queries waits there while the loop is
/// busy (the kernel caps it at `net.core.rmem_max`; raise that to get all of it).
const RECEIVE_BUFFER: usize = 4 << 20;

fn grow_receive_buffer(socket: &socket2::SockRef<'_>) {
    if let Err(err) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        debug!(%err, "cannot grow the UDP receive buffer");
    }
}

fn receive_loop(
    socket: &Arc<std::net::UdpSocket>,
    gateway: &Arc<Gateway>,
    stopped: &AtomicBool,
    forwards: &TaskTracker,
    runtime: &tokio::runtime::Handle,
) {
    // Tasks started from here (probes of down servers) go to the runtime.
    let _runtime = runtime.enter();
    let mut misses = match Misses::new(socket) {
        Ok(misses) => misses,
        Err(err) => {
            error!(%err, "no poller for the UDP receive loop");
            return;
        }
    };
    let mut packet = vec![0u8; 65_535];
    let mut answer = vec![0u8; usize::from(crate::wire::OUR_UDP_PAYLOAD)];
    let mut out = Vec::with_capacity(4096);
    let mut stopping: Option<Instant> = None;
    let mut client_waiting = false;
    let mut tokens = Vec::with_capacity(256);
    let loop_ = Loop {
        local: socket.local_addr().ok(),
        socket,
        gateway,
        forwards,
        runtime,
    };
    loop {
        if stopping.is_none() && stopped.load(Ordering::Relaxed) {
            stopping = Some(Instant::now() + STOP_GRACE);
        }
        if let Some(until) = stopping
            && (misses.slots.is_empty() || Instant::now() >= until)
        {
            break;
        }
        if misses.slots.is_empty() && !client_waiting {
            // Nothing in flight: block in recvfrom, with no poller on the path.
            match receive(socket, &mut packet, 0) {
                Ok((len, Some(client))) => {
                    loop_.handle(&packet[..len], client, &mut out, &mut misses);
                }
                Ok((_, None)) => {} // woken by `stop`
                Err(err) => {
                    if err.kind() != io::ErrorKind::Interrupted {
                        debug!(%err, "udp receive failed");
                    }
                }
            }
            continue;
        }
        let wait = if client_waiting {
            Some(Duration::ZERO)
        } else {
            misses.next_deadline()
        };
        if let Err(err) = misses.poll.poll(&mut misses.events, wait)
            && err.kind() != io::ErrorKind::Interrupted
        {
            error!(%err, "udp poller failed");
            break;
        }
        let mut client_ready = client_waiting;
        tokens.clear();
        tokens.extend(misses.events.iter().map(mio::event::Event::token));
        for &token in &tokens {
            if token == CLIENT {
                client_ready = true;
            } else {
                loop_.answered(token.0 - 1, &mut answer, &mut out, &mut misses);
            }
        }
        client_waiting = false;
        if client_ready && stopping.is_none() {
            for n in 0..BURST {
                match receive(socket, &mut packet, libc::MSG_DONTWAIT) {
                    Ok((len, Some(client))) => {
                        loop_.handle(&packet[..len], client, &mut out, &mut misses);
                        client_waiting = n + 1 == BURST;
                    }
                    Ok((_, None)) => break,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        debug!(%err, "udp receive failed");
                        break;
                    }
                }
            }
        }
        loop_.expire(Instant::now(), &mut misses);
    }
}

/// What a receive loop works with.
struct Loop<'a> {
    socket: &'a Arc<std::net::UdpSocket>,
    /// The address the socket is bound to: the listener a segment may be tied to.
    local: Option<SocketAddr>,
    gateway: &'a Arc<Gateway>,
    forwards: &'a TaskTracker,
    runtime: &'a tokio::runtime::Handle,
}

impl Loop<'_> {
    /// Answers one client datagram: at once, or by starting (or joining) a miss.
    fn handle(&self, packet: &[u8], client: SocketAddr, out: &mut Vec<u8>, misses: &mut Misses) {
        // A bug must not take a receive loop, and its share of clients, down with it. (The
        // step stays inside: moving it out would copy the pending query on every answer.)
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.step(packet, client, out, misses);
        }));
        if handled.is_err() {
            error!("panic while answering a UDP query; the loop goes on");
        }
    }

    fn client(&self, from: SocketAddr) -> Client {
        Client {
            addr: from.ip(),
            listener: self.local,
        }
    }

    fn step(&self, packet: &[u8], client: SocketAddr, out: &mut Vec<u8>, misses: &mut Misses) {
        match (self.gateway).answer_datagram(packet, self.client(client), out) {
            Datagram::Reply => self.send(out, client),
            Datagram::Drop => {}
            Datagram::Watch(watched) => misses.insert(watched, client),
            Datagram::Later(later) => self.later(later, client),
        }
    }

    /// Reads what came for the miss in `slot`; if it is the answer, replies from here.
    fn answered(&self, slot: usize, buf: &mut [u8], out: &mut Vec<u8>, misses: &mut Misses) {
        let Some(miss) = misses.slots.get_mut(slot) else {
            return;
        };
        let Some(heard) = miss.watched.read(buf) else {
            return; // nothing of ours yet
        };
        let miss = misses.remove(slot);
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.gateway.heard(miss.watched, heard, buf, out)
        }));
        match step {
            Ok(None) => self.send(out, miss.client),
            Ok(Some(later)) => self.later(later, miss.client),
            Err(_) => error!("panic while answering a forwarded UDP query; the loop goes on"),
        }
    }

    /// Misses whose first try waited its whole wait go on on the runtime, still listening.
    fn expire(&self, now: Instant, misses: &mut Misses) {
        while let Some(&Reverse((deadline, slot, serial))) = misses.timers.peek() {
            if deadline > now {
                break;
            }
            misses.timers.pop();
            if misses.slots.get(slot).is_some_and(|m| m.serial == serial) {
                let miss = misses.hand_over(slot);
                self.later(self.gateway.waited(miss.watched), miss.client);
            }
        }
    }

    /// Goes on with a miss on the runtime, and sends its reply from there.
    fn later(&self, later: Later, client: SocketAddr) {
        let (socket, gateway) = (self.socket.clone(), self.gateway.clone());
        self.forwards.spawn_on(
            async move {
                let mut out = Vec::with_capacity(512);
                gateway.go_on(later, &mut out).await;
                send_later(&socket, &out, client).await;
            },
            self.runtime,
        );
    }

    fn send(&self, out: &[u8], client: SocketAddr) {
        if let Err(err) = self.socket.send_to(out, client) {
            debug!(%err, %client, "udp send failed");
        }
    }
}

impl Misses {
    fn new(socket: &std::net::UdpSocket) -> io::Result<Misses> {
        use std::os::fd::AsRawFd;
        let poll = mio::Poll::new()?;
        let fd = socket.as_raw_fd();
        poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            CLIENT,
            mio::Interest::READABLE,
        )?;
        Ok(Misses {
            poll,
            events: mio::Events::with_capacity(256),
            slots: slab::Slab::with_capacity(256),
            timers: BinaryHeap::with_capacity(256),
            serial: 0,
        })
    }

    fn insert(&mut self, watched: Watched, client: SocketAddr) {
        use std::os::fd::AsRawFd;
        self.serial += 1;
        let deadline = watched.deadline();
        let entry = self.slots.vacant_entry();
        let slot = entry.key();
        let fd = watched.socket().as_raw_fd();
        let token = mio::Token(slot + 1);
        let registered = self.poll.registry().register(
            &mut mio::unix::SourceFd(&fd),
            token,
            mio::Interest::READABLE,
        );
        if let Err(err) = registered {
            debug!(%err, "cannot watch an upstream socket");
        }
        entry.insert(Miss {
            watched,
            client,
            serial: self.serial,
        });
        self.timers.push(Reverse((deadline, slot, self.serial)));
    }

    /// Takes a miss out; its socket leaves the poller as it closes (no other descriptor
    /// refers to it), so there is no deregistering call.
    fn remove(&mut self, slot: usize) -> Miss {
        self.slots.remove(slot)
    }

    /// Takes a miss out whose socket stays open (its try goes on listening on the runtime):
    /// it leaves the poller first.
    fn hand_over(&mut self, slot: usize) -> Miss {
        use std::os::fd::AsRawFd;
        let miss = self.slots.remove(slot);
        let fd = miss.watched.socket().as_raw_fd();
        if let Err(err) = (self.poll.registry()).deregister(&mut mio::unix::SourceFd(&fd)) {
            debug!(%err, "cannot stop watching an upstream socket");
        }
        miss
    }

    fn next_deadline(&self) -> Option<Duration> {
        let Reverse((deadline, _, _)) = self.timers.peek()?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }
}

/// One datagram and its sender; `None` for the sender when `stop` woke the receive. (std's
/// `recv_from` asserts on the empty address that wake-up returns.)
#[allow(unsafe_code)]
#[inline] // on every datagram: left out of line, the receive loop pays a call per query
fn receive(
    socket: &std::net::UdpSocket,
    packet: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Option<SocketAddr>)> {
    // SAFETY: an initialized buffer viewed as maybe-uninitialized: recv only writes bytes
    // into it, never de-initializes them.
    let buffer = unsafe { &mut *(packet as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    let (len, from) = socket2::SockRef::from(socket).recv_from_with_flags(buffer, flags)?;
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
