//! Durable state in one embedded SQLite file: rule instances, incidents and their events, and
//! the notification outbox.
//!
//! Invariant (see ARCHITECTURE.md): a notification is enqueued iff the state change that caused
//! it is committed — both are written by [`Store::commit`] in one transaction. The file uses
//! WAL with `synchronous=FULL`, so a committed transaction survives `kill -9` and power loss.
//! This module does no network I/O and makes no decisions; it is blocking (call it from
//! `spawn_blocking` or a dedicated thread).
//!
//! Every query that runs per evaluation or per delivery searches an index (the SQL lives in
//! `Q_*` constants; a unit test prints and checks their `EXPLAIN QUERY PLAN`). Retention
//! ([`Store::prune`]) removes finished outbox entries and old resolved incidents with their
//! events in short batches.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::engine::{Event, EventNote, Incident, Instance, Phase, State, Subject, TimelineEntry, Ts};

mod alert_signals;
mod integrations;
pub use alert_signals::{AlertSignal, AlertSignalWrite};
pub use integrations::{Extra, Link, Mark, PublicationRow, Seen};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database holds invalid data: {0}")]
    Corrupt(String),
    #[error("cannot create state directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
}

/// Where an outbox entry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboxState {
    /// Waiting for delivery (possibly backing off).
    Pending,
    /// Delivered (2xx).
    Sent,
    /// Given up: a permanent error or the retry deadline passed.
    Failed,
    /// Recorded but not sent (maintenance window, noise control).
    Suppressed,
    /// Rendered and recorded by a dry run.
    DryRun,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
            OutboxState::Suppressed => "suppressed",
            OutboxState::DryRun => "dry_run",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => OutboxState::Pending,
            "sent" => OutboxState::Sent,
            "failed" => OutboxState::Failed,
            "suppressed" => OutboxState::Suppressed,
            "dry_run" => OutboxState::DryRun,
            other => return Err(StoreError::Corrupt(format!("outbox state {other:?}"))),
        })
    }
}

/// One notification to one receiver. The `id` is the notification id sent on every try.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub id: String,
    /// Stable per incident (or subject) and rule: receivers deduplicate on it.
    pub dedup_key: String,
    pub receiver: String,
    pub rule: String,
    /// Canonical subject key.
    pub subject: String,
    /// "firing" or "resolved".
    pub status: String,
    /// The message (receiver-independent JSON, see `notify`).
    pub payload: String,
    pub created_at: Ts,
    /// Do not try before this (group_wait, backoff, Retry-After).
    pub not_before: Ts,
    /// Give up after this.
    pub deadline: Ts,
    pub attempts: u32,
    pub state: OutboxState,
    pub last_error: Option<String>,
    pub delivered_at: Option<Ts>,
}

/// Everything one evaluation (or one API event) changes, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct Commit<'a> {
    /// Rules whose live instances are all replaced by the ones in `state` (after a restart or
    /// a catch-up; an evaluation names only what changed, in `instances`).
    pub rules: Vec<&'a str>,
    /// Rule instances that changed, as (rule, subject): each row is written as it is in
    /// `state` now, or deleted if the instance is no longer there.
    pub instances: Vec<(&'a str, &'a Subject)>,
    /// Incidents to upsert (as they are now).
    pub incidents: Vec<&'a Incident>,
    /// Events to append: (incident id, time, event).
    pub events: Vec<(&'a str, Ts, &'a Event)>,
    /// Notifications to enqueue; an id already present is ignored (idempotent).
    pub outbox: Vec<OutboxEntry>,
    /// Group evaluation times to remember: (group name, time).
    pub group_evals: Vec<(&'a str, Ts)>,
    /// People's events with who recorded them and why: (incident id, time, event, note).
    pub noted_events: Vec<(&'a str, Ts, &'a Event, &'a EventNote)>,
    /// Herald's own entries for incidents' timelines (decisions, status changes).
    pub timeline: &'a [TimelineEntry],
    /// Signal values around incidents, for the console's chart: (incident id, time, signal,
    /// value). See `daemon::samples`.
    pub samples: Vec<(&'a str, Ts, &'a str, f64)>,
}

/// One entry of an incident's timeline as stored: a person's event or Herald's.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineRow {
    pub at: Ts,
    /// `person` or `herald`.
    pub source: String,
    /// The event type (`ack`, `rule_firing`, `notification_sent`, …).
    pub kind: String,
    /// The event's fields, as JSON (`type` included).
    pub data: serde_json::Value,
    pub actor: Option<String>,
    pub note: Option<String>,
}

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE instances (
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    phase TEXT NOT NULL,
    active_at INTEGER NOT NULL,
    fired_at INTEGER,
    keep_firing_since INTEGER,
    last_eval INTEGER NOT NULL,
    PRIMARY KEY (rule, subject)
);
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    resolved_at INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX incidents_subject ON incidents (subject, seq);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_incident ON events (incident_id, seq);
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL,
    receiver TEXT NOT NULL,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    last_error TEXT,
    delivered_at INTEGER
);
CREATE INDEX outbox_due ON outbox (state, not_before);
CREATE INDEX outbox_dedup ON outbox (dedup_key, receiver, created_at);
CREATE TABLE group_evals (name TEXT PRIMARY KEY, at INTEGER NOT NULL);
"#,
// i7: incidents tell their whole story: Herald's own decisions and notifications join people's
// events on the timeline; people's events carry an optional actor and note.
r#"
ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'person';
ALTER TABLE events ADD COLUMN actor TEXT;
ALTER TABLE events ADD COLUMN note TEXT;
"#,
// console: signal values recorded around incidents, for the chart.
r#"
CREATE TABLE samples (
    incident_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    signal TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX samples_incident ON samples (incident_id, at);
"#, r#"
-- Per-evaluation and per-delivery lookups by subject and by rule instance, and retention.
CREATE INDEX outbox_subject ON outbox (subject, receiver, state, created_at);
CREATE INDEX outbox_instance ON outbox (rule, subject, receiver, created_at);
CREATE INDEX incidents_resolved ON incidents (resolved_at);
"#,
// integrations: seen keys, status-page links, drafts, publications.
integrations::MIGRATION,
// Alertmanager alerts as signal values.
alert_signals::MIGRATION];

/// The outbox states that never change again: retention prunes them.
const FINISHED: [OutboxState; 4] = [OutboxState::Sent, OutboxState::Failed, OutboxState::Suppressed, OutboxState::DryRun];

// Queries that run per evaluation or per delivery. Each must use an index (no full scan of the
// outbox or the events): `hot_queries_use_indexes` prints and checks their query plans.
const Q_DUE: &str = "WHERE state = 'pending' AND not_before <= ?1 ORDER BY not_before, created_at LIMIT ?2";
const Q_NEXT_DUE: &str = "SELECT MIN(not_before) FROM outbox WHERE state = 'pending'";
const Q_PENDING_COUNT: &str = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'";
const Q_LAST_FOR: &str = "WHERE dedup_key = ?1 AND receiver = ?2 AND state != 'failed' ORDER BY created_at DESC LIMIT 1";
const Q_MARK: &str = "UPDATE outbox SET state = ?2, attempts = ?3, not_before = ?4, last_error = ?5, delivered_at = ?6 WHERE id = ?1";
const Q_CLAIM: &str = "UPDATE outbox SET not_before = ?2 WHERE id = ?1 AND state = 'pending'";
const Q_LAST_FOR_INSTANCE: &str = "WHERE rule = ?1 AND subject = ?2 AND receiver = ?3 AND state != 'failed' ORDER BY created_at DESC LIMIT 1";
const Q_LAST_DELIVERED: &str = "WHERE subject = ?1 AND receiver = ?2 AND state IN ('sent', 'dry_run') ORDER BY delivered_at DESC LIMIT 1";
const Q_PENDING_FOR: &str = "WHERE subject = ?1 AND receiver = ?2 AND state = 'pending' ORDER BY created_at";
const Q_EVENTS: &str = "SELECT at, data FROM events WHERE incident_id = ?1 AND source = 'person' ORDER BY seq";
const Q_DELETE_INSTANCES: &str = "DELETE FROM instances WHERE rule = ?1";
const Q_ANY_PRUNABLE_OUTBOX: &str = "SELECT 1 FROM outbox WHERE state = ?1 AND not_before < ?2 LIMIT 1";
const Q_PRUNE_OUTBOX: &str = "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = ?1 AND not_before < ?2 LIMIT ?3)";
/// Resolved incidents older than the cutoff, except each subject's latest (the engine's state
/// refers to it, and it keeps the incident id sequence).
const Q_PRUNABLE_INCIDENTS: &str =
    "SELECT id FROM incidents i WHERE resolved_at < ?1 AND seq < (SELECT MAX(seq) FROM incidents j WHERE j.subject = i.subject) LIMIT ?2";
const Q_DELETE_EVENTS: &str = "DELETE FROM events WHERE incident_id = ?1";
const Q_DELETE_INCIDENT: &str = "DELETE FROM incidents WHERE id = ?1";
const Q_DELETE_SAMPLES: &str = "DELETE FROM samples WHERE incident_id = ?1";

const OUTBOX_COLUMNS: &str =
    "SELECT id, dedup_key, receiver, rule, subject, status, payload, created_at, not_before, deadline, attempts, state, last_error, delivered_at FROM outbox";

/// What one retention batch removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished outbox entries.
    pub outbox: usize,
    /// Resolved incidents (with their events).
    pub incidents: usize,
    /// Events of those incidents.
    pub events: usize,
}

/// The state database.
pub struct Store {
    conn: Connection,
    saves: SaveHealth,
}

/// Whether saving fails: shared with readiness (`/-/ready` answers 503 while saves fail).
/// Any failed write sets it and counts in `herald_state_write_failures_total`; only a
/// successful [`Store::commit`] (a whole evaluation or event saved) clears it, so small
/// updates that still fit on a full disk do not make readiness flap.
#[derive(Clone, Debug, Default)]
pub struct SaveHealth(Arc<AtomicBool>);

impl SaveHealth {
    /// True while the most recent write failed.
    pub fn failing(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn record<T>(&self, result: Result<T, StoreError>, success_clears: bool) -> Result<T, StoreError> {
        if result.is_err() {
            crate::telemetry::record_state_write_failure();
            self.0.store(true, Ordering::Relaxed);
        } else if success_clears {
            self.0.store(false, Ordering::Relaxed);
        }
        result
    }
}

/// How many prepared statements a connection keeps (see `Store::open`).
const STATEMENT_CACHE: usize = 64;

impl Store {
    /// Opens (creating if needed) `state.db` under `dir`.
    pub fn open_dir(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.display().to_string(), source })?;
        Store::open(&dir.join("state.db"))
    }

    /// Opens (creating if needed) a database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement that runs per evaluation or per delivery is prepared once
        // (`prepare_cached`); the default cache of 16 is smaller than their number.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut store = Store { conn, saves: SaveHealth::default() };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `PRAGMA quick_check` on a database file without changing it; returns the problems
    /// found (empty: healthy). Errors when the file is not an SQLite database at all.
    pub fn quick_check(path: &Path) -> Result<Vec<String>, StoreError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut problems = Vec::new();
        for row in rows {
            let row = row?;
            if row != "ok" {
                problems.push(row);
            }
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            problems.push(format!("schema version {version} is newer than this Herald knows ({})", MIGRATIONS.len()));
        }
        Ok(problems)
    }

    /// The health of this store's writes, to share with readiness.
    pub fn save_health(&self) -> SaveHealth {
        self.saves.clone()
    }

    /// A database in memory (`herald test` restarts through it, as the daemon does through
    /// its file).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut store = Store { conn, saves: SaveHealth::default() };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tx = self.conn.transaction()?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The database file (none for an in-memory database).
    pub fn path(&self) -> Option<std::path::PathBuf> {
        self.conn.path().filter(|p| !p.is_empty()).map(std::path::PathBuf::from)
    }

    /// Loads the engine state: live instances, each subject's latest incident, the id sequence.
    pub fn load_state(&self) -> Result<State, StoreError> {
        let mut state = State::default();
        let mut stmt = self.conn.prepare("SELECT rule, subject, phase, active_at, fired_at, keep_firing_since, last_eval FROM instances")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        for row in rows {
            let (rule, subject, phase, active_at, fired_at, keep_firing_since, last_eval) = row?;
            let subject = Subject::parse_key(&subject).ok_or_else(|| StoreError::Corrupt(format!("subject key {subject:?}")))?;
            let phase = match phase.as_str() {
                "pending" => Phase::Pending,
                "firing" => Phase::Firing,
                other => return Err(StoreError::Corrupt(format!("instance phase {other:?}"))),
            };
            state.instances.entry(rule).or_default().insert(subject, Instance { phase, active_at, fired_at, keep_firing_since, last_eval });
        }
        let mut stmt = self.conn.prepare(
            "SELECT data FROM incidents i WHERE seq = (SELECT MAX(seq) FROM incidents j WHERE j.subject = i.subject)",
        )?;
        for data in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let inc: Incident = serde_json::from_str(&data?).map_err(|e| StoreError::Corrupt(format!("incident: {e}")))?;
            state.incidents.insert(inc.subject.clone(), inc);
        }
        // Earlier incidents that still owe something (a postmortem, a legal review).
        let mut stmt = self.conn.prepare(
            "SELECT data FROM incidents i WHERE resolved_at IS NOT NULL
               AND seq < (SELECT MAX(seq) FROM incidents j WHERE j.subject = i.subject)
               AND (json_extract(data, '$.postmortem_published') = 0 OR json_extract(data, '$.legal_pending') = 1)
             ORDER BY seq",
        )?;
        for data in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let inc: Incident = serde_json::from_str(&data?).map_err(|e| StoreError::Corrupt(format!("incident: {e}")))?;
            if inc.has_obligations() {
                state.earlier.entry(inc.subject.clone()).or_default().push(inc);
            }
        }
        state.next_incident_seq = self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM incidents", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(state)
    }

    /// The last evaluation time of each group.
    pub fn group_evals(&self) -> Result<HashMap<String, Ts>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT name, at FROM group_evals")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes one step's changes and its notifications atomically.
    pub fn commit(&mut self, state: &State, c: &Commit<'_>) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            write_commit(&tx, state, c)?;
            tx.commit()?;
            Ok(())
        })();
        self.saves.record(result, true)
    }

    /// All incidents, newest first (at most `limit`).
    pub fn incidents(&self, limit: usize) -> Result<Vec<Incident>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT data FROM incidents ORDER BY seq DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|d| serde_json::from_str(&d?).map_err(|e| StoreError::Corrupt(format!("incident: {e}")))).collect()
    }

    /// One incident by id.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let data: Option<String> = self.conn.query_row("SELECT data FROM incidents WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        data.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("incident: {e}")))).transpose()
    }

    /// An incident's whole timeline, oldest first: people's events (with actor and note),
    /// Herald's decisions and status changes, and its notifications' fate.
    pub fn timeline(&self, incident_id: &str) -> Result<Vec<TimelineRow>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT at, source, type, data, actor, note FROM events WHERE incident_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([incident_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, Option<String>>(5)?))
        })?;
        rows.map(|row| {
            let (at, source, kind, data, actor, note) = row?;
            let data = serde_json::from_str(&data).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?;
            Ok(TimelineRow { at, source, kind, data, actor, note })
        })
        .collect()
    }

    /// An incident's people's events, oldest first: (time, event).
    pub fn events(&self, incident_id: &str) -> Result<Vec<(Ts, Event)>, StoreError> {
        let mut stmt = self.conn.prepare(Q_EVENTS)?;
        let rows = stmt.query_map([incident_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (at, d) = row?;
            Ok((at, serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?))
        })
        .collect()
    }

    /// The signal values recorded around an incident, oldest first: (time, signal, value).
    pub fn samples(&self, incident_id: &str) -> Result<Vec<(Ts, String, f64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT at, signal, value FROM samples WHERE incident_id = ?1 ORDER BY at, signal")?;
        let rows = stmt.query_map([incident_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending entries due at `now`, oldest first.
    pub fn due(&self, now: Ts, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.select_outbox(Q_DUE, params![now, limit as i64])
    }

    /// The earliest time a pending entry becomes due, if any.
    pub fn next_due(&self) -> Result<Option<Ts>, StoreError> {
        Ok(self.conn.prepare_cached(Q_NEXT_DUE)?.query_row([], |r| r.get::<_, Option<i64>>(0))?)
    }

    /// Entries by state (for the API and tests), newest first.
    pub fn outbox(&self, state: Option<OutboxState>, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        match state {
            Some(s) => self.select_outbox("WHERE state = ?1 ORDER BY created_at DESC LIMIT ?2", params![s.as_str(), limit as i64]),
            None => self.select_outbox("ORDER BY created_at DESC LIMIT ?1", params![limit as i64]),
        }
    }

    /// How many entries are pending.
    pub fn pending_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.prepare_cached(Q_PENDING_COUNT)?.query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The most recent entry that went out (or was recorded) for a dedup key and receiver,
    /// excluding failures — for `min_interval` and `repeat_interval`.
    pub fn last_for(&self, dedup_key: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(Q_LAST_FOR, params![dedup_key, receiver])?
            .pop())
    }

    /// Records a delivery attempt's outcome. A final outcome (sent, failed, suppressed,
    /// recorded by a dry run) also goes on the incident's timeline.
    pub fn mark(&mut self, id: &str, state: OutboxState, attempts: u32, not_before: Ts, error: Option<&str>, delivered_at: Option<Ts>) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            tx.execute(Q_MARK, params![id, state.as_str(), attempts, not_before, error, delivered_at])?;
            if state != OutboxState::Pending {
                record_notification(&tx, id, delivered_at.unwrap_or(not_before), state, error)?;
            }
            tx.commit()?;
            Ok(())
        })();
        self.saves.record(result, false)
    }

    /// Leases entries to the delivery worker: pushes their `not_before` to `until` in one
    /// transaction, so they are not picked up twice while in flight. A crash leaves them pending,
    /// and they become due again when the lease runs out (at-least-once delivery).
    pub fn claim(&mut self, ids: &[String], until: Ts) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut up = tx.prepare_cached(Q_CLAIM)?;
                for id in ids {
                    up.execute(params![id, until])?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        self.saves.record(result, false)
    }

    /// The most recent entry (not failed) of a rule instance for a receiver — for
    /// `repeat_interval`.
    pub fn last_for_instance(&self, rule: &str, subject: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(Q_LAST_FOR_INSTANCE, params![rule, subject, receiver])?
            .pop())
    }

    /// The entry most recently delivered (sent or recorded by a dry run) to a receiver for a
    /// subject — for `min_interval`.
    pub fn last_delivered_for_subject(&self, subject: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(Q_LAST_DELIVERED, params![subject, receiver])?
            .pop())
    }

    /// Pending entries of a subject for a receiver, oldest first — for `group_wait`.
    pub fn pending_for(&self, subject: &str, receiver: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        self.select_outbox(Q_PENDING_FOR, params![subject, receiver])
    }

    /// One retention batch: removes at most `batch` finished outbox entries (sent, failed,
    /// suppressed, dry-run) of each state whose last attempt (`not_before`) is before `cutoff`,
    /// and at most `batch` incidents resolved before `cutoff` with their events, keeping each
    /// subject's latest incident. Pending entries are never pruned. Call it until it returns
    /// less than `batch` of everything (each batch is one short transaction).
    pub fn prune(&mut self, cutoff: Ts, batch: usize) -> Result<Pruned, StoreError> {
        // Reads first: most passes find nothing, and then take no write lock and no fsync.
        let mut any = false;
        for state in FINISHED {
            any |= self.conn.prepare_cached(Q_ANY_PRUNABLE_OUTBOX)?.exists(params![state.as_str(), cutoff])?;
        }
        any |= self.conn.prepare_cached(Q_PRUNABLE_INCIDENTS)?.exists(params![cutoff, 1])?;
        if !any {
            return Ok(Pruned::default());
        }
        let tx = self.conn.transaction()?;
        let mut pruned = Pruned::default();
        {
            let mut del = tx.prepare_cached(Q_PRUNE_OUTBOX)?;
            for state in FINISHED {
                pruned.outbox += del.execute(params![state.as_str(), cutoff, batch as i64])?;
            }
            let ids: Vec<String> = tx
                .prepare_cached(Q_PRUNABLE_INCIDENTS)?
                .query_map(params![cutoff, batch as i64], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut events = tx.prepare_cached(Q_DELETE_EVENTS)?;
            let mut incidents = tx.prepare_cached(Q_DELETE_INCIDENT)?;
            let mut samples = tx.prepare_cached(Q_DELETE_SAMPLES)?;
            for id in &ids {
                pruned.events += events.execute([id])?;
                samples.execute([id])?;
                pruned.incidents += incidents.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(pruned)
    }

    fn select_outbox(&self, tail: &str, p: impl rusqlite::Params) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = format!("{OUTBOX_COLUMNS} {tail}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(p, |r| {
            Ok((
                OutboxEntry {
                    id: r.get(0)?,
                    dedup_key: r.get(1)?,
                    receiver: r.get(2)?,
                    rule: r.get(3)?,
                    subject: r.get(4)?,
                    status: r.get(5)?,
                    payload: r.get(6)?,
                    created_at: r.get(7)?,
                    not_before: r.get(8)?,
                    deadline: r.get(9)?,
                    attempts: r.get(10)?,
                    state: OutboxState::Pending,
                    last_error: r.get(12)?,
                    delivered_at: r.get(13)?,
                },
                r.get::<_, String>(11)?,
            ))
        })?;
        rows.map(|row| {
            let (mut e, s) = row?;
            e.state = OutboxState::parse(&s)?;
            Ok(e)
        })
        .collect()
    }
}

fn write_commit(tx: &Transaction<'_>, state: &State, c: &Commit<'_>) -> Result<(), StoreError> {
    {
        let mut del = tx.prepare_cached(Q_DELETE_INSTANCES)?;
        let mut ins = tx.prepare_cached(
            "INSERT INTO instances (rule, subject, phase, active_at, fired_at, keep_firing_since, last_eval) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for rule in &c.rules {
            del.execute([rule])?;
            if let Some(m) = state.instances.get(*rule) {
                for (subject, i) in m {
                    ins.execute(params![rule, subject.key(), i.phase.as_str(), i.active_at, i.fired_at, i.keep_firing_since, i.last_eval])?;
                }
            }
        }
        let mut del_one = tx.prepare_cached("DELETE FROM instances WHERE rule = ?1 AND subject = ?2")?;
        let mut up = tx.prepare_cached(
            "INSERT INTO instances (rule, subject, phase, active_at, fired_at, keep_firing_since, last_eval) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (rule, subject) DO UPDATE SET phase = excluded.phase, active_at = excluded.active_at, fired_at = excluded.fired_at,
             keep_firing_since = excluded.keep_firing_since, last_eval = excluded.last_eval",
        )?;
        for (rule, subject) in &c.instances {
            match state.instances.get(*rule).and_then(|m| m.get(*subject)) {
                Some(i) => up.execute(params![rule, subject.key(), i.phase.as_str(), i.active_at, i.fired_at, i.keep_firing_since, i.last_eval])?,
                None => del_one.execute(params![rule, subject.key()])?,
            };
        }
    }
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO incidents (id, seq, subject, opened_at, resolved_at, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET resolved_at = excluded.resolved_at, data = excluded.data",
        )?;
        for inc in &c.incidents {
            let seq: i64 = inc.id.trim_start_matches("INC-").parse().map_err(|_| StoreError::Corrupt(format!("incident id {:?}", inc.id)))?;
            let data = serde_json::to_string(inc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            up.execute(params![inc.id, seq, inc.subject.key(), inc.opened_at, inc.resolved_at, data])?;
        }
    }
    {
        let mut ev = tx.prepare_cached("INSERT INTO events (incident_id, at, type, data) VALUES (?1, ?2, ?3, ?4)")?;
        for (id, at, e) in &c.events {
            let data = serde_json::to_string(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            ev.execute(params![id, at, e.kind(), data])?;
        }
    }
    {
        let mut ob = tx.prepare_cached(
            "INSERT INTO outbox (id, dedup_key, receiver, rule, subject, status, payload, created_at, not_before, deadline, attempts, state, last_error, delivered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT (id) DO NOTHING",
        )?;
        for e in &c.outbox {
            ob.execute(params![
                e.id,
                e.dedup_key,
                e.receiver,
                e.rule,
                e.subject,
                e.status,
                e.payload,
                e.created_at,
                e.not_before,
                e.deadline,
                e.attempts,
                e.state.as_str(),
                e.last_error,
                e.delivered_at
            ])?;
        }
    }
    {
        let mut ev = tx.prepare_cached("INSERT INTO events (incident_id, at, type, data, source, actor, note) VALUES (?1, ?2, ?3, ?4, 'person', ?5, ?6)")?;
        for (id, at, e, n) in &c.noted_events {
            let data = serde_json::to_string(e).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            ev.execute(params![id, at, e.kind(), data, n.actor, n.note])?;
        }
        let mut ev = tx.prepare_cached("INSERT INTO events (incident_id, at, type, data, source) VALUES (?1, ?2, ?3, ?4, 'herald')")?;
        for t in c.timeline {
            let data = serde_json::to_string(&t.event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            ev.execute(params![t.incident, t.at, t.event.kind(), data])?;
        }
        for e in &c.outbox {
            if e.state == OutboxState::Pending {
                record_notification(tx, &e.id, e.created_at, OutboxState::Pending, None)?;
            } else {
                record_notification(tx, &e.id, e.created_at, e.state, e.last_error.as_deref())?;
            }
        }
    }
    {
        let mut ins = tx.prepare_cached("INSERT INTO samples (incident_id, at, signal, value) VALUES (?1, ?2, ?3, ?4)")?;
        for (id, at, signal, value) in &c.samples {
            ins.execute(params![id, at, signal, value])?;
        }
    }
    {
        let mut g = tx.prepare_cached("INSERT INTO group_evals (name, at) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET at = excluded.at")?;
        for (name, at) in &c.group_evals {
            g.execute(params![name, at])?;
        }
    }
    Ok(())
}

/// Puts a notification's fate on its incident's timeline (`notification_queued`, `_sent`,
/// `_failed`, `_suppressed`, `_dry_run`). Entries without an incident are not recorded.
fn record_notification(tx: &Transaction<'_>, outbox_id: &str, at: Ts, state: OutboxState, error: Option<&str>) -> Result<(), StoreError> {
    let kind = match state {
        OutboxState::Pending => "notification_queued",
        OutboxState::Sent => "notification_sent",
        OutboxState::Failed => "notification_failed",
        OutboxState::Suppressed => "notification_suppressed",
        OutboxState::DryRun => "notification_dry_run",
    };
    tx.prepare_cached(
        "INSERT INTO events (incident_id, at, type, data, source)
         SELECT json_extract(payload, '$.incident.id'), ?2, ?3,
                json_object('type', ?3, 'id', id, 'receiver', receiver, 'rule', rule, 'status', status, 'error', ?4), 'herald'
         FROM outbox WHERE id = ?1 AND json_extract(payload, '$.incident.id') IS NOT NULL",
    )?
    .execute(params![outbox_id, at, kind, error])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    fn entry(id: &str, at: Ts) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            dedup_key: "INC-1/Activate".into(),
            receiver: "pager".into(),
            rule: "Activate".into(),
            subject: "{service=\"checkout\"}".into(),
            status: "firing".into(),
            payload: "{}".into(),
            created_at: at,
            not_before: at,
            deadline: at + 86_400_000,
            attempts: 0,
            state: OutboxState::Pending,
            last_error: None,
            delivered_at: None,
        }
    }

    #[test]
    fn state_and_outbox_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let subject = Subject::new([("service", "checkout")]);
        let mut state = State::default();
        state.instances.entry("Activate".into()).or_default().insert(
            subject.clone(),
            Instance { phase: Phase::Firing, active_at: 1, fired_at: Some(2), keep_firing_since: None, last_eval: 3 },
        );
        state.next_incident_seq = 1;
        let mut inc = Incident::open("INC-1".into(), subject.clone(), Severity::Critical, 2, Some("Activate".into()));
        inc.public_updates = 2;
        state.incidents.insert(subject.clone(), inc.clone());
        {
            let mut store = Store::open_dir(dir.path()).unwrap();
            let ack = Event::Ack;
            store
                .commit(
                    &state,
                    &Commit {
                        rules: vec!["Activate"],
                        incidents: vec![&inc],
                        events: vec![("INC-1", 5, &ack)],
                        outbox: vec![entry("n1", 2), entry("n1", 2)],
                        group_evals: vec![("g", 3)],
                        ..Default::default()
                    },
                )
                .unwrap();
        }
        let store = Store::open_dir(dir.path()).unwrap();
        assert_eq!(store.load_state().unwrap(), state);
        assert_eq!(store.events("INC-1").unwrap(), vec![(5, Event::Ack)]);
        assert_eq!(store.due(2, 10).unwrap().len(), 1, "the same id is enqueued once");
        assert_eq!(store.due(1, 10).unwrap().len(), 0);
        assert_eq!(store.group_evals().unwrap()["g"], 3);
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn replacing_a_rules_instances_drops_the_inactive_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_dir(dir.path()).unwrap();
        let s = Subject::new([("service", "a")]);
        let mut state = State::default();
        state.instances.entry("R".into()).or_default().insert(s.clone(), Instance { phase: Phase::Pending, active_at: 0, fired_at: None, keep_firing_since: None, last_eval: 0 });
        store.commit(&state, &Commit { rules: vec!["R"], ..Default::default() }).unwrap();
        state.instances.get_mut("R").unwrap().clear();
        store.commit(&state, &Commit { rules: vec!["R"], ..Default::default() }).unwrap();
        assert!(store.load_state().unwrap().instances.is_empty());
    }

    /// Every query that runs per evaluation or per delivery, with its plan: none may scan the
    /// outbox, the events or the instances (an index search is fine; a temporary b-tree over
    /// the few rows an index found is fine too).
    #[test]
    fn hot_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).unwrap();
        let outbox = |tail: &str| format!("{OUTBOX_COLUMNS} {tail}");
        let queries: Vec<(&str, String)> = vec![
            ("worker: due entries", outbox(Q_DUE)),
            ("worker: next due time", Q_NEXT_DUE.into()),
            ("worker: pending gauge", Q_PENDING_COUNT.into()),
            ("worker: lease", Q_CLAIM.into()),
            ("worker: mark outcome", Q_MARK.into()),
            ("worker: min_interval", outbox(Q_LAST_DELIVERED)),
            ("worker: repeat_interval", outbox(Q_LAST_FOR_INSTANCE)),
            ("plan: group_wait", outbox(Q_PENDING_FOR)),
            ("plan: last for dedup key", outbox(Q_LAST_FOR)),
            ("commit: replace a rule's instances", Q_DELETE_INSTANCES.into()),
            ("api: an incident's events", Q_EVENTS.into()),
            ("retention: anything to prune?", Q_ANY_PRUNABLE_OUTBOX.into()),
            ("retention: finished outbox entries", Q_PRUNE_OUTBOX.into()),
            ("retention: resolved incidents", Q_PRUNABLE_INCIDENTS.into()),
            ("retention: their events", Q_DELETE_EVENTS.into()),
            ("retention: their recorded samples", Q_DELETE_SAMPLES.into()),
            ("evaluation: an alertmanager signal's values", alert_signals::Q_ALERT_SIGNAL_VALUES.into()),
            ("evaluation: alertmanager heard from?", alert_signals::Q_HEARD.into()),
            ("webhook: an alertmanager group's alerts", alert_signals::Q_GROUP_ALERTS.into()),
        ];
        for (what, sql) in &queries {
            let mut stmt = store.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let nulls = rusqlite::params_from_iter(std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count()));
            let plan: Vec<String> = stmt.query_map(nulls, |r| r.get::<_, String>(3)).unwrap().map(Result::unwrap).collect();
            println!("{what}:\n  {sql}\n  -> {}", plan.join("\n  -> "));
            assert!(!plan.is_empty(), "{what}: no plan");
            for step in &plan {
                assert!(!step.starts_with("SCAN "), "{what} scans a table: {plan:?}");
            }
            assert!(plan.iter().any(|p| p.starts_with("SEARCH")), "{what}: {plan:?}");
        }
    }

    #[test]
    fn retention_prunes_finished_entries_and_old_resolved_incidents_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_dir(dir.path()).unwrap();
        let day = 86_400_000;
        let old = |id: &str| entry(id, 0);
        store
            .commit(
                &State::default(),
                &Commit { outbox: vec![old("sent"), old("failed"), old("pending"), old("suppressed"), entry("recent", 40 * day)], ..Default::default() },
            )
            .unwrap();
        store.mark("sent", OutboxState::Sent, 1, 0, None, Some(1)).unwrap();
        store.mark("failed", OutboxState::Failed, 3, 0, Some("HTTP 410"), None).unwrap();
        store.mark("suppressed", OutboxState::Suppressed, 0, 0, Some("maintenance window"), None).unwrap();
        store.mark("recent", OutboxState::Sent, 1, 40 * day, None, Some(40 * day)).unwrap();
        // Two incidents of checkout (the older resolved long ago), one of search (resolved long
        // ago, but its latest).
        let checkout = Subject::new([("service", "checkout")]);
        let search = Subject::new([("service", "search")]);
        let mut i1 = Incident::open("INC-1".into(), checkout.clone(), Severity::Critical, 0, None);
        i1.resolved_at = Some(day);
        let i2 = Incident::open("INC-2".into(), checkout.clone(), Severity::Critical, 35 * day, None);
        let mut i3 = Incident::open("INC-3".into(), search, Severity::Warning, 0, None);
        i3.resolved_at = Some(day);
        let ack = Event::Ack;
        store
            .commit(
                &State::default(),
                &Commit { incidents: vec![&i1, &i2, &i3], events: vec![("INC-1", 1, &ack), ("INC-1", 2, &ack), ("INC-2", 35 * day, &ack), ("INC-3", 1, &ack)], ..Default::default() },
            )
            .unwrap();
        let cutoff = 40 * day - 30 * day;
        let mut total = Pruned::default();
        loop {
            let p = store.prune(cutoff, 1).unwrap();
            total.outbox += p.outbox;
            total.incidents += p.incidents;
            total.events += p.events;
            if p == Pruned::default() {
                break;
            }
        }
        assert_eq!(total, Pruned { outbox: 3, incidents: 1, events: 2 });
        let mut left: Vec<String> = store.outbox(None, 100).unwrap().into_iter().map(|e| e.id).collect();
        left.sort();
        assert_eq!(left, vec!["pending", "recent"]);
        let ids: Vec<String> = store.incidents(100).unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, vec!["INC-3", "INC-2"]);
        assert!(store.events("INC-1").unwrap().is_empty());
        assert_eq!(store.events("INC-3").unwrap().len(), 1, "a listed incident keeps its events");
        assert_eq!(store.load_state().unwrap().next_incident_seq, 3, "the id sequence never goes back");
    }

    /// A real failing save: the database may not grow past its current size
    /// (`max_page_count`), as on a full disk. The failure is counted and visible until a
    /// save succeeds again.
    #[test]
    fn failing_saves_are_visible_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_dir(dir.path()).unwrap();
        let health = store.save_health();
        store.commit(&State::default(), &Commit::default()).unwrap();
        assert!(!health.failing());
        let pages: i64 = store.conn.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap();
        store.conn.pragma_update(None, "max_page_count", pages).unwrap();
        let mut big = entry("big", 0);
        big.payload = format!("{{\"text\": \"{}\"}}", "x".repeat(1 << 20));
        let e = store.commit(&State::default(), &Commit { outbox: vec![big.clone()], ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        assert!(health.failing());
        store.conn.pragma_update(None, "max_page_count", 1_000_000).unwrap();
        store.commit(&State::default(), &Commit { outbox: vec![big], ..Default::default() }).unwrap();
        assert!(!health.failing(), "recovers on the next successful save");
    }

    #[test]
    fn quick_check_finds_a_damaged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut store = Store::open(&path).unwrap();
            let entries: Vec<_> = (0..200).map(|i| entry(&format!("n{i}"), i)).collect();
            store.commit(&State::default(), &Commit { outbox: entries, ..Default::default() }).unwrap();
        }
        assert_eq!(Store::quick_check(&path).unwrap(), Vec::<String>::new());
        // Overwrite the middle of the file (past page 1) with garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 4096] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        assert!(!Store::quick_check(&path).map(|p| p.is_empty()).unwrap_or(false), "damage is detected");
    }

    #[test]
    fn marking_moves_entries_out_of_the_due_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_dir(dir.path()).unwrap();
        store.commit(&State::default(), &Commit { outbox: vec![entry("a", 0), entry("b", 0)], ..Default::default() }).unwrap();
        store.mark("a", OutboxState::Sent, 1, 0, None, Some(10)).unwrap();
        store.mark("b", OutboxState::Pending, 1, 5_000, Some("HTTP 500"), None).unwrap();
        assert!(store.due(1_000, 10).unwrap().is_empty());
        assert_eq!(store.next_due().unwrap(), Some(5_000));
        assert_eq!(store.due(5_000, 10).unwrap()[0].last_error.as_deref(), Some("HTTP 500"));
        assert_eq!(store.last_for("INC-1/Activate", "pager").unwrap().unwrap().id, "b");
        assert_eq!(store.pending_count().unwrap(), 1);
    }
}
