//! The compliance report: per day, segment and list, the queries blocked and the bypass
//! attempts, the policy hashes in force and since when, the time a policy was enforced, and
//! per day and list the names blocked only by what their answer held (names, never clients:
//! what the lists missed, for the ops team to add).
//! Aggregates only, kept in SQLite at `<state_dir>/evidence.sqlite` across restarts and
//! reloads, for `RETENTION_DAYS`. Nothing per client is stored: the counts come from the same
//! counters as `/metrics`, whose labels are segments, lists and kinds. The optional top clients
//! (`pseudonym.rs`) are added by the running gateway and never written.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use crate::evidence::days::{day_of, day_start, is_day};
use crate::evidence::pseudonym::TopClients;
use crate::metrics::Metrics;

/// The store's file under `state_dir`.
pub const FILE: &str = "evidence.sqlite";
/// Days kept; older days are deleted as new ones are written.
pub const RETENTION_DAYS: i64 = 400;
/// How often the counters are added to the store (also on a report and at shutdown).
pub const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("evidence store {path}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: rusqlite::Error,
}

/// The store, written by the running gateway.
pub struct Recorder {
    path: PathBuf,
    db: Mutex<Connection>,
    /// The counters' values at the last flush, by (kind, segment, item).
    seen: Mutex<HashMap<(String, String, String), u64>>,
    last_flush: Mutex<SystemTime>,
}

impl Recorder {
    /// Opens (or creates) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Recorder, StoreError> {
        let path = state_dir.join(FILE);
        let error = |source| StoreError {
            path: path.clone(),
            source,
        };
        let db = Connection::open(&path).map_err(error)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS daily (day TEXT NOT NULL, kind TEXT NOT NULL,
               segment TEXT NOT NULL, item TEXT NOT NULL, count INTEGER NOT NULL,
               PRIMARY KEY (day, kind, segment, item));
             CREATE TABLE IF NOT EXISTS policies (since_unix INTEGER NOT NULL, hash TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS uptime (day TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS answer_blocked (day TEXT NOT NULL, list TEXT NOT NULL,
               name TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (day, list, name));",
        )
        .map_err(error)?;
        Ok(Recorder {
            db: Mutex::new(db),
            path,
            seen: Mutex::new(HashMap::new()),
            last_flush: Mutex::new(SystemTime::now()),
        })
    }

    /// Notes that the policy `hash` is in force since `since`, unless it already was.
    pub fn policy(&self, hash: &str, since: SystemTime) -> Result<(), StoreError> {
        let db = self.db.lock().expect("store lock");
        let last: Option<String> = db
            .query_row(
                "SELECT hash FROM policies ORDER BY rowid DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .ok();
        if last.as_deref() != Some(hash) {
            db.execute(
                "INSERT INTO policies (since_unix, hash) VALUES (?1, ?2)",
                params![unix(since) as i64, hash],
            )
            .map_err(|source| self.error(source))?;
        }
        Ok(())
    }

    /// Adds what the counters moved since the last flush to today's rows, and the time since
    /// then to today's enforcement time.
    pub fn flush(&self, metrics: &Metrics) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let day = day_of(unix(now));
        let mut seen = self.seen.lock().expect("seen lock");
        let mut deltas = Vec::new();
        for (kind, segment, item, value) in metrics.evidence() {
            let key = (kind.to_owned(), segment, item);
            let before = seen.get(&key).copied().unwrap_or(0);
            // A counter below its last value was recreated (a reload dropped its series).
            let delta = if value >= before {
                value - before
            } else {
                value
            };
            if delta > 0 {
                deltas.push((key.clone(), delta));
            }
            seen.insert(key, value);
        }
        let mut last = self.last_flush.lock().expect("flush lock");
        let seconds = now.duration_since(*last).unwrap_or_default().as_secs();
        let mut db = self.db.lock().expect("store lock");
        let tx = db.transaction().map_err(|source| self.error(source))?;
        for ((kind, segment, item), delta) in deltas {
            tx.execute(
                "INSERT INTO daily (day, kind, segment, item, count) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (day, kind, segment, item) DO UPDATE SET count = count + ?5",
                params![day, kind, segment, item, delta as i64],
            )
            .map_err(|source| self.error(source))?;
        }
        for (list, name, count) in metrics.take_answer_blocked() {
            tx.execute(
                "INSERT INTO answer_blocked (day, list, name, count) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (day, list, name) DO UPDATE SET count = count + ?4",
                params![day, list, name, count as i64],
            )
            .map_err(|source| self.error(source))?;
        }
        tx.execute(
            "INSERT INTO uptime (day, seconds) VALUES (?1, ?2)
             ON CONFLICT (day) DO UPDATE SET seconds = seconds + ?2",
            params![day, seconds as i64],
        )
        .map_err(|source| self.error(source))?;
        let oldest = day_of(unix(now).saturating_sub(RETENTION_DAYS as u64 * 86_400));
        for table in ["daily", "uptime", "answer_blocked"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE day < ?1"),
                params![oldest],
            )
            .map_err(|source| self.error(source))?;
        }
        tx.commit().map_err(|source| self.error(source))?;
        *last = now;
        Ok(())
    }

    /// Notes `policy` as in force from now (called at every policy change, not on a tick);
    /// a failure is logged and shown in `portvakt_evidence_write_failing`, and the minute's
    /// tick notes the policy again.
    pub fn note(&self, hash: &str, metrics: &Metrics) {
        let written = self.policy(hash, SystemTime::now());
        metrics
            .evidence_write_failing
            .set(i64::from(written.is_err()));
        if let Err(err) = written {
            let error = crate::error::chain(&err);
            tracing::warn!(%error, "cannot note the policy in the evidence store");
        }
    }

    /// Notes the policy in force (its hash, in force since `since`) and flushes the
    /// counters: what the minute's tick and a report request do.
    pub fn record_now(
        &self,
        (hash, since): (String, SystemTime),
        metrics: &Metrics,
    ) -> Result<(), StoreError> {
        self.policy(&hash, since)?;
        self.flush(metrics)
    }

    /// The report for `from..=to` (days as `YYYY-MM-DD`).
    pub fn report(&self, from: &str, to: &str) -> Result<Report, StoreError> {
        let db = self.db.lock().expect("store lock");
        let mut report = read(&db, from, to).map_err(|source| self.error(source))?;
        let state_dir = self.path.parent().unwrap_or(Path::new("."));
        report.changes = changes(state_dir, from, to);
        Ok(report)
    }

    fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            source,
        }
    }
}

/// Records the policy in force (`in_force`: its hash and since when) and flushes the counters
/// every `FLUSH_EVERY` until `stop`, then once more.
pub async fn record(
    recorder: std::sync::Arc<Recorder>,
    in_force: impl Fn() -> (String, SystemTime),
    metrics: std::sync::Arc<Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = every.tick() => false,
        };
        let written = recorder.record_now(in_force(), &metrics);
        (metrics.evidence_write_failing).set(i64::from(written.is_err()));
        if let Err(err) = written {
            tracing::warn!(error = %crate::error::chain(&err), "cannot write the evidence store");
        }
        if stopping {
            return;
        }
    }
}

/// The report from the store in `state_dir`, opened read-only (the gateway may be running).
pub fn report_from(state_dir: &Path, from: &str, to: &str) -> Result<Report, StoreError> {
    let path = state_dir.join(FILE);
    let error = |source| StoreError {
        path: path.clone(),
        source,
    };
    let db = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(error)?;
    let mut report = read(&db, from, to).map_err(error)?;
    report.changes = changes(state_dir, from, to);
    Ok(report)
}

/// One row of counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Count {
    pub day: String,
    pub segment: String,
    /// The list (blocked) or the bypass kind.
    pub item: String,
    pub count: u64,
}

/// A name blocked by `list` only because of what its answer held, and how often that day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerBlocked {
    pub day: String,
    pub list: String,
    pub name: String,
    pub count: u64,
}

/// A policy hash and when it went into force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InForce {
    pub hash: String,
    pub since_unix: u64,
}

/// One record of the audit log: a policy put in force (`start`, `reload`) or a reload
/// `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyChange {
    pub time_unix: u64,
    pub event: String,
    pub trigger: Option<String>,
    /// The policy in force after it (for `rejected`: the one that stayed).
    pub hash: Option<String>,
    pub previous_hash: Option<String>,
    /// For `rejected`: why.
    pub error: Option<String>,
    /// An operator's acceptance of lists shrinking, with its reason.
    pub accepted: Option<serde_json::Value>,
}

/// The audit log's records of `from..=to` (days), oldest first.
fn changes(state_dir: &Path, from: &str, to: &str) -> Vec<PolicyChange> {
    let (start, end) = (day_start(from), day_start(to) + 86_400);
    let records = match crate::evidence::audit::records(state_dir, start, end) {
        Ok(records) => records,
        Err(err) => {
            tracing::warn!(%err, "cannot read the audit log for the report");
            return Vec::new();
        }
    };
    let text =
        |r: &serde_json::Value, key: &str| r.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    (records.iter())
        .map(|r| PolicyChange {
            time_unix: r
                .get("time_unix")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            event: text(r, "event").unwrap_or_default(),
            trigger: text(r, "trigger"),
            hash: text(r, "hash").or_else(|| text(r, "running_hash")),
            previous_hash: text(r, "previous_hash"),
            error: text(r, "error"),
            accepted: r.get("accepted").cloned(),
        })
        .collect()
}

/// The compliance report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub blocked: Vec<Count>,
    pub bypass_attempts: Vec<Count>,
    /// Every hash in force during the period, with when it went into force (the one before
    /// the period first, when there is one).
    pub policies: Vec<InForce>,
    /// Seconds a policy was enforced, per day.
    pub enforced_seconds: Vec<(String, u64)>,
    /// Names blocked only by their answer (a CNAME target, an address, a TXT shape): what the
    /// lists lack, per day and list.
    pub answer_blocked: Vec<AnswerBlocked>,
    /// Every policy put in force and every reload rejected in the period, from the audit log.
    pub changes: Vec<PolicyChange>,
    /// Today's clients with the most attempts, under pseudonyms: only from the running
    /// gateway (the key is in its memory alone), when `[report] top_clients` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_clients: Option<TopClients>,
}

fn read(db: &Connection, from: &str, to: &str) -> rusqlite::Result<Report> {
    let counts = |kind: &str| -> rusqlite::Result<Vec<Count>> {
        let mut statement = db.prepare(
            "SELECT day, segment, item, count FROM daily WHERE kind = ?1 AND day >= ?2 AND day <= ?3
             ORDER BY day, segment, item",
        )?;
        let rows = statement.query_map(params![kind, from, to], |row| {
            Ok(Count {
                day: row.get(0)?,
                segment: row.get(1)?,
                item: row.get(2)?,
                count: row.get::<_, i64>(3)? as u64,
            })
        })?;
        rows.collect()
    };
    let (start, end) = (day_start(from), day_start(to) + 86_400);
    let mut statement = db.prepare(
        "SELECT hash, since_unix FROM policies WHERE since_unix < ?2 AND (since_unix >= ?1 OR
           rowid = (SELECT MAX(rowid) FROM policies WHERE since_unix < ?1)) ORDER BY rowid",
    )?;
    let policies = statement
        .query_map(params![start as i64, end as i64], |row| {
            Ok(InForce {
                hash: row.get(0)?,
                since_unix: row.get::<_, i64>(1)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut statement =
        db.prepare("SELECT day, seconds FROM uptime WHERE day >= ?1 AND day <= ?2 ORDER BY day")?;
    let enforced = statement
        .query_map(params![from, to], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut statement = db.prepare(
        "SELECT day, list, name, count FROM answer_blocked WHERE day >= ?1 AND day <= ?2
         ORDER BY day, list, count DESC, name",
    )?;
    let answer_blocked = statement
        .query_map(params![from, to], |row| {
            Ok(AnswerBlocked {
                day: row.get(0)?,
                list: row.get(1)?,
                name: row.get(2)?,
                count: row.get::<_, i64>(3)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Report {
        from: from.to_owned(),
        to: to.to_owned(),
        blocked: counts("blocked")?,
        bypass_attempts: counts("bypass")?,
        policies,
        enforced_seconds: enforced,
        answer_blocked,
        changes: Vec::new(),
        top_clients: None,
    })
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!("portvakt compliance report {} .. {}\n", self.from, self.to);
        let sections = [
            ("blocked queries (day, segment, list, count)", &self.blocked),
            (
                "bypass attempts (day, segment, kind, count)",
                &self.bypass_attempts,
            ),
        ];
        for (title, rows) in sections {
            let _ = writeln!(out, "\n{title}:");
            for c in rows {
                let (day, segment, item, count) = (&c.day, &c.segment, &c.item, c.count);
                let _ = writeln!(out, "  {day}  {segment:<16} {item:<20} {count:>10}");
            }
        }
        let _ = writeln!(
            out,
            "\nblocked by their answer only, not by their name (day, list, name, count):"
        );
        for a in &self.answer_blocked {
            let _ = writeln!(
                out,
                "  {}  {:<20} {:<40} {:>10}",
                a.day, a.list, a.name, a.count
            );
        }
        let _ = writeln!(out, "\npolicies in force (hash, since):");
        for p in &self.policies {
            let _ = writeln!(out, "  {}  since {}", p.hash, timestamp(p.since_unix));
        }
        let _ = writeln!(out, "\npolicy changes (time, event, trigger, hash):");
        for c in &self.changes {
            let trigger = c.trigger.as_deref().unwrap_or("-");
            let hash = c.hash.as_deref().unwrap_or("-");
            let _ = writeln!(
                out,
                "  {}  {:<8} {trigger:<13} {hash}",
                timestamp(c.time_unix),
                c.event
            );
            if let Some(error) = &c.error {
                let _ = writeln!(out, "      {}", error.lines().next().unwrap_or(""));
            }
        }
        let _ = writeln!(out, "\nenforced (day, hours of 24):");
        for (day, seconds) in &self.enforced_seconds {
            let _ = writeln!(out, "  {day}  {:.2}", *seconds as f64 / 3600.0);
        }
        if let Some(top) = &self.top_clients {
            let (day, min) = (&top.day, top.min_attempts);
            let _ = writeln!(
                out,
                "\ntop clients {day} (pseudonym, attempts; a key of the day's, at least {min}):"
            );
            for c in &top.clients {
                let _ = writeln!(out, "  {}  {:>10}", c.pseudonym, c.attempts);
            }
        }
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("section,day,segment,item,value\n");
        for (section, rows) in [
            ("blocked", &self.blocked),
            ("bypass", &self.bypass_attempts),
        ] {
            for c in rows {
                let _ = writeln!(
                    out,
                    "{section},{},{},{},{}",
                    c.day, c.segment, c.item, c.count
                );
            }
        }
        for p in &self.policies {
            let _ = writeln!(
                out,
                "policy,{},,{},{}",
                day_of(p.since_unix),
                p.hash,
                p.since_unix
            );
        }
        for (day, seconds) in &self.enforced_seconds {
            let _ = writeln!(out, "enforced_seconds,{day},,,{seconds}");
        }
        // The third column holds the list here: no segment is kept with these names.
        for a in &self.answer_blocked {
            let _ = writeln!(
                out,
                "answer_blocked,{},{},{},{}",
                a.day, a.list, a.name, a.count
            );
        }
        for c in &self.changes {
            let hash = c.hash.as_deref().unwrap_or("");
            let _ = writeln!(out, "change,{},,{},{hash}", day_of(c.time_unix), c.event);
        }
        for c in self
            .top_clients
            .iter()
            .flat_map(|t| t.clients.iter().map(move |c| (t, c)))
        {
            let _ = writeln!(
                out,
                "top_client,{},,{},{}",
                c.0.day, c.1.pseudonym, c.1.attempts
            );
        }
        out
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The report's period: `from` and `to` (inclusive, `YYYY-MM-DD`), by default the 30 days
/// up to today.
pub fn period(from: Option<&str>, to: Option<&str>) -> Result<(String, String), String> {
    let today = day_of(unix(SystemTime::now()));
    let to = to.map_or(today, str::to_owned);
    if !is_day(&to) {
        return Err(format!("`{to}` is not a date like 2026-12-01"));
    }
    let from = from.map_or_else(|| day_of(day_start(&to) - 29 * 86_400), str::to_owned);
    if !is_day(&from) {
        return Err(format!("`{from}` is not a date like 2026-12-01"));
    }
    if from > to {
        return Err(format!("the period starts ({from}) after it ends ({to})"));
    }
    Ok((from, to))
}

fn timestamp(unix: u64) -> String {
    let rest = unix % 86_400;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        day_of(unix),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
