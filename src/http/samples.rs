//! `GET /api/v1/incidents/{id}/samples`: the signal values Herald recorded around an incident
//! (every evaluation while it is open, and for 30 minutes after it resolved), for charts.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{blocking, rfc3339, ApiError};
use crate::shared::Shared;

pub(super) async fn list(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let samples = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        if core.store.incident(&id).map_err(ApiError::internal)?.is_none() {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no incident with id {id:?}")));
        }
        core.store.samples(&id).map_err(ApiError::internal)
    })
    .await?;
    // Grouped by signal: {"sli": [[t, v], ...], ...}, times in unix milliseconds and RFC 3339.
    let mut by_signal: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (at, signal, value) in samples {
        by_signal.entry(signal).or_default().push(json!({ "at": rfc3339(at), "t": at, "value": value }));
    }
    Ok(Json(json!({ "signals": by_signal })))
}
