//! The audit log: every policy put in force (at start and by each reload) and every reload
//! rejected, appended as one JSON line to `<state_dir>/audit.jsonl`: when, the trigger, the
//! admin token's id for API reloads (never the token), the policy hashes before and after,
//! and what changed (lists with their entry counts before and after, segments added, removed
//! or changed). No client address is ever written. Without `state_dir` there is no log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tracing::warn;

use super::Trigger;
use crate::config::Config;
use crate::days::unix_now;
use crate::policy::Policy;

/// The file under `state_dir`.
pub const FILE: &str = "audit.jsonl";

/// Where `config` keeps its audit log, if anywhere.
pub fn path(config: &Config) -> Option<PathBuf> {
    config.state_dir.as_ref().map(|dir| dir.join(FILE))
}

/// Records `new` going into force after `old` (`None`: at start).
pub fn record_change(old: Option<&Policy>, new: &Policy, trigger: Option<Trigger>) {
    let Some(path) = path(new.config()) else {
        return;
    };
    let mut record = json!({
        "time_unix": unix_now(),
        "event": if old.is_some() { "reload" } else { "start" },
        "trigger": trigger,
        "generation": new.generation(),
        "hash": new.hash(),
    });
    if trigger == Some(Trigger::Api) {
        let token = old.and_then(|p| p.config().admin_token.as_ref());
        record["token_id"] = json!(token.map(|t| t.id()));
    }
    if let Some(old) = old {
        record["previous_hash"] = json!(old.hash());
        record["lists"] = lists_changed(old, new);
        record["segments"] = segments_changed(old.config(), new.config());
    } else {
        let lists: BTreeMap<&str, usize> = new
            .lists()
            .iter()
            .map(|l| (l.name.as_str(), l.entries))
            .collect();
        record["lists"] = json!(lists);
    }
    append(&path, &record);
}

/// Records a reload that was rejected (the running policy stays).
pub fn record_rejected(running: &Policy, trigger: Option<Trigger>, error: &str) {
    let Some(path) = path(running.config()) else {
        return;
    };
    let mut record = json!({
        "time_unix": unix_now(),
        "event": "rejected",
        "trigger": trigger,
        "running_hash": running.hash(),
        "error": error,
    });
    if trigger == Some(Trigger::Api) {
        let token = running.config().admin_token.as_ref();
        record["token_id"] = json!(token.map(|t| t.id()));
    }
    append(&path, &record);
}

/// The lists whose entries changed: `{name: {before, after}}` (`null` for one added or removed).
fn lists_changed(old: &Policy, new: &Policy) -> Value {
    let counts = |p: &Policy| -> BTreeMap<String, usize> {
        p.lists()
            .iter()
            .map(|l| (l.name.clone(), l.entries))
            .collect()
    };
    let (before, after) = (counts(old), counts(new));
    let mut changed = serde_json::Map::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let hashes = (old.list_hashes(), new.list_hashes());
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        let same = b == a && hashes.0.get(name.as_str()) == hashes.1.get(name.as_str());
        if !same {
            changed.insert(name.clone(), json!({ "before": b, "after": a }));
        }
    }
    Value::Object(changed)
}

/// Segments added, removed, or changed in what decides their answers.
fn segments_changed(old: &Config, new: &Config) -> Value {
    let by_name = |c: &Config| -> BTreeMap<String, String> {
        (c.segments.iter())
            .map(|s| (s.name.clone(), s.deciding(c)))
            .collect()
    };
    let (before, after) = (by_name(old), by_name(new));
    let added: Vec<&String> = after.keys().filter(|n| !before.contains_key(*n)).collect();
    let removed: Vec<&String> = before.keys().filter(|n| !after.contains_key(*n)).collect();
    let changed: Vec<&String> = (after.iter())
        .filter(|(n, d)| before.get(*n).is_some_and(|b| b != *d))
        .map(|(n, _)| n)
        .collect();
    json!({ "added": added, "removed": removed, "changed": changed })
}

fn append(path: &Path, record: &Value) {
    let line = format!("{record}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(line.as_bytes())?;
            file.sync_data()
        });
    if let Err(err) = written {
        warn!(path = %path.display(), %err, "cannot append to the audit log");
    }
}
