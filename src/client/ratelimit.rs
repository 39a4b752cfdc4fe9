//! Rate limiting per client address over UDP: a token bucket per client (IPv6 aggregated by a
//! configured prefix), in a fixed table of slots so memory is bounded whatever the number of
//! addresses; a client that finds both of its candidate slots held by others takes the one
//! used longest ago (the oldest is evicted). Over its rate a client's answers are dropped,
//! every `slip`-th one sent truncated instead (TC=1), so a real client behind a forged flood
//! retries over TCP and is answered (RRL's slip). No lock: each slot is two atomics, and a
//! race between two queries of one client costs at most a token.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ipnet::IpNet;
use rustc_hash::FxBuildHasher;

/// Tokens are counted in thousandths of a query, so rates below 1 qps work too.
const MILLI: u64 = 1000;

/// One client's rate: queries per second, and the burst it may send at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub qps: u32,
    pub burst: u32,
}

/// What to do with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Pass,
    /// Over the rate: send nothing.
    Drop,
    /// Over the rate: send a truncated answer (header and question, TC=1).
    Slip,
}

/// The clients' buckets.
pub struct RateLimiter {
    /// Per slot: the client's key (0: empty).
    keys: Box<[AtomicU64]>,
    /// Per slot: tokens (milli-queries) in the high 32 bits, the last refill (ms) in the low.
    buckets: Box<[AtomicU64]>,
    ipv6_prefix: u8,
    slip: u32,
    exempt: Vec<IpNet>,
    /// Answers dropped, for the slip count.
    dropped: AtomicU32,
    epoch: std::time::Instant,
}

impl RateLimiter {
    /// A table of `clients` slots (rounded up to a power of two).
    pub fn new(clients: usize, ipv6_prefix: u8, slip: u32, exempt: Vec<IpNet>) -> RateLimiter {
        let slots = clients.max(2).next_power_of_two();
        RateLimiter {
            keys: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            buckets: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            ipv6_prefix: ipv6_prefix.min(128),
            slip,
            exempt,
            dropped: AtomicU32::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// `at` on the limiter's millisecond clock.
    pub fn ms(&self, at: std::time::Instant) -> u32 {
        let since = at.saturating_duration_since(self.epoch);
        // Wraps after 49 days; the buckets compare times with wrapping arithmetic.
        (since.as_secs() as u32)
            .wrapping_mul(1000)
            .wrapping_add(since.subsec_millis())
    }

    /// Takes one token of `client`'s bucket at `now_ms` (any monotonic millisecond clock).
    pub fn check(&self, client: IpAddr, rate: Rate, now_ms: u32) -> Limit {
        if self.exempt.iter().any(|net| net.contains(&client)) {
            return Limit::Pass;
        }
        let key = self.key(client);
        let slot = self.slot(key, now_ms);
        let capacity = u64::from(rate.burst.max(1)) * MILLI;
        let bucket = &self.buckets[slot];
        let mut old = bucket.load(Ordering::Relaxed);
        loop {
            let (tokens, last) = (old >> 32, old as u32);
            let elapsed = u64::from(now_ms.wrapping_sub(last).min(3_600_000));
            let tokens = (tokens + elapsed * u64::from(rate.qps)).min(capacity);
            let (left, pass) = match tokens.checked_sub(MILLI) {
                Some(left) => (left, true),
                None => (tokens, false),
            };
            let new = (left << 32) | u64::from(now_ms);
            match bucket.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) if pass => return Limit::Pass,
                Ok(_) => break,
                Err(current) => old = current,
            }
        }
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if self.slip > 0 && dropped.is_multiple_of(self.slip) {
            Limit::Slip
        } else {
            Limit::Drop
        }
    }

    /// A non-zero key per client: IPv4 by address, IPv6 by its prefix.
    fn key(&self, client: IpAddr) -> u64 {
        let bits: u128 = match client.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)) | (1 << 127),
            IpAddr::V6(v6) => {
                let keep = u32::from(self.ipv6_prefix);
                let mask = if keep == 0 {
                    0
                } else {
                    u128::MAX << (128 - keep)
                };
                u128::from(v6) & mask
            }
        };
        FxBuildHasher.hash_one(bits) | 1
    }

    /// The client's slot: one of two candidates, its own if it has one, else the one used
    /// longest ago, taken over with a full bucket.
    fn slot(&self, key: u64, now_ms: u32) -> usize {
        let mask = self.keys.len() - 1;
        let first = (key >> 17) as usize & mask;
        let second = (key.rotate_left(29) as usize & mask) ^ 1;
        for slot in [first, second] {
            if self.keys[slot].load(Ordering::Relaxed) == key {
                return slot;
            }
        }
        let age =
            |slot: usize| now_ms.wrapping_sub(self.buckets[slot].load(Ordering::Relaxed) as u32);
        let victim = if age(first) >= age(second) {
            first
        } else {
            second
        };
        self.keys[victim].store(key, Ordering::Relaxed);
        // A new client starts with a full bucket: the refill from "long ago" fills it.
        let long_ago = now_ms.wrapping_sub(3_600_000);
        self.buckets[victim].store(u64::from(long_ago), Ordering::Relaxed);
        victim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(1024, 56, 0, Vec::new());
        let rate = Rate { qps: 10, burst: 20 };
        let passed = (0..100).filter(|_| limiter.check(ip("10.0.0.1"), rate, 1000) == Limit::Pass);
        assert_eq!(passed.count(), 20, "the burst");
        // 10 qps: one token per 100 ms.
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 1050), Limit::Drop);
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 1100), Limit::Pass);
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 1100), Limit::Drop);
        // Another client has its own bucket.
        assert_eq!(limiter.check(ip("10.0.0.2"), rate, 1100), Limit::Pass);
        // One IPv6 /56 is one client.
        let v6 = (0..30).filter(|i| {
            let client = ip(&format!("2001:db8:0:1{i:02x}::1"));
            limiter.check(client, rate, 1000) == Limit::Pass
        });
        assert_eq!(v6.count(), 20);
    }

    #[test]
    fn every_slip_th_drop_is_truncated_and_exempt_clients_pass() {
        let exempt = vec!["10.9.0.0/16".parse().unwrap()];
        let limiter = RateLimiter::new(1024, 56, 2, exempt);
        let rate = Rate { qps: 1, burst: 1 };
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 0), Limit::Pass);
        let over: Vec<Limit> = (0..4)
            .map(|_| limiter.check(ip("10.0.0.1"), rate, 0))
            .collect();
        assert_eq!(over, [Limit::Drop, Limit::Slip, Limit::Drop, Limit::Slip]);
        assert!((0..100).all(|_| limiter.check(ip("10.9.1.1"), rate, 0) == Limit::Pass));
    }

    #[test]
    fn the_table_is_bounded_and_the_oldest_client_is_evicted() {
        let limiter = RateLimiter::new(4, 56, 0, Vec::new());
        assert_eq!(limiter.keys.len(), 4);
        let rate = Rate { qps: 1, burst: 1 };
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 0), Limit::Pass);
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 0), Limit::Drop);
        // Many other clients later: 10.0.0.1's slot goes to one of them.
        for i in 2..200 {
            limiter.check(ip(&format!("10.0.{}.{}", i / 250, i % 250)), rate, 10);
        }
        // Evicted, it starts again with a full bucket (bounded memory, not a lost limit).
        assert_eq!(limiter.check(ip("10.0.0.1"), rate, 20), Limit::Pass);
    }
}
