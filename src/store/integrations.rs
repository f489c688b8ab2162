//! Tables of the integrations (status pages, PagerDuty, Alertmanager), drafts and publications.
//!
//! - `integration_seen`: what an inbound source already turned into events, keyed by the
//!   source's own id (a Statuspage update id, a PagerDuty event id, …) with a fingerprint of
//!   what was seen (an update's text, an incident's status). It makes every external update
//!   an event exactly once, across restarts, and tells an edit (a correction) from a repeat.
//! - `status_page_links`: which Herald incident a status-page incident belongs to.
//! - `drafts`: the drafted updates of an incident, numbered from 1.
//! - `publications`: approved drafts on their way to a status page (a durable outbox of its
//!   own: the Statuspage incident id is stored as soon as it is known, before any later update).
//!
//! Everything an inbound item changes is written with [`Store::commit_extra`]: the incident,
//! its events and these rows in ONE transaction.

use rusqlite::{params, OptionalExtension};

use super::{write_commit, Commit, Store, StoreError};
use crate::engine::{Incident, State, Ts};

pub(super) const MIGRATION: &str = r#"
CREATE TABLE integration_seen (
    key TEXT PRIMARY KEY,
    incident_id TEXT,
    fingerprint TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE status_page_links (
    page TEXT NOT NULL,
    sp_incident_id TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (page, sp_incident_id)
);
CREATE INDEX status_page_links_incident ON status_page_links (incident_id);
CREATE TABLE drafts (
    incident_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (incident_id, n)
);
CREATE TABLE publications (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    draft INTEGER NOT NULL,
    page TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    last_error TEXT,
    sp_incident_id TEXT,
    sp_update_id TEXT,
    done_at INTEGER,
    UNIQUE (incident_id, draft)
);
CREATE INDEX publications_due ON publications (state, not_before);
"#;

/// Something an inbound source has been turned into events for.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub key: String,
    pub incident_id: Option<String>,
    pub fingerprint: String,
    pub at: Ts,
}

/// What a key was last seen as.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub incident_id: Option<String>,
    pub fingerprint: String,
}

/// A status-page incident linked to a Herald incident.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub page: String,
    pub sp_incident_id: String,
    pub incident_id: String,
}

/// An approved draft on its way to a status page.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicationRow {
    pub id: String,
    pub incident_id: String,
    pub draft: u32,
    pub page: String,
    /// The request as JSON (text, status, component status).
    pub request: String,
    pub created_at: Ts,
    pub not_before: Ts,
    pub attempts: u32,
    /// pending | done | failed
    pub state: String,
    pub last_error: Option<String>,
    pub sp_incident_id: Option<String>,
    pub sp_update_id: Option<String>,
    pub done_at: Option<Ts>,
}

/// Rows written together with a [`Commit`].
#[derive(Clone, Debug, Default)]
pub struct Extra {
    pub marks: Vec<Mark>,
    pub links: Vec<Link>,
    /// Drafts to add: (incident id, created at, JSON). Numbers are assigned in order.
    pub drafts: Vec<(String, Ts, String)>,
    /// A publication that reached the page: (id, Statuspage incident id, update id, at).
    pub published: Option<(String, String, Option<String>, Ts)>,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Store {
    /// Writes a commit and the integration rows in one transaction.
    pub fn commit_extra(&mut self, state: &State, c: &Commit<'_>, x: &Extra) -> Result<(), StoreError> {
        // Counted like `commit`: a failing evaluation save makes the daemon unready.
        let result = self.write_extra(state, c, x);
        self.saves.record(result, true)
    }

    fn write_extra(&mut self, state: &State, c: &Commit<'_>, x: &Extra) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        write_commit(&tx, state, c)?;
        {
            let mut m = tx.prepare_cached(
                "INSERT INTO integration_seen (key, incident_id, fingerprint, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, incident_id = COALESCE(excluded.incident_id, incident_id), at = excluded.at",
            )?;
            for k in &x.marks {
                m.execute(params![k.key, k.incident_id, k.fingerprint, k.at])?;
            }
            let mut l = tx.prepare_cached(
                "INSERT INTO status_page_links (page, sp_incident_id, incident_id, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for k in &x.links {
                l.execute(params![k.page, k.sp_incident_id, k.incident_id, crate::rehearsal::now_ms()])?;
            }
            for (incident, at, data) in &x.drafts {
                tx.execute(
                    "INSERT INTO drafts (incident_id, n, created_at, data)
                     VALUES (?1, (SELECT COALESCE(MAX(n), 0) + 1 FROM drafts WHERE incident_id = ?1), ?2, ?3)",
                    params![incident, at, data],
                )?;
            }
            if let Some((id, sp_incident, sp_update, at)) = &x.published {
                tx.execute(
                    "UPDATE publications SET state = 'done', sp_incident_id = ?2, sp_update_id = ?3, done_at = ?4, last_error = NULL WHERE id = ?1",
                    params![id, sp_incident, sp_update, at],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What a key was last seen as.
    pub fn seen(&self, key: &str) -> Result<Option<Seen>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT incident_id, fingerprint FROM integration_seen WHERE key = ?1", [key], |r| {
                Ok(Seen { incident_id: r.get(0)?, fingerprint: r.get(1)? })
            })
            .optional()?)
    }

    /// The Herald incident a status-page incident is linked to.
    pub fn linked_incident(&self, page: &str, sp_incident_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT incident_id FROM status_page_links WHERE page = ?1 AND sp_incident_id = ?2", params![page, sp_incident_id], |r| r.get(0))
            .optional()?)
    }

    /// The status-page incident of a Herald incident on a page (the most recently linked).
    pub fn status_page_incident_of(&self, page: &str, incident_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sp_incident_id FROM status_page_links WHERE page = ?1 AND incident_id = ?2 ORDER BY created_at DESC LIMIT 1",
                params![page, incident_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The incident of a subject that was open at `at` (the newest, if several).
    pub fn incident_open_at(&self, subject_key: &str, at: Ts) -> Result<Option<Incident>, StoreError> {
        let data: Option<String> = self
            .conn
            .query_row(
                "SELECT data FROM incidents WHERE subject = ?1 AND opened_at <= ?2 AND (resolved_at IS NULL OR resolved_at >= ?2) ORDER BY seq DESC LIMIT 1",
                params![subject_key, at],
                |r| r.get(0),
            )
            .optional()?;
        data.map(|d| serde_json::from_str(&d).map_err(corrupt)).transpose()
    }

    /// The incident of the notifications Herald sent under a dedup key (PagerDuty's
    /// `incident_key` is the `dedup_key` Herald sent).
    pub fn incident_for_dedup_key(&self, dedup_key: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT payload FROM outbox WHERE dedup_key = ?1 ORDER BY created_at DESC")?;
        let rows = stmt.query_map([dedup_key], |r| r.get::<_, String>(0))?;
        for p in rows {
            let v: serde_json::Value = serde_json::from_str(&p?).map_err(corrupt)?;
            if let Some(id) = v.pointer("/incident/id").and_then(|v| v.as_str()) {
                return Ok(Some(id.to_string()));
            }
        }
        Ok(None)
    }

    /// An incident's drafts, oldest first: (number, created at, JSON).
    pub fn drafts(&self, incident_id: &str) -> Result<Vec<(u32, Ts, String)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT n, created_at, data FROM drafts WHERE incident_id = ?1 ORDER BY n")?;
        let rows = stmt.query_map([incident_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Enqueues a publication; false when that draft already has one.
    pub fn insert_publication(&mut self, p: &PublicationRow) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "INSERT INTO publications (id, incident_id, draft, page, request, created_at, not_before, attempts, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 'pending') ON CONFLICT DO NOTHING",
            params![p.id, p.incident_id, p.draft, p.page, p.request, p.created_at, p.not_before],
        )?;
        Ok(n == 1)
    }

    /// Publications of an incident (or all when `None`), oldest first.
    pub fn publications(&self, incident_id: Option<&str>) -> Result<Vec<PublicationRow>, StoreError> {
        match incident_id {
            Some(i) => self.select_publications("WHERE incident_id = ?1 ORDER BY created_at", params![i]),
            None => self.select_publications("ORDER BY created_at", params![]),
        }
    }

    /// Pending publications due at `now`, oldest first.
    pub fn due_publications(&self, now: Ts) -> Result<Vec<PublicationRow>, StoreError> {
        self.select_publications("WHERE state = 'pending' AND not_before <= ?1 ORDER BY created_at", params![now])
    }

    /// Records an attempt (before the request is sent) or its failure.
    pub fn mark_publication(&mut self, id: &str, state: &str, attempts: u32, not_before: Ts, error: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE publications SET state = ?2, attempts = ?3, not_before = ?4, last_error = ?5 WHERE id = ?1",
            params![id, state, attempts, not_before, error],
        )?;
        Ok(())
    }

    /// Makes pending publications due now (a new process has nothing in flight).
    pub fn release_publication_leases(&mut self, now: Ts) -> Result<(), StoreError> {
        self.conn.execute("UPDATE publications SET not_before = ?1 WHERE state = 'pending' AND not_before > ?1", params![now])?;
        Ok(())
    }

    /// Stores the Statuspage incident id of a publication as soon as it is known (and links it),
    /// so a retry updates that incident instead of creating another.
    pub fn set_publication_incident(&mut self, id: &str, link: &Link) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("UPDATE publications SET sp_incident_id = ?2 WHERE id = ?1", params![id, link.sp_incident_id])?;
        tx.execute(
            "INSERT INTO status_page_links (page, sp_incident_id, incident_id, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![link.page, link.sp_incident_id, link.incident_id, crate::rehearsal::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn select_publications(&self, tail: &str, p: impl rusqlite::Params) -> Result<Vec<PublicationRow>, StoreError> {
        let sql = format!(
            "SELECT id, incident_id, draft, page, request, created_at, not_before, attempts, state, last_error, sp_incident_id, sp_update_id, done_at FROM publications {tail}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(p, |r| {
            Ok(PublicationRow {
                id: r.get(0)?,
                incident_id: r.get(1)?,
                draft: r.get(2)?,
                page: r.get(3)?,
                request: r.get(4)?,
                created_at: r.get(5)?,
                not_before: r.get(6)?,
                attempts: r.get(7)?,
                state: r.get(8)?,
                last_error: r.get(9)?,
                sp_incident_id: r.get(10)?,
                sp_update_id: r.get(11)?,
                done_at: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::engine::{Channel, Event, Subject};

    #[test]
    fn marks_links_and_drafts_commit_with_the_incident_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subject::new([("service", "checkout")]);
        let mut inc = Incident::open("INC-1".into(), s.clone(), Severity::Critical, 1_000, None);
        let ev = Event::PublicUpdate { channel: Channel::StatusPage };
        inc.apply(&ev, 5_000).unwrap();
        {
            let mut store = Store::open_dir(dir.path()).unwrap();
            let c = Commit { incidents: vec![&inc], events: vec![("INC-1", 5_000, &ev)], ..Default::default() };
            let x = Extra {
                marks: vec![Mark { key: "sp:page:upd:u1".into(), incident_id: Some("INC-1".into()), fingerprint: "h1".into(), at: 5_000 }],
                links: vec![Link { page: "page".into(), sp_incident_id: "sp1".into(), incident_id: "INC-1".into() }],
                drafts: vec![("INC-1".into(), 6_000, "{}".into()), ("INC-1".into(), 7_000, "{\"b\":1}".into())],
                published: None,
            };
            store.commit_extra(&State::default(), &c, &x).unwrap();
        }
        let store = Store::open_dir(dir.path()).unwrap();
        assert_eq!(store.seen("sp:page:upd:u1").unwrap().unwrap().fingerprint, "h1");
        assert_eq!(store.seen("sp:page:upd:u2").unwrap(), None);
        assert_eq!(store.linked_incident("page", "sp1").unwrap().as_deref(), Some("INC-1"));
        assert_eq!(store.status_page_incident_of("page", "INC-1").unwrap().as_deref(), Some("sp1"));
        let d = store.drafts("INC-1").unwrap();
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(store.incident_open_at(s.key(), 2_000).unwrap().unwrap().id, "INC-1");
        assert_eq!(store.incident_open_at(s.key(), 500).unwrap(), None, "not open before it opened");
        assert_eq!(store.events("INC-1").unwrap().len(), 1);
    }

    #[test]
    fn a_draft_is_published_at_most_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_dir(dir.path()).unwrap();
        let p = PublicationRow {
            id: "pub1".into(),
            incident_id: "INC-1".into(),
            draft: 1,
            page: "page".into(),
            request: "{}".into(),
            created_at: 1,
            not_before: 1,
            attempts: 0,
            state: "pending".into(),
            last_error: None,
            sp_incident_id: None,
            sp_update_id: None,
            done_at: None,
        };
        assert!(store.insert_publication(&p).unwrap());
        assert!(!store.insert_publication(&PublicationRow { id: "pub2".into(), ..p.clone() }).unwrap());
        assert_eq!(store.due_publications(1).unwrap().len(), 1);
        store.set_publication_incident("pub1", &Link { page: "page".into(), sp_incident_id: "sp9".into(), incident_id: "INC-1".into() }).unwrap();
        let x = Extra { published: Some(("pub1".into(), "sp9".into(), Some("u9".into()), 10)), ..Default::default() };
        store.commit_extra(&State::default(), &Commit::default(), &x).unwrap();
        assert!(store.due_publications(100).unwrap().is_empty());
        let row = &store.publications(Some("INC-1")).unwrap()[0];
        assert_eq!((row.state.as_str(), row.sp_incident_id.as_deref(), row.sp_update_id.as_deref()), ("done", Some("sp9"), Some("u9")));
    }
}
