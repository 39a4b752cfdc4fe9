//! The transports: binds UDP and TCP on every listen address and feeds the gateway core.
//! UDP is our own receive loop, one per CPU on SO_REUSEPORT sockets: blocked and cached
//! answers are sent from the loop itself, misses go to a task. TCP is hickory-server's,
//! through an adapter that hands the core the raw query and re-emits its wire answer.
//! Owns the shutdown token.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Message, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::handler::{Gateway, Transport};
use crate::udp;

/// Idle time after which a TCP connection without a new query is closed (RFC 7766 §6.2.3).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
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
    token: CancellationToken,
    udp_tasks: TaskTracker,
    udp_loops: Vec<udp::Loop>,
    tcp_server: Server<TcpAdapter>,
}

impl Listeners {
    /// Binds every address for UDP and TCP and starts serving. Must run inside the runtime.
    pub async fn bind(
        addrs: &[SocketAddr],
        gateway: Arc<Gateway>,
    ) -> Result<Listeners, ServerError> {
        let token = CancellationToken::new();
        let udp_tasks = TaskTracker::new();
        let mut tcp = Server::new(TcpAdapter {
            gateway: gateway.clone(),
        });
        let (mut udp_addrs, mut tcp_addrs, mut udp_loops) = (Vec::new(), Vec::new(), Vec::new());
        for &addr in addrs {
            let sockets = udp::bind(addr, udp::workers()).map_err(|source| ServerError::Bind {
                proto: "UDP",
                addr,
                source,
            })?;
            // Port 0 means "any": every socket and TCP take the port the first UDP socket got.
            let bound = sockets[0]
                .local_addr()
                .map_err(|source| ServerError::Bind {
                    proto: "UDP",
                    addr,
                    source,
                })?;
            let listener = TcpListener::bind(bound)
                .await
                .map_err(|source| ServerError::Bind {
                    proto: "TCP",
                    addr: bound,
                    source,
                })?;
            udp_addrs.push(bound);
            tcp_addrs.push(bound);
            for socket in sockets {
                let started = udp::serve(socket, gateway.clone(), token.clone(), udp_tasks.clone());
                udp_loops.push(started.map_err(|source| ServerError::Bind {
                    proto: "UDP",
                    addr: bound,
                    source,
                })?);
            }
            tcp.register_listener(listener, TCP_IDLE_TIMEOUT, 32);
        }
        Ok(Listeners {
            udp: udp_addrs,
            tcp: tcp_addrs,
            token,
            udp_tasks,
            udp_loops,
            tcp_server: tcp,
        })
    }

    /// Stops accepting, gives in-flight UDP queries a grace period, and stops TCP.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        self.udp_tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.udp_tasks.wait()).await;
        let loops = std::mem::take(&mut self.udp_loops);
        let _ =
            tokio::task::spawn_blocking(move || loops.into_iter().for_each(udp::Loop::stop)).await;
        let _ = self.tcp_server.shutdown_gracefully().await;
    }
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
