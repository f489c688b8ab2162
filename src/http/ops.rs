//! Operational endpoints: `/-/healthy`, `/-/ready`, `/-/reload`, `/metrics`.
//!
//! `/-/reload` needs no token, as in Prometheus and Alertmanager: it only re-reads the file
//! the operator already controls (SIGHUP does the same).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::{blocking, ApiError};
use crate::daemon::{reload as reload_config, ReloadError, Shared};

pub(super) async fn healthy() -> &'static str {
    "Herald is Healthy.\n"
}

pub(super) async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.is_ready() {
        (StatusCode::OK, "Herald is Ready.\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Herald is not ready yet.\n")
    }
}

pub(super) async fn reload(State(shared): State<Arc<Shared>>) -> Result<Json<serde_json::Value>, ApiError> {
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
