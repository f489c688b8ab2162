//! Inbound integrations: `POST /api/v1/integrations/pagerduty` (PagerDuty Webhooks v3, signed)
//! and `POST /api/v1/alertmanager` (Alertmanager webhook v4, bearer token). Bodies are limited
//! to [`MAX_BODY`]; a bad signature, a malformed body or an unknown incident gets a 4xx and
//! changes nothing. The logic lives in [`crate::integrations`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{blocking, ApiError, Authorized};
use crate::shared::{now_ms, Shared};
use crate::integrations::{alertmanager, pagerduty};

/// Largest inbound webhook body (PagerDuty and Alertmanager bodies are a few KB).
pub const MAX_BODY: usize = 1024 * 1024;

pub(super) async fn pagerduty(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let config = shared.config();
    let Some(secret) = config.integrations.pagerduty_secret.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "the PagerDuty integration is off: set integrations.pagerduty.webhook_secret_file"));
    };
    let Some(sig) = headers.get("x-pagerduty-signature").and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing X-PagerDuty-Signature header"));
    };
    if !pagerduty::verify(&secret, &body, sig) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid X-PagerDuty-Signature: no v1 signature matches the body under the configured secret"));
    }
    let event = pagerduty::parse(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let outcome = blocking(move || {
        let mut core = shared.core.lock().expect("core lock");
        pagerduty::handle(&mut core, &event, now_ms()).map_err(|e| match e {
            pagerduty::PdError::Malformed(_) => ApiError::bad_request(e.to_string()),
            pagerduty::PdError::Stale { .. } => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            pagerduty::PdError::UnknownIncident(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            pagerduty::PdError::Store(m) => ApiError::internal(m),
        })
    })
    .await?;
    Ok(Json(match outcome {
        pagerduty::Outcome::Applied { incident, events } => json!({"incident": incident, "applied": events}),
        pagerduty::Outcome::Ignored(why) => json!({"ignored": why}),
    }))
}

pub(super) async fn alertmanager(State(shared): State<Arc<Shared>>, _auth: Authorized, body: Bytes) -> Result<Json<Value>, ApiError> {
    let n = alertmanager::parse(&body).map_err(ApiError::bad_request)?;
    let config = shared.config();
    let alerts = blocking(move || {
        let mut core = shared.core.lock().expect("core lock");
        alertmanager::handle(&mut core, &config.integrations.alertmanager, &n, now_ms()).map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(json!({ "alerts": alerts })))
}
