//! The transports: binds UDP and TCP on every listen address and feeds the gateway core.
//! UDP is our own receive loop, one per CPU on SO_REUSEPORT sockets, each a thread blocking
//! in `recvfrom`: blocked and cached answers are sent from the loop itself, misses go to a task
//! on the tokio runtime. TCP is hickory-server's, through an adapter that hands the core the
//! raw query and re-emits its wire answer. Owns the shutdown of both.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Message, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::handler::{Gateway, Step, Transport};

/// Idle time after which a TCP connection without a new query is closed (RFC 7766 §6.2.3).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports tried for a listen address with port 0 (UDP and TCP must share one).
const PORT_ATTEMPTS: u32 = 20;
/// In-flight queries get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the listeners could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to bind {proto} {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The bound DNS listeners and their tasks.
pub struct Listeners {
    /// Actual addresses (port 0 in the config is resolved here).
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    udp_stop: UdpStop,
    tcp_server: Server<TcpAdapter>,
}

/// What shutdown needs to stop the UDP loops and their forwarded queries.
#[derive(Clone)]
struct UdpStop {
    /// Raised by shutdown; the receive loops check it after every receive.
    stopped: Arc<AtomicBool>,
    /// Every UDP socket: shutdown shuts their read side to wake a blocked receive.
    sockets: Arc<std::sync::Mutex<Vec<Arc<std::net::UdpSocket>>>>,
    /// Grace period over: stop waiting for forwarded queries.
    hard: CancellationToken,
    /// Forwarded (cache-miss) queries, on the main runtime.
    forwards: TaskTracker,
    /// The receive loops' threads.
    loops: TaskTracker,
}

impl Listeners {
    /// Binds every address for UDP and TCP and starts serving. Must run inside the runtime.
    pub async fn bind(
        addrs: &[SocketAddr],
        gateway: Arc<Gateway>,
    ) -> Result<Listeners, ServerError> {
        let stop = UdpStop {
            stopped: Arc::default(),
            sockets: Arc::default(),
            hard: CancellationToken::new(),
            forwards: TaskTracker::new(),
            loops: TaskTracker::new(),
        };
        let mut tcp = Server::new(TcpAdapter {
            gateway: gateway.clone(),
        });
        let (mut udp_addrs, mut tcp_addrs) = (Vec::new(), Vec::new());
        for &addr in addrs {
            let udp_error = |source| ServerError::Bind {
                proto: "UDP",
                addr,
                source,
            };
            // Port 0 means "any": every socket and TCP take the port the first UDP socket got.
            // That port may be taken for TCP; then another is tried.
            let mut attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
            let (sockets, bound, listener) = loop {
                let sockets = bind_udp(addr, udp_workers()).map_err(udp_error)?;
                let bound = sockets[0].local_addr().map_err(udp_error)?;
                attempts -= 1;
                match TcpListener::bind(bound).await {
                    Ok(listener) => break (sockets, bound, listener),
                    Err(err) if err.kind() == io::ErrorKind::AddrInUse && attempts > 0 => {}
                    Err(source) => {
                        return Err(ServerError::Bind {
                            proto: "TCP",
                            addr: bound,
                            source,
                        });
                    }
                }
            };
            udp_addrs.push(bound);
            tcp_addrs.push(bound);
            for socket in sockets {
                spawn_udp_loop(socket, gateway.clone(), stop.clone()).map_err(udp_error)?;
            }
            tcp.register_listener(listener, TCP_IDLE_TIMEOUT, 32);
        }
        Ok(Listeners {
            udp: udp_addrs,
            tcp: tcp_addrs,
            udp_stop: stop,
            tcp_server: tcp,
        })
    }

    /// Stops accepting, gives in-flight UDP queries a grace period, and stops TCP.
    pub async fn shutdown(mut self) {
        let stop = &self.udp_stop;
        stop.stopped.store(true, Ordering::Relaxed);
        for socket in stop.sockets.lock().expect("socket list lock").iter() {
            let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
        }
        stop.forwards.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, stop.forwards.wait()).await;
        stop.hard.cancel();
        stop.loops.close();
        stop.loops.wait().await;
        let _ = self.tcp_server.shutdown_gracefully().await;
    }
}

/// UDP receive loops per listen address: one per CPU this process may run on, so that the
/// kernel spreads clients over the CPUs.
fn udp_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `count` UDP sockets on one address with SO_REUSEPORT (the kernel hashes each client's flow
/// to one of them). A plain bind first checks the address is free: with SO_REUSEPORT alone, a
/// second portvakt would silently share the port instead of failing. Port 0 gets one socket.
fn bind_udp(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let probe = std::net::UdpSocket::bind(addr)?;
    if addr.port() == 0 {
        // A port picked by the kernel could be picked again, between the probe and the
        // SO_REUSEPORT binds, by another listener of this user: which would then share our
        // traffic. So an "any port" listener keeps its one exclusive socket.
        probe.set_nonblocking(true)?;
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
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        sockets.push(socket.into());
    }
    Ok(sockets)
}

/// Tries for a forwarded answer while the socket's send buffer is full.
const SEND_RETRIES: u32 = 20;

/// Runs one socket's receive loop on its own thread, blocking in `recvfrom`: per query one
/// receive and one send, with no poller or async scheduler on the path. Misses are forwarded
/// on the main runtime, which sends their answers on the same socket without blocking.
fn spawn_udp_loop(
    socket: std::net::UdpSocket,
    gateway: Arc<Gateway>,
    stop: UdpStop,
) -> io::Result<()> {
    // No receive timeout: shutdown wakes the receive by shutting the socket's read side.
    socket.set_nonblocking(false)?;
    let socket = Arc::new(socket);
    let main = tokio::runtime::Handle::current();
    let done = stop.loops.token();
    stop.sockets
        .lock()
        .expect("socket list lock")
        .push(socket.clone());
    std::thread::Builder::new()
        .name("portvakt-udp".into())
        .spawn(move || {
            serve_udp(&socket, &gateway, &stop.stopped, &stop.forwards, &main);
            // Forwarded answers go out on this socket: keep it until they are done.
            main.block_on(async {
                tokio::select! {
                    () = stop.forwards.wait() => {}
                    () = stop.hard.cancelled() => {}
                }
            });
            drop(done);
        })?;
    Ok(())
}

fn serve_udp(
    socket: &Arc<std::net::UdpSocket>,
    gateway: &Arc<Gateway>,
    stopped: &AtomicBool,
    forwards: &TaskTracker,
    main: &tokio::runtime::Handle,
) {
    let mut packet = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    while !stopped.load(Ordering::Relaxed) {
        let (len, client) = match receive(socket, &mut packet) {
            Ok((len, Some(client))) => (len, client),
            // Woken by shutdown: no datagram, no sender.
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
            error!(%client, "panic while answering a UDP query; the loop goes on");
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
                    main,
                );
            }
        }
    }
}

/// One datagram and its sender; `None` for the sender when shutdown woke the receive. (std's
/// `recv_from` asserts on the empty address that wake-up returns.)
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

/// hickory-server's TCP path into the gateway core. hickory sends only what it encodes, so
/// the core's wire answer is parsed and handed back as records; the question is re-emitted
/// from the client's own bytes.
struct TcpAdapter {
    gateway: Arc<Gateway>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpAdapter {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let client: IpAddr = request.src().ip();
        let reply = self
            .gateway
            .answer(request.as_slice(), client, Transport::Tcp)
            .await;
        let message = reply.and_then(|wire| Message::from_vec(&wire).ok());
        let Some(message) = message else {
            let builder = MessageResponseBuilder::from_message_request(request);
            let failed = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            return response
                .send_response(failed)
                .await
                .unwrap_or_else(|_| failed_info(request));
        };
        let builder = MessageResponseBuilder::new(&request.queries, message.edns.as_ref());
        let answer = builder.build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        match response.send_response(answer).await {
            Ok(info) => info,
            Err(err) => {
                debug!(%err, %client, "tcp send failed");
                failed_info(request)
            }
        }
    }
}

fn failed_info(request: &Request) -> ResponseInfo {
    let mut metadata = request.metadata;
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
