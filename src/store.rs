//! Durable state in one embedded SQLite file: rule instances, incidents and their events, and
//! the notification outbox.
//!
//! Invariant (see ARCHITECTURE.md): a notification is enqueued iff the state change that caused
//! it is committed — both are written by [`Store::commit`] in one transaction. The file uses
//! WAL with `synchronous=FULL`, so a committed transaction survives `kill -9` and power loss.
//! This module does no network I/O and makes no decisions; it is blocking (call it from
//! `spawn_blocking` or a dedicated thread).

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::engine::{Event, Incident, Instance, Phase, State, Subject, Ts};

mod integrations;
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
    /// Rules whose live instances are replaced by the ones in `state`.
    pub rules: Vec<&'a str>,
    /// Incidents to upsert (as they are now).
    pub incidents: Vec<&'a Incident>,
    /// Events to append: (incident id, time, event).
    pub events: Vec<(&'a str, Ts, &'a Event)>,
    /// Notifications to enqueue; an id already present is ignored (idempotent).
    pub outbox: Vec<OutboxEntry>,
    /// Group evaluation times to remember: (group name, time).
    pub group_evals: Vec<(&'a str, Ts)>,
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
"#, integrations::MIGRATION];

/// The state database.
pub struct Store {
    conn: Connection,
}

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
        let mut store = Store { conn };
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
        let tx = self.conn.transaction()?;
        write_commit(&tx, state, c)?;
        tx.commit()?;
        Ok(())
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

    /// An incident's events, oldest first: (time, event).
    pub fn events(&self, incident_id: &str) -> Result<Vec<(Ts, Event)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT at, data FROM events WHERE incident_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([incident_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (at, d) = row?;
            Ok((at, serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?))
        })
        .collect()
    }

    /// Pending entries due at `now`, oldest first.
    pub fn due(&self, now: Ts, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.select_outbox("WHERE state = 'pending' AND not_before <= ?1 ORDER BY not_before, created_at LIMIT ?2", params![now, limit as i64])
    }

    /// The earliest time a pending entry becomes due, if any.
    pub fn next_due(&self) -> Result<Option<Ts>, StoreError> {
        Ok(self.conn.query_row("SELECT MIN(not_before) FROM outbox WHERE state = 'pending'", [], |r| r.get::<_, Option<i64>>(0))?)
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
        Ok(self.conn.query_row("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The most recent entry that went out (or was recorded) for a dedup key and receiver,
    /// excluding failures — for `min_interval` and `repeat_interval`.
    pub fn last_for(&self, dedup_key: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(
                "WHERE dedup_key = ?1 AND receiver = ?2 AND state != 'failed' ORDER BY created_at DESC LIMIT 1",
                params![dedup_key, receiver],
            )?
            .pop())
    }

    /// Records a delivery attempt's outcome.
    pub fn mark(&mut self, id: &str, state: OutboxState, attempts: u32, not_before: Ts, error: Option<&str>, delivered_at: Option<Ts>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, not_before = ?4, last_error = ?5, delivered_at = ?6 WHERE id = ?1",
            params![id, state.as_str(), attempts, not_before, error, delivered_at],
        )?;
        Ok(())
    }

    /// Leases entries to the delivery worker: pushes their `not_before` to `until` in one
    /// transaction, so they are not picked up twice while in flight. A crash leaves them pending,
    /// and they become due again when the lease runs out (at-least-once delivery).
    pub fn claim(&mut self, ids: &[String], until: Ts) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut up = tx.prepare_cached("UPDATE outbox SET not_before = ?2 WHERE id = ?1 AND state = 'pending'")?;
            for id in ids {
                up.execute(params![id, until])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The most recent entry (not failed) of a rule instance for a receiver — for
    /// `repeat_interval`.
    pub fn last_for_instance(&self, rule: &str, subject: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(
                "WHERE rule = ?1 AND subject = ?2 AND receiver = ?3 AND state != 'failed' ORDER BY created_at DESC LIMIT 1",
                params![rule, subject, receiver],
            )?
            .pop())
    }

    /// The entry most recently delivered (sent or recorded by a dry run) to a receiver for a
    /// subject — for `min_interval`.
    pub fn last_delivered_for_subject(&self, subject: &str, receiver: &str) -> Result<Option<OutboxEntry>, StoreError> {
        Ok(self
            .select_outbox(
                "WHERE subject = ?1 AND receiver = ?2 AND state IN ('sent', 'dry_run') ORDER BY delivered_at DESC LIMIT 1",
                params![subject, receiver],
            )?
            .pop())
    }

    /// Pending entries of a subject for a receiver, oldest first — for `group_wait`.
    pub fn pending_for(&self, subject: &str, receiver: &str) -> Result<Vec<OutboxEntry>, StoreError> {
        self.select_outbox("WHERE subject = ?1 AND receiver = ?2 AND state = 'pending' ORDER BY created_at", params![subject, receiver])
    }

    fn select_outbox(&self, tail: &str, p: impl rusqlite::Params) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = format!(
            "SELECT id, dedup_key, receiver, rule, subject, status, payload, created_at, not_before, deadline, attempts, state, last_error, delivered_at FROM outbox {tail}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
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
        let mut del = tx.prepare_cached("DELETE FROM instances WHERE rule = ?1")?;
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
        let mut g = tx.prepare_cached("INSERT INTO group_evals (name, at) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET at = excluded.at")?;
        for (name, at) in &c.group_evals {
            g.execute(params![name, at])?;
        }
    }
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
