//! `portvakt serve` (the default): tracing, the gateway started on the config, the policy in
//! force logged, and the signals: SIGHUP reloads, SIGINT and SIGTERM shut down.

use std::process::ExitCode;

use portvakt::{CompileError, Policy, Reloader, StartError, Transport, Trigger, start};
use tracing::{error, info};

use super::{Exit, LogFormat, ServeArgs, VERSION, report};

pub(super) async fn serve(args: ServeArgs) -> ExitCode {
    init_tracing(&args);
    let source = args.config.source();
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            report(&err);
            return ExitCode::from(Exit::Invalid);
        }
    };
    let origin = config.origin.clone();
    let running = match start(config, source).await {
        Ok(running) => running,
        Err(err) => {
            report(&err);
            return ExitCode::from(
                if matches!(err, StartError::Compile(CompileError::List(_))) {
                    2
                } else {
                    1
                },
            );
        }
    };
    // One field per transport that listens: `udp=127.0.0.1:53 tcp=127.0.0.1:53 tls=…`.
    let listening: Vec<String> = (Transport::ALL.into_iter())
        .filter(|&t| !running.addrs(t).is_empty())
        .map(|t| {
            let addrs: Vec<String> = running.addrs(t).iter().map(ToString::to_string).collect();
            format!("{}={}", t.as_str(), addrs.join(","))
        })
        .collect();
    let listening = listening.join(" ");
    info!(config = %origin, listening = %listening, version = VERSION, "portvakt listening");
    running.gateway().with_policy(log_policy);
    if let Some(admin) = running.admin_addr() {
        info!(addr = %admin, "admin listener: /metrics /healthz /readyz /api/v1/status /api/v1/explain /api/v1/reload");
    }
    wait_for_shutdown_signal(running.reloader()).await;
    info!("shutting down");
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// What is in force, at start: lists, segments, upstream groups.
fn log_policy(policy: &Policy) {
    for list in policy.lists() {
        info!(list = %list.name, entries = list.entries, rejected = list.rejected.len(), "list loaded");
    }
    for segment in &policy.config().segments {
        let networks: Vec<String> = segment.networks.iter().map(ToString::to_string).collect();
        info!(segment = %segment.name, networks = %networks.join(","), "segment");
    }
    for group in &policy.config().upstreams {
        let zones: Vec<String> = group
            .zones
            .iter()
            .map(|z| portvakt::core::to_text(z))
            .collect();
        let servers: Vec<String> = group.servers.iter().map(ToString::to_string).collect();
        let zones = if zones.is_empty() {
            "(default)".to_owned()
        } else {
            zones.join(",")
        };
        info!(zones = %zones, servers = %servers.join(","), timeout_ms = group.timeout.as_millis() as u64, "upstream group");
    }
}

/// Serves until SIGINT or SIGTERM; SIGHUP reloads the policy (a failed reload keeps the
/// running one and is logged and counted by `reload`).
#[cfg(unix)]
async fn wait_for_shutdown_signal(reloader: &Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                reloader.request(Trigger::Signal);
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_shutdown_signal(_reloader: &Reloader) {
    let _ = tokio::signal::ctrl_c().await;
}

fn init_tracing(args: &ServeArgs) {
    use tracing_subscriber::EnvFilter;
    // hickory logs every TCP request at info; keep it to warnings.
    let filter = match &args.log_level {
        Some(level) => EnvFilter::new(format!("hickory_proto=warn,{level}")),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,hickory_proto=warn")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        error!(%err, "failed to set up logging");
    }
}
