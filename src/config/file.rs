//! The TOML file as written: every section and key of `config/portvakt.toml`, with unknown
//! keys rejected. Values that can be checked on their own are parsed into their real types
//! here, so toml reports the position; checks across values live in `config/mod.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::bypass::BypassKind;
use crate::protocol::Transport;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub block: BlockSection,
    /// `[lists.NAME]`: named lists, each read from one or more files.
    #[serde(default)]
    pub lists: BTreeMap<Spanned<String>, ListSection>,
    /// `[[segment]]`: client networks and the lists blocked for them.
    #[serde(default)]
    pub segment: Vec<SegmentSection>,
    /// `[[upstream]]`: one group without `zones` (the default), plus conditional groups.
    #[serde(default)]
    pub upstream: Vec<Spanned<UpstreamSection>>,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    #[serde(default)]
    pub report: ReportSection,
    /// `[[expect]]`: what the policy must do, declared apart from the lists it is built from.
    #[serde(default)]
    pub expect: Vec<Spanned<ExpectSection>>,
}

/// `[[expect]]`: names a segment must block and names it must resolve, checked at every
/// reload and every minute. A reload that breaks one is refused (unless `on_fail = "warn"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSection {
    /// The segment, checked from an address it holds (and wins against nested segments).
    pub segment: Option<Spanned<String>>,
    /// A client address instead (or as well): tests its placement too.
    pub client: Option<Spanned<IpAddrText>>,
    /// Names (or addresses, for IP lists) answered negatively, never forwarded.
    #[serde(default)]
    pub blocked: Vec<Spanned<String>>,
    /// Names (or addresses) the segment forwards: no list of it blocks them.
    #[serde(default)]
    pub resolves: Vec<Spanned<String>>,
    /// `"refuse"` (the default): a policy that breaks this is not put in force; `"warn"`:
    /// it is, and the failure shows in logs and `portvakt_expectation_ok`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// What a broken expectation does to the policy that breaks it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    #[default]
    Refuse,
    Warn,
}

/// An IP address written as a string, e.g. `"10.10.0.5"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct IpAddrText(pub IpAddr);

impl TryFrom<String> for IpAddrText {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
            .map(IpAddrText)
            .map_err(|_| format!("`{text}` is not an IP address, e.g. `10.10.0.5`"))
    }
}

/// `[report]`: the compliance report.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// How many clients with the most attempts today the report lists, under pseudonyms (a
    /// keyed hash, its key kept in memory and new every day); 0 (the default): none.
    pub top_clients: Option<Spanned<usize>>,
    /// Attempts a client needs today to be listed (default 5).
    pub top_clients_min: Option<Spanned<u64>>,
}

/// `[rate_limit]`: per client address, over UDP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Queries per second per client in every segment without its own `rate_limit`; 0 (the
    /// default): no limit.
    #[serde(default)]
    pub qps: u32,
    /// Queries a client may send at once; twice `qps` by default.
    pub burst: Option<Spanned<u32>>,
    /// Every `slip`-th dropped answer is sent truncated (TC=1), so a real client retries over
    /// TCP; 0 drops them all. Default 2.
    pub slip: Option<u32>,
    /// IPv6 clients are counted by this prefix (default 56).
    pub ipv6_prefix: Option<Spanned<u8>>,
    /// Networks never limited (monitoring, a NAT gateway of many clients).
    #[serde(default)]
    pub exempt: Vec<Spanned<Network>>,
    /// Clients tracked at once (default 65,536); past that the oldest is forgotten.
    pub clients: Option<Spanned<usize>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Addresses to serve DNS on, UDP and TCP on each.
    #[serde(default = "default_listen")]
    pub listen: Spanned<Vec<Spanned<ListenAddr>>>,
    /// `"refuse"`, or the name of the segment for clients in no segment.
    #[serde(default = "default_unknown_clients")]
    pub unknown_clients: Spanned<String>,
    /// Reload when the config file or a list file changes.
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Where downloaded lists are kept (the last good copy of each URL).
    pub state_dir: Option<Spanned<PathBuf>>,
    /// TCP connections open at once at most (default 1024); more are refused at accept.
    pub tcp_connections: Option<Spanned<usize>>,
    /// TCP connections one client may have open (default 32; an IPv6 /56 is one client).
    pub tcp_connections_per_client: Option<Spanned<u32>>,
    /// A TCP connection without a query for this long is closed (default 10000).
    pub tcp_idle_timeout_ms: Option<Spanned<u64>>,
    /// A TCP connection is closed after this many queries (default 10000).
    pub tcp_queries_per_connection: Option<Spanned<u32>>,
    /// A query's bytes must all arrive within this once its length has (TCP, DoT; default 2000).
    pub tcp_read_timeout_ms: Option<Spanned<u64>>,
    /// A connection whose client does not take a reply within this is closed (TCP, DoT, DoH;
    /// default 5000): a client that never reads cannot hold it.
    pub tcp_write_timeout_ms: Option<Spanned<u64>>,
    /// A DoH request must arrive whole (headers and body) and be answered within this
    /// (default 5000; keep it above the upstreams' timeout_ms).
    pub https_request_timeout_ms: Option<Spanned<u64>>,
    /// A DoT or DoH client must finish its TLS handshake within this (default 5000).
    pub tls_handshake_timeout_ms: Option<Spanned<u64>>,
    /// Addresses to serve DNS over TLS on (RFC 7858; port 853 by convention).
    #[serde(default)]
    pub tls_listen: Vec<Spanned<ListenAddr>>,
    /// Addresses to serve DNS over HTTPS on (RFC 8484; port 443 by convention).
    #[serde(default)]
    pub https_listen: Vec<Spanned<ListenAddr>>,
    /// Addresses to serve DNS over QUIC on (RFC 9250; UDP port 853 by convention).
    #[serde(default)]
    pub quic_listen: Vec<Spanned<ListenAddr>>,
    /// Addresses to serve DNS over HTTPS on HTTP/3 on (UDP port 443 by convention).
    #[serde(default)]
    pub h3_listen: Vec<Spanned<ListenAddr>>,
    /// The DoH path (default `/dns-query`).
    pub https_path: Option<Spanned<String>>,
    /// The certificate chain (PEM) the TLS and HTTPS listeners present.
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    /// Its private key (PEM).
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// The name the certificate is for: the target DDR advertises.
    pub tls_name: Option<Spanned<String>>,
    /// Load balancers whose queries carry a PROXY protocol v2 header with the client's address.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<Network>>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            unknown_clients: default_unknown_clients(),
            watch: default_watch(),
            state_dir: None,
            tcp_connections: None,
            tcp_connections_per_client: None,
            tcp_idle_timeout_ms: None,
            tcp_queries_per_connection: None,
            tcp_read_timeout_ms: None,
            tcp_write_timeout_ms: None,
            https_request_timeout_ms: None,
            tls_handshake_timeout_ms: None,
            tls_listen: Vec::new(),
            https_listen: Vec::new(),
            quic_listen: Vec::new(),
            h3_listen: Vec::new(),
            https_path: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_name: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}

fn default_watch() -> bool {
    true
}

fn default_listen() -> Spanned<Vec<Spanned<ListenAddr>>> {
    let addr = ListenAddr(SocketAddr::from(([127, 0, 0, 1], 5353)));
    Spanned::new(0..0, vec![Spanned::new(0..0, addr)])
}

fn default_unknown_clients() -> Spanned<String> {
    Spanned::new(0..0, "refuse".to_owned())
}

/// `[admin]`: the HTTP listener for metrics, health and the API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<ListenAddr>,
    /// File holding the bearer token that mutating endpoints require.
    pub token_file: Option<Spanned<PathBuf>>,
    /// A request declaring a larger body gets 413 unread (default 65536; no endpoint reads one).
    pub max_body_bytes: Option<Spanned<u64>>,
    /// A request taking longer gets 503 (default 60000; a reload with downloads fits).
    pub request_timeout_ms: Option<Spanned<u64>>,
}

/// `[block]`: how blocked names are answered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSection {
    #[serde(default = "default_block_response")]
    pub response: Spanned<BlockResponse>,
    /// TTL of blocked answers and of their SOA, in seconds.
    #[serde(default = "default_block_ttl")]
    pub ttl: u32,
    /// Addresses answered for A/AAAA with `response = "sinkhole"`.
    #[serde(default)]
    pub sinkhole: Vec<IpAddr>,
    /// EDE extra-text for lists without their own `message`.
    #[serde(default = "default_block_message")]
    pub message: String,
}

impl Default for BlockSection {
    fn default() -> Self {
        BlockSection {
            response: default_block_response(),
            ttl: default_block_ttl(),
            sinkhole: Vec::new(),
            message: default_block_message(),
        }
    }
}

fn default_block_response() -> Spanned<BlockResponse> {
    Spanned::new(0..0, BlockResponse::default())
}

fn default_block_ttl() -> u32 {
    300
}

fn default_block_message() -> String {
    "Blocked by portvakt policy".to_owned()
}

/// The answer given for a blocked name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockResponse {
    /// NXDOMAIN with SOA: stubs cache it and do not retry elsewhere.
    #[default]
    Nxdomain,
    Refused,
    /// NOERROR with no answer, SOA in authority.
    Nodata,
    /// `0.0.0.0` / `::` for A / AAAA; NODATA for other types.
    ZeroIp,
    /// The `block.sinkhole` addresses for A / AAAA; NODATA for other types.
    Sinkhole,
}

impl BlockResponse {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockResponse::Nxdomain => "nxdomain",
            BlockResponse::Refused => "refused",
            BlockResponse::Nodata => "nodata",
            BlockResponse::ZeroIp => "zero-ip",
            BlockResponse::Sinkhole => "sinkhole",
        }
    }
}

/// `[lists.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSection {
    /// List files; relative paths are taken from the working directory.
    #[serde(default)]
    pub files: Vec<Spanned<PathBuf>>,
    /// Lists downloaded over HTTP(S); the last good copy lives in `server.state_dir`.
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    /// How often `urls` are fetched again, e.g. `"24h"`.
    pub refresh: Option<Spanned<String>>,
    /// An update that loses more than this share of a source's entries is rejected.
    pub max_shrink: Option<Spanned<f64>>,
    /// EDE extra-text for names this list blocks.
    pub message: Option<String>,
    /// What a block by this list also counts as: `"encrypted_dns_endpoint"` or
    /// `"telegram_fallback"` (in `portvakt_bypass_attempts_total`).
    pub bypass: Option<Spanned<BypassKind>>,
    /// `"ip"`: only addresses and networks (a name line is rejected); by default each line's
    /// format is detected, and a line that is only an address or network is an IP entry.
    #[serde(default)]
    pub kind: ListKind,
    /// Entries the list may hold in all its files (default 5,000,000): past that it is
    /// refused with the file and line, and a reload keeps the running policy.
    pub max_entries: Option<u64>,
    /// Bytes one of its files may have (default 512 MiB): a larger file is refused unread.
    pub max_bytes: Option<u64>,
    /// Bytes one line may have (default 4096): a longer line refuses the file, with its line.
    pub max_line_bytes: Option<Spanned<usize>>,
}

/// What a list holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// Names and IP entries, detected per line.
    #[default]
    Any,
    /// IP entries only.
    Ip,
}

/// `[[segment]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub networks: Vec<Spanned<Network>>,
    /// Listen addresses whose queries belong here whatever their source.
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenAddr>>,
    /// Answer DDR (`_dns.resolver.arpa` SVCB) with portvakt's own DoT and DoH endpoints.
    #[serde(default)]
    pub advertise_encrypted: bool,
    /// Lists whose names are blocked for this segment.
    #[serde(default)]
    pub block: Vec<Spanned<String>>,
    /// Lists whose names are never blocked for this segment.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Built-in bypass handling; each defaults to on when the segment blocks any list.
    #[serde(default)]
    pub bypass: BypassSection,
    /// Queries per second per client here (0: no limit); `[rate_limit] qps` by default.
    pub rate_limit: Option<u32>,
}

/// `bypass` of a `[[segment]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BypassSection {
    /// NXDOMAIN for Firefox's canary `use-application-dns.net` (keeps its default DoH off).
    pub canary: Option<bool>,
    /// NXDOMAIN, for every type, for iCloud Private Relay's `mask.icloud.com` and `mask-h2.icloud.com`.
    pub private_relay: Option<bool>,
    /// NODATA for DDR's `_dns.resolver.arpa` (no upgrade to another encrypted resolver).
    pub ddr: Option<bool>,
    /// The `ech` parameter removed from HTTPS/SVCB answers, so the TLS server name stays visible.
    pub strip_ech: Option<bool>,
}

/// `[[upstream]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Names forwarded to this group (and all names below them); none for the default group.
    #[serde(default)]
    pub zones: Vec<Spanned<Zone>>,
    pub servers: Spanned<Vec<ServerAddr>>,
    /// Time to wait for an answer before SERVFAIL, in milliseconds: the budget of all tries.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    /// The longest one try may wait before the next server is asked, in milliseconds.
    pub try_timeout_ms: Option<Spanned<u64>>,
    /// PEM file of the CA certificates `tls://` servers must chain to; the system's by default.
    pub ca_file: Option<Spanned<PathBuf>>,
}

fn default_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 1500)
}

/// `[cache]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Upstream answers kept; 0 turns the cache off.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// How long after expiry an answer may still be served when every upstream fails
    /// (RFC 8767), e.g. `"1d"`; `"0s"` turns serve-stale off.
    pub stale_for: Option<Spanned<String>>,
    /// Bytes the cached answers may take at most, in MiB (default 64).
    pub max_mib: Option<Spanned<u64>>,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_entries: default_cache_entries(),
            stale_for: None,
            max_mib: None,
        }
    }
}

fn default_cache_entries() -> usize {
    100_000
}

/// One entry of `segment.networks`, e.g. `"10.10.0.0/16"`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network(pub IpNet);

impl TryFrom<String> for Network {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(addr) => IpNet::from(addr),
                Err(_) => return Err(format!("`{text}` is not a network, e.g. `10.10.0.0/16`")),
            },
        };
        if net.trunc() != net {
            return Err(format!(
                "`{text}` has host bits set; the network is `{}`",
                net.trunc()
            ));
        }
        Ok(Network(net))
    }
}

impl ServerSection {
    /// The listeners the config gives `transport`, under its key ([`Transport::listen_key`]).
    pub fn listen_of(&self, transport: Transport) -> &[Spanned<ListenAddr>] {
        match transport {
            Transport::Udp | Transport::Tcp => self.listen.get_ref(),
            Transport::Tls => &self.tls_listen,
            Transport::Https => &self.https_listen,
            Transport::Quic => &self.quic_listen,
            Transport::H3 => &self.h3_listen,
        }
    }
}

/// A listen address, e.g. `"127.0.0.1:5353"` or `"[::]:53"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse().map(ListenAddr).map_err(|_| {
            format!("`{text}` is not an address with a port, e.g. `127.0.0.1:5353` or `[::]:53`")
        })
    }
}

/// An upstream server: `"9.9.9.9:53"` (the port defaults to 53), DNS over TLS as
/// `"tls://9.9.9.9:853#dns.quad9.net"`, DNS over QUIC as `"quic://9.9.9.9:853#dns.quad9.net"`
/// (port 853 by default), or DNS over HTTPS as `"https://9.9.9.9/dns-query#dns.quad9.net"`
/// (HTTP/2) or `"h3://9.9.9.9/dns-query#dns.quad9.net"` (HTTP/3), port 443 and the path
/// `/dns-query` when none is given. The name after `#` is the one the
/// certificate must carry, the address itself when there is none. DoH, DoH3 and DoQ servers
/// may be given by host name instead (`"https://dns.quad9.net/dns-query"`), which their
/// certificate must carry unless `#` names another.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ServerAddr {
    /// The address; for a server given by host name, the unspecified address and the port.
    pub addr: SocketAddr,
    /// The host name it was given by, looked up through the upstream groups' servers given by
    /// address when a connection opens.
    pub host: Option<String>,
    /// For an encrypted server: the name to verify the certificate against.
    pub tls: Option<String>,
    /// How it is spoken to.
    pub scheme: Scheme,
}

/// The protocol of an upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// Plain DNS: UDP, and TCP for truncated answers.
    Plain,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over QUIC (RFC 9250).
    Quic,
    /// DNS over HTTPS (RFC 8484) on HTTP/2, on this path.
    Https(String),
    /// DNS over HTTPS on HTTP/3, on this path.
    H3(String),
}

impl ServerAddr {
    /// `ip:port`, or `host:port` for a server given by host name.
    pub fn endpoint(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}:{}", self.addr.port()),
            None => self.addr.to_string(),
        }
    }

    /// Its scheme as written: `tls://`, `quic://`, `https://`, `h3://`, or nothing for plain DNS.
    pub fn scheme(&self) -> &'static str {
        match self.scheme {
            Scheme::Plain => "",
            Scheme::Tls => "tls://",
            Scheme::Quic => "quic://",
            Scheme::Https(_) => "https://",
            Scheme::H3(_) => "h3://",
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, addr) = (self.scheme(), self.endpoint());
        match (&self.tls, &self.scheme) {
            (Some(name), Scheme::Https(path) | Scheme::H3(path)) => {
                write!(f, "{scheme}{addr}{path}#{name}")
            }
            (Some(name), _) => write!(f, "{scheme}{addr}#{name}"),
            (None, _) => write!(f, "{addr}"),
        }
    }
}

impl TryFrom<String> for ServerAddr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let address = |text: &str, port: u16| {
            (text.parse::<SocketAddr>())
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)))
                .or_else(|_| {
                    let bracketed = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
                    bracketed
                        .ok_or(())
                        .and_then(|ip| ip.parse::<IpAddr>().map_err(|_| ()))
                        .map(|ip| SocketAddr::new(ip, port))
                })
                .ok()
        };
        let encrypted = [
            ("tls://", 853),
            ("quic://", 853),
            ("https://", 443),
            ("h3://", 443),
        ]
        .into_iter()
        .find_map(|(prefix, port)| text.strip_prefix(prefix).map(|rest| (prefix, port, rest)));
        if let Some((prefix, port, rest)) = encrypted {
            let (at, name) = rest.split_once('#').unwrap_or((rest, ""));
            let (at, path) = match (prefix, at.find('/')) {
                ("https://" | "h3://", Some(slash)) => (&at[..slash], Some(&at[slash..])),
                ("https://" | "h3://", None) => (at, Some("/dns-query")),
                _ => (at, None),
            };
            let (addr, host) = match (address(at, port), prefix) {
                (Some(addr), _) => (addr, None),
                (None, "https://" | "h3://" | "quic://") => {
                    let host = host_and_port(at, port).ok_or_else(|| {
                        format!("`{text}` is not an encrypted server, e.g. `https://dns.quad9.net/dns-query`, `quic://9.9.9.9:853#dns.quad9.net` or `h3://9.9.9.9/dns-query#dns.quad9.net`")
                    })?;
                    (SocketAddr::from(([0, 0, 0, 0], host.1)), Some(host.0))
                }
                (None, _) => {
                    return Err(format!(
                        "`{text}` is not a DoT server by address, e.g. `tls://9.9.9.9:853#dns.quad9.net` (https://, h3:// and quic:// servers may be given by host name)"
                    ));
                }
            };
            let name = match name {
                "" => host.clone().unwrap_or_else(|| addr.ip().to_string()),
                name => rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("`{name}` in `{text}` is not a server name"))?
                    .to_str()
                    .into_owned(),
            };
            let scheme = match (prefix, path) {
                ("quic://", _) => Scheme::Quic,
                ("h3://", Some(path)) => Scheme::H3(path.to_owned()),
                (_, Some(path)) => Scheme::Https(path.to_owned()),
                _ => Scheme::Tls,
            };
            return Ok(ServerAddr {
                addr,
                host,
                tls: Some(name),
                scheme,
            });
        }
        let addr = address(&text, 53).ok_or_else(|| {
            format!("`{text}` is not a server address, e.g. `9.9.9.9:53` or `tls://9.9.9.9:853#dns.quad9.net`")
        })?;
        Ok(ServerAddr {
            addr,
            host: None,
            tls: None,
            scheme: Scheme::Plain,
        })
    }
}

/// `host` or `host:port` (a domain name of two labels or more, lowercased), with `port` when
/// none is given.
fn host_and_port(text: &str, port: u16) -> Option<(String, u16)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, given)) => (host, given.parse().ok()?),
        None => (text, port),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = host.contains('.')
        && crate::name::from_text(&host).is_ok()
        && host.parse::<IpAddr>().is_err()
        && rustls::pki_types::ServerName::try_from(host.clone()).is_ok();
    valid.then_some((host, port))
}

/// A zone of a conditional upstream group, as a lowercase wire name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Zone(pub Vec<u8>);

impl TryFrom<String> for Zone {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        crate::name::from_text(&text)
            .map(Zone)
            .map_err(|err| format!("`{text}` is not a zone name: {err}"))
    }
}
