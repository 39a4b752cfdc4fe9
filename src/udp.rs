//! The UDP receive loops: one per SO_REUSEPORT socket. On Linux a plain thread per socket
//! blocks in `recvmmsg`, answers the whole batch through the gateway core into reused
//! buffers, and sends every reply with one `sendmmsg`: no readiness wake-up and no extra
//! empty read per packet. Elsewhere, a tokio task per socket. Either way, misses go to a
//! tokio task that forwards and sends its own reply. Binding and shutdown are `server.rs`'s.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::handler::{Gateway, Pending};
#[cfg(not(target_os = "linux"))]
use crate::handler::{Step, Transport};

/// UDP receive loops per listen address: one per CPU this process may run on, so that the
/// kernel spreads clients over them.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `count` blocking UDP sockets on one address with SO_REUSEPORT (the kernel hashes each
/// client's flow to one of them). A plain bind first checks the address is free and fixes
/// the port: with SO_REUSEPORT alone, a second portvakt would silently share the port.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let bound = std::net::UdpSocket::bind(addr)?.local_addr()?;
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

/// A running receive loop; `stop` waits for it after the token is cancelled.
pub enum Loop {
    Task,
    #[cfg(target_os = "linux")]
    Thread(std::thread::JoinHandle<()>),
}

impl Loop {
    pub fn stop(self) {
        match self {
            Loop::Task => {}
            #[cfg(target_os = "linux")]
            Loop::Thread(handle) => {
                let _ = handle.join();
            }
        }
    }
}

/// Starts the receive loop for `socket`. Must run inside the runtime (misses are spawned on it).
pub fn serve(
    socket: std::net::UdpSocket,
    gateway: Arc<Gateway>,
    token: CancellationToken,
    tasks: TaskTracker,
) -> io::Result<Loop> {
    #[cfg(target_os = "linux")]
    {
        // Blocking with a timeout, so the thread notices shutdown within it.
        socket.set_read_timeout(Some(batch::SHUTDOWN_POLL))?;
        let runtime = tokio::runtime::Handle::current();
        let handle = std::thread::Builder::new()
            .name("portvakt-udp".into())
            .spawn(move || batch::serve(socket, gateway, token, tasks, runtime))?;
        Ok(Loop::Thread(handle))
    }
    #[cfg(not(target_os = "linux"))]
    {
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        tasks.spawn(serve_task(Arc::new(socket), gateway, token, tasks.clone()));
        Ok(Loop::Task)
    }
}

/// Forwards a miss on the runtime and sends the reply from there.
fn spawn_forward(
    tasks: &TaskTracker,
    runtime: &tokio::runtime::Handle,
    gateway: &Arc<Gateway>,
    socket: &Arc<std::net::UdpSocket>,
    pending: Pending,
    client: SocketAddr,
) {
    let (gateway, socket) = (gateway.clone(), socket.clone());
    tasks.spawn_on(
        async move {
            let mut out = Vec::with_capacity(512);
            gateway.forward(pending, &mut out).await;
            // A UDP send does not block for long: the socket buffer takes it or drops it.
            if let Err(err) = socket.send_to(&out, client) {
                debug!(%err, %client, "udp send failed");
            }
        },
        runtime,
    );
}

#[cfg(not(target_os = "linux"))]
async fn serve_task(
    socket: Arc<tokio::net::UdpSocket>,
    gateway: Arc<Gateway>,
    token: CancellationToken,
    tasks: TaskTracker,
) {
    let mut packet = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut packet) => received,
            () = token.cancelled() => return,
        };
        let Ok((len, client)) = received else {
            continue;
        };
        match gateway.answer_now(&packet[..len], client.ip(), Transport::Udp, &mut out) {
            Step::Reply => {
                let _ = socket.send_to(&out, client).await;
            }
            Step::Drop => {}
            Step::Forward(pending) => {
                let (socket, gateway) = (socket.clone(), gateway.clone());
                tasks.spawn(async move {
                    let mut out = Vec::with_capacity(512);
                    gateway.forward(pending, &mut out).await;
                    let _ = socket.send_to(&out, client).await;
                });
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod batch {
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tracing::debug;

    use super::spawn_forward;
    use crate::handler::{Gateway, Step, Transport};

    /// Datagrams taken per `recvmmsg`.
    const BATCH: usize = 32;
    /// Largest query read; longer datagrams are cut (and then fail to parse: FORMERR).
    const MAX_QUERY: usize = 4096;
    /// How often a blocked receive wakes up to check for shutdown.
    pub const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

    /// Receive buffers, reply buffers and the kernel's message headers, reused forever.
    struct Buffers {
        packets: Vec<[u8; MAX_QUERY]>,
        addrs: Vec<libc::sockaddr_storage>,
        iovecs: Vec<libc::iovec>,
        headers: Vec<libc::mmsghdr>,
        replies: Vec<Vec<u8>>,
        reply_addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
        reply_iovecs: Vec<libc::iovec>,
        reply_headers: Vec<libc::mmsghdr>,
    }

    impl Buffers {
        fn new() -> Buffers {
            // SAFETY: all-zero is a valid value of these plain C structs.
            let zeroed_storage = || unsafe { zeroed::<libc::sockaddr_storage>() };
            Buffers {
                packets: vec![[0u8; MAX_QUERY]; BATCH],
                addrs: (0..BATCH).map(|_| zeroed_storage()).collect(),
                iovecs: (0..BATCH)
                    .map(|_| libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    })
                    .collect(),
                // SAFETY: as above.
                headers: (0..BATCH)
                    .map(|_| unsafe { zeroed::<libc::mmsghdr>() })
                    .collect(),
                replies: (0..BATCH).map(|_| Vec::with_capacity(MAX_QUERY)).collect(),
                reply_addrs: (0..BATCH).map(|_| (zeroed_storage(), 0)).collect(),
                reply_iovecs: (0..BATCH)
                    .map(|_| libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    })
                    .collect(),
                // SAFETY: as above.
                reply_headers: (0..BATCH)
                    .map(|_| unsafe { zeroed::<libc::mmsghdr>() })
                    .collect(),
            }
        }

        /// Points every receive header at its buffer and address (the kernel updates the
        /// lengths, so this runs before every call).
        fn arm_receive(&mut self) {
            for i in 0..BATCH {
                self.iovecs[i] = libc::iovec {
                    iov_base: self.packets[i].as_mut_ptr().cast(),
                    iov_len: MAX_QUERY,
                };
                let header = &mut self.headers[i];
                header.msg_hdr.msg_name =
                    (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut self.iovecs[i];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
                header.msg_hdr.msg_flags = 0;
                header.msg_len = 0;
            }
        }
    }

    pub fn serve(
        socket: std::net::UdpSocket,
        gateway: Arc<Gateway>,
        token: CancellationToken,
        tasks: TaskTracker,
        runtime: tokio::runtime::Handle,
    ) {
        let socket = Arc::new(socket);
        let fd = socket.as_raw_fd();
        let mut b = Buffers::new();
        while !token.is_cancelled() {
            b.arm_receive();
            // SAFETY: every header points at live buffers of the lengths given, owned by `b`
            // and not touched until the call returns.
            let received = unsafe {
                libc::recvmmsg(
                    fd,
                    b.headers.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if received < 0 {
                let err = std::io::Error::last_os_error();
                if !matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    debug!(%err, "udp receive failed");
                }
                continue;
            }
            let mut ready = 0;
            for i in 0..received as usize {
                let len = b.headers[i].msg_len as usize;
                let name_len = b.headers[i].msg_hdr.msg_namelen;
                let Some(client) = to_socket_addr(&b.addrs[i]) else {
                    continue;
                };
                let out = &mut b.replies[ready];
                match gateway.answer_now(
                    &b.packets[i][..len.min(MAX_QUERY)],
                    client.ip(),
                    Transport::Udp,
                    out,
                ) {
                    Step::Reply => {
                        b.reply_addrs[ready] = (b.addrs[i], name_len);
                        ready += 1;
                    }
                    Step::Drop => {}
                    Step::Forward(pending) => {
                        spawn_forward(&tasks, &runtime, &gateway, &socket, pending, client)
                    }
                }
            }
            send_all(fd, &mut b, ready);
        }
    }

    /// Sends replies `0..count` with as few `sendmmsg` calls as the kernel allows.
    fn send_all(fd: libc::c_int, b: &mut Buffers, count: usize) {
        for i in 0..count {
            b.reply_iovecs[i] = libc::iovec {
                iov_base: b.replies[i].as_mut_ptr().cast(),
                iov_len: b.replies[i].len(),
            };
            let header = &mut b.reply_headers[i];
            header.msg_hdr.msg_name =
                (&mut b.reply_addrs[i].0 as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = b.reply_addrs[i].1;
            header.msg_hdr.msg_iov = &mut b.reply_iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers `sent..count` point at live reply buffers and addresses in `b`.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    b.reply_headers[sent..].as_mut_ptr(),
                    (count - sent) as u32,
                    0,
                )
            };
            if n <= 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The reply that failed is dropped (the client retries); the rest still go.
                debug!(%err, "udp send failed");
                sent += 1;
                continue;
            }
            sent += n as usize;
        }
    }

    fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
                let a = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
                let a = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}
