//! Signal values pushed by Alertmanager (`integrations.alertmanager` mappings with `signal:`).
//!
//! - `alert_signals`: one row per (signal, alert fingerprint) that is firing, with the value it
//!   set for its subject, the Alertmanager group it came in (`groupKey`) and its `endsAt` when
//!   Alertmanager gave one. A resolved alert deletes its row. A subject's value is the largest
//!   of its firing alerts' values; a subject without a row reads 0.
//! - `meta.alertmanager_heard_at`: when Herald last accepted a notification. Until the first
//!   one, Herald has no idea what is firing, so the signals are unknown rather than 0.
//!
//! Every notification is written in ONE transaction, so a `kill -9` keeps all of it or none,
//! and a restart neither forgets a firing alert nor invents one.


use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::engine::{Subject, SubjectMap, Ts};

pub(super) const MIGRATION: &str = r#"
CREATE TABLE alert_signals (
    signal TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    subject TEXT NOT NULL,
    value REAL NOT NULL,
    group_key TEXT NOT NULL,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (signal, fingerprint)
);
CREATE INDEX alert_signals_group ON alert_signals (group_key);
"#;

/// The values of one signal at a time: per subject, the largest value among its firing alerts
/// whose `endsAt` (if any) has not passed. Runs once per `alertmanager: true` signal per
/// group evaluation.
pub(super) const Q_ALERT_SIGNAL_VALUES: &str =
    "SELECT subject, MAX(value) FROM alert_signals WHERE signal = ?1 AND (ends_at IS NULL OR ends_at > ?2) GROUP BY subject";
/// When Herald last heard from Alertmanager (read with every evaluation of such a signal).
pub(super) const Q_HEARD: &str = "SELECT value FROM meta WHERE key = 'alertmanager_heard_at'";
/// The alerts an Alertmanager group held when it last notified.
pub(super) const Q_GROUP_ALERTS: &str = "SELECT signal, fingerprint FROM alert_signals WHERE group_key = ?1";

/// A firing alert's contribution to a signal.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSignal {
    pub signal: String,
    pub fingerprint: String,
    pub subject: Subject,
    pub value: f64,
    pub group_key: String,
    pub starts_at: Ts,
    /// Alertmanager's `endsAt`, when it gave one: the alert counts until then.
    pub ends_at: Option<Ts>,
}

/// What one Alertmanager notification changes, written in one transaction.
#[derive(Clone, Debug, Default)]
pub struct AlertSignalWrite {
    /// Firing alerts (inserted or updated).
    pub set: Vec<AlertSignal>,
    /// Resolved alerts: (signal, fingerprint). Whatever episode was stored ends: Alertmanager
    /// serializes a group's notifications, and an alert resolved by a bare `endsAt` carries that
    /// time as its `startsAt`, which may be earlier than the firing one's.
    pub clear: Vec<(String, String)>,
    /// The notification's group and every alert fingerprint it carries: an alert stored for
    /// that group and absent from it has resolved (its own resolved notification was missed)
    /// and is cleared.
    pub group: Option<(String, Vec<String>)>,
    /// When it was received.
    pub at: Ts,
}

impl Store {
    /// Writes a notification's signal changes and marks Alertmanager as heard from. Returns
    /// the (signal, fingerprint) pairs cleared because their group no longer lists them.
    pub fn write_alert_signals(&mut self, w: &AlertSignalWrite) -> Result<Vec<(String, String)>, StoreError> {
        let result = self.write_alert_signals_tx(w);
        self.saves.record(result, false)
    }

    fn write_alert_signals_tx(&mut self, w: &AlertSignalWrite) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut dropped = Vec::new();
        if let Some((group, present)) = &w.group {
            let stored: Vec<(String, String)> = {
                let mut q = tx.prepare_cached(Q_GROUP_ALERTS)?;
                let rows = q.query_map([group], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (signal, fp) in stored {
                if !present.contains(&fp) {
                    tx.execute("DELETE FROM alert_signals WHERE signal = ?1 AND fingerprint = ?2", params![signal, fp])?;
                    dropped.push((signal, fp));
                }
            }
        }
        {
            let mut del = tx.prepare_cached("DELETE FROM alert_signals WHERE signal = ?1 AND fingerprint = ?2")?;
            for (signal, fp) in &w.clear {
                del.execute(params![signal, fp])?;
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO alert_signals (signal, fingerprint, subject, value, group_key, starts_at, ends_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (signal, fingerprint) DO UPDATE SET subject = excluded.subject, value = excluded.value,
                   group_key = excluded.group_key, starts_at = excluded.starts_at, ends_at = excluded.ends_at, updated_at = excluded.updated_at",
            )?;
            for a in &w.set {
                up.execute(params![a.signal, a.fingerprint, a.subject.key(), a.value, a.group_key, a.starts_at, a.ends_at, w.at])?;
            }
        }
        tx.execute("INSERT INTO meta (key, value) VALUES ('alertmanager_heard_at', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [w.at.to_string()])?;
        tx.commit()?;
        Ok(dropped)
    }

    /// When Herald last accepted an Alertmanager notification (`None`: never).
    pub fn alertmanager_heard_at(&self) -> Result<Option<Ts>, StoreError> {
        let v: Option<String> = self.conn.prepare_cached(Q_HEARD)?.query_row([], |r| r.get(0)).optional()?;
        v.map(|v| v.parse().map_err(|_| StoreError::Corrupt(format!("alertmanager_heard_at {v:?}")))).transpose()
    }

    /// A signal's values at `now`: the subjects with a firing alert and their largest value.
    pub fn alert_signal_values(&self, signal: &str, now: Ts) -> Result<SubjectMap<f64>, StoreError> {
        let mut q = self.conn.prepare_cached(Q_ALERT_SIGNAL_VALUES)?;
        let rows = q.query_map(params![signal, now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?;
        let mut out = SubjectMap::default();
        for row in rows {
            let (key, v) = row?;
            let subject = Subject::parse_key(&key).ok_or_else(|| StoreError::Corrupt(format!("subject key {key:?}")))?;
            out.insert(subject, v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(signal: &str, fp: &str, service: &str, value: f64, ends_at: Option<Ts>) -> AlertSignal {
        AlertSignal {
            signal: signal.into(),
            fingerprint: fp.into(),
            subject: Subject::new([("service", service)]),
            value,
            group_key: "{}:{alertname=\"SLOBurn\"}".into(),
            starts_at: 1_000,
            ends_at,
        }
    }

    #[test]
    fn firing_alerts_survive_reopening_and_resolve_per_alert() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = Subject::new([("service", "checkout")]);
        {
            let mut store = Store::open_dir(dir.path()).unwrap();
            assert_eq!(store.alertmanager_heard_at().unwrap(), None, "never heard from");
            let w = AlertSignalWrite {
                set: vec![alert("burn_rate", "a", "checkout", 14.4, None), alert("burn_rate", "b", "checkout", 6.0, None), alert("burn_rate", "c", "search", 2.0, Some(5_000))],
                at: 2_000,
                ..Default::default()
            };
            store.write_alert_signals(&w).unwrap();
        }
        let mut store = Store::open_dir(dir.path()).unwrap();
        assert_eq!(store.alertmanager_heard_at().unwrap(), Some(2_000));
        let v = store.alert_signal_values("burn_rate", 3_000).unwrap();
        assert_eq!(v[&checkout], 14.4, "the largest of the subject's firing alerts");
        assert_eq!(v[&Subject::new([("service", "search")])], 2.0);
        assert!(!store.alert_signal_values("burn_rate", 5_000).unwrap().contains_key(&Subject::new([("service", "search")])), "endsAt passed");
        assert!(store.alert_signal_values("other", 3_000).unwrap().is_empty());
        // One alert resolves: the other still holds the subject.
        store.write_alert_signals(&AlertSignalWrite { clear: vec![("burn_rate".into(), "a".into())], at: 4_000, ..Default::default() }).unwrap();
        assert_eq!(store.alert_signal_values("burn_rate", 4_000).unwrap()[&checkout], 6.0);
        // The group notifies without `b`: it resolved while Herald was not listening.
        let group = alert("burn_rate", "b", "checkout", 6.0, None).group_key;
        let dropped = store.write_alert_signals(&AlertSignalWrite { group: Some((group, vec!["c".into()])), at: 6_000, ..Default::default() }).unwrap();
        assert_eq!(dropped, vec![("burn_rate".to_string(), "b".to_string())]);
        assert!(store.alert_signal_values("burn_rate", 6_000).unwrap().is_empty());
        assert_eq!(store.alertmanager_heard_at().unwrap(), Some(6_000));
    }
}
