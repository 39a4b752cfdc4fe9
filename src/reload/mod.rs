//! One reload path for every trigger (SIGHUP, a watched file changing, `POST /api/v1/reload`,
//! a downloaded list changing): read the config again, compile a whole new policy off the hot
//! path, and swap it in; on any failure the running policy keeps serving, and the error stays
//! in `status()` until a reload succeeds. Either way `portvakt_reloads_total` counts it.
//!
//! Requests coalesce: one worker builds, and requests that arrive meanwhile are served by the
//! next build. A build never waits for anything that holds the policy in force: the gateway
//! only lends its policy to synchronous code, so the one a swap replaces is gone within
//! microseconds and at most two policies are alive at once (the running one and the one
//! being built). The triggers that are not calls live beside this: `watch.rs` (file changes)
//! and `refresh.rs` (list downloads).

pub mod audit;
mod refresh;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{Notify, watch as channel};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::days::unix_now;
use crate::error;
use crate::gateway::Gateway;
use crate::lists::remote::{Fetcher, NoCopyError};
use crate::policy::{CompileError, Policy};
use refresh::refresh_lists;
use watch::Watcher;

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
    #[error(transparent)]
    Download(#[from] NoCopyError),
    #[error("portvakt is shutting down")]
    ShuttingDown,
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
    result: Result<u64, Arc<ReloadError>>,
}

/// Owns reloading for one running gateway.
pub struct Reloader {
    gateway: Arc<Gateway>,
    source: ConfigSource,
    fetcher: Fetcher,
    requested: AtomicU64,
    wake: Notify,
    done: channel::Sender<Completed>,
    trigger: Mutex<Option<Trigger>>,
    status: Mutex<ReloadStatus>,
    watcher: Mutex<Option<Watcher>>,
    /// The config the process started with: what the listeners were built from.
    initial: Config,
}

impl Reloader {
    pub fn new(gateway: Arc<Gateway>, source: ConfigSource, fetcher: Fetcher) -> Arc<Reloader> {
        let (done, _) = channel::channel(Completed {
            seq: 0,
            result: Ok(0),
        });
        let initial = gateway.with_policy(|policy| {
            audit::record_change(None, policy, None);
            policy.config().clone()
        });
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
        let reloader = Arc::downgrade(self);
        let on_download = move || {
            if let Some(reloader) = reloader.upgrade() {
                reloader.request(Trigger::ListDownload);
            }
        };
        tokio::spawn(refresh_lists(
            self.gateway.clone(),
            self.fetcher.clone(),
            on_download,
            stop.clone(),
        ));
        let (watch, files) = self
            .gateway
            .with_policy(|policy| (policy.config().watch, self.watched_files(policy)));
        if watch {
            let reloader = Arc::downgrade(self);
            let on_change = move || {
                if let Some(reloader) = reloader.upgrade() {
                    reloader.request(Trigger::FileChange);
                }
            };
            match Watcher::new(on_change) {
                Ok(mut watcher) => {
                    watcher.set_files(files);
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
    pub async fn reload(&self, trigger: Trigger) -> Result<u64, Arc<ReloadError>> {
        let mut done = self.done.subscribe();
        let seq = self.enqueue(trigger);
        let completed = done
            .wait_for(|c| c.seq >= seq)
            .await
            .map(|c| c.result.clone());
        completed.unwrap_or_else(|_| Err(Arc::new(ReloadError::ShuttingDown)))
    }

    pub fn status(&self) -> ReloadStatus {
        let mut status = self.status.lock().expect("status lock").clone();
        status.requests = self.requested.load(Ordering::SeqCst);
        status
    }

    async fn build_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => {
                    // Requests still waiting (or made from now on) get an answer, not a hang.
                    let result = Err(Arc::new(ReloadError::ShuttingDown));
                    self.done.send_replace(Completed { seq: u64::MAX, result });
                    return;
                }
            }
            let seq = self.requested.load(Ordering::SeqCst);
            let trigger = self.trigger.lock().expect("trigger lock").take();
            let result = match self.build().await {
                Ok(policy) => Ok(self.put_in_force(policy, trigger)),
                Err(err) => {
                    self.gateway.metrics().reloads_failure.inc();
                    let text = error::chain(&err);
                    (self.gateway).with_policy(|p| audit::record_rejected(p, trigger, &text));
                    error!(error = %text, ?trigger, "reload rejected; the previous policy keeps serving");
                    let mut status = self.status.lock().expect("status lock");
                    status.last_error = Some(text);
                    status.last_error_unix = Some(unix_now());
                    Err(Arc::new(err))
                }
            };
            {
                let mut status = self.status.lock().expect("status lock");
                status.last_trigger = trigger;
                status.last_attempt_unix = Some(unix_now());
                status.builds += 1;
            }
            self.done.send_replace(Completed { seq, result });
        }
    }

    /// Swaps `policy` in, and says so in metrics, log and status; returns its generation.
    fn put_in_force(&self, policy: Policy, trigger: Option<Trigger>) -> u64 {
        let listeners = restart_required(&self.initial, policy.config());
        let files = self.watched_files(&policy);
        let generation = policy.generation();
        let old = self.gateway.swap(policy);
        (self.gateway).with_policy(|new| audit::record_change(Some(&old), new, trigger));
        forget_removed(&self.gateway);
        // The replaced policy may be large: free it off the runtime, then hand the memory back.
        // A query that loaded it just before the swap lets go within microseconds.
        tokio::task::spawn_blocking(move || {
            let mut old = old;
            for _ in 0..100 {
                match Arc::try_unwrap(old) {
                    Ok(policy) => {
                        drop(policy);
                        break;
                    }
                    Err(shared) => old = shared,
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            release_freed_memory();
        });
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
        generation
    }

    /// Reads the config, downloads sources that have no copy yet, and compiles on a
    /// blocking thread.
    async fn build(&self) -> Result<Policy, ReloadError> {
        let source = self.source.clone();
        let config = tokio::task::spawn_blocking(move || source.load())
            .await
            .expect("config load does not panic")?;
        self.fetcher.prepare(&config, true).await?;
        let metrics = self.gateway.metrics().clone();
        // Only this worker swaps, so the generation in force now is the one this follows.
        let generation = self.gateway.generation() + 1;
        tokio::task::spawn_blocking(move || Policy::compile(config, &metrics, generation))
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
            .config()
            .lists
            .iter()
            .flat_map(|l| l.files.iter().cloned());
        let token = policy.config().admin_token_file.clone();
        let roots = (policy.config().upstreams.iter()).filter_map(|u| u.ca_file.clone());
        let encrypted = &policy.config().encrypted;
        let certificate = (encrypted.cert_file.iter().chain(&encrypted.key_file)).cloned();
        config
            .into_iter()
            .chain(lists)
            .chain(token)
            .chain(roots)
            .chain(certificate)
            .collect()
    }
}

/// Drops the metric series of segments, lists and upstream groups the new config removed.
fn forget_removed(gateway: &Gateway) {
    gateway.with_policy(|policy| {
        let config = policy.config();
        let segments: Vec<&str> = config.segments.iter().map(|s| s.name.as_str()).collect();
        let lists: Vec<&str> = config.lists.iter().map(|l| l.name.as_str()).collect();
        let groups: Vec<&str> = policy.upstreams().group_names().collect();
        let servers: Vec<&str> = policy.upstreams().server_labels().map(|(_, s)| s).collect();
        gateway
            .metrics()
            .retain(&segments, &lists, &groups, &servers);
    });
}

/// glibc keeps freed heap memory for reuse; a build frees its working memory and a reload a
/// whole policy (tens of MB each for a big list), so hand it back to the system.
#[allow(unsafe_code)]
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Settings that a reload cannot apply, as "what: old -> new".
fn restart_required(running: &Config, new: &Config) -> Vec<String> {
    let addrs = |addrs: &[std::net::SocketAddr]| {
        let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        format!("[{}]", shown.join(", "))
    };
    let admin =
        |addr: Option<std::net::SocketAddr>| addr.map_or("off".to_owned(), |a| a.to_string());
    let mut changes = Vec::new();
    if running.listen != new.listen {
        let (old, new) = (addrs(&running.listen), addrs(&new.listen));
        changes.push(format!("server.listen: {old} -> {new}"));
    }
    if running.admin_listen != new.admin_listen {
        let (old, new) = (admin(running.admin_listen), admin(new.admin_listen));
        changes.push(format!("admin.listen: {old} -> {new}"));
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
