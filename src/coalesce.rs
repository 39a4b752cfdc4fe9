//! Identical questions in flight share one upstream exchange: the first to ask leads, the
//! others follow and get the leader's result. Keyed like the cache (name, type, class, DO,
//! CD). A lock is taken only on the miss path, never for blocked or cached answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Where a question's result comes: `None` until the leader has it.
pub type Result<T> = watch::Receiver<Option<T>>;

/// Questions in flight, each with the channel its result comes on.
pub struct InFlight<T> {
    map: Mutex<HashMap<Box<[u8]>, Result<T>>>,
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
    key: Box<[u8]>,
    result: watch::Sender<Option<T>>,
}

impl<T: Clone> InFlight<T> {
    pub fn new() -> Arc<InFlight<T>> {
        Arc::new(InFlight {
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Leads the question `key`, or follows the asker that already leads it.
    pub fn join(self: &Arc<Self>, key: &[u8]) -> Join<T> {
        let mut map = self.map.lock().expect("in-flight lock");
        if let Some(result) = map.get(key) {
            return Join::Follower(result.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.into(), rx);
        Join::Leader(Lead {
            in_flight: self.clone(),
            key: key.into(),
            result: tx,
        })
    }

    /// Questions in flight now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().expect("in-flight lock").len()
    }
}

impl<T> Lead<T> {
    /// Hands `result` to every follower.
    pub fn finish(self, result: T) {
        self.result.send_replace(Some(result));
    }
}

impl<T> Drop for Lead<T> {
    fn drop(&mut self) {
        self.in_flight
            .map
            .lock()
            .expect("in-flight lock")
            .remove(&self.key);
    }
}

/// The leader's result, or `None` when it went away without one.
pub async fn followed<T: Clone>(mut result: Result<T>) -> Option<T> {
    let got = result.wait_for(Option::is_some).await.ok()?;
    got.clone()
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
