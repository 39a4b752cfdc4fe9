//! The checked config: `file.rs` mirrors the TOML, `checks.rs` checks what needs more than
//! one value (names that must exist, networks that must not repeat, files that must be
//! there), and this module holds `Config`, which the rest of portvakt trusts. Reading list files is
//! `policy/compile.rs`'s job; this module only checks that they exist.

mod checks;
mod error;
pub mod file;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::bypass::BypassKind;
use crate::client::segment::SegmentId;
use crate::protocol::Transport;

use checks::Checks;
use error::Source;
pub use error::{ConfigError, Problem};
use file::ConfigFile;
pub use file::{BlockResponse, ListKind, OnFail, Scheme, ServerAddr};
pub use tls::EncryptedSettings;

/// The annotated example config, also the default when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/portvakt.toml");
/// How the embedded default is named in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded config/portvakt.toml>";
/// Most clients a report lists under pseudonyms.
pub const MAX_TOP_CLIENTS: usize = 100;
/// List ids are bits of a `u64` in the lookup core.
pub const MAX_LISTS: usize = 64;

/// A config that passed every check.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages and status.
    pub origin: String,
    pub listen: Vec<SocketAddr>,
    /// The segment of clients in no segment; `None` refuses them.
    pub unknown_clients: Option<SegmentId>,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token_file: Option<PathBuf>,
    /// What one admin request may declare and take.
    pub admin_limits: AdminLimits,
    /// The bearer token read from `token_file`.
    pub admin_token: Option<AdminToken>,
    /// Reload on changes to the config and list files.
    pub watch: bool,
    pub state_dir: Option<PathBuf>,
    pub block: BlockSettings,
    /// In name order; a list's index here is its id.
    pub lists: Vec<ListConfig>,
    pub segments: Vec<SegmentConfig>,
    /// The default group first, then conditional groups in file order.
    pub upstreams: Vec<UpstreamConfig>,
    pub cache_max_entries: usize,
    /// Bytes the cached answers may take at most.
    pub cache_max_bytes: u64,
    /// How long after expiry an answer may be served stale (RFC 8767); zero: never.
    pub cache_stale_for: Duration,
    pub rate_limit: RateLimitSettings,
    /// Read when the listeners are bound (a reload does not change them).
    pub tcp: TcpLimits,
    /// DoT and DoH: listeners and the certificate.
    pub encrypted: EncryptedSettings,
    /// Sources that must put a PROXY protocol v2 header before what they send (load
    /// balancers); the client is the one the header names.
    pub proxy_from: Vec<IpNet>,
    pub report: ReportSettings,
    /// `[[expect]]`, in file order.
    pub expectations: Vec<Expectation>,
}

/// One `[[expect]]`, checked: what a segment (or a client) must get for some names.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// Where it is written, `file:line`.
    pub at: String,
    /// The segment named, if one is.
    pub segment: Option<SegmentId>,
    pub client: Option<IpAddr>,
    pub blocked: Vec<Expected>,
    pub resolves: Vec<Expected>,
    pub on_fail: OnFail,
}

/// One name (or address) of an expectation.
#[derive(Debug, Clone)]
pub struct Expected {
    /// As written.
    pub text: String,
    /// Where it is written, `file:line`.
    pub at: String,
    pub subject: Subject,
}

/// What an expectation asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Lowercase wire format.
    Name(Vec<u8>),
    /// An address as found in an answer (checked against IP lists).
    Address(IpAddr),
}

/// `[admin]` limits, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_body: u64,
    pub timeout: Duration,
}

impl AdminLimits {
    pub const DEFAULT: AdminLimits = AdminLimits {
        max_body: 64 << 10,
        timeout: Duration::from_secs(60),
    };
}

/// `[report]`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportSettings {
    /// Clients listed under pseudonyms; 0: none, and no client is counted.
    pub top_clients: usize,
    /// Fewest attempts today for a client to be listed.
    pub top_clients_min: u64,
}

/// The TCP listeners' limits (DoT and DoH too): every resource a client holds is under one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    pub connections: usize,
    pub per_client: u32,
    pub idle: Duration,
    pub queries: u32,
    /// A query's bytes, once its length has arrived.
    pub read: Duration,
    /// A reply's write: a client that does not read loses its connection.
    pub write: Duration,
    /// A DoH request, from its headers to its answer.
    pub request: Duration,
    /// A DoT or DoH TLS handshake.
    pub handshake: Duration,
}

impl TcpLimits {
    pub const DEFAULT: TcpLimits = TcpLimits {
        connections: 1024,
        per_client: 32,
        idle: Duration::from_secs(10),
        queries: 10_000,
        read: Duration::from_secs(2),
        write: Duration::from_secs(5),
        request: Duration::from_secs(5),
        handshake: Duration::from_secs(5),
    };
}

/// `[rate_limit]`, checked.
#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub slip: u32,
    pub ipv6_prefix: u8,
    pub exempt: Vec<IpNet>,
    pub clients: usize,
}

/// Clients a rate limiter tracks by default.
pub const DEFAULT_RATE_CLIENTS: usize = 65_536;

/// `[block]`, checked.
#[derive(Debug, Clone)]
pub struct BlockSettings {
    pub response: BlockResponse,
    pub ttl: u32,
    pub sinkhole: Vec<IpAddr>,
    pub message: String,
}

/// One `[lists.NAME]`.
#[derive(Debug, Clone)]
pub struct ListConfig {
    pub name: String,
    pub files: Vec<PathBuf>,
    /// Downloaded sources, read from their copy in the state directory.
    pub remote: Vec<RemoteSource>,
    pub refresh: Duration,
    /// Share of a source's entries an update may lose (0.5: half).
    pub max_shrink: f64,
    pub message: Option<String>,
    /// What a block by this list also counts as, if anything.
    pub bypass: Option<BypassKind>,
    pub kind: ListKind,
    /// Entries in all its files at most.
    pub max_entries: u64,
    /// Bytes per file at most.
    pub limits: ListLimits,
}

/// How large a list file, and one of its lines, may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    pub max_bytes: u64,
    /// A longer line refuses the file: no list format needs one, and reading on would hold
    /// an arbitrarily long line in memory.
    pub max_line: usize,
}

impl ListLimits {
    /// 512 MiB (ten times a 1M-name list in hosts format); lines of 4 KiB.
    pub const DEFAULT: ListLimits = ListLimits {
        max_bytes: 512 << 20,
        max_line: 4096,
    };
}

/// MiB the cache may take by default.
pub const DEFAULT_CACHE_MIB: u64 = 64;

/// Entries a list may hold by default.
pub const DEFAULT_MAX_ENTRIES: u64 = 5_000_000;

impl ListConfig {
    /// Every file the list is read from: its own files, then the copies of its URLs.
    pub fn sources(&self) -> impl Iterator<Item = &Path> {
        let copies = self.remote.iter().map(|r| r.copy.as_path());
        self.files.iter().map(PathBuf::as_path).chain(copies)
    }
}

/// A list source fetched over HTTP(S).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSource {
    pub url: String,
    /// The last good download, in `state_dir/lists/`.
    pub copy: PathBuf,
}

/// The admin API token; compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(token.to_owned())
    }

    /// A short id of the token for the audit log (SHA-256, first 32 bits): which token was
    /// used can be told, the token itself never shown.
    pub fn id(&self) -> String {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        hash.as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `offered` is the token, in time independent of where they differ.
    pub fn matches(&self, offered: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(offered.as_bytes()).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Default `refresh` of lists with `urls`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Default `[cache] stale_for` (RFC 8767 §5 suggests 1 to 3 days).
pub const DEFAULT_STALE_FOR: Duration = Duration::from_secs(24 * 3600);
/// Default `max_shrink`.
pub const DEFAULT_MAX_SHRINK: f64 = 0.5;

/// A list's place in `Config::lists` (and in the policy's lists, and in every table kept per
/// list); its bit in a set of lists. There are at most [`MAX_LISTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListId(pub u8);

impl ListId {
    /// Its place in the lists (and in tables kept per list).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub(crate) fn bit(self) -> u64 {
        1 << self.0
    }
}

/// One `[[segment]]`, with its lists by id.
#[derive(Debug, Clone)]
pub struct SegmentConfig {
    pub name: String,
    pub networks: Vec<IpNet>,
    /// Listen addresses whose queries belong here, whatever their source.
    pub listeners: Vec<SocketAddr>,
    /// DDR answered with portvakt's own encrypted endpoints.
    pub advertise_encrypted: bool,
    pub block: Vec<ListId>,
    pub allow: Vec<ListId>,
    pub bypass: BypassHandling,
    /// Queries per second and burst per client over UDP; `None`: no limit.
    pub rate: Option<(u32, u32)>,
}

impl SegmentConfig {
    /// What decides this segment's answers, in the policy hash's canonical encoding
    /// (docs/evidence.md): networks, listeners and allow lists sorted, block lists in config
    /// order (the first decides), each field `key=value`. Equal for segments that decide
    /// alike; the policy hash and the audit log's "segments changed" both compare it.
    pub fn deciding(&self, config: &Config) -> String {
        let sorted = |mut items: Vec<String>| {
            items.sort();
            items.join(",")
        };
        let name = |id: &ListId| config.lists[id.index()].name.clone();
        let networks = sorted(self.networks.iter().map(ToString::to_string).collect());
        let listeners = sorted(self.listeners.iter().map(ToString::to_string).collect());
        let block: Vec<String> = self.block.iter().map(name).collect();
        let allow = sorted(self.allow.iter().map(name).collect());
        let b = &self.bypass;
        let flag = |on: bool| u8::from(on);
        let rate = self
            .rate
            .map_or("-".to_owned(), |(qps, burst)| format!("{qps}/{burst}"));
        format!(
            "networks={networks} listeners={listeners} block={} allow={allow} \
             bypass=canary:{},private_relay:{},ddr:{},strip_ech:{} advertise={} rate={rate}",
            block.join(","),
            flag(b.canary),
            flag(b.private_relay),
            flag(b.ddr),
            flag(b.strip_ech),
            flag(self.advertise_encrypted),
        )
    }
}

/// Which built-in bypass handling a segment applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BypassHandling {
    pub canary: bool,
    pub private_relay: bool,
    pub ddr: bool,
    pub strip_ech: bool,
}

impl BypassHandling {
    /// Whether the built-in name of `kind` is answered here.
    pub fn handles(&self, kind: BypassKind) -> bool {
        match kind {
            BypassKind::Canary => self.canary,
            BypassKind::PrivateRelay => self.private_relay,
            BypassKind::Ddr => self.ddr,
            BypassKind::Ech => self.strip_ech,
            BypassKind::EncryptedDnsEndpoint | BypassKind::TelegramFallback => false,
        }
    }
}

/// One `[[upstream]]`; `zones` is empty for the default group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub zones: Vec<Vec<u8>>,
    pub servers: Vec<ServerAddr>,
    /// The budget of all tries of one query.
    pub timeout: Duration,
    /// The longest one try waits before the next server is asked.
    pub try_timeout: Duration,
    /// The roots `tls://` servers must chain to (`ca_file`); `None`: the system's.
    pub ca: Option<Arc<rustls::RootCertStore>>,
    pub ca_file: Option<PathBuf>,
}

/// A try waits at most this long by default (or the group's `timeout_ms`, if shorter).
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_millis(500);

/// Servers one group may have at most.
pub const MAX_SERVERS: usize = 16;

/// Where the copy of `url` in list `list` lives: stable across restarts, one file per URL.
pub fn copy_path(state_dir: &Path, list: &str, url: &str) -> PathBuf {
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let safe: String = list
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir
        .join("lists")
        .join(format!("{safe}-{hash:016x}.txt"))
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// Keeps what only a restart applies as `running` has it (listeners, the admin listener,
    /// TCP limits, cache size, file watching, `state_dir`), so a reloaded policy advertises
    /// and places clients by what is bound; a segment's listener that is not bound is left
    /// out until then. Returns each difference as "what: old -> new", for `restart_required`.
    pub fn keep_start_settings(&mut self, running: &Config) -> Vec<String> {
        fn shown<T: std::fmt::Debug>(value: &T) -> String {
            format!("{value:?}")
        }
        let mut changes = Vec::new();
        let mut keep = |what: &str, old: String, new: String| {
            if old != new {
                changes.push(format!("{what}: {new} (running: {old})"));
            }
        };
        let addrs = |addrs: &[SocketAddr]| {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("[{}]", shown.join(", "))
        };
        keep("server.listen", addrs(&running.listen), addrs(&self.listen));
        for transport in Transport::encrypted() {
            let of = |c: &Config| addrs(&c.encrypted.listen_of(transport).collect::<Vec<_>>());
            keep(
                &format!("server.{}", transport.listen_key()),
                of(running),
                of(self),
            );
        }
        let admin = |a: Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        keep(
            "admin.listen",
            admin(running.admin_listen),
            admin(self.admin_listen),
        );
        keep("server.tcp_*", shown(&running.tcp), shown(&self.tcp));
        keep(
            "cache.max_entries",
            running.cache_max_entries.to_string(),
            self.cache_max_entries.to_string(),
        );
        keep(
            "cache.max_mib",
            (running.cache_max_bytes >> 20).to_string(),
            (self.cache_max_bytes >> 20).to_string(),
        );
        keep(
            "server.watch",
            running.watch.to_string(),
            self.watch.to_string(),
        );
        keep(
            "server.state_dir",
            shown(&running.state_dir),
            shown(&self.state_dir),
        );
        self.listen.clone_from(&running.listen);
        self.encrypted.listen.clone_from(&running.encrypted.listen);
        self.admin_listen = running.admin_listen;
        self.tcp = running.tcp;
        self.cache_max_entries = running.cache_max_entries;
        self.cache_max_bytes = running.cache_max_bytes;
        self.watch = running.watch;
        self.state_dir.clone_from(&running.state_dir);
        let encrypted = self.encrypted.listen.iter().map(|(_, addr)| addr);
        let bound: Vec<SocketAddr> = self.listen.iter().chain(encrypted).copied().collect();
        for segment in &mut self.segments {
            let name = &segment.name;
            segment.listeners.retain(|addr| {
                let is_bound = bound.contains(addr);
                if !is_bound {
                    changes.push(format!(
                        "segment \"{name}\" listener {addr}: not bound until a restart (not used to place clients meanwhile)"
                    ));
                }
                is_bound
            });
        }
        changes
    }

    /// The embedded default (`config/portvakt.toml`).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG_NAME, DEFAULT_CONFIG)
    }

    /// Checks config text; `origin` names it in messages. List files are looked up
    /// relative to the working directory.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let source = Source { file: origin, text };
        let file: ConfigFile = toml::from_str(text).map_err(|err| ConfigError::Invalid {
            problems: vec![source.toml_problem(&err).1],
        })?;
        let mut checks = Checks::new(source);
        let config = checks.config(file, origin);
        checks.finish(config)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reload_keeps_what_only_a_restart_applies() {
        let base = "lists.tiktok.files = [\"tests/fixtures/tiktok.txt\"]\n\
                    segment = [{ name = \"staff\", networks = [\"10.0.0.0/8\"], block = [\"tiktok\"] }]\n\
                    [[upstream]]\nservers = [\"127.0.0.1:53\"]\n";
        let running = Config::parse("a.toml", base).unwrap();
        let mut new = Config::parse(
            "b.toml",
            &format!(
                "server.listen = [\"127.0.0.1:5300\"]\nserver.tcp_connections = 9\n\
                 server.state_dir = \"/tmp/x\"\n{}",
                base.replace(
                    "block = [\"tiktok\"] }",
                    "block = [\"tiktok\"] }, { name = \"dev\", listeners = [\"127.0.0.1:5300\"] }"
                )
            ),
        )
        .unwrap();
        let changes = new.keep_start_settings(&running);
        let what: Vec<&str> = changes
            .iter()
            .map(|c| c.split(':').next().unwrap())
            .collect();
        assert_eq!(
            what,
            [
                "server.listen",
                "server.tcp_*",
                "server.state_dir",
                "segment \"dev\" listener 127.0.0.1"
            ],
            "{changes:?}"
        );
        assert_eq!(new.listen, running.listen);
        assert_eq!(new.tcp, running.tcp);
        assert_eq!(new.state_dir, None);
        assert!(
            new.segments[1].listeners.is_empty(),
            "an unbound listener places no one"
        );
    }

    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse("t.toml", text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems }) => {
                problems.iter().map(Problem::to_string).collect()
            }
            Err(err) => vec![err.to_string()],
        }
    }

    const UPSTREAM: &str = "[[upstream]]\nservers = [\"127.0.0.1:53\"]\n";

    #[test]
    fn shipped_config_parses_from_the_repo_root() {
        let config = Config::load(Path::new("config/portvakt.toml")).unwrap();
        assert_eq!(config.listen, ["127.0.0.1:5353".parse().unwrap()]);
        let names: Vec<&str> = config.segments.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"staff") && names.contains(&"tiktok-devices"),
            "{names:?}"
        );
        assert!(Config::embedded_default().is_ok());
    }

    #[test]
    fn upstream_servers_tries_and_roots() {
        let text = "[[upstream]]\nservers = [\"9.9.9.9\", \"[2620:fe::fe]:5353\", \"tls://9.9.9.9#dns.quad9.net\", \"tls://[2620:fe::fe]:8853\", \"quic://9.9.9.9#dns.quad9.net\", \"https://9.9.9.9#dns.quad9.net\", \"https://[2620:fe::fe]:8443/q#dns.quad9.net\"]\n";
        let config = Config::parse("t.toml", text).unwrap();
        let group = &config.upstreams[0];
        let shown: Vec<String> = group.servers.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "9.9.9.9:53",
                "[2620:fe::fe]:5353",
                "tls://9.9.9.9:853#dns.quad9.net",
                "tls://[2620:fe::fe]:8853#2620:fe::fe",
                "quic://9.9.9.9:853#dns.quad9.net",
                "https://9.9.9.9:443/dns-query#dns.quad9.net",
                "https://[2620:fe::fe]:8443/q#dns.quad9.net"
            ]
        );
        assert_eq!(group.timeout, Duration::from_millis(1500));
        assert_eq!(group.try_timeout, DEFAULT_TRY_TIMEOUT);
        assert!(group.ca.is_none(), "the system's roots");

        // By host name: DoH, DoH3 and DoQ, found through a group's servers given by address.
        let named = "[[upstream]]\nservers = [\"https://dns.quad9.net/dns-query\", \"h3://DNS.Quad9.net:8443\", \"9.9.9.9\"]\n";
        let config = Config::parse("t.toml", named).unwrap();
        let shown: Vec<String> = (config.upstreams[0].servers.iter())
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "https://dns.quad9.net:443/dns-query#dns.quad9.net",
                "h3://dns.quad9.net:8443/dns-query#dns.quad9.net",
                "9.9.9.9:53"
            ]
        );
        let alone = "[[upstream]]\nservers = [\"https://dns.quad9.net/dns-query\"]\n";
        let err = Config::parse("t.toml", alone).unwrap_err().to_string();
        assert!(
            err.contains("t.toml:2:") && err.contains("no server given by address"),
            "{err}"
        );
        // A zone's group with a server by address finds the host of the default group's server.
        let zoned = "[[upstream]]\nservers = [\"https://dns.quad9.net/dns-query\"]\n[[upstream]]\nzones = [\"quad9.net\"]\nservers = [\"9.9.9.9\"]\n";
        assert!(Config::parse("t.toml", zoned).is_ok());
        let err = Config::parse(
            "t.toml",
            "[[upstream]]\nservers = [\"tls://dns.quad9.net\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a DoT server by address"), "{err}");

        let short = "[[upstream]]\nservers = [\"9.9.9.9\"]\ntimeout_ms = 300\n";
        let config = Config::parse("t.toml", short).unwrap();
        assert_eq!(
            config.upstreams[0].try_timeout,
            Duration::from_millis(300),
            "within the budget"
        );

        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("roots.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let bad = format!(
            "[[upstream]]\nservers = [\"tls://9.9.9.9\"]\ntry_timeout_ms = 2000\nca_file = \"{}\"\n",
            not_pem.display()
        );
        let shown = not_pem.display();
        assert_eq!(
            problems(&bad),
            [
                "t.toml:3:18: try_timeout_ms must be above 0 and at most timeout_ms (1500)"
                    .to_owned(),
                format!("t.toml:4:11: ca_file {shown} holds no certificate"),
            ]
        );
    }

    #[test]
    fn shape_errors_name_line_and_column() {
        let cases = [
            (
                "[[segment]]\nname = \"s\"\nnetworks = [\"10.10.0.0/33\"]\n",
                "t.toml:3:12: `10.10.0.0/33` is not a network, e.g. `10.10.0.0/16`",
            ),
            (
                "[[segment]]\nname = \"s\"\nnetworks = [\"10.10.1.0/16\"]\n",
                "t.toml:3:12: `10.10.1.0/16` has host bits set; the network is `10.10.0.0/16`",
            ),
            (
                "[server]\nlisten = [\"localhost\"]\n",
                "t.toml:2:10: `localhost` is not an address with a port, e.g. `127.0.0.1:5353` or `[::]:53`",
            ),
            (
                "[server]\nlisten_on = 1\n",
                "t.toml:2:1: unknown field `listen_on`, expected one of `listen`, `unknown_clients`, `watch`, `state_dir`, `tcp_connections`, `tcp_connections_per_client`, `tcp_idle_timeout_ms`, `tcp_queries_per_connection`, `tcp_read_timeout_ms`, `tcp_write_timeout_ms`, `https_request_timeout_ms`, `tls_handshake_timeout_ms`, `tls_listen`, `https_listen`, `quic_listen`, `h3_listen`, `https_path`, `tls_cert_file`, `tls_key_file`, `tls_name`, `proxy_protocol_from`",
            ),
            (
                "[block]\nresponse = \"drop\"\n",
                "t.toml:2:12: unknown variant `drop`, expected one of `nxdomain`, `refused`, `nodata`, `zero-ip`, `sinkhole`",
            ),
            (
                "[[upstream]]\nservers = [\"dns.quad9\"]\n",
                "t.toml:2:11: `dns.quad9` is not a server address, e.g. `9.9.9.9:53` or `tls://9.9.9.9:853#dns.quad9.net`",
            ),
            (
                "[[upstream]]\nservers = [\"tls://dns.quad9.net\"]\n",
                "t.toml:2:11: `tls://dns.quad9.net` is not a DoT server by address, e.g. `tls://9.9.9.9:853#dns.quad9.net` (https://, h3:// and quic:// servers may be given by host name)",
            ),
            (
                "[[upstream]]\nservers = [\"tls://9.9.9.9#bad name\"]\n",
                "t.toml:2:11: `bad name` in `tls://9.9.9.9#bad name` is not a server name",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(problems(text), [want], "{text}");
        }
    }

    #[test]
    fn meaning_errors_are_all_reported_in_file_order() {
        let text = format!(
            r#"[server]
unknown_clients = "guests"
[lists.tiktok]
files = ["does/not/exist.txt"]
[[segment]]
name = "staff"
networks = ["10.10.0.0/16"]
block = ["tiktokk"]
[[segment]]
name = "staff"
networks = ["10.10.0.0/16"]
{UPSTREAM}"#
        );
        let got = problems(&text);
        assert_eq!(got.len(), 5, "{got:#?}");
        assert_eq!(
            got[0],
            "t.toml:2:19: unknown_clients is \"guests\", which is neither \"refuse\" nor a segment (segments: staff, staff)"
        );
        assert!(
            got[1].starts_with("t.toml:4:10: list \"tiktok\": cannot read does/not/exist.txt: "),
            "{}",
            got[1]
        );
        assert_eq!(
            got[2],
            "t.toml:8:10: segment \"staff\" blocks list \"tiktokk\", which is not defined (defined lists: tiktok)"
        );
        assert_eq!(got[3], "t.toml:10:8: segment \"staff\" is defined twice");
        assert_eq!(
            got[4],
            "t.toml:11:13: network 10.10.0.0/16 is in segment \"staff\" already; a network belongs to one segment"
        );
    }

    #[test]
    fn upstream_groups_need_exactly_one_default() {
        assert_eq!(
            problems("")[0],
            "t.toml:1:1: no default [[upstream]] group (one without `zones`)"
        );
        let two = format!("{UPSTREAM}{UPSTREAM}");
        assert_eq!(
            problems(&two),
            [
                "t.toml:3:1: a second [[upstream]] group without `zones`; only one default group is allowed"
            ]
        );
        let zones = format!(
            "{UPSTREAM}[[upstream]]\nzones = [\"Kommune.Local\"]\nservers = [\"10.0.0.10\"]\ntimeout_ms = 0\n"
        );
        assert_eq!(
            problems(&zones),
            ["t.toml:6:14: timeout_ms must be above 0"]
        );
    }

    #[test]
    fn sinkhole_needs_addresses() {
        let text = format!("[block]\nresponse = \"sinkhole\"\n{UPSTREAM}");
        assert_eq!(
            problems(&text),
            ["t.toml:2:12: block.response is \"sinkhole\" but block.sinkhole lists no addresses"]
        );
    }

    #[test]
    fn bypass_settings_default_to_on_where_a_segment_blocks() {
        let text = format!(
            "[lists.t]\nfiles = [\"tests/fixtures/tiktok.txt\"]\nbypass = \"encrypted_dns_endpoint\"\n\
             [[segment]]\nname = \"staff\"\nnetworks = [\"10.0.0.0/8\"]\nblock = [\"t\"]\nbypass = {{ ddr = false }}\n\
             [[segment]]\nname = \"open\"\nnetworks = [\"10.1.0.0/16\"]\n{UPSTREAM}"
        );
        let config = Config::parse("t.toml", &text).unwrap();
        let (staff, open) = (config.segments[0].bypass, config.segments[1].bypass);
        assert!(staff.canary && staff.private_relay && staff.strip_ech && !staff.ddr);
        assert!(!open.canary && !open.private_relay && !open.ddr && !open.strip_ech);
        assert_eq!(
            config.lists[0].bypass,
            Some(BypassKind::EncryptedDnsEndpoint)
        );

        let built_in = "[lists.t]\nfiles = [\"tests/fixtures/tiktok.txt\"]\nbypass = \"canary\"\n";
        assert_eq!(
            problems(&format!("{built_in}{UPSTREAM}")),
            [
                "t.toml:3:10: a list's bypass is \"encrypted_dns_endpoint\" or \"telegram_fallback\"; \"canary\" is handled by the segments' `bypass` settings"
            ]
        );
    }

    #[test]
    fn stale_for_is_a_duration() {
        let config = Config::parse(
            "t.toml",
            &format!("[cache]\nstale_for = \"2h\"\n{UPSTREAM}"),
        );
        assert_eq!(config.unwrap().cache_stale_for, Duration::from_secs(7200));
        let default = Config::parse("t.toml", UPSTREAM).unwrap();
        assert_eq!(default.cache_stale_for, DEFAULT_STALE_FOR);
        let problems = problems(&format!("[cache]\nstale_for = \"soon\"\n{UPSTREAM}"));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("t.toml:2:13: `soon` is not a duration, e.g. \"1d\""),
            "{problems:?}"
        );
    }
}
