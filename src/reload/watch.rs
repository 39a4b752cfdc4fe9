//! Reload when the config file or a list file changes. The watch is on each file's directory,
//! so edits that write a new file and rename it over the old one (editors, `git checkout`,
//! config management) are seen as well as edits in place. Events are debounced: a burst of
//! writes is one reload. Only changes count: opening or reading a file (as every reload does)
//! is not one, or each reload would trigger the next. A file that is a symlink changes when
//! what it resolves to does: a Kubernetes ConfigMap volume is updated by swapping its `..data`
//! link, which no event names the file for. What a change does is the caller's (`on_change`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_full::notify::{self, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tracing::{debug, warn};

/// Quiet time after the last event before the reload starts.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Each watched file and what it resolves to (through symlinks), when it exists.
type Files = HashMap<PathBuf, Option<PathBuf>>;

/// Watches a set of files; a change to any of them calls `on_change`.
pub(crate) struct Watcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    files: Arc<Mutex<Files>>,
    dirs: HashSet<PathBuf>,
}

impl Watcher {
    pub(crate) fn new(on_change: impl Fn() + Send + 'static) -> notify::Result<Watcher> {
        let files: Arc<Mutex<Files>> = Arc::default();
        let watched = files.clone();
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                let mut files = watched.lock().expect("watch set lock");
                let mut changes = (events.iter())
                    .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                    .flat_map(|e| &e.paths)
                    .peekable();
                if changes.peek().is_none() {
                    return;
                }
                let named = changes.find(|path| files.contains_key(*path));
                let changed = named.cloned().or_else(|| relinked(&mut files));
                if let Some(path) = changed {
                    debug!(path = %path.display(), "watched file changed");
                    on_change();
                }
            }
            Err(errors) => errors
                .iter()
                .for_each(|err| warn!(%err, "file watch error")),
        };
        Ok(Watcher {
            debouncer: new_debouncer(DEBOUNCE, None, handler)?,
            files,
            dirs: HashSet::new(),
        })
    }

    /// Watches exactly `files` from now on (the set changes when the config does).
    pub(crate) fn set_files(&mut self, files: Vec<PathBuf>) {
        let files: Files = (files.iter().filter_map(|f| absolute(f)))
            .map(|f| {
                let target = resolved(&f);
                (f, target)
            })
            .collect();
        let dirs: HashSet<PathBuf> = (files.keys())
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.debouncer.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(err) = self.debouncer.watch(new, RecursiveMode::NonRecursive) {
                warn!(dir = %new.display(), %err, "cannot watch directory");
            }
        }
        self.dirs = dirs;
        *self.files.lock().expect("watch set lock") = files;
    }
}

/// A watched file that now resolves elsewhere (a symlink on its way was swapped); the
/// targets are brought up to date.
fn relinked(files: &mut Files) -> Option<PathBuf> {
    let mut changed = None;
    for (file, target) in files.iter_mut() {
        let now = resolved(file);
        if now != *target {
            *target = now;
            changed = Some(file.clone());
        }
    }
    changed
}

fn resolved(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

fn absolute(path: &Path) -> Option<PathBuf> {
    std::path::absolute(path).ok()
}
