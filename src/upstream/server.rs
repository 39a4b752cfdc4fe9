//! The servers of one group: how each has been doing (smoothed RTT, failures in a row), the
//! order a query tries them in, and when a dead one is probed again. As Unbound does, the
//! fastest server goes first, with some exploration so the others' RTTs stay known; a server
//! that failed `DOWN_AFTER` tries in a row is skipped until a background probe (the question
//! of a query that found it due) answers, with backoff while it does not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::MAX_SERVERS;
use crate::metrics::ServerMetrics;

use super::stream::Streams;

/// Failed tries in a row after which a server is down: skipped, and probed in the background.
pub const DOWN_AFTER: u32 = 3;
/// The first probe of a down server goes this long after it went down; each failed probe
/// doubles the wait, up to `MAX_PROBE_WAIT`.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(1);
const MAX_PROBE_WAIT: Duration = Duration::from_secs(60);
/// One query in this many tries a random other live server first (exploration).
const EXPLORE_ONE_IN: u32 = 20;
/// A try waits at least this long, however fast the server has been.
const MIN_TRY: Duration = Duration::from_millis(100);

/// One upstream server of a group.
pub(super) struct Server {
    pub addr: SocketAddr,
    /// As in metrics and logs: `9.9.9.9:53`, `tls://9.9.9.9:853`.
    pub label: String,
    /// Its TCP or TLS connection, reused and pipelined.
    pub streams: Streams,
    /// Whether it speaks DNS over TLS only (every query goes over `streams`).
    pub tls: bool,
    pub health: Arc<Health>,
    pub metrics: ServerMetrics,
}

/// How a server has been doing; kept across reloads while the server stays configured.
pub struct Health {
    /// Smoothed RTT in µs (RFC 6298 style, gain 1/8); 0 before the first answer.
    srtt_us: AtomicU32,
    /// Failed tries in a row.
    failures: AtomicU32,
    /// While down: when the next probe may go, in ms since `epoch`.
    probe_at_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            srtt_us: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            probe_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Health {
    pub fn srtt(&self) -> Option<Duration> {
        let us = self.srtt_us.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(u64::from(us)))
    }

    pub fn is_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= DOWN_AFTER
    }

    /// Whether a probe of this down server is due now; true for one caller only.
    fn take_probe(&self, now: Instant) -> bool {
        let now_ms = self.ms(now);
        let due = self.probe_at_ms.load(Ordering::Relaxed);
        // The next caller waits one backoff: a probe that hangs is not repeated meanwhile.
        now_ms >= due
            && (self.probe_at_ms)
                .compare_exchange(
                    due,
                    now_ms + self.backoff_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn backoff_ms(&self) -> u64 {
        let beyond = self
            .failures
            .load(Ordering::Relaxed)
            .saturating_sub(DOWN_AFTER);
        let wait = FIRST_PROBE_WAIT.saturating_mul(1 << beyond.min(6));
        wait.min(MAX_PROBE_WAIT).as_millis() as u64
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

impl Server {
    /// How long one try may wait: three smoothed RTTs, within [`MIN_TRY`] and `cap`; `cap`
    /// itself before the first answer.
    pub fn try_timeout(&self, cap: Duration) -> Duration {
        match self.health.srtt() {
            Some(srtt) => (srtt * 3 + Duration::from_millis(20)).clamp(MIN_TRY, cap.max(MIN_TRY)),
            None => cap,
        }
        .min(cap)
    }

    /// Counts an answer that took `rtt`.
    pub fn answered(&self, rtt: Duration) {
        let rtt_us = rtt.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        let old = self.health.srtt_us.load(Ordering::Relaxed);
        let srtt = if old == 0 {
            rtt_us
        } else {
            ((u64::from(old) * 7 + u64::from(rtt_us)) / 8) as u32
        };
        self.health.srtt_us.store(srtt.max(1), Ordering::Relaxed);
        self.metrics.srtt.set(f64::from(srtt) / 1e6);
        if self.health.failures.swap(0, Ordering::Relaxed) >= DOWN_AFTER {
            info!(server = %self.label, "upstream server answers again");
            self.metrics.up.set(1);
        }
    }

    /// Counts a try that failed after waiting `waited`: its RTT estimate grows to at least
    /// that, so it sorts behind the servers that answer.
    pub fn failed(&self, waited: Duration, now: Instant) {
        let waited_us = waited.as_micros().min(u128::from(u32::MAX)) as u32;
        let old = self.health.srtt_us.load(Ordering::Relaxed);
        self.health
            .srtt_us
            .store(old.max(waited_us).max(1), Ordering::Relaxed);
        let failures = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == DOWN_AFTER {
            warn!(server = %self.label, "upstream server down after {DOWN_AFTER} failed tries; probed in the background");
            self.metrics.up.set(0);
        }
        if failures >= DOWN_AFTER {
            let next = self.health.ms(now) + self.health.backoff_ms();
            self.health.probe_at_ms.store(next, Ordering::Relaxed);
        }
    }
}

/// The order one query tries a group's servers in, and the down server to probe, if any.
pub(super) struct Order {
    at: [u8; MAX_SERVERS],
    len: usize,
    /// A down server whose probe is due: asked in the background, not by this query.
    pub probe: Option<usize>,
}

impl Order {
    /// Live servers by smoothed RTT (unknown first: they are yet to be measured), one query in
    /// [`EXPLORE_ONE_IN`] with a random other live server first; then the down ones, asked
    /// only when every live one failed.
    pub fn new(servers: &[Arc<Server>], now: Instant) -> Order {
        let mut order = Order {
            at: [0; MAX_SERVERS],
            len: servers.len().min(MAX_SERVERS),
            probe: None,
        };
        for (i, slot) in order.at[..order.len].iter_mut().enumerate() {
            *slot = i as u8;
        }
        let key = |i: &u8| {
            let health = &servers[*i as usize].health;
            (health.is_down(), health.srtt_us.load(Ordering::Relaxed))
        };
        order.at[..order.len].sort_by_key(key);
        let live = order.at[..order.len]
            .iter()
            .take_while(|i| !servers[**i as usize].health.is_down())
            .count();
        if live > 1 && rand::random::<u32>().is_multiple_of(EXPLORE_ONE_IN) {
            let pick = 1 + rand::random::<u32>() as usize % (live - 1);
            order.at.swap(0, pick);
        }
        order.probe = order.at[live..order.len]
            .iter()
            .map(|i| *i as usize)
            .find(|&i| servers[i].health.take_probe(now));
        order
    }

    /// Server indices in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        self.at[..self.len].iter().map(|i| *i as usize)
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn servers(n: usize) -> Vec<Arc<Server>> {
        let metrics = Metrics::new();
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([192, 0, 2, i as u8], 53));
                let metrics = metrics.server("default", &addr.to_string());
                Arc::new(Server {
                    addr,
                    label: addr.to_string(),
                    streams: Streams::new(addr, None, None, None, metrics.connections.clone()),
                    tls: false,
                    health: Arc::default(),
                    metrics,
                })
            })
            .collect()
    }

    fn first_choices(servers: &[Arc<Server>], now: Instant) -> [usize; 3] {
        let mut counts = [0; 3];
        for _ in 0..2000 {
            counts[Order::new(servers, now).iter().next().unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn the_fastest_goes_first_and_the_others_are_explored() {
        let servers = servers(3);
        let now = Instant::now();
        servers[0].answered(Duration::from_millis(30));
        servers[1].answered(Duration::from_millis(2));
        servers[2].answered(Duration::from_millis(10));
        let order: Vec<usize> = Order::new(&servers, now).iter().collect();
        assert_eq!(order.len(), 3);
        let counts = first_choices(&servers, now);
        assert!(counts[1] > 1800, "fastest first: {counts:?}");
        assert!(counts[0] > 10 && counts[2] > 10, "explored: {counts:?}");
    }

    #[test]
    fn a_dead_server_is_skipped_then_probed_with_backoff() {
        let servers = servers(2);
        let now = Instant::now();
        servers[0].answered(Duration::from_millis(1));
        servers[1].answered(Duration::from_millis(5));
        for _ in 0..DOWN_AFTER {
            servers[0].failed(Duration::from_millis(500), now);
        }
        assert!(servers[0].health.is_down());
        assert_eq!(servers[0].metrics.up.get(), 0);
        let order = Order::new(&servers, now);
        assert_eq!(order.iter().collect::<Vec<_>>(), [1, 0], "down ones last");
        assert_eq!(order.probe, None, "not due yet");
        let due = now + FIRST_PROBE_WAIT;
        assert_eq!(Order::new(&servers, due).probe, Some(0), "due");
        assert_eq!(Order::new(&servers, due).probe, None, "one probe at a time");
        // The probe failed: the next waits twice as long.
        servers[0].failed(Duration::from_millis(500), due);
        assert_eq!(Order::new(&servers, due + FIRST_PROBE_WAIT).probe, None);
        assert_eq!(
            Order::new(&servers, due + FIRST_PROBE_WAIT * 2).probe,
            Some(0)
        );
        servers[0].answered(Duration::from_millis(1));
        assert!(!servers[0].health.is_down());
        assert_eq!(servers[0].metrics.up.get(), 1);
    }

    #[test]
    fn a_try_waits_three_rtts_within_bounds() {
        let servers = servers(1);
        let cap = Duration::from_millis(500);
        assert_eq!(servers[0].try_timeout(cap), cap, "unmeasured: the cap");
        servers[0].answered(Duration::from_millis(50));
        assert_eq!(servers[0].try_timeout(cap), Duration::from_millis(170));
        servers[0].answered(Duration::from_millis(50));
        servers[0].health.srtt_us.store(1, Ordering::Relaxed);
        assert_eq!(servers[0].try_timeout(cap), MIN_TRY);
        assert_eq!(
            servers[0].try_timeout(Duration::from_millis(30)),
            Duration::from_millis(30)
        );
    }
}
