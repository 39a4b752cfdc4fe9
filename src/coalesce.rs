//! Identical questions in flight share one upstream exchange: the first to ask leads, the
//! others follow and get the leader's result. Keyed like the cache (name, type, class, DO,
//! CD). A lock is taken only on the miss path, never for blocked or cached answers. A leader
//! that nobody follows costs no channel: each follower brings its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustc_hash::FxBuildHasher;
use tokio::sync::oneshot;

use crate::cache::Key;

/// Where a question's result comes (an error if the leader went away without one).
pub type Result<T> = oneshot::Receiver<T>;

/// Questions in flight, each with its followers.
pub struct InFlight<T> {
    map: Mutex<HashMap<Key, Vec<oneshot::Sender<T>>, FxBuildHasher>>,
}

/// What one asker of a question is to do.
pub enum Join<T> {
    /// Ask upstream, then `finish`.
    Leader(Lead<T>),
    /// Wait for the leader's result (`None` if the leader went away without one).
    Follower(Result<T>),
}

/// The leader of a question; dropping it (also without `finish`) frees the question.
pub struct Lead<T> {
    in_flight: Arc<InFlight<T>>,
    /// `None` once finished.
    key: Option<Key>,
}

impl<T: Clone> InFlight<T> {
    pub fn new() -> Arc<InFlight<T>> {
        Arc::new(InFlight {
            map: Mutex::new(HashMap::default()),
        })
    }

    /// Leads the question `key`, or follows the asker that already leads it.
    pub fn join(self: &Arc<Self>, key: &[u8]) -> Join<T> {
        let mut map = self.map.lock().expect("in-flight lock");
        if let Some(followers) = map.get_mut(key) {
            let (tx, rx) = oneshot::channel();
            followers.push(tx);
            return Join::Follower(rx);
        }
        let key = Key::from_slice(key);
        map.insert(key.clone(), Vec::new());
        Join::Leader(Lead {
            in_flight: self.clone(),
            key: Some(key),
        })
    }

    /// Questions in flight now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().expect("in-flight lock").len()
    }
}

impl<T: Clone> Lead<T> {
    /// Hands `result` to every follower, and frees the question.
    pub fn finish(mut self, result: T) {
        for follower in self.free() {
            let _ = follower.send(result.clone());
        }
    }
}

impl<T> Lead<T> {
    fn free(&mut self) -> Vec<oneshot::Sender<T>> {
        let Some(key) = self.key.take() else {
            return Vec::new();
        };
        let mut map = self.in_flight.map.lock().expect("in-flight lock");
        map.remove(&key).unwrap_or_default()
    }
}

impl<T> Drop for Lead<T> {
    /// A leader gone without a result frees the question; its followers get none.
    fn drop(&mut self) {
        drop(self.free());
    }
}

/// The leader's result, or `None` when it went away without one.
pub async fn followed<T>(result: Result<T>) -> Option<T> {
    result.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result_and_the_question_is_freed() {
        let in_flight: Arc<InFlight<u32>> = InFlight::new();
        let Join::Leader(lead) = in_flight.join(b"q") else {
            panic!("the first asker leads")
        };
        let Join::Follower(first) = in_flight.join(b"q") else {
            panic!("the second follows")
        };
        let Join::Follower(second) = in_flight.join(b"q") else {
            panic!("the third follows")
        };
        assert!(matches!(in_flight.join(b"other"), Join::Leader(_)));
        lead.finish(7);
        assert_eq!(followed(first).await, Some(7));
        assert_eq!(followed(second).await, Some(7));
        assert_eq!(in_flight.len(), 0);
        // A leader that goes away without a result leaves its followers with none.
        let Join::Leader(lead) = in_flight.join(b"q") else {
            panic!("leads again")
        };
        let Join::Follower(follower) = in_flight.join(b"q") else {
            panic!("follows")
        };
        drop(lead);
        assert_eq!(followed(follower).await, None);
    }
}
