//! Herald sees the comms it asks for: it reads status pages ([`statuspage`]), takes pager acks
//! ([`pagerduty`]) and Alertmanager alerts ([`alertmanager`]) as incident events, and publishes
//! approved drafts to the status page ([`publish`]).
//!
//! Every inbound item becomes events through [`apply_external`]: under the core lock, applied
//! to the incident (the subject's latest, or an older one loaded from the store) at the item's
//! own time, and committed with the rows that make it exactly-once (`integration_seen`) in one
//! transaction; on failure the in-memory state is restored. This module owns the HTTP clients
//! of the status pages and their rate limits; it makes no rule decision.

pub mod alertmanager;
pub mod pagerduty;
pub mod publish;
pub mod statuspage;

use std::sync::Arc;

use crate::shared::{now_ms, Core, Shared};
use crate::engine::{ChangeKind, Effect, Event, EventError, Incident, Subject, Ts};
use crate::store::{Commit, Extra, StoreError};

/// Why an inbound item could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyExternalError {
    #[error("no incident with id {0:?}")]
    UnknownIncident(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What applying inbound events did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The incident after the events.
    pub incident: Option<Incident>,
    /// Event types applied (refused ones, e.g. an ack of a resolved incident, are left out).
    pub applied: Vec<&'static str>,
    /// Events refused, with the reason.
    pub refused: Vec<(&'static str, String)>,
}

/// Applies `events` (each at its own time) to incident `incident_id` and commits them with
/// `extra` in one transaction. The incident may be any incident by id: the subject's latest
/// lives in the engine state, older ones are loaded from the store and written back.
pub fn apply_external(core: &mut Core, incident_id: &str, events: &[(Ts, Event)], extra: &Extra) -> Result<Applied, ApplyExternalError> {
    let snapshot_latest = core.state.incidents.values().find(|i| i.id == incident_id).cloned();
    let mut incident = match &snapshot_latest {
        Some(i) => i.clone(),
        None => core.store.incident(incident_id)?.ok_or_else(|| ApplyExternalError::UnknownIncident(incident_id.to_string()))?,
    };
    let mut out = Applied::default();
    let mut effects: Vec<Effect> = Vec::new();
    let mut kept: Vec<(Ts, &Event)> = Vec::new();
    for (at, e) in events {
        match incident.apply(e, *at) {
            Ok(fx) => {
                effects.push(fx);
                kept.push((*at, e));
                out.applied.push(e.kind());
            }
            Err(err @ EventError::AlreadyResolved(_)) | Err(err @ EventError::DeclareOnExisting(_)) => out.refused.push((e.kind(), err.to_string())),
        }
    }
    let commit = Commit {
        incidents: if kept.is_empty() { Vec::new() } else { vec![&incident] },
        events: kept.iter().map(|(at, e)| (incident.id.as_str(), *at, *e)).collect(),
        ..Default::default()
    };
    // The engine state changes only if the incident is the subject's latest.
    if snapshot_latest.is_some() {
        core.state.incidents.insert(incident.subject.clone(), incident.clone());
    }
    if let Err(e) = core.store.commit_extra(&core.state, &commit, extra) {
        if let Some(prev) = snapshot_latest {
            core.state.incidents.insert(prev.subject.clone(), prev);
        }
        return Err(e.into());
    }
    let open = core.state.incidents.values().filter(|i| i.is_open()).count();
    for fx in &effects {
        crate::telemetry::record_effect(fx, &incident, open);
    }
    out.incident = Some(incident);
    Ok(out)
}

/// Declares an incident for a subject (critical), flagged security when asked, and commits it
/// with `extra`. Returns the new incident.
pub fn declare_external(core: &mut Core, subject: &Subject, security: bool, at: Ts, extra: &Extra) -> Result<Incident, ApplyExternalError> {
    // What a declaration touches: the subject's latest incident, its earlier ones, the id
    // sequence. Put back as they were if the commit fails.
    let before = (core.state.incidents.get(subject).cloned(), core.state.earlier.get(subject).cloned(), core.state.next_incident_seq);
    let event = Event::Declare { severity: crate::config::Severity::Critical, security };
    let (change, _) = match core.state.apply_event(subject, &event, at) {
        Ok(r) => r,
        Err(e) => return Err(ApplyExternalError::UnknownIncident(e.to_string())),
    };
    debug_assert_eq!(change.kind, ChangeKind::Opened);
    let inc = change.incident;
    let commit = Commit { incidents: vec![&inc], events: vec![(inc.id.as_str(), at, &event)], ..Default::default() };
    if let Err(e) = core.store.commit_extra(&core.state, &commit, extra) {
        let (latest, earlier, seq) = before;
        match latest {
            Some(i) => core.state.incidents.insert(subject.clone(), i),
            None => core.state.incidents.remove(subject),
        };
        match earlier {
            Some(l) => core.state.earlier.insert(subject.clone(), l),
            None => core.state.earlier.remove(subject),
        };
        core.state.next_incident_seq = seq;
        return Err(e.into());
    }
    metrics::counter!("herald_comms_lead_activations_total", "severity" => inc.severity.as_str()).increment(1);
    metrics::gauge!("herald_incidents_open").set(core.state.incidents.values().filter(|i| i.is_open()).count() as f64);
    Ok(inc)
}

/// Runs the status-page pollers and the publisher until shutdown, restarting them on reload.
pub async fn run(shared: Arc<Shared>) {
    let clients = Arc::new(statuspage::Clients::default());
    let mut reloads = shared.reloaded.subscribe();
    loop {
        reloads.mark_unchanged();
        let config = shared.config();
        let stop = shared.shutdown.child_token();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..config.status_pages.len() {
            set.spawn(statuspage::poll_loop(shared.clone(), clients.clone(), config.clone(), i, stop.clone()));
        }
        set.spawn(publish::run(shared.clone(), clients.clone(), config.clone(), stop.clone()));
        let reloaded = tokio::select! {
            _ = shared.shutdown.cancelled() => false,
            r = reloads.changed() => r.is_ok(),
        };
        stop.cancel();
        while set.join_next().await.is_some() {}
        if !reloaded || shared.shutdown.is_cancelled() {
            break;
        }
    }
}

/// A short, stable fingerprint of a text (hex of the first 8 bytes of its SHA-256).
pub fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix milliseconds of an RFC 3339 time; `now` when it cannot be read.
pub fn parse_time(s: Option<&str>) -> Ts {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map_or_else(now_ms, |t| t.timestamp_millis())
}
