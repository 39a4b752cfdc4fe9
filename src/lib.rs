//! portvakt: a DNS policy gateway. A query's source address puts the client in a segment;
//! the segment's policy says which lists are blocked there. Blocked names are answered at
//! once (NXDOMAIN with an Extended DNS Error by default); everything else is forwarded to the
//! upstream groups and cached; clients in no segment are refused.
//!
//! ```text
//! socket ─► transport/ ─► gateway/: answer_now(packet, client) ─► reply bytes ─► transport/ ─► socket
//!   (protocol.rs: each transport one value: label, listen key, datagram or stream, DDR's ALPN)
//!   udp.rs, tcp.rs  client/segment.rs  listener or source address ─► SegmentId (none ─► REFUSED)
//!   (stream.rs, tls.rs: DoT, doh.rs: DoH's core, https.rs: DoH on HTTP/1.1 and 2,
//!   quic.rs: DoQ and the QUIC side of DoH3, h3.rs: DoH on HTTP/3)
//!                   client/proxy.rs    a load balancer's PROXY v2 header ─► the client it names
//!                   client/ratelimit.rs, client/budget.rs  a client's rate and what it holds
//!                   ddr.rs      _dns.resolver.arpa ─► our own DoT/DoH/DoQ/DoH3 endpoints (advertise_encrypted)
//!                   wire.rs     header + question parsed in place (malformed ─► FORMERR/NOTIMP/drop);
//!                               name.rs: names in wire format
//!                   policy/     judge.rs: (segment, qname) ─► Judgement (DDR, bypass.rs names, lists:
//!                               index.rs, one pass over the name's suffixes; networks.rs for
//!                               answers' addresses); explain.rs and expect.rs ask it too
//!                     ├─ Blocked ─► reply.rs  synthesized reply + SOA + EDE (policy/block.rs);
//!                     │                       awaits nothing, never forwarded
//!                     └─ Forward ─► cache.rs ─hit─► reply (the answer judged again: CNAME targets, addresses)
//!                                        └miss─► gateway/miss.rs, the whole miss: join (coalesce.rs:
//!                                                 lead or follow) ─► upstream/ server order (server.rs),
//!                                                 one try per server (exchange.rs): UDP from a fresh
//!                                                 random port (the first try's socket watched by
//!                                                 udp.rs's loop, which sees no upstream type), TCP/TLS
//!                                                 reused (stream.rs), DoQ/DoH (hickory.rs) ─► settle ─► cache.rs ─► reply
//!                   gateway/ finish: every reply fitted to the transport and counted (metrics.rs)
//! side: config/ (file.rs, checks.rs, error.rs, tls.rs) ─► lists/ (remote.rs; hosts via upstream/resolve.rs)
//!       ─► policy/compile.rs (probe.rs: the self-test) ─► reload/ (SIGHUP, watch.rs, refresh.rs,
//!       API; guards: shrink, expectations, start-only settings) ─► Gateway::swap
//! side: evidence/ identity.rs (the policy hash), audit.rs (every policy put in force or refused),
//!       report.rs (the evidence store and report; pseudonym.rs, days.rs)
//! side: metrics.rs ─► admin/ ─► /metrics, /api/v1/{status,explain,reload,report}; auth.rs: who
//!       may change what; views.rs: each fact one typed view, JSON for the API, text for `main.rs`
//! side: export.rs (firewall sets), catalogue.rs (lists against catalogues), error.rs (error text)
//! top: main.rs ─► cli/ (the commands: serve.rs; inspect.rs: check, explain, export; evidence.rs:
//!      report, audit verify; catalogue.rs), which print admin/views.rs as text
//! ```
//! The modules below are declared bottom layer first; each uses only those of lower layers
//! (`tests/integration/modules.rs` fails when two modules need each other, when a transport
//! imports the upstream layer, and when a file of `src/` is missing from this map). Start
//! reading at `gateway/mod.rs`.

#![deny(unsafe_code)]

// Bottom layer: names, wire format, what places and limits a client, bypass kinds, error
// text, metric handles.
mod bypass;
mod client;
mod error;
mod metrics;
mod name;
mod protocol;
mod wire;
// Config, the evidence kept of it, then what is read from it.
mod config;
mod evidence;
mod lists;
mod upstream;
// The compiled policy, then the answers written from its decisions.
mod cache;
mod coalesce;
mod ddr;
mod policy;
mod reply;
// The path of one query, then what runs around it.
mod admin;
mod catalogue;
mod export;
mod gateway;
mod reload;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use admin::Admin;
pub use admin::{AdminBindError, views};
pub use catalogue::{
    CatalogueError, Diff as CatalogueDiff, Reach, diff as catalogue_diff, reach as catalogue_reach,
};
pub use config::{Config, ConfigError, Problem, TcpLimits};
pub use error::chain as error_chain;
pub use evidence::audit::{AuditError, Verified, verify as audit_verify};
pub use evidence::report::{Report, StoreError, period as report_period, report_from};
pub use export::{ExportFormat, export, warnings as export_warnings};
pub use gateway::{Client, Datagram, Gateway, Heard, Later, Pending, Step, Transport, Watched};
use lists::remote::Fetcher;
pub use lists::remote::{FetchError, NoCopyError, download};
pub use metrics::Metrics;
pub use policy::{CompileError, Explanation, List, Located, Policy, Verdict};
pub use reload::{ConfigSource, Override, ReloadError, ReloadStatus, Reloader, Shrunk, Trigger};
pub use transport::ListenAddrs;
use transport::Listeners;
pub use transport::quic::{Exchange as DoqExchange, exchange as serve_doq_stream};
pub use transport::{BindError, serve_stream};

/// The lookup core and the list reader, for benches, examples and the tests over real lists.
pub mod core {
    pub use crate::client::segment::{SegmentId, SegmentTable};
    pub use crate::lists::{
        Entry, EntryKind, ListError, ListFile, Rejected, parse, read, read_with,
    };
    pub use crate::name::{MAX_WIRE_LEN, NameError, from_text, to_text};
    pub use crate::policy::index::{IndexBuilder, ListId, ListSet, Matches, SuffixIndex};
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Admin(#[from] AdminBindError),
    #[error(transparent)]
    Download(#[from] NoCopyError),
    #[error(transparent)]
    Store(#[from] evidence::report::StoreError),
}

/// A running gateway; `shutdown` stops it in order, and dropping it cancels everything at once.
///
/// Shutdown is one token tree: `root` is the admin listener's; its child `serving` stops the
/// DNS listeners and the reload workers. `shutdown` cancels `serving`, waits for the
/// listeners to finish what is in flight, then cancels `root`.
pub struct Running {
    gateway: Arc<Gateway>,
    listeners: Listeners,
    admin: Option<Admin>,
    reloader: Arc<Reloader>,
    /// Writes the evidence store (with `state_dir`); flushes once more when stopped.
    recording: Option<tokio::task::JoinHandle<()>>,
    serving: CancellationToken,
    root: DropGuard,
}

/// Downloads list sources, compiles the policy for `config`, then binds the DNS listeners,
/// then the admin listener: no socket is bound before the config and every list have been
/// read. Reloads read the config again from `source`.
pub async fn start(config: Config, source: ConfigSource) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let fetcher = Fetcher::new(metrics.clone());
    // Until the policy is in force, list hosts are resolved through the config's groups.
    let first = Arc::new(upstream::Upstreams::new(&config.upstreams, &metrics));
    fetcher.resolve_with(Box::new(move || first.clone()));
    fetcher.prepare(&config, false).await?;
    let (listen, admin_listen) = (config.listen.clone(), config.admin_listen);
    let recorder = match &config.state_dir {
        Some(dir) => Some(Arc::new(evidence::report::Recorder::open(dir)?)),
        None => None,
    };
    let encrypted = config.encrypted.clone();
    let policy = Policy::compile(config, &metrics, 1)?;
    reload::release_freed_memory();
    let gateway = Arc::new(Gateway::new(policy, metrics));
    let running = gateway.clone();
    fetcher.resolve_with(Box::new(move || {
        running.with_policy(|policy| policy.upstreams().clone())
    }));
    let root = CancellationToken::new();
    // From here on, any early return stops what was started.
    let root_guard = root.clone().drop_guard();
    let serving = root.child_token();
    let listeners = Listeners::bind(&listen, &encrypted, gateway.clone(), serving.clone()).await?;
    let on_change = recorder.clone().map(|recorder| {
        let metrics = gateway.metrics().clone();
        Box::new(move |policy: &Policy| recorder.note(policy.hash(), &metrics)) as reload::OnChange
    });
    let reloader = Reloader::new(gateway.clone(), source, fetcher, on_change);
    let admin = match admin_listen {
        Some(addr) => {
            let evidence = recorder.clone();
            Some(
                Admin::start(
                    addr,
                    reloader.clone(),
                    &listeners.addrs,
                    evidence,
                    root.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    reloader.start(&serving);
    tokio::spawn(self_test(gateway.clone(), serving.clone()));
    let recording = recorder.map(|recorder| {
        let (metrics, stop) = (gateway.metrics().clone(), serving.clone());
        let in_force = {
            let gateway = gateway.clone();
            move || gateway.with_policy(|p| (p.hash().to_owned(), p.loaded_at()))
        };
        tokio::spawn(evidence::report::record(recorder, in_force, metrics, stop))
    });
    Ok(Running {
        gateway,
        listeners,
        admin,
        reloader,
        recording,
        serving,
        root: root_guard,
    })
}

/// How often the self-test decides its probes again (also at every reload).
const SELF_TEST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the policy's self-test (probes and expectations) every minute until `stop`.
async fn self_test(gateway: Arc<Gateway>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SELF_TEST_EVERY);
    every.tick().await; // the policy's first run was at its start
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let (failed, broken) = gateway.with_policy(|p| p.self_test(gateway.metrics()));
        if failed > 0 {
            tracing::error!(failed, "self-test: probes not decided as configured");
        }
        for message in broken {
            tracing::error!(%message, "self-test: expectation broken");
        }
    }
}

impl Running {
    /// The addresses `transport` listens on, as bound (port 0 in the config resolved).
    pub fn addrs(&self, transport: Transport) -> &[SocketAddr] {
        self.listeners.addrs.of(transport)
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
        self.serving.cancel();
        self.listeners.stopped().await;
        if let Some(recording) = self.recording {
            let _ = recording.await;
        }
        drop(self.root);
        if let Some(admin) = self.admin {
            admin.stopped().await;
        }
    }
}
