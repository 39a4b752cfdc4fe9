//! `Metrics`, the owner of every Prometheus family portvakt exports, and the handles the hot
//! path uses. Labelled handles are resolved once per policy build (`PolicyMetrics`) and per
//! upstream group, so a query only increments atomics: no label hashing, no lock.
//! Rendering `/metrics` is `admin/`'s.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::bypass::BypassKind;
use crate::client::segment::NO_SEGMENT;
use crate::wire::Rcode;

/// Histogram buckets for DNS times, in seconds: 25 µs (a blocked answer) to 2 s (a slow
/// upstream at its timeout).
const DNS_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.0,
];

/// The `result` label values of `portvakt_list_updates_total`.
pub const LIST_UPDATE_RESULTS: [&str; 4] = ["updated", "not_modified", "rejected", "failed"];

/// What happened to a query, as the `decision` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Blocked,
    Allowed,
    Refused,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 3] = [
        DecisionLabel::Blocked,
        DecisionLabel::Allowed,
        DecisionLabel::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Blocked => "blocked",
            DecisionLabel::Allowed => "allowed",
            DecisionLabel::Refused => "refused",
        }
    }
}

pub use crate::protocol::Transport;

/// Which in-flight budget was full when a miss was answered SERVFAIL, as the `reason` label
/// of `portvakt_shed_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The client's own budget.
    Client,
    /// The total budget.
    Total,
    /// The budget of the upstream group the name goes to.
    Group,
}

impl ShedReason {
    pub const ALL: [ShedReason; 3] = [ShedReason::Client, ShedReason::Total, ShedReason::Group];

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Client => "client",
            ShedReason::Total => "total",
            ShedReason::Group => "group",
        }
    }
}

/// Distinct names blocked by their answer kept between two writes of the evidence store.
pub const ANSWER_BLOCKED_NAMES: usize = 10_000;

/// Names blocked only by their answer, per list, as the evidence store has yet to take them.
#[derive(Debug, Default)]
struct AnswerBlocked {
    names: std::collections::HashMap<Box<str>, std::collections::HashMap<Box<[u8]>, u64>>,
    /// Names held, over all lists.
    len: usize,
}

/// Result of one upstream exchange, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamResult {
    Ok,
    Timeout,
    Error,
}

impl UpstreamResult {
    pub const ALL: [UpstreamResult; 3] = [
        UpstreamResult::Ok,
        UpstreamResult::Timeout,
        UpstreamResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamResult::Ok => "ok",
            UpstreamResult::Timeout => "timeout",
            UpstreamResult::Error => "error",
        }
    }
}

/// A TCP limit that was hit (the `limit` label of `portvakt_tcp_limit_hits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpLimit {
    /// A connection refused: `tcp_connections` were open.
    Total,
    /// A connection refused: its client had `tcp_connections_per_client` open.
    Client,
    /// A connection closed after `tcp_idle_timeout_ms` without a query.
    Idle,
    /// A connection closed: a query's bytes came too slowly.
    Slow,
    /// A connection closed after `tcp_queries_per_connection` queries.
    Queries,
    /// A connection closed: its client did not take a reply within `tcp_write_timeout_ms`.
    Write,
    /// A DoH request not received whole and answered within `https_request_timeout_ms`.
    Request,
}

impl TcpLimit {
    pub const ALL: [TcpLimit; 7] = [
        TcpLimit::Total,
        TcpLimit::Client,
        TcpLimit::Idle,
        TcpLimit::Slow,
        TcpLimit::Queries,
        TcpLimit::Write,
        TcpLimit::Request,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TcpLimit::Total => "total",
            TcpLimit::Client => "client",
            TcpLimit::Idle => "idle",
            TcpLimit::Slow => "slow",
            TcpLimit::Queries => "queries",
            TcpLimit::Write => "write",
            TcpLimit::Request => "request",
        }
    }
}

/// How a TLS handshake of a DoT or DoH connection ended (the `result` label of
/// `portvakt_tls_handshakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// Refused by TLS: no common version or ALPN, a bad message, the client gave up.
    Failed,
    /// Not done within the handshake timeout.
    Timeout,
}

impl Handshake {
    pub const ALL: [Handshake; 3] = [Handshake::Ok, Handshake::Failed, Handshake::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::Timeout => "timeout",
        }
    }
}

/// Stream connection handles (TCP, and the TLS and HTTPS connections on top).
pub struct TcpMetrics {
    /// Connections open now.
    pub open: IntGauge,
    hits: [IntCounter; 7],
    handshakes: [IntCounter; 3],
}

impl TcpMetrics {
    /// `portvakt_<kind>_connections`, `portvakt_<kind>_limit_hits_total{limit}` and the
    /// handshakes by result (`portvakt_tls_handshakes_total` for TCP, as before).
    fn register(registry: &Registry, kind: &str, what: &str, handshakes: &str) -> TcpMetrics {
        let hits = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    format!("portvakt_{kind}_limit_hits_total"),
                    format!("{what} refused (limit total or client) or closed (idle, slow, queries, write) by a limit."),
                ),
                &["limit"],
            )
            .expect("valid metric"),
        );
        let handshake_name = match kind {
            "tcp" => "portvakt_tls_handshakes_total".to_owned(),
            _ => format!("portvakt_{kind}_handshakes_total"),
        };
        let results = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    handshake_name,
                    format!("{handshakes}, by result (ok, failed, timeout)."),
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let open = IntGauge::new(
            format!("portvakt_{kind}_connections"),
            format!("{what} open now."),
        );
        TcpMetrics {
            open: register(registry, open.expect("valid metric")),
            hits: TcpLimit::ALL.map(|l| hits.with_label_values(&[l.as_str()])),
            handshakes: Handshake::ALL.map(|h| results.with_label_values(&[h.as_str()])),
        }
    }

    pub fn hit(&self, limit: TcpLimit) {
        self.hits[limit as usize].inc();
    }

    pub fn handshake(&self, result: Handshake) {
        self.handshakes[result as usize].inc();
    }
}

/// Every family, registered once per process.
pub struct Metrics {
    registry: Registry,
    queries: IntCounterVec,
    blocked: IntCounterVec,
    bypass: IntCounterVec,
    shed: IntCounterVec,
    rate_limited: IntCounterVec,
    upstream_queries: IntCounterVec,
    upstream_duration: HistogramVec,
    server_queries: IntCounterVec,
    server_srtt: GaugeVec,
    server_in_flight: IntGaugeVec,
    server_up: IntGaugeVec,
    server_connections: IntCounterVec,
    list_entries: IntGaugeVec,
    list_updates: IntCounterVec,
    /// Handles that do not depend on the policy.
    pub query: QueryMetrics,
    pub tcp: TcpMetrics,
    /// DoQ and DoH3 connections: the same limits, counted apart.
    pub quic: TcpMetrics,
    pub cache_entries: IntGauge,
    /// Answers the cache dropped to stay within `max_entries` and `max_bytes`.
    pub cache_evictions: IntCounter,
    pub reloads_success: IntCounter,
    pub reloads_failure: IntCounter,
    pub last_reload_success: Gauge,
    policy_info: IntGaugeVec,
    probe_ok: IntGaugeVec,
    expectation_ok: IntGaugeVec,
    /// 1 from a rejected reload until one succeeds.
    pub reload_failing: IntGauge,
    list_rejected_lines: IntGaugeVec,
    list_shrink_refused: IntGaugeVec,
    list_download_rejected: IntGaugeVec,
    list_download_failing: IntGaugeVec,
    /// The DoT/DoH certificate's notAfter (no series without a certificate).
    certificate_expiry: IntGaugeVec,
    /// 1 while writes to the evidence store fail.
    pub evidence_write_failing: IntGauge,
    /// Names blocked only by what their answer held, per list, since the evidence store last
    /// took them: names only (never who asked), at most [`ANSWER_BLOCKED_NAMES`] at once.
    answer_blocked: std::sync::Mutex<AnswerBlocked>,
    /// Admin requests refused by a limit (`body`, `time`).
    pub admin_limit_hits: IntCounterVec,
    /// Reloads rejected, by reason (`ReloadError::reason`).
    pub reloads_rejected: IntCounterVec,
}

/// Per-query handles that do not depend on the policy.
pub struct QueryMetrics {
    /// Indexed by the 4-bit header RCODE; BADVERS has its own handle.
    responses: Vec<IntCounter>,
    pub responses_badvers: IntCounter,
    /// Indexed by `DecisionLabel as usize`.
    duration: Vec<Histogram>,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Expired answers served because every upstream failed (RFC 8767).
    pub stale_answers: IntCounter,
    /// What a `proxy_protocol_from` source sent without a valid PROXY v2 header.
    pub proxy_errors: IntCounter,
}

impl QueryMetrics {
    pub fn response(&self, rcode: u8) -> &IntCounter {
        &self.responses[(rcode & 0x0F) as usize]
    }

    pub fn duration(&self, decision: DecisionLabel) -> &Histogram {
        &self.duration[decision as usize]
    }
}

/// The label of a 4-bit RCODE (RFC 1035 §4.1.1, RFC 2136 §2.2).
fn rcode_label(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "OTHER",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(DNS_BUCKETS.to_vec());
            register(
                &registry,
                HistogramVec::new(opts, labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };

        let queries = counter(
            "portvakt_queries_total",
            "Queries by client segment, decision and transport.",
            &["segment", "decision", "transport"],
        );
        let blocked = counter(
            "portvakt_blocked_total",
            "Blocked queries by segment and deciding list.",
            &["segment", "list"],
        );
        let bypass = counter(
            "portvakt_bypass_attempts_total",
            "Attempts to go around the resolver, by segment and kind (built-in names answered, blocks by lists tagged with a bypass kind, ECH removed).",
            &["segment", "kind"],
        );
        let shed = counter(
            "portvakt_shed_total",
            "Cache misses answered SERVFAIL because an in-flight budget was full: the client's, the total, or the upstream group's.",
            &["segment", "reason"],
        );
        let rate_limited = counter(
            "portvakt_rate_limited_total",
            "UDP queries over their client's rate limit: dropped, or answered truncated (slip) so a real client retries over TCP.",
            &["segment"],
        );
        let responses = counter(
            "portvakt_responses_total",
            "Responses sent, by RCODE.",
            &["rcode"],
        );
        let duration = histogram(
            "portvakt_query_duration_seconds",
            "Time from receiving a query to its answer being ready, by decision.",
            &["decision"],
        );
        let cache = counter(
            "portvakt_cache_lookups_total",
            "Answer cache lookups for allowed queries.",
            &["result"],
        );
        let upstream_queries = counter(
            "portvakt_upstream_queries_total",
            "Queries forwarded to upstream groups, by result.",
            &["group", "result"],
        );
        let upstream_duration = histogram(
            "portvakt_upstream_duration_seconds",
            "Time an upstream group took to answer (or to time out).",
            &["group"],
        );
        let server_queries = counter(
            "portvakt_upstream_server_queries_total",
            "Tries of each upstream server, by result (ok: it answered, also with an error rcode; late: it answered after its wait, while a later try was out; timeout: it never answered in the query's time).",
            &["group", "server", "result"],
        );
        let server_srtt = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "portvakt_upstream_server_srtt_seconds",
                    "Smoothed round-trip time of each upstream server; a failed try counts as its wait.",
                ),
                &["group", "server"],
            )
            .expect("valid metric"),
        );
        let server_in_flight = gauge(
            "portvakt_upstream_server_in_flight",
            "Tries of each upstream server waiting for an answer now.",
            &["group", "server"],
        );
        let server_up = gauge(
            "portvakt_upstream_server_up",
            "1 while an upstream server is used, 0 while it is down (failed tries in a row; probed in the background).",
            &["group", "server"],
        );
        let server_connections = counter(
            "portvakt_upstream_server_connections_total",
            "TCP and TLS connections opened to each upstream server (they are reused: a high rate means reconnects).",
            &["group", "server"],
        );
        let list_entries = gauge(
            "portvakt_list_entries",
            "Entries in each list of the running policy.",
            &["list"],
        );
        let tcp = TcpMetrics::register(
            &registry,
            "tcp",
            "TCP connections (DoT and DoH included)",
            "TLS handshakes of DoT and DoH connections",
        );
        let quic = TcpMetrics::register(
            &registry,
            "quic",
            "QUIC connections (DoQ and DoH3)",
            "QUIC handshakes (TLS 1.3 inside QUIC) of DoQ and DoH3 connections",
        );
        let list_updates = counter(
            "portvakt_list_updates_total",
            "Downloads of lists with urls: updated, not_modified, rejected (shrink guard), failed.",
            &["list", "result"],
        );
        let reloads = counter(
            "portvakt_reloads_total",
            "Policy reloads, by result.",
            &["result"],
        );
        let build_info = gauge(
            "portvakt_build_info",
            "Always 1; the version and commit labels say which build runs.",
            &["version", "commit"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PORTVAKT_COMMIT")])
            .set(1);

        let cache_entries =
            IntGauge::new("portvakt_cache_entries", "Answers in the cache.").expect("valid metric");
        registry
            .register(Box::new(cache_entries.clone()))
            .expect("metric registered once");
        let cache_evictions = IntCounter::new(
            "portvakt_cache_evictions_total",
            "Answers dropped from the cache to keep it within max_entries and max_bytes (a high rate: the cache is too small).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(cache_evictions.clone()))
            .expect("metric registered once");
        let policy_info = gauge(
            "portvakt_policy_info",
            "1, labelled with the hash of the policy in force (equal on replicas that enforce the same policy).",
            &["hash"],
        );
        let probe_ok = gauge(
            "portvakt_policy_probe_ok",
            "1 while the self-test decides a list's probe names for a segment as configured (blocked where it blocks the list, not where it allows it), else 0. Decided every minute.",
            &["segment", "list"],
        );
        let expectation_ok = gauge(
            "portvakt_expectation_ok",
            "1 while every [[expect]] of a segment holds for the policy in force, else 0. Checked at every reload and every minute, through the query path's own judge.",
            &["segment"],
        );
        let list_rejected_lines = gauge(
            "portvakt_list_rejected_lines",
            "Lines of a list's files the policy in force could not read (skipped).",
            &["list"],
        );
        let list_shrink_refused = gauge(
            "portvakt_list_shrink_refused",
            "1 while the last reload was refused because a list a segment blocks lost more than its max_shrink share of entries; 0 again after a reload succeeds.",
            &["list"],
        );
        let list_download_rejected = gauge(
            "portvakt_list_download_rejected",
            "1 from a download of a list's URL rejected for shrinking past max_shrink until one is accepted (the last good copy keeps blocking).",
            &["list"],
        );
        let list_download_failing = gauge(
            "portvakt_list_download_failing",
            "1 from a failed download of a list's URL (unreachable, an HTTP error, too large) until one succeeds; the last good copy keeps blocking.",
            &["list"],
        );
        let certificate_expiry = gauge(
            "portvakt_tls_certificate_expiry_timestamp_seconds",
            "Unix time the DoT/DoH certificate in force expires (its notAfter).",
            &[],
        );
        let admin_limit_hits = counter(
            "portvakt_admin_limit_hits_total",
            "Admin requests refused by a limit: body (a declared body over [admin] max_body_bytes, 413), time (over request_timeout_ms, 503).",
            &["limit"],
        );
        for limit in ["body", "time"] {
            admin_limit_hits.with_label_values(&[limit]);
        }
        let reloads_rejected = counter(
            "portvakt_reloads_rejected_total",
            "Reloads rejected (the running policy kept), by reason: config, list (a line too long, too many entries or bytes), download, expectation, shrink.",
            &["reason"],
        );
        for reason in ["config", "list", "download", "expectation", "shrink"] {
            reloads_rejected.with_label_values(&[reason]);
        }
        let state_gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let evidence_write_failing = state_gauge(
            "portvakt_evidence_write_failing",
            "1 while writing the evidence store (state_dir/evidence.sqlite) fails, else 0.",
        );
        let reload_failing = state_gauge(
            "portvakt_reload_failing",
            "1 from a rejected reload (the previous policy keeps serving) until a reload succeeds.",
        );
        let last_reload_success = Gauge::new(
            "portvakt_last_reload_success_timestamp_seconds",
            "Unix time the running policy was loaded (at start, or by the last successful reload).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_reload_success.clone()))
            .expect("metric registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");

        let query = QueryMetrics {
            responses: (0..16)
                .map(|r| responses.with_label_values(&[rcode_label(r)]))
                .collect(),
            responses_badvers: responses.with_label_values(&["BADVERS"]),
            duration: DecisionLabel::ALL
                .iter()
                .map(|d| duration.with_label_values(&[d.as_str()]))
                .collect(),
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            stale_answers: register(
                &registry,
                IntCounter::new(
                    "portvakt_stale_answers_total",
                    "Expired answers served (TTL 30, EDE 3) because the upstreams failed.",
                )
                .expect("valid metric"),
            ),
            proxy_errors: register(
                &registry,
                IntCounter::new(
                    "portvakt_proxy_header_errors_total",
                    "Datagrams and connections from a proxy_protocol_from source dropped for a \
                     missing or invalid PROXY v2 header.",
                )
                .expect("valid metric"),
            ),
        };
        // Series a dashboard expects even before the first query.
        for rcode in [
            Rcode::NoError,
            Rcode::ServFail,
            Rcode::NxDomain,
            Rcode::Refused,
        ] {
            query.response(rcode as u8);
        }
        Metrics {
            registry,
            queries,
            blocked,
            bypass,
            shed,
            rate_limited,
            upstream_queries,
            upstream_duration,
            server_queries,
            server_srtt,
            server_in_flight,
            server_up,
            server_connections,
            list_entries,
            list_updates,
            query,
            tcp,
            quic,
            cache_entries,
            cache_evictions,
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            last_reload_success,
            policy_info,
            probe_ok,
            expectation_ok,
            reload_failing,
            list_rejected_lines,
            list_shrink_refused,
            list_download_rejected,
            list_download_failing,
            certificate_expiry,
            evidence_write_failing,
            answer_blocked: std::sync::Mutex::default(),
            admin_limit_hits,
            reloads_rejected,
        }
    }

    /// Shows the expectations' result per segment, and no segment's that has none now.
    pub fn set_expectations(&self, results: &[(&str, bool)]) {
        self.expectation_ok.reset();
        for (segment, ok) in results {
            self.expectation_ok
                .with_label_values(&[segment])
                .set(i64::from(*ok));
        }
    }

    /// The certificate's notAfter, or no series without one.
    pub fn set_certificate_expiry(&self, not_after_unix: Option<i64>) {
        self.certificate_expiry.reset();
        if let Some(at) = not_after_unix {
            self.certificate_expiry
                .with_label_values(&[] as &[&str])
                .set(at);
        }
    }

    /// Rejected lines of the lists in force.
    pub fn set_list_rejected(&self, list: &str, lines: usize) {
        self.list_rejected_lines
            .with_label_values(&[list])
            .set(lines as i64);
    }

    /// Marks the lists whose shrink made the last reload fail (none: every mark cleared).
    pub fn set_shrink_refused(&self, lists: &[&str]) {
        self.list_shrink_refused.reset();
        for list in lists {
            self.list_shrink_refused.with_label_values(&[list]).set(1);
        }
    }

    /// The report's counters as they stand: ("blocked", segment, list, value) and
    /// ("bypass", segment, kind, value) for every series.
    pub fn evidence(&self) -> Vec<(&'static str, String, String, u64)> {
        use prometheus::core::Collector;
        let mut out = Vec::new();
        for (kind, vec, item) in [
            ("blocked", &self.blocked, "list"),
            ("bypass", &self.bypass, "kind"),
        ] {
            for family in vec.collect() {
                for metric in family.get_metric() {
                    let label = |name: &str| {
                        (metric.get_label().iter())
                            .find(|l| l.name() == name)
                            .map_or(String::new(), |l| l.value().to_owned())
                    };
                    let value = metric.get_counter().get_value() as u64;
                    out.push((kind, label("segment"), label(item), value));
                }
            }
        }
        out
    }

    /// Counts `name` (lowercase wire format), blocked by `list` only because of what its
    /// answer held (a CNAME target, an address, a TXT shape). A name counted before costs no
    /// allocation; names past [`ANSWER_BLOCKED_NAMES`] waiting for the store are not kept
    /// (their blocks are still counted by list).
    pub fn note_answer_blocked(&self, list: &str, name: &[u8]) {
        let mut noted = self.answer_blocked.lock().expect("not poisoned");
        let AnswerBlocked { names, len } = &mut *noted;
        if let Some(count) = names.get_mut(list).and_then(|n| n.get_mut(name)) {
            *count += 1;
        } else if *len < ANSWER_BLOCKED_NAMES {
            *len += 1;
            let of_list = names.entry(list.into()).or_default();
            of_list.insert(name.into(), 1);
        }
    }

    /// The names [`Metrics::note_answer_blocked`] counted since the last take: (list, name as
    /// text, count).
    pub fn take_answer_blocked(&self) -> Vec<(String, String, u64)> {
        let taken = std::mem::take(&mut *self.answer_blocked.lock().expect("not poisoned"));
        let mut out = Vec::with_capacity(taken.len);
        for (list, names) in taken.names {
            for (name, count) in names {
                out.push((list.to_string(), crate::name::to_text(&name), count));
            }
        }
        out
    }

    /// Forgets every self-test result (a new policy has its own probes).
    pub fn reset_probes(&self) {
        self.probe_ok.reset();
    }

    /// The self-test's result for one (segment, list).
    pub fn set_probe(&self, segment: &str, list: &str, ok: bool) {
        self.probe_ok
            .with_label_values(&[segment, list])
            .set(i64::from(ok));
    }

    /// Shows `hash` as the policy in force, and no other.
    pub fn set_policy_hash(&self, hash: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[hash]).set(1);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handles for one segment: a counter per decision, and one per list it blocks (indexed
    /// by list id; lists it does not block get none). Creating them makes the series exist
    /// at 0, so dashboards show zeros, not gaps.
    pub fn segment(
        &self,
        segment: &str,
        blocked_lists: &[(usize, &str)],
        lists: usize,
    ) -> SegmentMetrics {
        let decisions = Transport::ALL.map(|t| {
            DecisionLabel::ALL
                .map(|d| (self.queries).with_label_values(&[segment, d.as_str(), t.as_str()]))
        });
        let mut blocked = vec![None; lists];
        for &(id, list) in blocked_lists {
            blocked[id] = Some(self.blocked.with_label_values(&[segment, list]));
        }
        let bypass = BypassKind::ALL.map(|k| self.bypass.with_label_values(&[segment, k.as_str()]));
        let shed = ShedReason::ALL.map(|r| self.shed.with_label_values(&[segment, r.as_str()]));
        SegmentMetrics {
            decisions,
            blocked,
            bypass,
            shed,
            rate_limited: self.rate_limited.with_label_values(&[segment]),
        }
    }

    /// Handles for one upstream group, indexed by `UpstreamResult as usize`.
    pub fn upstream(&self, group: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            results: UpstreamResult::ALL.map(|r| {
                self.upstream_queries
                    .with_label_values(&[group, r.as_str()])
            }),
            duration: self.upstream_duration.with_label_values(&[group]),
        }
    }

    /// Handles for one upstream server of `group`.
    pub fn server(&self, group: &str, server: &str) -> ServerMetrics {
        let labels = [group, server];
        ServerMetrics {
            results: UpstreamResult::ALL.map(|r| {
                self.server_queries
                    .with_label_values(&[group, server, r.as_str()])
            }),
            late: (self.server_queries).with_label_values(&[group, server, "late"]),
            srtt: self.server_srtt.with_label_values(&labels),
            in_flight: self.server_in_flight.with_label_values(&labels),
            up: self.server_up.with_label_values(&labels),
            connections: self.server_connections.with_label_values(&labels),
        }
    }

    /// Counts one download of a list source; `result` is one of [`LIST_UPDATE_RESULTS`].
    pub fn list_update(&self, list: &str, result: &str) {
        self.list_updates.with_label_values(&[list, result]).inc();
        // A rejection holds until a download of the list is accepted (or is unchanged).
        match result {
            "rejected" => self
                .list_download_rejected
                .with_label_values(&[list])
                .set(1),
            "updated" | "not_modified" => {
                self.list_download_rejected
                    .with_label_values(&[list])
                    .set(0);
            }
            _ => {}
        }
    }

    /// Makes every result series of `list` exist at 0.
    pub fn list_update_series(&self, list: &str) {
        for result in LIST_UPDATE_RESULTS {
            self.list_updates.with_label_values(&[list, result]);
        }
    }

    /// Drops the series of segments, lists and upstream groups that the running config no
    /// longer has (after a reload), so dashboards stop showing them.
    pub fn retain(&self, segments: &[&str], lists: &[&str], groups: &[&str], servers: &[&str]) {
        let stale = |name: &str, value: &str| match name {
            "segment" => value != NO_SEGMENT && !segments.contains(&value),
            "list" => !lists.contains(&value),
            "group" => !groups.contains(&value),
            "server" => !servers.contains(&value),
            _ => false,
        };
        prune(&self.queries, stale);
        prune(&self.blocked, stale);
        prune(&self.bypass, stale);
        prune(&self.shed, stale);
        prune(&self.rate_limited, stale);
        prune(&self.list_entries, stale);
        prune(&self.list_updates, stale);
        prune(&self.upstream_queries, stale);
        prune(&self.upstream_duration, stale);
        prune(&self.server_queries, stale);
        prune(&self.server_srtt, stale);
        prune(&self.server_in_flight, stale);
        prune(&self.server_up, stale);
        prune(&self.server_connections, stale);
        prune(&self.probe_ok, stale);
        prune(&self.list_rejected_lines, stale);
        prune(&self.list_download_rejected, stale);
        prune(&self.list_download_failing, stale);
    }

    pub fn set_list_entries(&self, list: &str, entries: usize) {
        self.list_entries
            .with_label_values(&[list])
            .set(entries as i64);
    }
}

/// Removes every series of `vec` that has a label `stale` says is gone.
fn prune<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    stale: impl Fn(&str, &str) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if labels.iter().any(|l| stale(l.name(), l.value())) {
                let labels: std::collections::HashMap<&str, &str> =
                    labels.iter().map(|l| (l.name(), l.value())).collect();
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// Registers `metric` once and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

/// One segment's handles.
#[derive(Clone)]
pub struct SegmentMetrics {
    /// Indexed by `Transport as usize`, then `DecisionLabel as usize`.
    decisions: [[IntCounter; 3]; Transport::ALL.len()],
    blocked: Vec<Option<IntCounter>>,
    /// Indexed by `BypassKind as usize`.
    bypass: [IntCounter; BypassKind::ALL.len()],
    /// Indexed by `ShedReason as usize`.
    shed: [IntCounter; ShedReason::ALL.len()],
    /// Queries over the client's rate (dropped, or answered truncated).
    pub rate_limited: IntCounter,
}

impl SegmentMetrics {
    pub fn decided(&self, decision: DecisionLabel, transport: Transport) {
        self.decisions[transport as usize][decision as usize].inc();
    }

    pub fn shed(&self, reason: ShedReason) {
        self.shed[reason as usize].inc();
    }

    pub fn bypass_attempt(&self, kind: BypassKind) {
        self.bypass[kind as usize].inc();
    }

    pub fn blocked_by(&self, list: usize) {
        if let Some(counter) = &self.blocked[list] {
            counter.inc();
        }
    }
}

/// One upstream server's handles.
#[derive(Clone)]
pub struct ServerMetrics {
    results: [IntCounter; 3],
    /// Answers heard after their try's wait, while a later try was out.
    pub late: IntCounter,
    pub srtt: Gauge,
    pub in_flight: IntGauge,
    pub up: IntGauge,
    pub connections: IntCounter,
}

impl ServerMetrics {
    pub fn result(&self, result: UpstreamResult) {
        self.results[result as usize].inc();
    }
}

/// One upstream group's handles.
#[derive(Clone)]
pub struct UpstreamMetrics {
    results: [IntCounter; 3],
    pub duration: Histogram,
}

impl UpstreamMetrics {
    pub fn result(&self, result: UpstreamResult) {
        self.results[result as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_blocked_by_their_answer_are_counted_per_list_up_to_the_cap() {
        let metrics = Metrics::new();
        let (tiktok, other) = (b"\x03cdn\x07example\x00", b"\x01x\x07example\x00");
        for _ in 0..3 {
            metrics.note_answer_blocked("tiktok", tiktok);
        }
        metrics.note_answer_blocked("telegram-ip", tiktok);
        metrics.note_answer_blocked("tiktok", other);
        let mut taken = metrics.take_answer_blocked();
        taken.sort();
        assert_eq!(
            taken,
            [
                ("telegram-ip".into(), "cdn.example".into(), 1),
                ("tiktok".into(), "cdn.example".into(), 3),
                ("tiktok".into(), "x.example".into(), 1),
            ]
        );
        assert!(metrics.take_answer_blocked().is_empty(), "taken once");
        for i in 0..=ANSWER_BLOCKED_NAMES {
            let name = crate::name::from_text(&format!("n{i}.example")).unwrap();
            metrics.note_answer_blocked("tiktok", &name);
        }
        assert_eq!(metrics.take_answer_blocked().len(), ANSWER_BLOCKED_NAMES);
    }
}
