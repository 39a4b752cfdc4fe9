//! One query's way through its group's servers: tries in `Order`, all within the group's
//! budget. Each try has a wait before the next is sent, doubled after every try that waited
//! its whole time (the backoff Unbound uses), and goes on listening after it, each on its own
//! fresh port: the first valid answer of any try wins. A try is a failure in its server's
//! health only when the exchange ends without hearing from that server; a late answer counts
//! as an answer (its RTT raises the server's SRTT, so its next tries wait longer), never as a
//! loss. The first try may be sent and read without awaiting (`UdpTry`, by the UDP receive
//! loop that got the query); what it leaves to do goes on in `run`, its socket still open.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hickory_proto::op::ResponseCode;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::debug;

use crate::metrics::UpstreamResult;
use crate::wire::{OUR_UDP_PAYLOAD, Query};

use super::server::{Order, Server};
use super::{Group, Request, UpstreamError, answers, judge, request};

/// Rounds over a group's servers one query may make (time permitting).
const MAX_ROUNDS: usize = 3;

/// Tries at binding a random port before leaving the choice to the kernel.
const PORT_TRIES: usize = 8;

/// Where an exchange stands when it goes on in [`run`].
pub struct Resume {
    started: Instant,
    /// Servers that answered an error rcode (a bit each): not asked again.
    answered_error: u32,
    rcode: Option<ResponseCode>,
    last_error: Option<io::Error>,
    /// A server whose UDP answer was truncated: asked first, over its stream connection.
    truncated: Option<usize>,
    /// The first try, its wait over, still listening for its answer.
    listening: Option<UdpTry>,
}

impl Resume {
    /// A new exchange, started at `started`.
    pub fn new(started: Instant) -> Resume {
        Resume {
            started,
            answered_error: 0,
            rcode: None,
            last_error: None,
            truncated: None,
            listening: None,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Takes in what a try of server `index` got: the answer to relay, if it is one.
    fn record(
        &mut self,
        server: &Server,
        index: usize,
        got: io::Result<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        match got {
            Ok(answer) => match judge(&answer) {
                Ok(()) => return Some(answer),
                Err(code) => {
                    debug!(server = %server.label, %code, "upstream server answered an error");
                    self.answered_error |= 1 << index;
                    self.rcode = Some(code);
                }
            },
            Err(err) => {
                debug!(server = %server.label, %err, "upstream server failed");
                self.last_error = Some(err);
            }
        }
        None
    }

    fn error(self, group: &Group) -> UpstreamError {
        let name = group.name.clone();
        match (self.rcode, self.last_error) {
            (Some(rcode), _) => UpstreamError::Rcode { group: name, rcode },
            (None, Some(source)) => UpstreamError::Failed {
                group: name,
                source,
            },
            (None, None) => UpstreamError::Timeout {
                group: name,
                timeout: group.timeout,
            },
        }
    }
}

/// The exchange from `resume` on: the servers in `Order` (those that answered an error
/// skipped), round after round while the group's budget lasts, each try's wait doubling after
/// a try that waited its whole time; that error rcode is the result when every server
/// answered one.
pub async fn run(
    group: &Group,
    query: &Query<'_>,
    mut resume: Resume,
) -> Result<Vec<u8>, UpstreamError> {
    let deadline = resume.started + group.timeout;
    let order = Order::new(&group.servers, Instant::now());
    let mut request = request(query, rand::random());
    if let Some(probe) = order.probe {
        group.probe(probe, &request);
    }
    let mut tries = Tries::new(group);
    let mut send_at = Instant::now();
    let mut next = order.iter().cycle().take(order.len() * MAX_ROUNDS);
    if resume.listening.is_some() || resume.truncated.is_some() {
        next.next(); // the first try was the UDP receive loop's
    }
    // Waits that passed without an answer: each doubles the next try's wait.
    let mut backoff = 0;
    if let Some(first) = resume.listening.take() {
        backoff = 1;
        if let Err(err) = tries.carry(first) {
            resume.last_error = Some(err);
        }
    }
    if let Some(index) = resume.truncated.take() {
        let wait = (group.try_timeout).min(deadline.saturating_duration_since(send_at));
        tries.stream(index, request.clone(), wait);
        send_at += wait;
    }
    let all = (1u32 << order.len()) - 1;
    let mut more = true;
    loop {
        let now = Instant::now();
        if now >= deadline || resume.answered_error & all == all {
            break;
        }
        if more && now >= send_at {
            match next.find(|&i| resume.answered_error & (1 << i) == 0) {
                Some(index) => {
                    let server = &group.servers[index];
                    let wait = (server.try_timeout(group.try_timeout))
                        .saturating_mul(1 << backoff.min(16))
                        .min(group.try_timeout)
                        .min(deadline - now);
                    request[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
                    if let Err(err) = tries.send(index, &request, wait) {
                        resume.last_error = Some(err);
                        continue; // the next server at once
                    }
                    send_at = now + wait;
                }
                None => more = false,
            }
        }
        if tries.asking.is_empty() && !more {
            break;
        }
        let until = if more {
            send_at.min(deadline)
        } else {
            deadline
        };
        tokio::select! {
            Some((slot, got)) = tries.asking.next() => {
                let index = tries.heard(slot, &got);
                if let Some(answer) = resume.record(&group.servers[index], index, got) {
                    return Ok(answer);
                }
                send_at = Instant::now(); // an error: the next try goes at once
            }
            () = tokio::time::sleep_until(until.into()) => {
                if more && Instant::now() >= send_at {
                    backoff += 1;
                }
            }
        }
    }
    Err(resume.error(group))
}

/// How a try is made.
enum Via {
    /// A UDP socket the question was sent from.
    Udp(UdpSocket),
    /// The server's stream connection (TCP or TLS).
    Stream,
}

/// One try sent: its server, when, and how long it waits before the next is sent.
struct Sent {
    server: usize,
    at: Instant,
    wait: Duration,
    /// Its answer (or error) came.
    over: bool,
}

/// The tries of one exchange: those sent, and the answers still awaited (by slot in `sent`).
/// What is still awaited when the exchange ends is settled as it drops.
struct Tries<'a> {
    group: &'a Group,
    sent: Vec<Sent>,
    asking: FuturesUnordered<Asking<'a>>,
    /// Servers heard from in this exchange (a bit each).
    heard: u32,
}

type Asking<'a> = std::pin::Pin<Box<dyn Future<Output = (usize, io::Result<Vec<u8>>)> + Send + 'a>>;

impl<'a> Tries<'a> {
    fn new(group: &'a Group) -> Tries<'a> {
        Tries {
            group,
            sent: Vec::new(),
            asking: FuturesUnordered::new(),
            heard: 0,
        }
    }

    /// Sends a try to server `index` over what it speaks, waiting `wait` before the next.
    fn send(&mut self, index: usize, request: &[u8], wait: Duration) -> io::Result<()> {
        let server = &self.group.servers[index];
        if server.tls {
            self.stream(index, request.into(), wait);
            return Ok(());
        }
        let tried_at = begin(server);
        match send_udp(server.addr, request).and_then(UdpSocket::from_std) {
            Ok(socket) => {
                self.push(index, Via::Udp(socket), request.into(), tried_at, wait);
                Ok(())
            }
            Err(err) => {
                end(server, tried_at, wait, Outcome::Failed);
                Err(err)
            }
        }
    }

    /// Asks server `index` over its stream connection.
    fn stream(&mut self, index: usize, request: Request, wait: Duration) {
        let tried_at = begin(&self.group.servers[index]);
        self.push(index, Via::Stream, request, tried_at, wait);
    }

    /// Takes over the first try, still listening.
    fn carry(&mut self, first: UdpTry) -> io::Result<()> {
        let server = &self.group.servers[first.server];
        match UdpSocket::from_std(first.socket) {
            Ok(socket) => {
                let via = Via::Udp(socket);
                self.push(first.server, via, first.request, first.tried_at, first.wait);
                Ok(())
            }
            Err(err) => {
                end(server, first.tried_at, first.wait, Outcome::Failed);
                Err(err)
            }
        }
    }

    fn push(&mut self, index: usize, via: Via, request: Request, at: Instant, wait: Duration) {
        let slot = self.sent.len();
        self.sent.push(Sent {
            server: index,
            at,
            wait,
            over: false,
        });
        let server = &*self.group.servers[index];
        self.asking.push(Box::pin(async move {
            let got = match via {
                Via::Udp(socket) => listen(server, socket, &request).await,
                Via::Stream => server.streams.ask(&request).await,
            };
            (slot, got)
        }));
    }

    /// Counts what the try in `slot` got; its server's index.
    fn heard(&mut self, slot: usize, got: &io::Result<Vec<u8>>) -> usize {
        let sent = &mut self.sent[slot];
        sent.over = true;
        let server = &self.group.servers[sent.server];
        let outcome = match got {
            Ok(_) if sent.at.elapsed() > sent.wait => Outcome::Late,
            Ok(_) => Outcome::Answer,
            Err(_) => Outcome::Failed,
        };
        if got.is_ok() {
            self.heard |= 1 << sent.server;
        }
        end(server, sent.at, sent.wait, outcome);
        sent.server
    }
}

impl Drop for Tries<'_> {
    /// Tries still awaited as the exchange ends: lost if their wait passed and their server
    /// was not heard from, else given up (counted nowhere: the answer came from elsewhere).
    fn drop(&mut self) {
        let now = Instant::now();
        for sent in self.sent.iter().filter(|s| !s.over) {
            let server = &self.group.servers[sent.server];
            let lost = now >= sent.at + sent.wait && self.heard & (1 << sent.server) == 0;
            end(
                server,
                sent.at,
                sent.wait,
                if lost {
                    Outcome::Lost
                } else {
                    Outcome::GivenUp
                },
            );
        }
    }
}

impl Group {
    /// Asks a down server `request` in the background; its answer (or not) decides whether
    /// it is up again. The query that found the probe due does not wait for it.
    pub(super) fn probe(&self, index: usize, request: &[u8]) {
        let server = self.servers[index].clone();
        debug!(server = %server.label, "probing a down upstream server");
        let mut request = Request::from(request);
        request[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
        let wait = self.try_timeout;
        // Off the runtime (a test's synchronous caller), there is nobody to probe for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let tried_at = begin(&server);
                let asked = tokio::time::timeout(wait, async {
                    if server.tls {
                        server.streams.ask(&request).await
                    } else {
                        let socket = UdpSocket::from_std(send_udp(server.addr, &request)?)?;
                        listen(&server, socket, &request).await
                    }
                })
                .await;
                let outcome = match asked {
                    Ok(Ok(_)) => Outcome::Answer,
                    Ok(Err(_)) => Outcome::Failed,
                    Err(_) => Outcome::Lost,
                };
                end(&server, tried_at, wait, outcome);
            });
        }
    }
}

/// How one try ended.
#[derive(Clone, Copy)]
enum Outcome {
    /// Answered within its wait.
    Answer,
    /// Answered after its wait, while a later try was out.
    Late,
    /// An error (the server refused the connection, the socket failed).
    Failed,
    /// Not heard from that server by the end of the exchange.
    Lost,
    /// Still waiting when another server's answer ended the exchange.
    GivenUp,
}

/// A try of `server` starts now.
fn begin(server: &Server) -> Instant {
    server.metrics.in_flight.inc();
    Instant::now()
}

/// A try that began at `started` and was given `wait` ended with `outcome`.
fn end(server: &Server, started: Instant, wait: Duration, outcome: Outcome) {
    server.metrics.in_flight.dec();
    let now = Instant::now();
    match outcome {
        Outcome::Answer => {
            server.answered(now - started);
            server.metrics.result(UpstreamResult::Ok);
        }
        Outcome::Late => {
            server.answered(now - started);
            server.metrics.late.inc();
        }
        Outcome::Failed => {
            server.failed(now - started, now);
            server.metrics.result(UpstreamResult::Error);
        }
        Outcome::Lost => {
            server.failed(wait, now);
            server.metrics.result(UpstreamResult::Timeout);
        }
        Outcome::GivenUp => {}
    }
}

/// Listens on `socket` for the answer to `request`, ignoring datagrams that do not answer it;
/// asks over the server's stream connection when the answer is truncated.
async fn listen(server: &Server, socket: UdpSocket, request: &[u8]) -> io::Result<Vec<u8>> {
    // A responder keeps to our advertised payload (RFC 6891 §6.2.5); larger comes truncated.
    let mut buf = vec![0u8; usize::from(OUR_UDP_PAYLOAD)];
    loop {
        let len = socket.recv(&mut buf).await?;
        if !answers(request, &buf[..len]) {
            continue; // not ours: a forgery, or a late answer to an earlier query
        }
        if buf[2] & 0x02 != 0 {
            drop(socket);
            return server.streams.ask(request).await;
        }
        buf.truncate(len);
        return Ok(buf);
    }
}

/// Sends `request` from a fresh socket (connected: only the server's datagrams reach it). It
/// is sent before the socket joins the runtime's poller, so the send never waits for a turn.
fn send_udp(server: SocketAddr, request: &[u8]) -> io::Result<std::net::UdpSocket> {
    let socket = fresh_socket(server)?;
    socket.send(request)?;
    Ok(socket.into())
}

/// A non-blocking UDP socket on a random port in 1024-65535 (the kernel's pick if the tries
/// find only ports in use), connected to `server`.
fn fresh_socket(server: SocketAddr) -> io::Result<Socket> {
    // Non-blocking from the start: no fcntl calls.
    let socket = Socket::new(
        Domain::for_address(server),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    let any = |port| match server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    };
    let random = (0..PORT_TRIES).find_map(|_| {
        let port = rand::random_range(1024..=u16::MAX);
        socket.bind(&any(port).into()).ok()
    });
    if random.is_none() {
        socket.bind(&any(0).into())?;
    }
    socket.connect(&server.into())?;
    Ok(socket)
}

/// The first try of an exchange over UDP, sent without awaiting by the thread that received
/// the query, which watches `socket()` and calls [`super::Admitted::read_udp`] when it is
/// readable, or [`super::Admitted::udp_waited`] at `deadline()`.
pub struct UdpTry {
    socket: std::net::UdpSocket,
    request: Request,
    server: usize,
    started: Instant,
    tried_at: Instant,
    wait: Duration,
}

impl UdpTry {
    /// Sends the first try, if the server to try first speaks UDP and a socket could be had.
    pub(super) fn send(group: &Group, query: &Query<'_>) -> Option<UdpTry> {
        let started = Instant::now();
        let order = Order::new(&group.servers, started);
        let request = request(query, rand::random());
        if let Some(probe) = order.probe {
            group.probe(probe, &request);
        }
        let index = order.iter().next()?;
        let server = &group.servers[index];
        if server.tls {
            return None;
        }
        let Ok(socket) = send_udp(server.addr, &request) else {
            return None; // the runtime's exchange tries again, and counts the error
        };
        Some(UdpTry {
            socket,
            request,
            server: index,
            started,
            tried_at: begin(server),
            wait: server.try_timeout(group.try_timeout).min(group.timeout),
        })
    }

    /// The socket to watch for readability.
    pub fn socket(&self) -> &std::net::UdpSocket {
        &self.socket
    }

    /// When this try has waited long enough: the exchange goes on, this socket still open.
    pub fn deadline(&self) -> Instant {
        self.tried_at + self.wait
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Reads the datagrams that came: `None` while none answers this try.
    pub(super) fn read(&mut self, group: &Group, buf: &mut [u8]) -> Option<Result<usize, Resume>> {
        let server = &group.servers[self.server];
        loop {
            let len = match self.socket.recv(buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                Err(err) => {
                    end(server, self.tried_at, self.wait, Outcome::Failed);
                    let mut resume = Resume::new(self.started);
                    resume.record(server, self.server, Err(err));
                    return Some(Err(resume));
                }
            };
            if !answers(&self.request, &buf[..len]) {
                continue; // not ours: a forgery, or a late answer to an earlier query
            }
            end(server, self.tried_at, self.wait, Outcome::Answer);
            let mut resume = Resume::new(self.started);
            if buf[2] & 0x02 != 0 {
                resume.truncated = Some(self.server);
                return Some(Err(resume));
            }
            return match judge(&buf[..len]) {
                Ok(()) => Some(Ok(len)),
                Err(code) => {
                    resume.record(server, self.server, Ok(buf[..len].to_vec()));
                    debug_assert_eq!(resume.rcode, Some(code));
                    Some(Err(resume))
                }
            };
        }
    }

    /// This try waited its whole wait: the exchange goes on, still listening on its socket
    /// (which the caller no longer watches).
    pub(super) fn waited(self) -> Resume {
        let mut resume = Resume::new(self.started);
        resume.listening = Some(self);
        resume
    }
}
