//! In-flight budgets that keep one client's flood from starving the others: forwards in flight
//! per client are counted in a fixed table of counters, indexed by a hash of the client's
//! address (IPv6 by its /56, the usual size of one customer's delegation). Bounded memory, no
//! lock; two clients that land in one slot share its budget.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustc_hash::FxBuildHasher;

/// Slots of the table: with a few thousand clients, collisions are rare.
const SLOTS: usize = 1 << 14;

/// Forwards in flight per client.
pub struct ClientBudget {
    slots: Box<[AtomicU32]>,
    limit: u32,
}

/// One admitted forward of one client; dropping it gives the budget back.
pub struct ClientPermit {
    budget: Arc<ClientBudget>,
    slot: usize,
}

impl ClientBudget {
    pub fn new(limit: u32) -> Arc<ClientBudget> {
        Arc::new(ClientBudget {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            limit,
        })
    }

    /// A permit for one more forward of `client`, or `None` when it has `limit` in flight
    /// and the gateway is `pressed` (its forwards are counted either way: while the gateway
    /// has room, one busy client, e.g. a NAT, may use it).
    pub fn admit(self: &Arc<Self>, client: IpAddr, pressed: bool) -> Option<ClientPermit> {
        let slot = slot_of(client);
        let limit = if pressed { self.limit } else { u32::MAX };
        if !take(&self.slots[slot], limit) {
            return None;
        }
        Some(ClientPermit {
            budget: self.clone(),
            slot,
        })
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        self.budget.slots[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one more in `count` if that stays within `limit`; whether it did. The caller gives
/// it back with `fetch_sub(1)` when done.
pub fn take(count: &AtomicU32, limit: u32) -> bool {
    if count.fetch_add(1, Ordering::Relaxed) >= limit {
        count.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// The slot of a client: IPv4 (and IPv4-mapped) by address, IPv6 by its /56.
fn slot_of(client: IpAddr) -> usize {
    let key: u128 = match client.to_canonical() {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 72) - 1),
    };
    let mut hasher = FxBuildHasher.build_hasher();
    key.hash(&mut hasher);
    (std::hash::Hasher::finish(&hasher) as usize) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_its_budget_back() {
        let budget = ClientBudget::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = budget.admit(a, true).unwrap();
        let _second = budget.admit(a, true).unwrap();
        assert!(budget.admit(a, true).is_none(), "a third one in flight");
        assert!(
            budget.admit(b, true).is_some(),
            "another client is not affected"
        );
        let borrowed = budget.admit(a, false).expect("room while not pressed");
        assert!(budget.admit(a, true).is_none(), "borrowed ones count");
        drop((first, borrowed));
        assert!(budget.admit(a, true).is_some(), "given back");
        // One IPv6 /56 is one client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            slot_of(v6("2001:db8:0:100::1")),
            slot_of(v6("2001:db8:0:1ff::2"))
        );
        assert_eq!(slot_of(v6("::ffff:10.0.0.1")), slot_of(a));
    }
}
