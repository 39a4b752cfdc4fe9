//! The config's checks across values: each `Checks` method turns one part of the TOML as
//! written (`file.rs`) into its checked form, reporting every problem with its line (names
//! that must exist, networks that must not repeat, files that must be there, numbers in range).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::error::{Problem, Source};
use super::file::{self, ConfigFile};
use super::*;
use crate::bypass::BypassKind;
use crate::client::segment::SegmentId;
use crate::protocol::Transport;

pub(super) struct Checks<'a> {
    source: Source<'a>,
    problems: Vec<(usize, Problem)>,
}

impl<'a> Checks<'a> {
    pub(super) fn new(source: Source<'a>) -> Checks<'a> {
        Checks {
            source,
            problems: Vec::new(),
        }
    }

    /// `config` when no check found a problem, else every problem in file order.
    pub(super) fn finish(mut self, config: Config) -> Result<Config, ConfigError> {
        if self.problems.is_empty() {
            return Ok(config);
        }
        self.problems.sort_by_key(|(at, _)| *at);
        Err(ConfigError::Invalid {
            problems: self.problems.into_iter().map(|(_, p)| p).collect(),
        })
    }

    pub(super) fn report<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let problem = self.source.problem(at.span(), message);
        self.problems.push(problem);
    }

    pub(super) fn config(&mut self, file: ConfigFile, origin: &str) -> Config {
        let state_dir = file.server.state_dir.as_ref();
        let lists = self.lists(&file.lists, state_dir);
        // At most MAX_LISTS lists (checked in `lists`), so each id fits.
        let list_ids: BTreeMap<&str, ListId> = (lists.iter().zip(0..=u8::MAX))
            .map(|(list, id)| (list.name.as_str(), ListId(id)))
            .collect();
        let rates = &file.rate_limit;
        let default_rate = (rates.qps, rates.burst.as_ref().map(|b| *b.get_ref()));
        let encrypted = self.encrypted(&file.server);
        let segments = self.segments(
            &file.segment,
            &list_ids,
            default_rate,
            &file.server,
            &encrypted,
        );

        let unknown = &file.server.unknown_clients;
        let unknown_clients = match unknown.get_ref().as_str() {
            "refuse" => None,
            name => {
                let found = (segments.iter().zip(0..=u16::MAX))
                    .find_map(|(s, id)| (s.name == name).then_some(SegmentId(id)));
                if found.is_none() {
                    let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
                    self.report(
                        unknown,
                        format!(
                            "unknown_clients is \"{name}\", which is neither \"refuse\" nor a segment (segments: {})",
                            names.join(", ")
                        ),
                    );
                }
                found
            }
        };

        let listen = &file.server.listen;
        if listen.get_ref().is_empty() {
            self.report(
                listen,
                "server.listen is empty: portvakt would not answer anything",
            );
        }
        // An address twice for one kind of socket (DoT and DoQ may share 853: TCP and UDP).
        // Port 0 ("any free port") may repeat: each bind gets its own.
        let (mut seen, mut reported) = (HashMap::new(), HashMap::new());
        let server = &file.server;
        let all = Transport::ALL
            .into_iter()
            .flat_map(|t| server.listen_of(t).iter().map(move |a| (t.over_udp(), a)));
        for (udp, addr) in all.filter(|(_, a)| a.get_ref().0.port() != 0) {
            let at = addr.get_ref().0;
            if seen.insert((udp, at), ()).is_some() && reported.insert(at, ()).is_none() {
                self.report(addr, format!("listen address {at} appears twice"));
            }
        }

        let block = &file.block;
        if *block.response.get_ref() == BlockResponse::Sinkhole && block.sinkhole.is_empty() {
            self.report(
                &block.response,
                "block.response is \"sinkhole\" but block.sinkhole lists no addresses",
            );
        }

        let tcp = self.tcp_limits(&file.server);
        let segments_by_name: BTreeMap<String, SegmentId> = (segments.iter().zip(0..=u16::MAX))
            .map(|(s, id)| (s.name.clone(), SegmentId(id)))
            .collect();
        Config {
            origin: origin.to_owned(),
            listen: listen.get_ref().iter().map(|a| a.get_ref().0).collect(),
            unknown_clients,
            admin_listen: file.admin.listen.map(|a| a.0),
            admin_token: file.admin.token_file.as_ref().and_then(|f| self.token(f)),
            admin_limits: AdminLimits {
                max_body: self.positive(
                    &file.admin.max_body_bytes,
                    AdminLimits::DEFAULT.max_body,
                    "max_body_bytes",
                ),
                timeout: self.millis(
                    &file.admin.request_timeout_ms,
                    AdminLimits::DEFAULT.timeout,
                    "request_timeout_ms",
                ),
            },
            admin_token_file: file.admin.token_file.map(Spanned::into_inner),
            watch: file.server.watch,
            state_dir: file.server.state_dir.map(Spanned::into_inner),
            block: BlockSettings {
                response: *block.response.get_ref(),
                ttl: block.ttl,
                sinkhole: block.sinkhole.clone(),
                message: block.message.clone(),
            },
            lists,
            segments,
            upstreams: self.upstreams(&file.upstream),
            cache_max_entries: file.cache.max_entries,
            cache_max_bytes: file.cache.max_mib.as_ref().map_or(DEFAULT_CACHE_MIB, |m| {
                if *m.get_ref() == 0 {
                    self.report(
                        m,
                        "max_mib must be above 0 (max_entries = 0 turns the cache off)",
                    );
                }
                *m.get_ref()
            }) << 20,
            cache_stale_for: self.stale_for(file.cache.stale_for.as_ref()),
            rate_limit: self.rate_limit(&file.rate_limit),
            tcp,
            encrypted,
            proxy_from: (file.server.proxy_protocol_from.iter())
                .map(|n| n.get_ref().0)
                .collect(),
            report: self.report_settings(&file.report),
            expectations: self.expectations(&file.expect, &segments_by_name),
        }
    }

    /// The `[[expect]]` entries: each names a segment that exists or a client (or both), and
    /// at least one name; every name must be a domain name or an address.
    fn expectations(
        &mut self,
        entries: &[Spanned<file::ExpectSection>],
        segments: &BTreeMap<String, SegmentId>,
    ) -> Vec<Expectation> {
        let mut out = Vec::with_capacity(entries.len());
        for spanned in entries {
            let entry = spanned.get_ref();
            let segment = entry.segment.as_ref().and_then(|name| {
                let found = segments.get(name.get_ref()).copied();
                if found.is_none() {
                    let known: Vec<&str> = segments.keys().map(String::as_str).collect();
                    let text = format!(
                        "expectation names segment \"{}\", which is not defined (segments: {})",
                        name.get_ref(),
                        known.join(", ")
                    );
                    self.report(name, text);
                }
                found
            });
            if entry.segment.is_none() && entry.client.is_none() {
                self.report(spanned, "an [[expect]] needs a segment or a client");
            }
            if entry.blocked.is_empty() && entry.resolves.is_empty() {
                self.report(spanned, "an [[expect]] needs names in blocked or resolves");
            }
            let subjects = |texts: &[Spanned<String>], checks: &mut Self| -> Vec<Expected> {
                let mut subjects = Vec::with_capacity(texts.len());
                for text in texts {
                    let subject = match text.get_ref().parse::<IpAddr>() {
                        Ok(addr) => Some(Subject::Address(addr)),
                        Err(_) => match crate::name::from_text(text.get_ref()) {
                            Ok(wire) => Some(Subject::Name(wire)),
                            Err(err) => {
                                let message = format!(
                                    "`{}` is neither a domain name nor an address: {err}",
                                    text.get_ref()
                                );
                                checks.report(text, message);
                                None
                            }
                        },
                    };
                    if let Some(subject) = subject {
                        subjects.push(Expected {
                            text: text.get_ref().clone(),
                            at: checks.source.at(text.span()),
                            subject,
                        });
                    }
                }
                subjects
            };
            let blocked = subjects(&entry.blocked, self);
            let resolves = subjects(&entry.resolves, self);
            out.push(Expectation {
                at: self.source.at(spanned.span()),
                segment,
                client: entry.client.as_ref().map(|c| c.get_ref().0),
                blocked,
                resolves,
                on_fail: entry.on_fail,
            });
        }
        out
    }

    /// The `[server] tcp_*` limits; each at least 1.
    fn tcp_limits(&mut self, server: &file::ServerSection) -> TcpLimits {
        let default = TcpLimits::DEFAULT;
        let idle_ms = default.idle.as_millis() as u64;
        TcpLimits {
            connections: self.positive(
                &server.tcp_connections,
                default.connections,
                "tcp_connections",
            ),
            per_client: self.positive(
                &server.tcp_connections_per_client,
                default.per_client,
                "tcp_connections_per_client",
            ),
            idle: Duration::from_millis(self.positive(
                &server.tcp_idle_timeout_ms,
                idle_ms,
                "tcp_idle_timeout_ms",
            )),
            queries: self.positive(
                &server.tcp_queries_per_connection,
                default.queries,
                "tcp_queries_per_connection",
            ),
            read: self.millis(
                &server.tcp_read_timeout_ms,
                default.read,
                "tcp_read_timeout_ms",
            ),
            write: self.millis(
                &server.tcp_write_timeout_ms,
                default.write,
                "tcp_write_timeout_ms",
            ),
            request: self.millis(
                &server.https_request_timeout_ms,
                default.request,
                "https_request_timeout_ms",
            ),
            handshake: self.millis(
                &server.tls_handshake_timeout_ms,
                default.handshake,
                "tls_handshake_timeout_ms",
            ),
        }
    }

    /// A positive number of milliseconds, `default` when absent.
    fn millis(&mut self, value: &Option<Spanned<u64>>, default: Duration, key: &str) -> Duration {
        Duration::from_millis(self.positive(value, default.as_millis() as u64, key))
    }

    /// `value`, reported when it is 0; `default` when absent.
    fn positive<T: Copy + PartialEq + From<u8>>(
        &mut self,
        value: &Option<Spanned<T>>,
        default: T,
        key: &str,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if *value.get_ref() == T::from(0) {
            self.report(value, format!("{key} must be above 0"));
        }
        *value.get_ref()
    }

    /// `[rate_limit]`; the segments' rates come from `segments`.
    fn rate_limit(&mut self, section: &file::RateLimitSection) -> RateLimitSettings {
        let ipv6_prefix = section.ipv6_prefix.as_ref().map_or(56, |p| {
            if *p.get_ref() > 128 {
                self.report(p, "ipv6_prefix is at most 128");
            }
            *p.get_ref()
        });
        let clients = section.clients.as_ref().map_or(DEFAULT_RATE_CLIENTS, |c| {
            if !(16..=1 << 24).contains(c.get_ref()) {
                self.report(c, "clients must be between 16 and 16777216");
            }
            *c.get_ref()
        });
        RateLimitSettings {
            slip: section.slip.unwrap_or(2),
            ipv6_prefix,
            exempt: section.exempt.iter().map(|n| n.get_ref().0).collect(),
            clients,
        }
    }

    /// `[report]`: at most `MAX_TOP_CLIENTS` listed, each with at least 2 attempts.
    fn report_settings(&mut self, section: &file::ReportSection) -> ReportSettings {
        let top_clients = section.top_clients.as_ref().map_or(0, |n| {
            if *n.get_ref() > MAX_TOP_CLIENTS {
                self.report(n, format!("top_clients is at most {MAX_TOP_CLIENTS}"));
            }
            *n.get_ref()
        });
        let top_clients_min = section.top_clients_min.as_ref().map_or(5, |n| {
            if *n.get_ref() < 2 {
                self.report(n, "top_clients_min must be at least 2");
            }
            *n.get_ref()
        });
        ReportSettings {
            top_clients,
            top_clients_min,
        }
    }

    /// `[cache] stale_for`: a duration, `DEFAULT_STALE_FOR` when absent.
    fn stale_for(&mut self, text: Option<&Spanned<String>>) -> Duration {
        let Some(text) = text else {
            return DEFAULT_STALE_FOR;
        };
        humantime::parse_duration(text.get_ref()).unwrap_or_else(|err| {
            let message = format!("`{}` is not a duration, e.g. \"1d\": {err}", text.get_ref());
            self.report(text, message);
            DEFAULT_STALE_FOR
        })
    }

    fn lists(
        &mut self,
        lists: &BTreeMap<Spanned<String>, file::ListSection>,
        state_dir: Option<&Spanned<PathBuf>>,
    ) -> Vec<ListConfig> {
        if lists.len() > MAX_LISTS {
            let last = lists.keys().last().expect("more than 64 lists");
            self.report(
                last,
                format!(
                    "{} lists are defined; portvakt supports at most {MAX_LISTS}",
                    lists.len()
                ),
            );
        }
        let mut out = Vec::with_capacity(lists.len());
        for (name, list) in lists {
            let list_name = name.get_ref();
            if list.files.is_empty() && list.urls.is_empty() {
                self.report(
                    name,
                    format!("list \"{list_name}\" has no files and no urls"),
                );
            }
            for path in &list.files {
                if let Err(err) = std::fs::metadata(path.get_ref()) {
                    let shown = path.get_ref().display();
                    self.report(
                        path,
                        format!("list \"{list_name}\": cannot read {shown}: {err}"),
                    );
                }
            }
            out.push(ListConfig {
                name: list_name.clone(),
                files: list.files.iter().map(|p| p.get_ref().clone()).collect(),
                remote: self.remote_sources(list_name, &list.urls, state_dir),
                refresh: self.refresh(list.refresh.as_ref()),
                max_shrink: self.max_shrink(list.max_shrink.as_ref()),
                message: list.message.clone(),
                bypass: list.bypass.as_ref().and_then(|kind| self.list_bypass(kind)),
                kind: list.kind,
                max_entries: list.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
                limits: ListLimits {
                    max_bytes: list.max_bytes.unwrap_or(ListLimits::DEFAULT.max_bytes),
                    max_line: self.positive(
                        &list.max_line_bytes,
                        ListLimits::DEFAULT.max_line,
                        "max_line_bytes",
                    ),
                },
            });
        }
        out
    }

    /// A list's `urls`, each with the path of its copy under `state_dir`.
    fn remote_sources(
        &mut self,
        list_name: &str,
        urls: &[Spanned<String>],
        state_dir: Option<&Spanned<PathBuf>>,
    ) -> Vec<RemoteSource> {
        let mut remote = Vec::with_capacity(urls.len());
        for url in urls {
            let text = url.get_ref();
            match reqwest::Url::parse(text) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => self.report(
                    url,
                    format!("list \"{list_name}\": `{text}` is not an http:// or https:// URL"),
                ),
            }
            match state_dir {
                Some(dir) => remote.push(RemoteSource {
                    url: text.clone(),
                    copy: copy_path(dir.get_ref(), list_name, text),
                }),
                None => self.report(
                    url,
                    format!(
                        "list \"{list_name}\" has urls, which need [server] state_dir for their last good copies"
                    ),
                ),
            }
        }
        remote
    }

    /// A list's `bypass` tag: only the kinds that a list's names can be.
    fn list_bypass(&mut self, kind: &Spanned<BypassKind>) -> Option<BypassKind> {
        match *kind.get_ref() {
            k @ (BypassKind::EncryptedDnsEndpoint | BypassKind::TelegramFallback) => Some(k),
            other => {
                let message = format!(
                    "a list's bypass is \"encrypted_dns_endpoint\" or \"telegram_fallback\"; \"{}\" is handled by the segments' `bypass` settings",
                    other.as_str()
                );
                self.report(kind, message);
                None
            }
        }
    }

    /// A list's `refresh`: a duration of at least 1 s, `DEFAULT_REFRESH` when absent.
    fn refresh(&mut self, text: Option<&Spanned<String>>) -> Duration {
        let Some(text) = text else {
            return DEFAULT_REFRESH;
        };
        match humantime::parse_duration(text.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => d,
            Ok(_) => {
                self.report(text, "refresh must be at least 1s");
                DEFAULT_REFRESH
            }
            Err(err) => {
                let message = format!(
                    "`{}` is not a duration, e.g. \"24h\": {err}",
                    text.get_ref()
                );
                self.report(text, message);
                DEFAULT_REFRESH
            }
        }
    }

    /// A list's `max_shrink`: a share from 0.0 to 1.0, `DEFAULT_MAX_SHRINK` when absent.
    fn max_shrink(&mut self, share: Option<&Spanned<f64>>) -> f64 {
        match share {
            None => DEFAULT_MAX_SHRINK,
            Some(share) if (0.0..=1.0).contains(share.get_ref()) => *share.get_ref(),
            Some(share) => {
                self.report(share, "max_shrink is a share between 0.0 and 1.0, e.g. 0.5");
                DEFAULT_MAX_SHRINK
            }
        }
    }

    /// Reads the CA certificates of an upstream group's `ca_file` (PEM).
    fn roots(&mut self, file: &Spanned<PathBuf>) -> Option<Arc<rustls::RootCertStore>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let shown = file.get_ref().display();
        let certs = match CertificateDer::pem_file_iter(file.get_ref()) {
            Ok(certs) => certs.collect::<Result<Vec<_>, _>>(),
            Err(err) => Err(err),
        };
        let mut roots = rustls::RootCertStore::empty();
        let problem = match certs {
            Ok(certs) if certs.is_empty() => format!("ca_file {shown} holds no certificate"),
            Ok(certs) => match certs.into_iter().try_for_each(|c| roots.add(c)) {
                Ok(()) => return Some(Arc::new(roots)),
                Err(err) => format!("ca_file {shown}: {err}"),
            },
            Err(err) => format!("cannot read ca_file {shown}: {err}"),
        };
        self.report(file, problem);
        None
    }

    /// Reads the admin token: the file's first line, which must not be empty.
    fn token(&mut self, file: &Spanned<PathBuf>) -> Option<AdminToken> {
        let shown = file.get_ref().display();
        match std::fs::read_to_string(file.get_ref()) {
            Ok(text) => {
                let token = text.lines().next().unwrap_or("").trim();
                if token.is_empty() {
                    self.report(file, format!("admin token file {shown} is empty"));
                    return None;
                }
                Some(AdminToken(token.to_owned()))
            }
            Err(err) => {
                self.report(file, format!("cannot read admin token file {shown}: {err}"));
                None
            }
        }
    }

    fn segments(
        &mut self,
        segments: &[file::SegmentSection],
        lists: &BTreeMap<&str, ListId>,
        default_rate: (u32, Option<u32>),
        server: &file::ServerSection,
        encrypted: &EncryptedSettings,
    ) -> Vec<SegmentConfig> {
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut networks: HashMap<IpNet, &str> = HashMap::new();
        let mut listeners: HashMap<SocketAddr, &str> = HashMap::new();
        let encrypted_listen = Transport::encrypted().flat_map(|t| server.listen_of(t));
        let bound: Vec<SocketAddr> = (server.listen.get_ref().iter())
            .chain(encrypted_listen)
            .map(|a| a.get_ref().0)
            .collect();
        let mut out = Vec::with_capacity(segments.len());
        let defined = lists.keys().copied().collect::<Vec<_>>().join(", ");
        for segment in segments {
            let name = segment.name.get_ref().as_str();
            if names.insert(name, ()).is_some() {
                self.report(
                    &segment.name,
                    format!("segment \"{name}\" is defined twice"),
                );
            }
            if name == crate::client::segment::NO_SEGMENT {
                let message = "segment name \"none\" is reserved for clients in no segment";
                self.report(&segment.name, message);
            }
            if segment.networks.is_empty() && segment.listeners.is_empty() {
                let message = format!("segment \"{name}\" has no networks and no listeners");
                self.report(&segment.name, message);
            }
            for listener in &segment.listeners {
                let addr = listener.get_ref().0;
                if !bound.contains(&addr) || addr.ip().is_unspecified() {
                    let message = format!(
                        "listener {addr} is not a specific address of server.listen, tls_listen, https_listen, quic_listen or h3_listen"
                    );
                    self.report(listener, message);
                }
                if let Some(other) = listeners.insert(addr, name) {
                    let message = format!("listener {addr} is in segment \"{other}\" already");
                    self.report(listener, message);
                }
            }
            if segment.advertise_encrypted
                && (encrypted.certificate.is_none() || encrypted.name.is_none())
            {
                let message = format!(
                    "segment \"{name}\" has advertise_encrypted, which needs an encrypted listener (tls_listen, https_listen, quic_listen or h3_listen) with a certificate, and tls_name"
                );
                self.report(&segment.name, message);
            }
            let any_port = encrypted.listen.iter().any(|(_, a)| a.port() == 0);
            if segment.advertise_encrypted && any_port {
                let message = format!(
                    "segment \"{name}\" has advertise_encrypted, which needs tls_listen and https_listen with fixed ports (not 0)"
                );
                self.report(&segment.name, message);
            }
            for net in &segment.networks {
                if let Some(other) = networks.insert(net.get_ref().0, name) {
                    let message = format!(
                        "network {} is in segment \"{other}\" already; a network belongs to one segment",
                        net.get_ref().0
                    );
                    self.report(net, message);
                }
            }
            let ids = |entries: &[Spanned<String>], role: &str, checks: &mut Self| -> Vec<ListId> {
                let mut ids = Vec::with_capacity(entries.len());
                for entry in entries {
                    match lists.get(entry.get_ref().as_str()) {
                        Some(&id) => ids.push(id),
                        None => checks.report(
                            entry,
                            format!(
                                "segment \"{name}\" {role} list \"{}\", which is not defined (defined lists: {defined})",
                                entry.get_ref()
                            ),
                        ),
                    }
                }
                ids
            };
            let block = ids(&segment.block, "blocks", self);
            let allow = ids(&segment.allow, "allows", self);
            // On by default where the segment blocks anything: a bypass would defeat it.
            let on = !segment.block.is_empty();
            let b = &segment.bypass;
            let bypass = BypassHandling {
                canary: b.canary.unwrap_or(on),
                private_relay: b.private_relay.unwrap_or(on),
                ddr: b.ddr.unwrap_or(on),
                strip_ech: b.strip_ech.unwrap_or(on),
            };
            let qps = segment.rate_limit.unwrap_or(default_rate.0);
            out.push(SegmentConfig {
                name: name.to_owned(),
                networks: segment.networks.iter().map(|n| n.get_ref().0).collect(),
                listeners: segment.listeners.iter().map(|l| l.get_ref().0).collect(),
                advertise_encrypted: segment.advertise_encrypted,
                block,
                allow,
                bypass,
                rate: (qps > 0)
                    .then(|| (qps, default_rate.1.unwrap_or(qps.saturating_mul(2)).max(1))),
            });
        }
        out
    }

    fn upstreams(&mut self, groups: &[Spanned<file::UpstreamSection>]) -> Vec<UpstreamConfig> {
        let mut zones: HashMap<&[u8], ()> = HashMap::new();
        let mut defaults = groups.iter().filter(|g| g.get_ref().zones.is_empty());
        match (defaults.next(), defaults.next()) {
            (None, _) => {
                let at = groups.first().map_or(0..0, |g| g.span());
                let (offset, problem) = self
                    .source
                    .problem(at, "no default [[upstream]] group (one without `zones`)");
                self.problems.push((offset, problem));
            }
            (Some(_), Some(second)) => self.report(
                second,
                "a second [[upstream]] group without `zones`; only one default group is allowed",
            ),
            _ => {}
        }
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            let g = group.get_ref();
            if g.servers.get_ref().is_empty() {
                self.report(&g.servers, "upstream group has no servers");
            }
            if g.servers.get_ref().len() > MAX_SERVERS {
                self.report(
                    &g.servers,
                    format!("an upstream group has {MAX_SERVERS} servers at most"),
                );
            }
            let timeout = *g.timeout_ms.get_ref();
            if timeout == 0 {
                self.report(&g.timeout_ms, "timeout_ms must be above 0");
            }
            let default_try = DEFAULT_TRY_TIMEOUT.as_millis() as u64;
            let try_timeout = g
                .try_timeout_ms
                .as_ref()
                .map_or(default_try.min(timeout), |t| {
                    let value = *t.get_ref();
                    if value == 0 || value > timeout {
                        self.report(
                            t,
                            format!(
                                "try_timeout_ms must be above 0 and at most timeout_ms ({timeout})"
                            ),
                        );
                    }
                    value
                });
            let ca = g.ca_file.as_ref().and_then(|file| self.roots(file));
            for zone in &g.zones {
                if zones.insert(&zone.get_ref().0, ()).is_some() {
                    let text = crate::name::to_text(&zone.get_ref().0);
                    self.report(
                        zone,
                        format!("zone {text} is forwarded by two upstream groups"),
                    );
                }
            }
            out.push(UpstreamConfig {
                zones: g.zones.iter().map(|z| z.get_ref().0.clone()).collect(),
                servers: g.servers.get_ref().clone(),
                timeout: Duration::from_millis(timeout),
                try_timeout: Duration::from_millis(try_timeout),
                ca,
                ca_file: g.ca_file.as_ref().map(|f| f.get_ref().clone()),
            });
        }
        self.check_bootstrap(groups, &out);
        out.sort_by_key(|u| !u.zones.is_empty());
        out
    }

    /// A server given by host name is found through the group its host falls in (the longest
    /// zone, else the default), by that group's servers given by address: never through the
    /// host's resolver, and never through itself.
    fn check_bootstrap(
        &mut self,
        groups: &[Spanned<file::UpstreamSection>],
        out: &[UpstreamConfig],
    ) {
        let by_address = |g: &UpstreamConfig| g.servers.iter().any(|s| s.host.is_none());
        for (group, config) in groups.iter().zip(out) {
            for server in config.servers.iter() {
                let Some(host) = &server.host else { continue };
                let Ok(name) = crate::name::from_text(host) else {
                    continue;
                };
                let through = (crate::name::suffixes(&name))
                    .find_map(|(_, suffix)| {
                        out.iter()
                            .find(|g| g.zones.iter().any(|z| z[..] == *suffix))
                    })
                    .or_else(|| out.iter().find(|g| g.zones.is_empty()));
                if let Some(through) = through
                    && !by_address(through)
                {
                    let via = (through.zones.first())
                        .map_or_else(|| "default".to_owned(), |z| crate::name::to_text(z));
                    self.report(
                        &group.get_ref().servers,
                        format!(
                            "`{server}`: {host} is looked up through upstream group {via}, which has no server given by address; add one (e.g. \"9.9.9.9\") so that portvakt never asks the host's resolver"
                        ),
                    );
                }
            }
        }
    }
}
