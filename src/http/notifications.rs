//! `GET /api/v1/notifications`: the outbox as the API shows it, newest first, so operators
//! can see what was sent, what is still retrying and what failed permanently (and why).
//! `?state=pending|sent|failed|suppressed|dry_run` filters; `?limit=` caps (default 100).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{blocking, rfc3339, ApiError};
use crate::shared::Shared;
use crate::store::{OutboxEntry, OutboxState};

const MAX_LIST: usize = 1000;
const STATES: [OutboxState; 5] = [OutboxState::Pending, OutboxState::Sent, OutboxState::Failed, OutboxState::Suppressed, OutboxState::DryRun];

fn entry_json(e: &OutboxEntry) -> Value {
    json!({
        "id": e.id,
        "dedup_key": e.dedup_key,
        "receiver": e.receiver,
        "rule": e.rule,
        "subject": e.subject,
        "status": e.status,
        "state": e.state.as_str(),
        "attempts": e.attempts,
        "last_error": e.last_error,
        "created_at": rfc3339(e.created_at),
        "next_attempt_at": (e.state == OutboxState::Pending).then(|| rfc3339(e.not_before)),
        "deadline": rfc3339(e.deadline),
        "delivered_at": e.delivered_at.map(rfc3339),
    })
}

pub(super) async fn list(State(shared): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(STATES.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            ApiError::bad_request(format!("state must be one of pending, sent, failed, suppressed, dry_run, not {s:?}"))
        })?),
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::bad_request(format!("limit must be a positive integer, not {l:?}")))?
            .min(MAX_LIST),
    };
    let entries = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        core.store.outbox(state, limit).map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(json!({ "notifications": entries.iter().map(entry_json).collect::<Vec<_>>() })))
}
