//! The `portvakt` command: `serve` (the default), `check`, `explain`, `export`, `report` and
//! `audit verify`; tracing setup and exit codes (0 ok, 1 failure, a broken expectation or
//! audit chain, or `check --strict` with rejected lines; 2 invalid config).

use std::error::Error;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portvakt::{
    CompileError, ConfigError, ConfigSource, Explanation, ExportFormat, Located, Metrics, Policy,
    Reloader, StartError, Trigger, Verdict, error_chain, start,
};
use tracing::{error, info};

/// `portvakt --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PORTVAKT_COMMIT"),
    ")"
);

/// DNS policy gateway: blocks lists of names per client segment, forwards the rest.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(ServeArgs),
    /// Load and validate the config and every list; print entry counts and rejected lines.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Exit 1 if any list line was rejected.
        #[arg(long)]
        strict: bool,
    },
    /// Show the segment, verdict and deciding list entry for a client and a name.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The client's source address.
        #[arg(long)]
        client: IpAddr,
        /// The listen address the query arrives on, where a segment has `listeners`.
        #[arg(long)]
        listener: Option<SocketAddr>,
        /// The queried name, or an address as found in an answer (checked against IP lists).
        name: String,
    },
    /// Print what the blocking segments may not reach, for the firewall: an nftables ruleset
    /// (its own `table inet portvakt`), plain CIDR lists, or JSON.
    Export {
        #[arg(value_enum)]
        format: ExportArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the compliance report from the evidence store under `state_dir`: blocked queries
    /// and bypass attempts per day, segment and list, the policies in force, enforced time.
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// First day (YYYY-MM-DD); default: 29 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD); default: today (UTC).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: ReportArg,
    },
    /// The audit log of policy changes.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Compare the lists with a published catalogue of a service's names.
    Catalogue {
        #[command(subcommand)]
        command: CatalogueCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `portvakt manpage | man -l -`.
    Manpage,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of `<state_dir>/audit*.jsonl`: names the first line that does not
    /// follow the one before it (edited, or a line removed). Exit 0 intact, 1 broken.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum CatalogueCommand {
    /// Print, one per line, the names a catalogue (a file or an http(s) URL, in any list
    /// format portvakt reads, or an AdGuard service definition) has that the list does not
    /// block (by the name or a zone above it); a summary goes to stderr. Exit 0 when it lacks
    /// none, 1 when it lacks some, 2 on an error.
    Diff {
        /// The catalogue: a file, or an http:// or https:// URL (at most 64 MiB).
        source: String,
        /// The list to compare; every list a segment blocks by default.
        #[arg(long)]
        list: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Resolve the names of a file (one per line, or `rank,name`: a top-sites list) through
    /// the config's upstream groups and print, tab-separated, each name with an address
    /// inside the IP list `--list`, and that address: what blocking the list in answers would
    /// take. A summary goes to stderr. Exit 0 when none is inside, 1 when some are, 2 on an
    /// error or when no name resolves at all.
    Resolve {
        /// The names: a file.
        names: PathBuf,
        /// The IP list (`kind = "ip"`, or any list holding networks).
        #[arg(long)]
        list: String,
        /// Names asked at a time.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportArg {
    Text,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportArg {
    Nftables,
    Cidr,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config file; without it, the embedded default (config/portvakt.toml).
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `portvakt=debug`); `RUST_LOG` applies when absent.
    #[arg(long, value_name = "FILTER", global = true)]
    log_level: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Check { config, strict }) => runtime.block_on(check(config, strict)),
        Some(Command::Explain {
            config,
            client,
            listener,
            name,
        }) => runtime.block_on(explain(config, client, listener, &name)),
        Some(Command::Export { format, config }) => export(&config, format),
        Some(Command::Report {
            config,
            from,
            to,
            format,
        }) => compliance_report(&config, from.as_deref(), to.as_deref(), format),
        Some(Command::Audit {
            command: AuditCommand::Verify { config },
        }) => audit_verify(&config),
        Some(Command::Catalogue {
            command:
                CatalogueCommand::Diff {
                    source,
                    list,
                    config,
                },
        }) => runtime.block_on(catalogue_diff(&config, &source, list.as_deref())),
        Some(Command::Catalogue {
            command:
                CatalogueCommand::Resolve {
                    names,
                    list,
                    parallel,
                    config,
                },
        }) => runtime.block_on(catalogue_resolve(&config, &names, &list, parallel)),
        Some(Command::Completions { shell }) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "portvakt", &mut out);
            print_bytes(&out)
        }
        Some(Command::Manpage) => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            match clap_mangen::Man::new(command).render(&mut out) {
                Ok(()) => print_bytes(&out),
                Err(err) => {
                    eprintln!("error: failed to render the manual page: {err}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

impl ConfigArg {
    /// `--config FILE`, or the embedded default.
    fn source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource::File(path.clone()),
            None => ConfigSource::Embedded,
        }
    }
}

/// Prints an error with its chain of causes, once: `error: a: b: c`. An invalid config
/// prints each of its problems on a line of its own, `file:line:col: message`.
fn report(err: &(dyn Error + 'static)) {
    if let Some(ConfigError::Invalid { problems }) = err.downcast_ref::<ConfigError>() {
        eprintln!("error: invalid config");
        problems.iter().for_each(|problem| eprintln!("{problem}"));
        return;
    }
    eprintln!("error: {}", error_chain(err));
}

/// Loads and compiles, or reports and gives the exit code.
fn compile(arg: &ConfigArg) -> Result<Policy, ExitCode> {
    let config = arg.source().load().map_err(|err| {
        report(&err);
        ExitCode::from(2)
    })?;
    Policy::compile(config, &Metrics::new(), 0).map_err(|err| {
        report(&err);
        ExitCode::from(2)
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_tracing(&args);
    let source = args.config.source();
    let config = match source.load() {
        Ok(config) => config,
        Err(err) => {
            report(&err);
            return ExitCode::from(2);
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
    let shown = |addrs: &[SocketAddr]| {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        addrs.join(",")
    };
    let (udp, tcp) = (shown(running.udp_addrs()), shown(running.tcp_addrs()));
    info!(config = %origin, udp = %udp, tcp = %tcp, version = VERSION, "portvakt listening");
    if !running.tls_addrs().is_empty() || !running.https_addrs().is_empty() {
        let (tls, https) = (shown(running.tls_addrs()), shown(running.https_addrs()));
        info!(tls = %tls, https = %https, "encrypted listeners");
    }
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

async fn check(arg: ConfigArg, strict: bool) -> ExitCode {
    let policy = match compile(&arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    if let Err(code) = print_to_stdout(|out| write_check(out, &policy)) {
        return code;
    }
    // Expectations that refuse failed the compile already; these warn only, and still fail.
    let (_, broken) = policy.self_test(&Metrics::new());
    for message in &broken {
        eprintln!("error: {message} (on_fail = \"warn\")");
    }
    if !broken.is_empty() {
        return ExitCode::from(1);
    }
    let rejected: usize = policy.lists().iter().map(|l| l.rejected.len()).sum();
    if strict && rejected > 0 {
        eprintln!("error: {rejected} list lines were rejected (--strict)");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Per-list entry counts, then every rejected line.
fn write_check(out: &mut dyn Write, policy: &Policy) -> io::Result<()> {
    writeln!(out, "{}: ok", policy.config().origin)?;
    writeln!(out, "policy hash: {}", policy.hash())?;
    for list in policy.lists() {
        let files: Vec<String> = list.files.iter().map(|f| f.display().to_string()).collect();
        let (entries, rejected) = (list.entries, list.rejected.len());
        writeln!(
            out,
            "list {}: {entries} entries, {rejected} rejected lines ({})",
            list.name,
            files.join(", ")
        )?;
    }
    for line in policy.lists().iter().flat_map(|l| &l.rejected) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

async fn explain(
    arg: ConfigArg,
    client: IpAddr,
    listener: Option<SocketAddr>,
    name: &str,
) -> ExitCode {
    let policy = match compile(&arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let explanation = match policy.explain(client, listener, name) {
        Ok(explanation) => explanation.locate(),
        Err(err) => {
            eprintln!("error: `{name}` is not a domain name: {err}");
            return ExitCode::from(2);
        }
    };
    match print_to_stdout(|out| write_explanation(out, &policy, client, &explanation)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn write_explanation(
    out: &mut dyn Write,
    policy: &Policy,
    client: IpAddr,
    explanation: &Explanation,
) -> io::Result<()> {
    let segment = explanation
        .segment
        .as_deref()
        .map_or("none".to_owned(), |s| format!("\"{s}\""));
    writeln!(out, "client:  {client}")?;
    writeln!(out, "segment: {segment} (by {})", explanation.placement)?;
    writeln!(out, "name:    {}", explanation.name)?;
    let entry = |located: &Located| match &located.at {
        Some((path, line)) => format!("entry `{}` at {}:{line}", located.entry, path.display()),
        None => format!("entry `{}`", located.entry),
    };
    let answer = explanation.answer;
    match &explanation.verdict {
        Verdict::Refused => writeln!(
            out,
            "verdict: refused (client is in no segment; unknown_clients = \"refuse\")"
        )?,
        Verdict::Allowed => writeln!(
            out,
            "verdict: allowed (no list of the segment contains the name): forwarded"
        )?,
        Verdict::AllowedByList(located) => writeln!(
            out,
            "verdict: allowed by list \"{}\" ({}): forwarded",
            located.list,
            entry(located)
        )?,
        Verdict::Blocked(located) => writeln!(
            out,
            "verdict: blocked by list \"{}\" ({})",
            located.list,
            entry(located)
        )?,
        Verdict::BlockedInAnswer { via, located } => writeln!(
            out,
            "verdict: blocked in the answer: `{via}` is in list \"{}\" ({})",
            located.list,
            entry(located)
        )?,
        Verdict::Bypass => writeln!(
            out,
            "verdict: bypass name ({}), answered by the segment's bypass handling",
            explanation.bypass.unwrap_or("bypass")
        )?,
        Verdict::Advertised => writeln!(
            out,
            "verdict: DDR, answered with portvakt's own encrypted endpoints (advertise_encrypted)"
        )?,
    }
    match answer {
        "forwarded" => writeln!(
            out,
            "answer:  forwarded; the upstream answer is judged too (CNAME targets, addresses): \
             /api/v1/explain on the running gateway includes it"
        )?,
        "refused" => {}
        _ => writeln!(out, "answer:  {answer}, ttl {}", policy.config().block.ttl)?,
    }
    match (explanation.bypass, &explanation.verdict) {
        (Some(kind), Verdict::Blocked(_) | Verdict::BlockedInAnswer { .. }) => {
            writeln!(out, "bypass:  counted as a bypass attempt ({kind})")
        }
        _ => Ok(()),
    }
}

fn export(arg: &ConfigArg, format: ExportArg) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let format = match format {
        ExportArg::Nftables => ExportFormat::Nftables,
        ExportArg::Cidr => ExportFormat::Cidr,
        ExportArg::Json => ExportFormat::Json,
    };
    if matches!(format, ExportFormat::Nftables) {
        for warning in portvakt::export_warnings(&config) {
            eprintln!("warning: {warning}");
        }
    }
    match portvakt::export(&config, format) {
        Ok(text) => print_bytes(text.as_bytes()),
        Err(err) => {
            report(&err);
            ExitCode::from(2)
        }
    }
}

fn compliance_report(
    arg: &ConfigArg,
    from: Option<&str>,
    to: Option<&str>,
    format: ReportArg,
) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let state_dir = match state_dir(&config, "evidence store") {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let (from, to) = match portvakt::report_period(from, to) {
        Ok(period) => period,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let made = match portvakt::report_from(state_dir, &from, &to) {
        Ok(made) => made,
        Err(err) => {
            report(&err);
            return ExitCode::from(1);
        }
    };
    if config.report.top_clients > 0 {
        eprintln!(
            "note: top clients come only from the running gateway (GET /api/v1/report): \
             their pseudonyms' key is in its memory alone"
        );
    }
    let text = match format {
        ReportArg::Text => made.text(),
        ReportArg::Csv => made.csv(),
        ReportArg::Json => serde_json::to_string_pretty(&made).expect("a report serializes") + "\n",
    };
    print_bytes(text.as_bytes())
}

/// The config of `arg`, or the exit code after its problems are printed.
fn load(arg: &ConfigArg) -> Result<portvakt::Config, ExitCode> {
    arg.source().load().map_err(|err| {
        report(&err);
        ExitCode::from(2)
    })
}

/// The config's `state_dir`, which `what` lives in, or exit code 2 with a message.
fn state_dir<'a>(
    config: &'a portvakt::Config,
    what: &str,
) -> Result<&'a std::path::Path, ExitCode> {
    config.state_dir.as_deref().ok_or_else(|| {
        eprintln!("error: the config has no [server] state_dir, so there is no {what}");
        ExitCode::from(2)
    })
}

fn audit_verify(arg: &ConfigArg) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let state_dir = match state_dir(&config, "audit log") {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    match portvakt::audit_verify(state_dir) {
        Ok(verified) => {
            let text = format!(
                "audit log intact: {} lines in {} files ({})\n",
                verified.lines,
                verified.files,
                state_dir.display()
            );
            print_bytes(text.as_bytes())
        }
        Err(err) => {
            report(&err);
            ExitCode::from(1)
        }
    }
}

/// A catalogue of more than this is refused.
const MAX_CATALOGUE: u64 = 64 << 20;

async fn catalogue_diff(arg: &ConfigArg, source: &str, list: Option<&str>) -> ExitCode {
    let policy = match compile(arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let text = if source.starts_with("http://") || source.starts_with("https://") {
        portvakt::download(source, MAX_CATALOGUE)
            .await
            .map(|body| String::from_utf8_lossy(&body).into_owned())
            .map_err(|err| format!("cannot download {source}: {}", portvakt::error_chain(&err)))
    } else {
        std::fs::read(source)
            .map_err(|err| format!("cannot read {source}: {err}"))
            .and_then(|bytes| {
                let len = bytes.len() as u64;
                (len <= MAX_CATALOGUE)
                    .then(|| String::from_utf8_lossy(&bytes).into_owned())
                    .ok_or_else(|| format!("{source} is over {MAX_CATALOGUE} bytes"))
            })
    };
    let text = match text {
        Ok(text) => text,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let diff = match portvakt::catalogue_diff(&policy, list, std::path::Path::new(source), &text) {
        Ok(diff) => diff,
        Err(err) => {
            report(&err);
            return ExitCode::from(2);
        }
    };
    let compared = list.map_or("the blocked lists".to_owned(), |l| format!("list {l}"));
    eprintln!(
        "{source}: {} names ({} lines not names, {} addresses not compared); blocked by {compared}: {}, missing: {}",
        diff.names,
        diff.rejected,
        diff.addresses,
        diff.names - diff.missing.len(),
        diff.missing.len()
    );
    let mut out = String::new();
    for name in &diff.missing {
        out.push_str(name);
        out.push('\n');
    }
    match print_bytes(out.as_bytes()) {
        code if code != ExitCode::SUCCESS => code,
        _ if diff.missing.is_empty() => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

async fn catalogue_resolve(arg: &ConfigArg, path: &Path, list: &str, parallel: usize) -> ExitCode {
    let policy = match compile(arg) {
        Ok(policy) => policy,
        Err(code) => return code,
    };
    let text = match std::fs::read(path) {
        Ok(bytes) if bytes.len() as u64 <= MAX_CATALOGUE => {
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(_) => {
            eprintln!("error: {} is over {MAX_CATALOGUE} bytes", path.display());
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", path.display());
            return ExitCode::from(2);
        }
    };
    let names: Vec<String> = (text.lines())
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit(',').next().unwrap_or(l).trim().to_owned())
        .collect();
    let reach = match portvakt::catalogue_reach(&policy, list, &names, parallel).await {
        Ok(reach) => reach,
        Err(err) => {
            report(&err);
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "{}: {} names, {} without an address; inside list {list}: {}",
        path.display(),
        reach.names,
        reach.unresolved,
        reach.inside.len()
    );
    if reach.names > 0 && reach.unresolved == reach.names {
        eprintln!("error: no name resolved: check the config's upstreams");
        return ExitCode::from(2);
    }
    let mut out = String::new();
    for (name, addr) in &reach.inside {
        out.push_str(&format!("{name}\t{addr}\n"));
    }
    match print_bytes(out.as_bytes()) {
        code if code != ExitCode::SUCCESS => code,
        _ if reach.inside.is_empty() => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// Writes `bytes` to stdout; the exit code says how that went.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    match print_to_stdout(|out| out.write_all(bytes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Runs `write` on stdout. A closed pipe (`portvakt check | head`) ends the output quietly,
/// as Unix tools do; any other write error is reported with exit code 1.
fn print_to_stdout(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), ExitCode> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => {
            eprintln!("error: failed to write to stdout: {err}");
            Err(ExitCode::from(1))
        }
    }
}
