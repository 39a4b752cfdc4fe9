//! Lists with `urls` are fetched again when their `refresh` is due; a changed copy asks for a
//! reload. Which sources are due is read from the policy in force, which is not held across
//! the downloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{ListConfig, RemoteSource};
use crate::gateway::Gateway;
use crate::lists::remote::{Fetcher, Update};

/// How often the sources are looked at when none is due sooner.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// Runs until `stop`: each source is fetched once its `refresh` has passed since its last
/// fetch (the first after one `refresh` from start, which downloads what has no copy).
pub(crate) async fn refresh_lists(
    gateway: Arc<Gateway>,
    fetcher: Fetcher,
    on_change: impl Fn(),
    stop: CancellationToken,
) {
    let mut fetched: HashMap<(String, String), Instant> = HashMap::new();
    loop {
        let sources: Vec<(ListConfig, RemoteSource)> = gateway.with_policy(|policy| {
            let lists = policy.config().lists.iter();
            lists
                .flat_map(|l| l.remote.iter().map(move |r| (l.clone(), r.clone())))
                .collect()
        });
        let now = Instant::now();
        let mut next = now + LOOK_EVERY;
        let mut changed = false;
        for (list, source) in &sources {
            let key = (list.name.clone(), source.url.clone());
            let last = *fetched.entry(key.clone()).or_insert(now);
            let due = last + list.refresh;
            if due <= now {
                let update = fetcher.update(list, source).await;
                changed |= matches!(update, Update::Updated { .. });
                fetched.insert(key, Instant::now());
                next = next.min(Instant::now() + list.refresh);
            } else {
                next = next.min(due);
            }
        }
        if changed {
            on_change();
        }
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = stop.cancelled() => return,
        }
    }
}
