//! Operational endpoints: `/-/healthy`, `/-/ready`, `/-/reload`, `/metrics`.
//!
//! `/-/reload` needs the API token when one is configured (without one it stays open, as in
//! Prometheus and Alertmanager; SIGHUP always works), and is rate-limited to one reload per
//! second: each reload re-reads and re-validates every file.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::access::{check_token, too_many_reloads, ReloadGate};
use super::{blocking, ApiError};
use crate::shared::{reload as reload_config, ReloadError, Shared};

pub(super) async fn healthy() -> &'static str {
    "Herald is Healthy.\n"
}

/// Ready once every group has been evaluated once, and not while saving the state fails (so
/// a load balancer stops routing to a daemon that cannot record anything, and an alert on
/// `herald_state_write_failures_total` has company).
pub(super) async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.saves_failing() {
        (StatusCode::SERVICE_UNAVAILABLE, "Herald cannot save its state (see herald_state_write_failures_total and the log).\n")
    } else if shared.is_ready() {
        (StatusCode::OK, "Herald is Ready.\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Herald is not ready yet.\n")
    }
}

pub(super) async fn reload(State(shared): State<Arc<Shared>>, Extension(gate): Extension<Arc<ReloadGate>>, headers: HeaderMap) -> Response {
    if let Some(expected) = shared.config().api_token.as_deref() {
        if let Err(e) = check_token(&headers, expected) {
            return e.into_response();
        }
    }
    if let Err(wait) = gate.admit(std::time::Instant::now()) {
        return too_many_reloads(wait);
    }
    reload_now(shared).await.into_response()
}

async fn reload_now(shared: Arc<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let summary = blocking(move || {
        reload_config(&shared).map_err(|e| match e {
            ReloadError::Invalid(diags) => {
                let lines: Vec<String> = diags.errors().map(|d| d.to_string()).collect();
                let mut err = ApiError::bad_request(format!(
                    "invalid configuration; the running configuration is kept:\n{}",
                    lines.join("\n")
                ));
                let all: Vec<serde_json::Value> = diags.0.iter().map(|d| d.to_string().into()).collect();
                err.extra = Some([("diagnostics".to_string(), serde_json::Value::Array(all))].into_iter().collect());
                err
            }
            other => ApiError::bad_request(format!("{other}; the running configuration is kept")),
        })
    })
    .await?;
    Ok(Json(json!({
        "status": "success",
        "groups": summary.groups,
        "rules": summary.rules,
        "warnings": summary.warnings,
        "needs_restart": summary.needs_restart,
    })))
}

pub(super) async fn metrics() -> impl IntoResponse {
    let text = crate::telemetry::install().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
