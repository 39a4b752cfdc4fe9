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
use crate::error;
use crate::evidence::audit;
pub use crate::evidence::audit::{Override, Trigger};
use crate::evidence::days::unix_now;
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
    /// A guard refused the new policy: lists that shrank too far, expectations it breaks.
    #[error("{}", guard_message(shrunk, broken))]
    Guarded {
        shrunk: Vec<Shrunk>,
        broken: Option<CompileError>,
    },
    #[error("portvakt is shutting down")]
    ShuttingDown,
}

impl ReloadError {
    /// Why, in a word (the `reason` label of `portvakt_reloads_rejected_total`); `None` for
    /// a shutdown, which rejects nothing.
    pub fn reason(&self) -> Option<&'static str> {
        Some(match self {
            ReloadError::Config(_) => "config",
            ReloadError::Compile(CompileError::List(_) | CompileError::TooManyEntries { .. }) => {
                "list"
            }
            ReloadError::Compile(CompileError::NoCopy { .. }) | ReloadError::Download(_) => {
                "download"
            }
            ReloadError::Compile(CompileError::Expectations { .. }) => "expectation",
            ReloadError::Guarded { shrunk, .. } if !shrunk.is_empty() => "shrink",
            ReloadError::Guarded { .. } => "expectation",
            ReloadError::ShuttingDown => return None,
        })
    }
}

/// A list a segment blocks that lost more than its `max_shrink` share in one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    pub list: String,
    pub before: usize,
    pub after: usize,
    /// `max_shrink` as a percentage.
    pub max_percent: u32,
    pub files: Vec<PathBuf>,
}

fn guard_message(shrunk: &[Shrunk], broken: &Option<CompileError>) -> String {
    let mut lines = vec![shrink_message(shrunk)];
    lines.extend(broken.as_ref().map(ToString::to_string));
    lines.retain(|l| !l.is_empty());
    lines.join("\n")
}

fn shrink_message(shrunk: &[Shrunk]) -> String {
    let lines: Vec<String> = shrunk
        .iter()
        .map(|s| {
            let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
            format!(
                "list \"{}\" would shrink from {} to {} entries in one change, more than its max_shrink of {}% ({}); refused: the running policy stays (to accept it: POST /api/v1/reload?allow_shrink={}&reason=...)",
                s.list,
                s.before,
                s.after,
                s.max_percent,
                files.join(", "),
                s.list
            )
        })
        .collect();
    lines.join("\n")
}

/// What is told of every policy put in force, at start and by each reload.
pub type OnChange = Box<dyn Fn(&Policy) + Send + Sync>;

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
    /// The acceptance the next build applies, if one was given.
    accepted: Mutex<Option<Override>>,
    status: Mutex<ReloadStatus>,
    /// Called with every policy put in force (the evidence store notes it).
    on_change: Option<OnChange>,
    watcher: Mutex<Option<Watcher>>,
    /// The config the process started with: what the listeners were built from.
    initial: Config,
}

impl Reloader {
    pub fn new(
        gateway: Arc<Gateway>,
        source: ConfigSource,
        fetcher: Fetcher,
        on_change: Option<OnChange>,
    ) -> Arc<Reloader> {
        let (done, _) = channel::channel(Completed {
            seq: 0,
            result: Ok(0),
        });
        let initial = gateway.with_policy(|policy| {
            audit::record_change(None, &policy.in_force(), None, None);
            policy.config().clone()
        });
        if let Some(on_change) = &on_change {
            gateway.with_policy(|p| on_change(p));
        }
        Arc::new(Reloader {
            initial,
            gateway,
            source,
            fetcher,
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            done,
            trigger: Mutex::new(None),
            accepted: Mutex::new(None),
            status: Mutex::new(ReloadStatus::default()),
            on_change,
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
        self.reload_accepting(trigger, None).await
    }

    /// [`Reloader::reload`], accepting the shrinks `accepted` names for this build.
    pub async fn reload_accepting(
        &self,
        trigger: Trigger,
        accepted: Option<Override>,
    ) -> Result<u64, Arc<ReloadError>> {
        if accepted.is_some() {
            *self.accepted.lock().expect("accepted lock") = accepted;
        }
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
            let accepted = self.accepted.lock().expect("accepted lock").take();
            let built = self.build().await.and_then(|(policy, restart)| {
                let shrunk = self.shrunk(&policy, accepted.as_ref());
                let broken = policy.refused_by_expectations();
                if shrunk.is_empty() && broken.is_none() {
                    Ok((policy, restart))
                } else {
                    Err(ReloadError::Guarded { shrunk, broken })
                }
            });
            let result = match built {
                Ok((policy, restart)) => {
                    Ok(self.put_in_force(policy, restart, trigger, accepted.as_ref()))
                }
                Err(err) => {
                    let metrics = self.gateway.metrics();
                    metrics.reloads_failure.inc();
                    if let Some(reason) = err.reason() {
                        metrics.reloads_rejected.with_label_values(&[reason]).inc();
                    }
                    metrics.reload_failing.set(1);
                    let shrunk: Vec<&str> = match &err {
                        ReloadError::Guarded { shrunk, .. } => {
                            shrunk.iter().map(|s| s.list.as_str()).collect()
                        }
                        _ => Vec::new(),
                    };
                    metrics.set_shrink_refused(&shrunk);
                    let text = error::chain(&err);
                    (self.gateway)
                        .with_policy(|p| audit::record_rejected(&p.in_force(), trigger, &text));
                    let trigger = trigger.map_or("none", Trigger::as_str);
                    error!(error = %text, trigger, "reload rejected; the previous policy keeps serving");
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

    /// The lists of `policy` that a segment blocks and that lost more than their `max_shrink`
    /// share of entries against the policy in force, unless `accepted` names them. A list
    /// that is only allowed may shrink: that blocks more, never less.
    fn shrunk(&self, policy: &Policy, accepted: Option<&Override>) -> Vec<Shrunk> {
        self.gateway.with_policy(|running| {
            let before: std::collections::HashMap<&str, usize> = (running.lists().iter())
                .map(|l| (l.name.as_str(), l.entries))
                .collect();
            let config = policy.config();
            let blocked = |id: usize| {
                (config.segments.iter()).any(|s| s.block.iter().any(|l| l.index() == id))
            };
            let mut shrunk = Vec::new();
            for (id, (list, settings)) in policy.lists().iter().zip(&config.lists).enumerate() {
                let Some(&before) = before.get(list.name.as_str()) else {
                    continue;
                };
                let lost = before.saturating_sub(list.entries) as f64;
                let accepted = accepted.is_some_and(|a| a.allow_shrink.contains(&list.name));
                if blocked(id) && lost > settings.max_shrink * before as f64 && !accepted {
                    shrunk.push(Shrunk {
                        list: list.name.clone(),
                        before,
                        after: list.entries,
                        max_percent: (settings.max_shrink * 100.0).round() as u32,
                        files: list.files.clone(),
                    });
                }
            }
            shrunk
        })
    }

    /// Swaps `policy` in, and says so in metrics, log and status; returns its generation.
    /// `restart` lists the changed settings that only a restart applies.
    fn put_in_force(
        &self,
        policy: Policy,
        restart: Vec<String>,
        trigger: Option<Trigger>,
        accepted: Option<&Override>,
    ) -> u64 {
        let listeners = restart;
        let files = self.watched_files(&policy);
        let generation = policy.generation();
        let old = self.gateway.swap(policy);
        (self.gateway).with_policy(|new| {
            audit::record_change(Some(&old.in_force()), &new.in_force(), trigger, accepted);
            if let Some(on_change) = &self.on_change {
                on_change(new);
            }
        });
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
        let metrics = self.gateway.metrics();
        metrics.reloads_success.inc();
        metrics.reload_failing.set(0);
        metrics.set_shrink_refused(&[]);
        let trigger = trigger.map_or("none", Trigger::as_str);
        info!(generation, trigger, "policy reloaded");
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

    /// Reads the config, keeps what only a restart applies as the process started it (listed
    /// in the second value), downloads sources that have no copy yet, and compiles on a
    /// blocking thread.
    async fn build(&self) -> Result<(Policy, Vec<String>), ReloadError> {
        let source = self.source.clone();
        let mut config = tokio::task::spawn_blocking(move || source.load())
            .await
            .expect("config load does not panic")?;
        let restart = config.keep_start_settings(&self.initial);
        self.fetcher.prepare(&config, true).await?;
        let metrics = self.gateway.metrics().clone();
        // Only this worker swaps, so the generation in force now is the one this follows.
        let generation = self.gateway.generation() + 1;
        let policy =
            tokio::task::spawn_blocking(move || Policy::build(config, &metrics, generation))
                .await
                .expect("policy build does not panic")?;
        Ok((policy, restart))
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
