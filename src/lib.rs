//! portvakt: a DNS policy gateway. A query's source address puts the client in a segment;
//! the segment's policy says which lists are blocked there. Blocked names are answered at
//! once (NXDOMAIN with an Extended DNS Error by default); everything else is forwarded to the
//! upstream groups and cached; clients in no segment are refused.
//!
//! ```text
//! socket ─► server.rs ─► handler.rs: answer_now(packet, client) ─► reply bytes ─► server.rs ─► socket
//!             wire.rs      header + question parsed in place (malformed ─► FORMERR/NOTIMP/drop)
//!             segment.rs   source address ─► SegmentId (longest prefix; none ─► REFUSED)
//!             policy/      (segment, qname) ─► Decision, one pass over the name's suffixes
//!               ├─ Blocked ─► reply.rs  synthesized reply + SOA + EDE; awaits nothing, never forwarded
//!               └─ Allowed ─► cache.rs ─hit─► reply (CNAME targets re-decided)
//!                                  └miss─► handler.rs forward ─► upstream.rs ─► cache.rs
//! side: config/ ─► policy/compile.rs ─► reload.rs ─► Gateway::swap      metrics.rs ─► admin.rs ─► /metrics
//! ```
//! Start reading at `handler.rs`.

pub mod admin;
pub mod cache;
pub mod config;
pub mod handler;
pub mod lists;
pub mod metrics;
pub mod name;
pub mod policy;
pub mod reload;
pub mod remote;
pub mod reply;
pub mod segment;
pub mod server;
pub mod upstream;
pub mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use admin::Admin;
use config::Config;
use handler::Gateway;
use metrics::Metrics;
use policy::Policy;
use policy::compile::CompileError;
use reload::{ConfigSource, Reloader};
use remote::Fetcher;
use server::{Listeners, ServerError};
use tokio_util::sync::CancellationToken;

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A list source has no copy yet and cannot be downloaded.
    #[error("{0}")]
    Remote(String),
}

/// A running gateway; `shutdown` stops it.
pub struct Running {
    gateway: Arc<Gateway>,
    listeners: Listeners,
    admin: Option<Admin>,
    reloader: Arc<Reloader>,
    stop: CancellationToken,
}

/// Downloads list sources, compiles the policy for `config`, then binds the DNS listeners,
/// then the admin listener: no socket is bound before the config and every list have been
/// read. Reloads read the config again from `source`.
pub async fn start(config: Config, source: ConfigSource) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let fetcher = Fetcher::new(metrics.clone());
    fetcher
        .prepare(&config, false)
        .await
        .map_err(StartError::Remote)?;
    let policy = Policy::compile(config, &metrics)?;
    reload::release_freed_memory();
    let listen = policy.config.listen.clone();
    let admin_listen = policy.config.admin_listen;
    let gateway = Arc::new(Gateway::new(policy, metrics));
    let listeners = Listeners::bind(&listen, gateway.clone()).await?;
    let reloader = Reloader::new(gateway.clone(), source, fetcher);
    let admin = match admin_listen {
        Some(addr) => {
            Some(Admin::start(addr, reloader.clone(), &listeners.udp, &listeners.tcp).await?)
        }
        None => None,
    };
    let stop = CancellationToken::new();
    reloader.start(&stop);
    Ok(Running {
        gateway,
        listeners,
        admin,
        reloader,
        stop,
    })
}

impl Running {
    /// UDP addresses as bound (port 0 in the config resolved).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.listeners.udp
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.listeners.tcp
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Reloads on request (SIGHUP, API) and on its own (file changes, list downloads).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The admin HTTP address as bound, if `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Stops the DNS listeners (in-flight queries get a short grace period), then the admin
    /// listener, which says "not ready" meanwhile.
    pub async fn shutdown(self) {
        if let Some(admin) = &self.admin {
            admin.set_not_ready();
        }
        self.stop.cancel();
        self.listeners.shutdown().await;
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
    }
}
