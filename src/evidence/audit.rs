//! The audit log: every policy put in force (at start and by each reload) and every reload
//! rejected, appended as one JSON line to `<state_dir>/audit.jsonl`: when, the trigger, the
//! admin token's id for API reloads (never the token), the policy hashes before and after,
//! and what changed (lists with their entry counts before and after, segments added, removed
//! or changed). No client address is ever written. Without `state_dir` there is no log.
//!
//! The lines form a hash chain: each carries `prev`, the SHA-256 of the line before it (the
//! first line of the log `null`), so [`verify`] names the first line after one that was
//! edited or removed. A file past [`ROTATE_AT`] bytes is renamed `audit-<unix time>.jsonl`
//! and the chain goes on in a new `audit.jsonl`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use tracing::warn;

use crate::config::Config;
use crate::evidence::days::unix_now;

/// What the audit trail records of a policy, handed in by whoever puts it in force.
pub struct InForce<'a> {
    pub config: &'a Config,
    pub generation: u64,
    pub hash: &'a str,
    /// Each list's name with its entry count and the hash of its entries.
    pub lists: BTreeMap<&'a str, (usize, u128)>,
}

/// An operator's acceptance, with a reason, of lists shrinking beyond their `max_shrink` in
/// the next reload (audit-logged with the token's id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Override {
    pub allow_shrink: Vec<String>,
    pub reason: String,
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

impl Trigger {
    /// The word logs, status and the audit log use.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::FileChange => "file_change",
            Trigger::Api => "api",
            Trigger::ListDownload => "list_download",
        }
    }
}

/// The file under `state_dir`.
pub const FILE: &str = "audit.jsonl";

/// Size past which the log is rotated before the next line.
pub const ROTATE_AT: u64 = 8 << 20;

/// Appends one at a time, so each line's `prev` is the line before it.
static APPENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where `config` keeps its audit log, if anywhere.
pub fn path(config: &Config) -> Option<PathBuf> {
    config.state_dir.as_ref().map(|dir| dir.join(FILE))
}

/// One line of the audit trail, as written (its `prev` is added as it is appended).
#[derive(Debug, Serialize)]
struct Record<'a> {
    time_unix: u64,
    /// `start`, `reload` or `rejected`.
    event: &'static str,
    trigger: Option<Trigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_hash: Option<&'a str>,
    /// A rejected reload's running policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    running_hash: Option<&'a str>,
    /// For API reloads: the admin token's id (`null` without a token), never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<&'a Override>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lists: Option<Lists<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<SegmentsChanged>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The lists of a policy put in force: each one's entries at start, what changed at a reload.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Lists<'a> {
    Entries(BTreeMap<&'a str, usize>),
    /// `{name: {before, after}}`, `null` for a list added or removed.
    Changed(BTreeMap<&'a str, Change>),
}

#[derive(Debug, Serialize)]
struct Change {
    before: Option<usize>,
    after: Option<usize>,
}

/// Segments added, removed, or changed in what decides their answers.
#[derive(Debug, Serialize)]
struct SegmentsChanged {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

impl<'a> Record<'a> {
    fn new(event: &'static str, trigger: Option<Trigger>) -> Record<'a> {
        Record {
            time_unix: unix_now(),
            event,
            trigger,
            generation: None,
            hash: None,
            previous_hash: None,
            running_hash: None,
            token_id: None,
            accepted: None,
            lists: None,
            segments: None,
            error: None,
        }
    }

    /// For an API reload, the id of the token of `config` (the one that authorized it).
    fn token_of(mut self, config: Option<&Config>) -> Record<'a> {
        if self.trigger == Some(Trigger::Api) {
            let token = config.and_then(|c| c.admin_token.as_ref());
            self.token_id = Some(token.map(|t| t.id()));
        }
        self
    }
}

/// Records `new` going into force after `old` (`None`: at start); `accepted` is the
/// operator's acceptance of lists shrinking, with its reason, if one was given.
pub fn record_change(
    old: Option<&InForce>,
    new: &InForce,
    trigger: Option<Trigger>,
    accepted: Option<&Override>,
) {
    let Some(path) = path(new.config) else {
        return;
    };
    let event = if old.is_some() { "reload" } else { "start" };
    let mut record = Record::new(event, trigger).token_of(old.map(|p| p.config));
    record.generation = Some(new.generation);
    record.hash = Some(new.hash);
    record.accepted = accepted;
    match old {
        Some(old) => {
            record.previous_hash = Some(old.hash);
            record.lists = Some(Lists::Changed(lists_changed(old, new)));
            record.segments = Some(segments_changed(old.config, new.config));
        }
        None => {
            let lists = (new.lists.iter())
                .map(|(name, (entries, _))| (*name, *entries))
                .collect();
            record.lists = Some(Lists::Entries(lists));
        }
    }
    append(&path, &record);
}

/// Records a reload that was rejected (the running policy stays).
pub fn record_rejected(running: &InForce, trigger: Option<Trigger>, error: &str) {
    let Some(path) = path(running.config) else {
        return;
    };
    let mut record = Record::new("rejected", trigger).token_of(Some(running.config));
    record.running_hash = Some(running.hash);
    record.error = Some(error);
    append(&path, &record);
}

/// The lists whose entries changed, with their counts before and after.
fn lists_changed<'a>(old: &InForce<'a>, new: &InForce<'a>) -> BTreeMap<&'a str, Change> {
    let names: std::collections::BTreeSet<&str> =
        old.lists.keys().chain(new.lists.keys()).copied().collect();
    let count = |l: Option<&(usize, u128)>| l.map(|(entries, _)| *entries);
    (names.into_iter())
        .filter_map(|name| {
            let (before, after) = (old.lists.get(name), new.lists.get(name));
            (before != after).then(|| {
                let change = Change {
                    before: count(before),
                    after: count(after),
                };
                (name, change)
            })
        })
        .collect()
}

/// Segments added, removed, or changed in what decides their answers.
fn segments_changed(old: &Config, new: &Config) -> SegmentsChanged {
    let by_name = |c: &Config| -> BTreeMap<String, String> {
        (c.segments.iter())
            .map(|s| (s.name.clone(), s.deciding(c)))
            .collect()
    };
    let (before, after) = (by_name(old), by_name(new));
    SegmentsChanged {
        added: (after.keys())
            .filter(|n| !before.contains_key(*n))
            .cloned()
            .collect(),
        removed: (before.keys())
            .filter(|n| !after.contains_key(*n))
            .cloned()
            .collect(),
        changed: (after.iter())
            .filter(|(n, d)| before.get(*n).is_some_and(|b| b != *d))
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

fn append(path: &Path, record: &impl Serialize) {
    append_rotating_at(path, record, ROTATE_AT);
}

fn append_rotating_at(path: &Path, record: &impl Serialize, rotate_at: u64) {
    let _one = APPENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let written = rotate_if_full(path, rotate_at).and_then(|()| {
        // Keys in name order, as every line is written, then `prev` among them.
        let mut record = serde_json::to_value(record).map_err(std::io::Error::other)?;
        record["prev"] = Value::from(last_line(path)?.map(|line| line_hash(&line)));
        let line = format!("{record}\n");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(line.as_bytes())?;
        file.sync_data()
    });
    if let Err(err) = written {
        warn!(path = %path.display(), %err, "cannot append to the audit log");
    }
}

/// Renames a full log to `audit-<unix time>.jsonl` (a fixed width, so names sort by age).
fn rotate_if_full(path: &Path, rotate_at: u64) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() >= rotate_at => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut stamp = unix_now();
            let mut rotated = dir.join(format!("audit-{stamp:020}.jsonl"));
            while rotated.exists() {
                stamp += 1;
                rotated = dir.join(format!("audit-{stamp:020}.jsonl"));
            }
            std::fs::rename(path, rotated)
        }
        _ => Ok(()),
    }
}

/// The SHA-256 of a line (without its newline), in hex.
fn line_hash(line: &str) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes());
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The last line of the log: of `path`, or, when it is new, of the newest rotated file.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    for file in files(dir)?.iter().rev() {
        if let Some(line) = last_line_of(file)? {
            return Ok(Some(line));
        }
    }
    Ok(None)
}

/// The last non-empty line of `path`, read from its end (a window that doubles until the
/// line fits), not the whole file.
fn last_line_of(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        Read::by_ref(&mut file)
            .take(len - start)
            .read_to_end(&mut tail)?;
        let text = String::from_utf8_lossy(&tail);
        let trimmed = text.trim_end_matches('\n');
        // Whole when a newline precedes it in the window, or the window is the whole file.
        match trimmed.rfind('\n') {
            Some(at) => return Ok(Some(trimmed[at + 1..].to_owned())),
            None if start == 0 => {
                return Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()));
            }
            None => window *= 2,
        }
    }
}

/// The log's files in `state_dir`, oldest first: the rotated ones, then `audit.jsonl`.
pub fn files(state_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.ends_with(".jsonl") {
            rotated.push(state_dir.join(&*name));
        }
    }
    rotated.sort();
    let current = state_dir.join(FILE);
    if current.exists() {
        rotated.push(current);
    }
    Ok(rotated)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub files: usize,
    pub lines: usize,
}

/// Why the chain does not hold: the first line that does not follow the one before it.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("failed to read the audit log {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Broken {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("no audit log in {}", .0.display())]
    Empty(PathBuf),
}

/// Checks the hash chain over every file of the log in `state_dir`, oldest first.
pub fn verify(state_dir: &Path) -> Result<Verified, AuditError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| AuditError::Read { path, source }
    };
    let files = files(state_dir).map_err(read_error(state_dir))?;
    let mut previous: Option<String> = None;
    let mut lines = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(read_error(path))?;
        for (at, line) in text.lines().enumerate() {
            let broken = |reason: String| AuditError::Broken {
                path: path.clone(),
                line: at + 1,
                reason,
            };
            let record: Value = serde_json::from_str(line)
                .map_err(|err| broken(format!("not a JSON record ({err}): edited")))?;
            let prev = record.get("prev").and_then(Value::as_str);
            let want = previous.as_deref().map(line_hash);
            match (prev, want) {
                (None, None) => {}
                (Some(prev), Some(want)) if prev == want => {}
                (Some(_), None) => {
                    return Err(broken(
                        "the chain starts here, but this line follows another: a line before it was removed".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(broken(
                        "no `prev`: the line was written by hand or edited".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(broken(
                        "`prev` is not the hash of the line before it: that line was edited or a line between them was removed".into(),
                    ));
                }
            }
            previous = Some(line.to_owned());
            lines += 1;
        }
    }
    if lines == 0 {
        return Err(AuditError::Empty(state_dir.to_owned()));
    }
    Ok(Verified {
        files: files.len(),
        lines,
    })
}

/// The log's records whose `time_unix` is in `from..to`, oldest first (for the report).
pub fn records(state_dir: &Path, from: u64, to: u64) -> std::io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for path in files(state_dir)? {
        for line in std::fs::read_to_string(&path)?.lines() {
            let Ok(record) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let time = record.get("time_unix").and_then(Value::as_u64).unwrap_or(0);
            if (from..to).contains(&time) {
                out.push(record);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rotation_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        for n in 0..3 {
            // Rotated before every line but the first: three files, one line each.
            append_rotating_at(&path, &json!({ "time_unix": n, "event": "reload" }), 1);
        }
        assert_eq!(files(dir.path()).unwrap().len(), 3);
        assert_eq!(verify(dir.path()).unwrap(), Verified { files: 3, lines: 3 });
        // A rotated file removed: the chain names where it breaks.
        let oldest = files(dir.path()).unwrap().remove(0);
        std::fs::remove_file(oldest).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains(":1: the chain starts here"), "{err}");
    }

    #[test]
    fn a_line_longer_than_the_tail_window_keeps_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        append(
            &path,
            &json!({ "event": "rejected", "error": "x".repeat(20_000) }),
        );
        append(&path, &json!({ "event": "reload" }));
        assert_eq!(verify(dir.path()).unwrap(), Verified { files: 1, lines: 2 });
    }
}
