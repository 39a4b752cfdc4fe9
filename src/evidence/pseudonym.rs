//! The report's optional top clients (`[report] top_clients`): attempts (blocked queries and
//! bypass attempts) counted per client under a pseudonym, an HMAC-SHA256 of the address under
//! a key made at random each UTC day and kept only in memory. No address is held: the
//! pseudonym is made as the attempt is counted. A new day starts with a new key and no counts,
//! so pseudonyms cannot be linked across days, and after a restart nobody, portvakt included,
//! can tell who a pseudonym was. IPv6 clients count by their /64 (privacy addresses change
//! within it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use aws_lc_rs::hmac;
use serde::Serialize;

use crate::evidence::days::day_of;

/// Clients counted per day at most; the attempts of clients past that are only summed.
const MAX_CLIENTS: usize = 65_536;

/// Today's attempts per pseudonym. The first key is drawn at the first attempt counted, so
/// a gateway that lists no top clients never asks for randomness here.
#[derive(Default)]
pub struct Attempts {
    today: Mutex<Option<Day>>,
}

struct Day {
    day: u64,
    key: hmac::Key,
    counts: HashMap<u64, u64>,
    uncounted: u64,
}

impl Day {
    fn new(day: u64) -> Day {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        Day {
            day,
            key: hmac::Key::generate(hmac::HMAC_SHA256, &rng).expect("system randomness"),
            counts: HashMap::new(),
            uncounted: 0,
        }
    }
}

/// One listed client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub pseudonym: String,
    pub attempts: u64,
}

/// The clients with the most attempts today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopClients {
    /// The UTC day counted, `YYYY-MM-DD` (today).
    pub day: String,
    /// Clients with fewer attempts are left out.
    pub min_attempts: u64,
    /// Most attempts first.
    pub clients: Vec<Listed>,
}

impl Attempts {
    /// Counts one attempt of `client` at `unix` (seconds).
    pub fn note(&self, client: IpAddr, unix: u64) {
        let mut today = self.today.lock().expect("attempts lock");
        let today = roll(&mut today, unix);
        let pseudonym = pseudonym(&today.key, client);
        let full = today.counts.len() >= MAX_CLIENTS;
        match today.counts.get_mut(&pseudonym) {
            Some(count) => *count += 1,
            None if full => today.uncounted += 1,
            None => {
                today.counts.insert(pseudonym, 1);
            }
        }
    }

    /// Today's `n` clients with the most attempts, each with at least `min`.
    pub fn top(&self, n: usize, min: u64, unix: u64) -> TopClients {
        let mut today = self.today.lock().expect("attempts lock");
        let today = roll(&mut today, unix);
        let mut clients: Vec<(u64, u64)> = (today.counts.iter())
            .filter(|(_, count)| **count >= min)
            .map(|(p, count)| (*p, *count))
            .collect();
        clients.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        clients.truncate(n);
        TopClients {
            day: day_of(today.day * 86_400),
            min_attempts: min,
            clients: (clients.into_iter())
                .map(|(p, attempts)| Listed {
                    pseudonym: format!("{p:016x}"),
                    attempts,
                })
                .collect(),
        }
    }
}

/// Today's counts, after starting a new day (key and counts) when `unix` is in one.
fn roll(today: &mut Option<Day>, unix: u64) -> &mut Day {
    let day = unix / 86_400;
    if today.as_ref().is_none_or(|t| t.day != day) {
        *today = Some(Day::new(day));
    }
    today.as_mut().expect("a day just started")
}

fn pseudonym(key: &hmac::Key, client: IpAddr) -> u64 {
    let tag = match client.to_canonical() {
        IpAddr::V4(v4) => hmac::sign(key, &v4.octets()),
        IpAddr::V6(v6) => hmac::sign(key, &v6.octets()[..8]),
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 20_423 * 86_400; // 2025-12-01

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_top_clients_are_counted_under_pseudonyms_above_the_minimum() {
        let attempts = Attempts::default();
        for (client, times) in [("10.0.0.1", 7), ("10.0.0.2", 3), ("10.0.0.3", 5)] {
            for _ in 0..times {
                attempts.note(ip(client), DAY + 60);
            }
        }
        let top = attempts.top(10, 5, DAY + 120);
        assert_eq!(top.day, "2025-12-01");
        let counts: Vec<u64> = top.clients.iter().map(|c| c.attempts).collect();
        assert_eq!(counts, [7, 5], "the one under the minimum left out");
        assert!(top.clients.iter().all(|c| c.pseudonym.len() == 16));
        assert_ne!(top.clients[0].pseudonym, top.clients[1].pseudonym);
        assert_eq!(attempts.top(1, 5, DAY + 120).clients.len(), 1);
    }

    #[test]
    fn a_new_day_has_a_new_key_and_no_counts_and_a_v6_client_is_its_64() {
        let attempts = Attempts::default();
        for n in 0..6 {
            attempts.note(ip(&format!("2001:db8:1:2::{n}")), DAY);
        }
        let today = attempts.top(10, 2, DAY);
        assert_eq!(today.clients.len(), 1, "one /64, one client");
        assert_eq!(today.clients[0].attempts, 6);

        assert!(attempts.top(10, 2, DAY + 86_400).clients.is_empty());
        for _ in 0..6 {
            attempts.note(ip("2001:db8:1:2::1"), DAY + 86_400);
        }
        let tomorrow = attempts.top(10, 2, DAY + 86_400);
        assert_eq!(tomorrow.day, "2025-12-02");
        assert_ne!(
            tomorrow.clients[0].pseudonym, today.clients[0].pseudonym,
            "not linkable across days"
        );
    }
}
