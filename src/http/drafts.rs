//! Drafted updates: list them, approve one for publishing.
//!
//! `GET /api/v1/incidents/{id}/drafts` lists an incident's drafts with their publication
//! state. `POST /api/v1/incidents/{id}/drafts/{n}/publish` (token required) approves draft
//! `n`: optional `text` (the edited status-page text), `status` and `component_status`. It
//! only enqueues the publication (see [`crate::integrations::publish`]); refused with 409
//! while the incident is on legal hold, or when the draft was already approved.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, rfc3339, ApiError, Authorized};
use crate::config::daemon::StatusPageKind;
use crate::shared::{now_ms, Shared};
use crate::drafts::Draft;
use crate::engine::Status;
use crate::integrations::publish::{Request, COMPONENT_STATUSES};
use crate::store::PublicationRow;

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no incident with id {id:?}"))
}

fn publication_json(p: &PublicationRow) -> Value {
    json!({
        "state": p.state, "page": p.page, "attempts": p.attempts, "last_error": p.last_error,
        "approved_at": rfc3339(p.created_at), "published_at": p.done_at.map(rfc3339),
        "status_page_incident_id": p.sp_incident_id, "status_page_update_id": p.sp_update_id,
    })
}

pub(super) async fn list(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (drafts, pubs) = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        core.store.incident(&id).map_err(ApiError::internal)?.ok_or_else(|| not_found(&id))?;
        Ok((core.store.drafts(&id).map_err(ApiError::internal)?, core.store.publications(Some(&id)).map_err(ApiError::internal)?))
    })
    .await?;
    let items: Vec<Value> = drafts
        .iter()
        .map(|(n, _, data)| {
            let mut v: Value = serde_json::from_str(data).unwrap_or_else(|_| json!({}));
            v["n"] = json!(n);
            v["publication"] = pubs.iter().find(|p| p.draft == *n).map_or(Value::Null, publication_json);
            v
        })
        .collect();
    Ok(Json(json!({ "drafts": items })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// The edited status-page text (default: the draft's).
    #[serde(default)]
    text: Option<String>,
    /// investigating | identified | monitoring | resolved (default: the draft's).
    #[serde(default)]
    status: Option<String>,
    /// The status to give the subject's components (default: leave them as they are).
    #[serde(default)]
    component_status: Option<String>,
    /// Which status page (default: the one whose components map the incident's subject).
    #[serde(default)]
    page: Option<String>,
}

pub(super) async fn publish(State(shared): State<Arc<Shared>>, _auth: Authorized, Path((id, n)): Path<(String, u32)>, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: PublishBody = if body.iter().all(u8::is_ascii_whitespace) {
        PublishBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("invalid body: {e}; expected {{\"text\": \"...\", \"status\": \"identified\", \"component_status\": \"partial_outage\"}}, all optional"))
        })?
    };
    if let Some(s) = &b.status {
        if Status::parse(s).is_none() {
            return Err(ApiError::bad_request(format!("status must be investigating, identified, monitoring or resolved, not {s:?}")));
        }
    }
    if let Some(c) = &b.component_status {
        if !COMPONENT_STATUSES.contains(&c.as_str()) {
            return Err(ApiError::bad_request(format!("component_status must be one of {}, not {c:?}", COMPONENT_STATUSES.join(", "))));
        }
    }
    if b.text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request("text must not be empty"));
    }
    let config = shared.config();
    let s2 = shared.clone();
    let row = blocking(move || {
        let mut core = s2.core.lock().expect("core lock");
        let inc = match core.state.incidents.values().find(|i| i.id == id).cloned() {
            Some(i) => i,
            None => core.store.incident(&id).map_err(ApiError::internal)?.ok_or_else(|| not_found(&id))?,
        };
        if inc.legal_hold {
            let mut e = ApiError::new(StatusCode::CONFLICT, format!("incident {id} is on legal hold: public comms are held until legal approves (post a legal_approved event)"));
            e.extra = Some(serde_json::Map::from_iter([("reason".to_string(), json!("legal_hold"))]));
            return Err(e);
        }
        let drafts = core.store.drafts(&id).map_err(ApiError::internal)?;
        let Some((_, _, data)) = drafts.iter().find(|d| d.0 == n) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("incident {id} has no draft {n} (it has {})", drafts.len())));
        };
        let draft: Draft = serde_json::from_str(data).map_err(ApiError::internal)?;
        let pages: Vec<_> = config.status_pages.iter().filter(|p| matches!(p.kind, StatusPageKind::Api { .. })).collect();
        let page = match &b.page {
            Some(name) => pages.iter().find(|p| &p.name == name).copied().ok_or_else(|| ApiError::bad_request(format!("no `statuspage` status page named {name:?}")))?,
            None => pages
                .iter()
                .find(|p| !p.components_of(&inc.subject).is_empty())
                .or(pages.first())
                .copied()
                .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no status page to publish to: configure a `status_pages` entry of type statuspage"))?,
        };
        let text = b.text.clone().or_else(|| draft.audiences.get("status_page").cloned()).unwrap_or_default();
        let components: BTreeMap<String, String> = match &b.component_status {
            Some(c) => page.components_of(&inc.subject).into_iter().map(|id| (id.to_string(), c.clone())).collect(),
            None => BTreeMap::new(),
        };
        let service = inc.subject.get("service").unwrap_or(inc.subject.key()).to_string();
        let request = Request { name: format!("Problems with {service}"), body: text, status: b.status.clone().unwrap_or(draft.status.clone()), components };
        let now = now_ms();
        let row = PublicationRow {
            id: format!("pub_{}_{n}_{now}", inc.id),
            incident_id: inc.id.clone(),
            draft: n,
            page: page.name.clone(),
            request: serde_json::to_string(&request).map_err(ApiError::internal)?,
            created_at: now,
            not_before: now,
            attempts: 0,
            state: "pending".into(),
            last_error: None,
            sp_incident_id: None,
            sp_update_id: None,
            done_at: None,
        };
        if !core.store.insert_publication(&row).map_err(ApiError::internal)? {
            let existing = core.store.publications(Some(&inc.id)).map_err(ApiError::internal)?.into_iter().find(|p| p.draft == n);
            let state = existing.as_ref().map_or("unknown", |p| p.state.as_str()).to_string();
            let mut e = ApiError::new(StatusCode::CONFLICT, format!("draft {n} of incident {} was already approved (publication {state})", inc.id));
            e.extra = existing.map(|p| serde_json::Map::from_iter([("publication".to_string(), publication_json(&p))]));
            return Err(e);
        }
        Ok(row)
    })
    .await?;
    tracing::info!(incident = %row.incident_id, draft = n, page = %row.page, "draft approved for publishing");
    Ok((StatusCode::ACCEPTED, Json(json!({ "incident": row.incident_id, "draft": n, "publication": publication_json(&row) }))))
}
