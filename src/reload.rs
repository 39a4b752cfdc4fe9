//! One reload path for every trigger (SIGHUP, a watched file changing, `POST /api/v1/reload`,
//! a downloaded list changing): read the config again, compile a whole new policy off the hot
//! path, and swap it in; on any failure the running policy keeps serving, and the error stays
//! in `status()` until a reload succeeds. Either way `portvakt_reloads_total` counts it.
//!
//! Requests coalesce: one worker builds, and requests that arrive meanwhile are served by the
//! next build. Before a build starts, the policy the last one replaced must be gone, so at
//! most two policies are alive at once (the running one and the one being built).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::handler::Gateway;
use crate::policy::Policy;
use crate::policy::compile::CompileError;
use crate::remote::{Fetcher, Update};
use crate::watch::Watcher;

/// How long a build waits for queries still holding the policy replaced before it.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Where the config comes from, read again at every reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Embedded => Config::embedded_default(),
        }
    }
}

/// Why a reload was rejected; the running policy is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Remote(String),
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Signal,
    FileChange,
    Api,
    ListDownload,
}

/// The reload history `/api/v1/status` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub last_trigger: Option<Trigger>,
    pub last_attempt_unix: Option<u64>,
    pub last_success_unix: Option<u64>,
    /// The last failure, until a reload succeeds.
    pub last_error: Option<String>,
    pub last_error_unix: Option<u64>,
    /// Settings changed in the config that only a restart applies.
    pub restart_required: Vec<String>,
    /// Builds run, and requests served by them (more requests than builds: coalesced).
    pub builds: u64,
    pub requests: u64,
}

#[derive(Clone)]
struct Completed {
    /// Requests up to this number are answered by `result`.
    seq: u64,
    result: Result<u64, String>,
}

/// Owns reloading for one running gateway.
pub struct Reloader {
    gateway: Arc<Gateway>,
    source: ConfigSource,
    fetcher: Fetcher,
    requested: AtomicU64,
    wake: Notify,
    done: watch::Sender<Completed>,
    trigger: Mutex<Option<Trigger>>,
    status: Mutex<ReloadStatus>,
    watcher: Mutex<Option<Watcher>>,
    /// The config the process started with: what the listeners were built from.
    initial: Config,
}

impl Reloader {
    pub fn new(gateway: Arc<Gateway>, source: ConfigSource, fetcher: Fetcher) -> Arc<Reloader> {
        let (done, _) = watch::channel(Completed {
            seq: 0,
            result: Ok(0),
        });
        let initial = gateway.policy().config.clone();
        Arc::new(Reloader {
            initial,
            gateway,
            source,
            fetcher,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done,
            trigger: Mutex::new(None),
            status: Mutex::new(ReloadStatus::default()),
            watcher: Mutex::new(None),
        })
    }

    /// Starts the build worker, the file watcher (if the config asks for it) and the list
    /// refresher; all stop with `stop`.
    pub fn start(self: &Arc<Self>, stop: &CancellationToken) {
        tokio::spawn(self.clone().build_loop(stop.clone()));
        tokio::spawn(self.clone().refresh_loop(stop.clone()));
        let policy = self.gateway.policy();
        if policy.config.watch {
            match Watcher::new(Arc::downgrade(self)) {
                Ok(mut watcher) => {
                    watcher.set_files(self.watched_files(&policy));
                    *self.watcher.lock().expect("watcher lock") = Some(watcher);
                }
                Err(err) => {
                    warn!(%err, "cannot watch the config and list files; reload with SIGHUP or the API")
                }
            }
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Asks for a reload and returns at once; the result shows in metrics, log and status.
    pub fn request(&self, trigger: Trigger) {
        self.enqueue(trigger);
    }

    /// Records the request and wakes the worker; returns the request's number.
    fn enqueue(&self, trigger: Trigger) -> u64 {
        *self.trigger.lock().expect("trigger lock") = Some(trigger);
        let seq = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        seq
    }

    /// Asks for a reload and waits for a build that started after this call: the new
    /// generation, or why the running policy was kept.
    pub async fn reload(&self, trigger: Trigger) -> Result<u64, String> {
        let mut done = self.done.subscribe();
        let seq = self.enqueue(trigger);
        let completed = done
            .wait_for(|c| c.seq >= seq)
            .await
            .map(|c| c.result.clone());
        completed.unwrap_or_else(|_| Err("portvakt is shutting down".to_owned()))
    }

    pub fn status(&self) -> ReloadStatus {
        let mut status = self.status.lock().expect("status lock").clone();
        status.requests = self.requested.load(Ordering::SeqCst);
        status
    }

    async fn build_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut retired: Weak<Policy> = Weak::new();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => return,
            }
            let seq = self.requested.load(Ordering::SeqCst);
            let trigger = self.trigger.lock().expect("trigger lock").take();
            wait_retired(&retired).await;
            let result = match self.build().await {
                Ok(policy) => {
                    let listeners = restart_required(&self.initial, &policy.config);
                    let files = self.watched_files(&policy);
                    let old = self.gateway.swap(policy);
                    forget_removed(&self.gateway);
                    retired = Arc::downgrade(&old);
                    drop(old);
                    let generation = self.gateway.policy().generation;
                    self.gateway.metrics().reloads_success.inc();
                    info!(generation, ?trigger, "policy reloaded");
                    for change in &listeners {
                        warn!(change = %change, "changed in the config: takes effect at the next restart");
                    }
                    if let Some(watcher) = self.watcher.lock().expect("watcher lock").as_mut() {
                        watcher.set_files(files);
                    }
                    let mut status = self.status.lock().expect("status lock");
                    status.last_success_unix = Some(unix_now());
                    status.last_error = None;
                    status.restart_required = listeners;
                    Ok(generation)
                }
                Err(err) => {
                    self.gateway.metrics().reloads_failure.inc();
                    error!(error = %err, ?trigger, "reload rejected; the previous policy keeps serving");
                    let mut status = self.status.lock().expect("status lock");
                    status.last_error = Some(err.to_string());
                    status.last_error_unix = Some(unix_now());
                    Err(err.to_string())
                }
            };
            {
                let mut status = self.status.lock().expect("status lock");
                status.last_trigger = trigger;
                status.last_attempt_unix = Some(unix_now());
                status.builds += 1;
            }
            let swapped = result.is_ok();
            self.done.send_replace(Completed { seq, result });
            // Once the replaced policy is gone, give its memory back to the system.
            if swapped {
                wait_retired(&retired).await;
                release_freed_memory();
            }
        }
    }

    /// Reads the config, downloads sources that have no copy yet, and compiles on a
    /// blocking thread.
    async fn build(&self) -> Result<Policy, ReloadError> {
        let source = self.source.clone();
        let config = tokio::task::spawn_blocking(move || source.load())
            .await
            .expect("config load does not panic")?;
        self.fetcher
            .prepare(&config, true)
            .await
            .map_err(ReloadError::Remote)?;
        let metrics = self.gateway.metrics().clone();
        tokio::task::spawn_blocking(move || Policy::compile(config, &metrics))
            .await
            .expect("policy build does not panic")
            .map_err(ReloadError::from)
    }

    /// The config file (if any) and every local list file of `policy`.
    fn watched_files(&self, policy: &Policy) -> Vec<PathBuf> {
        let config = match &self.source {
            ConfigSource::File(path) => Some(path.clone()),
            ConfigSource::Embedded => None,
        };
        let lists = policy
            .config
            .lists
            .iter()
            .flat_map(|l| l.files.iter().cloned());
        let token = policy.config.admin_token_file.clone();
        config.into_iter().chain(lists).chain(token).collect()
    }

    /// Fetches each list URL again when its `refresh` is due; a changed copy is a reload.
    async fn refresh_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut fetched: HashMap<(String, String), Instant> = HashMap::new();
        loop {
            let policy = self.gateway.policy();
            let now = Instant::now();
            let mut next = now + Duration::from_secs(60);
            let mut changed = false;
            for list in &policy.config.lists {
                for source in &list.remote {
                    let key = (list.name.clone(), source.url.clone());
                    let last = *fetched.entry(key.clone()).or_insert(now);
                    let due = last + list.refresh;
                    if due <= now {
                        let update = self.fetcher.update(list, source).await;
                        changed |= matches!(update, Update::Updated { .. });
                        fetched.insert(key, Instant::now());
                        next = next.min(Instant::now() + list.refresh);
                    } else {
                        next = next.min(due);
                    }
                }
            }
            drop(policy);
            if changed {
                self.request(Trigger::ListDownload);
            }
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Drops the metric series of segments, lists and upstream groups the new config removed.
fn forget_removed(gateway: &Gateway) {
    let policy = gateway.policy();
    let config = &policy.config;
    let segments: Vec<&str> = config.segments.iter().map(|s| s.name.as_str()).collect();
    let lists: Vec<&str> = config.lists.iter().map(|l| l.name.as_str()).collect();
    let groups: Vec<&str> = policy.upstreams.group_names().collect();
    gateway.metrics().retain(&segments, &lists, &groups);
}

/// Waits until no query holds the policy the last reload replaced (bounded).
async fn wait_retired(retired: &Weak<Policy>) {
    let started = Instant::now();
    while retired.strong_count() > 0 {
        if started.elapsed() > RETIRE_WAIT {
            warn!("the previous policy is still in use after {RETIRE_WAIT:?}; building anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// glibc keeps freed heap memory for reuse; a build frees its working memory and a reload a
/// whole policy (tens of MB each for a big list), so hand it back to the system.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Settings that a reload cannot apply, as "what: old -> new".
fn restart_required(running: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if running.listen != new.listen {
        changes.push(format!(
            "server.listen: {:?} -> {:?}",
            running.listen, new.listen
        ));
    }
    if running.admin_listen != new.admin_listen {
        changes.push(format!(
            "admin.listen: {:?} -> {:?}",
            running.admin_listen, new.admin_listen
        ));
    }
    if running.cache_max_entries != new.cache_max_entries {
        changes.push(format!(
            "cache.max_entries: {} -> {}",
            running.cache_max_entries, new.cache_max_entries
        ));
    }
    if running.watch != new.watch {
        changes.push(format!("server.watch: {} -> {}", running.watch, new.watch));
    }
    changes
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
