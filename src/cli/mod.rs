//! The command line: the commands and their arguments, and what they share (loading the
//! config, printing errors and output, the exit codes). Each command's body is in the file
//! named after what it does: `serve.rs`, `inspect.rs` (check, explain, export),
//! `evidence.rs` (report, audit verify), `catalogue.rs`.

mod catalogue;
mod evidence;
mod inspect;
mod serve;

use std::error::Error;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use portvakt::{ConfigError, ConfigSource, Metrics, Policy, error_chain};

/// The exit codes: 0 ok; 1 a failure (a broken expectation or audit chain, rejected lines
/// with `--strict`, names a catalogue has that the list lacks, an output error); 2 an invalid
/// config or argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Failure = 1,
    Invalid = 2,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

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

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        None => runtime.block_on(serve::serve(cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve::serve(args)),
        Some(Command::Check { config, strict }) => runtime.block_on(inspect::check(config, strict)),
        Some(Command::Explain {
            config,
            client,
            listener,
            name,
        }) => runtime.block_on(inspect::explain(config, client, listener, &name)),
        Some(Command::Export { format, config }) => inspect::export(&config, format),
        Some(Command::Report {
            config,
            from,
            to,
            format,
        }) => evidence::compliance_report(&config, from.as_deref(), to.as_deref(), format),
        Some(Command::Audit {
            command: AuditCommand::Verify { config },
        }) => evidence::audit_verify(&config),
        Some(Command::Catalogue {
            command:
                CatalogueCommand::Diff {
                    source,
                    list,
                    config,
                },
        }) => runtime.block_on(catalogue::diff(&config, &source, list.as_deref())),
        Some(Command::Catalogue {
            command:
                CatalogueCommand::Resolve {
                    names,
                    list,
                    parallel,
                    config,
                },
        }) => runtime.block_on(catalogue::resolve(&config, &names, &list, parallel)),
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
pub(super) fn report(err: &(dyn Error + 'static)) {
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
        ExitCode::from(Exit::Invalid)
    })?;
    Policy::compile(config, &Metrics::new(), 0).map_err(|err| {
        report(&err);
        ExitCode::from(Exit::Invalid)
    })
}

/// The config of `arg`, or the exit code after its problems are printed.
fn load(arg: &ConfigArg) -> Result<portvakt::Config, ExitCode> {
    arg.source().load().map_err(|err| {
        report(&err);
        ExitCode::from(Exit::Invalid)
    })
}

/// The config's `state_dir`, which `what` lives in, or exit code 2 with a message.
fn state_dir<'a>(
    config: &'a portvakt::Config,
    what: &str,
) -> Result<&'a std::path::Path, ExitCode> {
    config.state_dir.as_deref().ok_or_else(|| {
        eprintln!("error: the config has no [server] state_dir, so there is no {what}");
        ExitCode::from(Exit::Invalid)
    })
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
            Err(ExitCode::from(Exit::Failure))
        }
    }
}
