//! One query's way through its group's servers: tries in `Order`, each within its own wait
//! and all within the group's budget, counted in the servers' health and metrics. The first
//! try may be sent and read without awaiting (`UdpTry`, by the UDP receive loop that got the
//! query); whatever it leaves to do (a timeout, a truncated answer, an error) goes on in `run`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::debug;

use crate::metrics::UpstreamResult;
use crate::wire::{OUR_UDP_PAYLOAD, Query};

use super::server::{Order, Server};
use super::{Group, UpstreamError, answers, judge, request};

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
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Takes in one try's outcome: the answer to relay, if it is one.
    fn record(&mut self, server: &Server, index: usize, outcome: Try) -> Option<Vec<u8>> {
        match outcome {
            Try::Answer(answer) => match judge(&answer) {
                Ok(()) => return Some(answer),
                Err(code) => {
                    debug!(server = %server.label, %code, "upstream server answered an error");
                    self.answered_error |= 1 << index;
                    self.rcode = Some(code);
                }
            },
            Try::Failed(err) => {
                debug!(server = %server.label, %err, "upstream server failed");
                self.last_error = Some(err);
            }
            Try::TimedOut => debug!(server = %server.label, "upstream server timed out"),
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
/// skipped), round after round while the group's budget lasts; that error rcode is the
/// result when every server answered one.
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
    if let Some(index) = resume.truncated.take() {
        let server = &group.servers[index];
        let wait = group
            .try_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let outcome = try_server(server, &request, wait, true).await;
        if let Some(answer) = resume.record(server, index, outcome) {
            return Ok(answer);
        }
    }
    let all = (1u32 << order.len()) - 1;
    for index in order.iter().cycle().take(order.len() * MAX_ROUNDS) {
        let now = Instant::now();
        if now >= deadline || resume.answered_error & all == all {
            break;
        }
        if resume.answered_error & (1 << index) != 0 {
            continue;
        }
        let server = &group.servers[index];
        let wait = server.try_timeout(group.try_timeout).min(deadline - now);
        request[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
        let outcome = try_server(server, &request, wait, server.tls).await;
        if let Some(answer) = resume.record(server, index, outcome) {
            return Ok(answer);
        }
    }
    Err(resume.error(group))
}

impl Group {
    /// Asks a down server `request` in the background; its answer (or not) decides whether
    /// it is up again. The query that found the probe due does not wait for it.
    pub(super) fn probe(&self, index: usize, request: &[u8]) {
        let server = self.servers[index].clone();
        debug!(server = %server.label, "probing a down upstream server");
        let mut request = request.to_vec();
        request[..2].copy_from_slice(&rand::random::<u16>().to_be_bytes());
        let wait = self.try_timeout;
        // Off the runtime (a test's synchronous caller), there is nobody to probe for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = try_server(&server, &request, wait, server.tls).await;
            });
        }
    }
}

/// How one try went.
enum Try {
    Answer(Vec<u8>),
    Failed(io::Error),
    TimedOut,
}

/// One try of `server` within `wait` (over its stream connection when `stream`), counted in
/// its health and metrics.
async fn try_server(server: &Server, request: &[u8], wait: Duration, stream: bool) -> Try {
    let started = begin(server);
    let asked = tokio::time::timeout(wait, async {
        if stream {
            server.streams.ask(request).await
        } else {
            ask_udp(server, request).await
        }
    })
    .await;
    let outcome = match asked {
        Ok(Ok(answer)) => Try::Answer(answer),
        Ok(Err(err)) => Try::Failed(err),
        Err(_) => Try::TimedOut,
    };
    end(server, started, wait, &outcome);
    outcome
}

/// A try of `server` starts now.
fn begin(server: &Server) -> Instant {
    server.metrics.in_flight.inc();
    Instant::now()
}

/// A try that began at `started` ended with `outcome`.
fn end(server: &Server, started: Instant, wait: Duration, outcome: &Try) {
    server.metrics.in_flight.dec();
    let now = Instant::now();
    let result = match outcome {
        Try::Answer(_) => {
            server.answered(now - started);
            UpstreamResult::Ok
        }
        Try::Failed(_) => {
            server.failed(now - started, now);
            UpstreamResult::Error
        }
        Try::TimedOut => {
            server.failed(wait, now);
            UpstreamResult::Timeout
        }
    };
    server.metrics.result(result);
}

/// Asks over UDP from a fresh socket (connected: only the server's datagrams reach it),
/// ignoring datagrams that do not answer; over the server's stream connection when the answer
/// is truncated. The query is sent before the socket joins the runtime's poller, so the send
/// never waits for a poller turn.
async fn ask_udp(server: &Server, request: &[u8]) -> io::Result<Vec<u8>> {
    let socket = fresh_socket(server.addr)?;
    socket.send(request)?;
    let socket = UdpSocket::from_std(socket.into())?;
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
/// readable, or [`super::Admitted::udp_timed_out`] at `deadline()`.
pub struct UdpTry {
    socket: std::net::UdpSocket,
    request: super::Request,
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
        let socket = fresh_socket(server.addr).and_then(|s| s.send(&request).map(|_| s));
        let Ok(socket) = socket else {
            return None; // the runtime's exchange tries again, and counts the error
        };
        Some(UdpTry {
            socket: socket.into(),
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

    /// When this try has waited long enough.
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
                    let outcome = Try::Failed(err);
                    end(server, self.tried_at, self.wait, &outcome);
                    let mut resume = Resume::new(self.started);
                    resume.record(server, self.server, outcome);
                    return Some(Err(resume));
                }
            };
            if !answers(&self.request, &buf[..len]) {
                continue; // not ours: a forgery, or a late answer to an earlier query
            }
            end(server, self.tried_at, self.wait, &Try::Answer(Vec::new()));
            let mut resume = Resume::new(self.started);
            if buf[2] & 0x02 != 0 {
                resume.truncated = Some(self.server);
                return Some(Err(resume));
            }
            return match judge(&buf[..len]) {
                Ok(()) => Some(Ok(len)),
                Err(code) => {
                    resume.record(server, self.server, Try::Answer(buf[..len].to_vec()));
                    debug_assert_eq!(resume.rcode, Some(code));
                    Some(Err(resume))
                }
            };
        }
    }

    /// This try waited its whole time: counted, and the exchange goes on.
    pub(super) fn timed_out(self, group: &Group) -> Resume {
        let server = &group.servers[self.server];
        end(server, self.tried_at, self.wait, &Try::TimedOut);
        let mut resume = Resume::new(self.started);
        resume.record(server, self.server, Try::TimedOut);
        resume
    }
}
