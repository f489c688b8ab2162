//! Publishing approved drafts to a Statuspage page.
//!
//! `POST /api/v1/incidents/{id}/drafts/{n}/publish` only enqueues a row in `publications` (the
//! durable outbox of publications); this worker delivers it:
//!
//! 1. It records the attempt (attempts + 1, leased) BEFORE the request leaves.
//! 2. If the Herald incident has no Statuspage incident yet it creates one
//!    (`POST /pages/{page_id}/incidents`) and stores its id at once, before anything else, so
//!    every later update goes to that incident (`PATCH /pages/{page_id}/incidents/{id}`).
//! 3. A retry (attempts > 0: the previous try may have reached the page before a crash or a
//!    timeout) first looks on the page for an update with the same text and adopts it instead
//!    of posting again: never posted twice.
//! 4. On success the `public_update` event (at the update's own `created_at`) and the update
//!    id are committed in one transaction, keyed like the poller's, so the update counts once
//!    whoever sees it first.
//!
//! Retryable failures (network, 429 with `Retry-After`, 5xx) back off exponentially (1s … 5m)
//! for up to 24h; other answers fail the publication with the page's message. A publication
//! whose incident went on legal hold after approval is failed, not sent.

use std::sync::Arc;
use std::time::Duration;

use prometheus_http_query::reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::statuspage::{Client, Clients, PageError, SpIncident, SpUpdate};
use super::{apply_external, fingerprint, parse_time};
use crate::config::daemon::StatusPageKind;
use crate::config::Config;
use crate::shared::{now_ms, Shared};
use crate::engine::{Channel, Event, Status, Ts};
use crate::store::{Extra, Link, Mark, PublicationRow};

/// What a person approved (stored as the publication's `request`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The incident's name on the page when one is created.
    pub name: String,
    /// The update text.
    pub body: String,
    /// Statuspage incident status: investigating | identified | monitoring | resolved.
    pub status: String,
    /// Component id → component status (operational, degraded_performance, partial_outage,
    /// major_outage, under_maintenance).
    pub components: std::collections::BTreeMap<String, String>,
}

/// Component statuses Statuspage accepts.
pub const COMPONENT_STATUSES: [&str; 5] = ["operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"];

/// Gives up retrying after this.
const MAX_RETRY: Ts = 24 * 3_600_000;

/// Delivers due publications until `stop`.
pub async fn run(shared: Arc<Shared>, clients: Arc<Clients>, config: Arc<Config>, stop: CancellationToken) {
    // A new process has nothing in flight: release the leases of a previous run at once.
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut core = s.core.lock().expect("core lock");
        core.store.release_publication_leases(now_ms())
    })
    .await;
    loop {
        let s = shared.clone();
        let due = tokio::task::spawn_blocking(move || s.core.lock().expect("core lock").store.due_publications(now_ms())).await;
        match due {
            Ok(Ok(rows)) => {
                for row in rows {
                    if stop.is_cancelled() {
                        return;
                    }
                    deliver(&shared, &clients, &config, row).await;
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot read publications"),
            Err(e) => tracing::error!(error = %e, "publication reader panicked"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn blocking<T: Send + 'static>(shared: &Arc<Shared>, f: impl FnOnce(&mut crate::shared::Core) -> T + Send + 'static) -> Option<T> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut core = s.core.lock().expect("core lock");
        f(&mut core)
    })
    .await
    .ok()
}

async fn deliver(shared: &Arc<Shared>, clients: &Clients, config: &Config, row: PublicationRow) {
    let id = row.id.clone();
    let fail = |msg: String| {
        let id = id.clone();
        let attempts = row.attempts;
        async move {
            tracing::error!(publication = %id, error = %msg, "publication failed");
            metrics::counter!("herald_notifications_total", "receiver" => "status_page", "outcome" => "failed").increment(1);
            blocking(shared, move |c| c.store.mark_publication(&id, "failed", attempts, now_ms(), Some(&msg))).await;
        }
    };
    if shared.options.dry_run {
        tracing::info!(publication = %row.id, "dry run: the approved draft is recorded, not published");
        metrics::counter!("herald_notifications_total", "receiver" => "status_page", "outcome" => "dry_run").increment(1);
        let pid = row.id.clone();
        blocking(shared, move |c| c.store.mark_publication(&pid, "dry_run", 0, now_ms(), None)).await;
        return;
    }
    let Some(page) = config.status_pages.iter().find(|p| p.name == row.page && matches!(p.kind, StatusPageKind::Api { .. })) else {
        return fail(format!("status page {:?} is not configured as a `statuspage` (API) page", row.page)).await;
    };
    let request: Request = match serde_json::from_str(&row.request) {
        Ok(r) => r,
        Err(e) => return fail(format!("stored request is unreadable: {e}")).await,
    };
    let client = match clients.get(page) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()).await,
    };
    // Legal hold wins over an earlier approval.
    let inc_id = row.incident_id.clone();
    let held = blocking(shared, move |c| {
        let inc = c.state.incidents.values().find(|i| i.id == inc_id).cloned().or_else(|| c.store.incident(&inc_id).ok().flatten());
        inc.map(|i| i.legal_hold)
    })
    .await
    .flatten();
    match held {
        Some(true) => return fail("the incident is on legal hold: public comms are held until legal_approved".into()).await,
        None => return fail(format!("incident {} no longer exists", row.incident_id)).await,
        Some(false) => {}
    }
    // Record the attempt before anything leaves.
    let attempts = row.attempts + 1;
    let lease = now_ms() + (page.timeout.as_millis() as Ts) * 3 + 5_000;
    let (pid, pg, iid) = (row.id.clone(), page.name.clone(), row.incident_id.clone());
    let known = blocking(shared, move |c| {
        c.store.mark_publication(&pid, "pending", attempts, lease, None)?;
        c.store.status_page_incident_of(&pg, &iid)
    })
    .await;
    let mut sp_incident = match known {
        Some(Ok(k)) => row.sp_incident_id.clone().or(k),
        Some(Err(e)) => return tracing::error!(error = %e, "cannot record a publication attempt"),
        None => return,
    };
    let result = send(&client, &row, &request, &mut sp_incident, shared).await;
    match result {
        Ok((sp_id, update)) => finish(shared, &row, &request, page.name.clone(), sp_id, update).await,
        Err(e) if e.is_retryable() && now_ms() - row.created_at < MAX_RETRY => {
            let backoff = 1_000i64.saturating_mul(1 << attempts.min(9)).min(300_000);
            tracing::warn!(publication = %row.id, attempt = attempts, error = %e, "publication will be retried");
            metrics::counter!("herald_notifications_total", "receiver" => "status_page", "outcome" => "retried").increment(1);
            let (pid, msg) = (row.id.clone(), e.to_string());
            blocking(shared, move |c| c.store.mark_publication(&pid, "pending", attempts, now_ms() + backoff, Some(&msg))).await;
        }
        Err(e) => {
            let (pid, msg) = (row.id.clone(), e.to_string());
            tracing::error!(publication = %pid, error = %msg, "publication failed");
            metrics::counter!("herald_notifications_total", "receiver" => "status_page", "outcome" => "failed").increment(1);
            blocking(shared, move |c| c.store.mark_publication(&pid, "failed", attempts, now_ms(), Some(&msg))).await;
        }
    }
}

/// Posts (or adopts) the update; returns the Statuspage incident id and the update.
async fn send(client: &Client, row: &PublicationRow, req: &Request, sp_incident: &mut Option<String>, shared: &Arc<Shared>) -> Result<(String, SpUpdate), PageError> {
    let StatusPageKind::Api { page_id, .. } = &client.page().kind else { unreachable!("checked by the caller") };
    if row.attempts > 0 {
        if let Some(found) = find_existing(client, page_id, sp_incident.as_deref(), &req.body).await? {
            tracing::info!(publication = %row.id, sp_incident = %found.0, "a previous attempt reached the page; adopting its update");
            return Ok(found);
        }
    }
    let incident: SpIncident = match sp_incident.clone() {
        Some(sp) => {
            let body = json!({"incident": {"status": req.status, "body": req.body, "components": req.components}});
            decode(client.request(Method::PATCH, &format!("/pages/{page_id}/incidents/{sp}"), Some(body)).await?)?
        }
        None => {
            let body = json!({"incident": {
                "name": req.name, "status": req.status, "body": req.body,
                "component_ids": req.components.keys().collect::<Vec<_>>(), "components": req.components,
                "deliver_notifications": true,
            }});
            let created: SpIncident = decode(client.request(Method::POST, &format!("/pages/{page_id}/incidents"), Some(body)).await?)?;
            // Stored before anything else: a retry or the next draft updates this incident.
            let link = Link { page: client.page().name.clone(), sp_incident_id: created.id.clone(), incident_id: row.incident_id.clone() };
            let pid = row.id.clone();
            blocking(shared, move |c| c.store.set_publication_incident(&pid, &link)).await.transpose()?;
            *sp_incident = Some(created.id.clone());
            created
        }
    };
    let update = newest_with_body(&incident, &req.body).ok_or_else(|| PageError::Decode(format!("the page's answer has no update with the posted text (incident {})", incident.id)))?;
    Ok((incident.id.clone(), update))
}

fn decode(v: Value) -> Result<SpIncident, PageError> {
    serde_json::from_value(v).map_err(|e| PageError::Decode(e.to_string()))
}

fn newest_with_body(i: &SpIncident, body: &str) -> Option<SpUpdate> {
    i.incident_updates.iter().filter(|u| u.body.as_deref() == Some(body)).max_by_key(|u| parse_time(u.created_at.as_deref())).cloned()
}

/// An update with this text already on the page (from an attempt whose answer was lost).
async fn find_existing(client: &Client, page_id: &str, sp_incident: Option<&str>, body: &str) -> Result<Option<(String, SpUpdate)>, PageError> {
    let incidents: Vec<SpIncident> = match sp_incident {
        Some(sp) => vec![decode(client.request(Method::GET, &format!("/pages/{page_id}/incidents/{sp}"), None).await?)?],
        None => serde_json::from_value(client.request(Method::GET, &format!("/pages/{page_id}/incidents/unresolved"), None).await?)
            .map_err(|e| PageError::Decode(e.to_string()))?,
    };
    Ok(incidents.iter().find_map(|i| newest_with_body(i, body).map(|u| (i.id.clone(), u))))
}

async fn finish(shared: &Arc<Shared>, original: &PublicationRow, req: &Request, page: String, sp_id: String, update: SpUpdate) {
    let row = original.clone();
    let req = req.clone();
    let r = blocking(shared, move |core| -> Result<Vec<&'static str>, String> {
        let key = format!("sp:{page}:upd:{}", update.id);
        let at = parse_time(update.created_at.as_deref());
        let already = core.store.seen(&key).map_err(|e| e.to_string())?.is_some();
        let mut events = Vec::new();
        if !already {
            events.push((at, Event::PublicUpdate { channel: Channel::StatusPage }));
            let current = core.state.incidents.values().find(|i| i.id == row.incident_id).map(|i| i.status);
            if let Some(s) = Status::parse(&req.status).filter(|s| Some(*s) != current) {
                events.push((at, Event::Status { value: s }));
            }
        }
        let x = Extra {
            marks: vec![Mark { key, incident_id: Some(row.incident_id.clone()), fingerprint: fingerprint(update.body.as_deref().unwrap_or("")), at }],
            links: vec![Link { page: page.clone(), sp_incident_id: sp_id.clone(), incident_id: row.incident_id.clone() }],
            published: Some((row.id.clone(), sp_id.clone(), Some(update.id.clone()), now_ms())),
            ..Default::default()
        };
        apply_external(core, &row.incident_id, &events, &x).map(|a| a.applied).map_err(|e| e.to_string())
    })
    .await;
    match r {
        Some(Ok(applied)) => {
            metrics::counter!("herald_notifications_total", "receiver" => "status_page", "outcome" => "sent").increment(1);
            tracing::info!(incident = %original.incident_id, draft = original.draft, events = ?applied, "draft published to the status page")
        }
        Some(Err(e)) => tracing::error!(publication = %original.id, error = %e, "published, but recording it failed; the poller will record the update"),
        None => {}
    }
}
