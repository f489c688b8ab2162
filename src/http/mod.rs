//! The HTTP API (spec §7) and `/metrics`, served with axum on the daemon's listener.
//!
//! One file per concern: [`ops`] (health, readiness, reload, metrics), [`rules`] (the rules
//! view), [`incidents`] (listing, declaring, events), [`notifications`] (the outbox). This
//! module holds the router, the JSON error type and bearer-token authentication for mutating
//! calls; [`access`] holds the token check, the read guard (`api.read_requires_token`) and
//! the reload rate limit.
//!
//! Handlers never hold the `core` lock on an async worker: everything that touches the state
//! or the store runs in `spawn_blocking` (SQLite fsyncs under that lock).

mod access;
mod explain;
mod drafts;
mod incidents;
mod integrations;
mod notifications;
mod ops;
mod rules;
mod samples;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, TimeZone, Utc};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::shared::Shared;
use crate::engine::Ts;

/// The router of the API and the console, with its state.
pub fn router(shared: Arc<Shared>) -> Router {
    let api = api_router(shared.clone());
    let (s1, s2) = (shared.clone(), shared);
    let check_token: crate::console::CheckToken = Arc::new(move |given: &str| match s1.config().api_token.as_deref() {
        None => crate::console::TokenCheck::Disabled,
        Some(expected) if tokens_equal(given, expected) => crate::console::TokenCheck::Valid,
        Some(_) => crate::console::TokenCheck::Invalid,
    });
    let targets: crate::console::Targets = Arc::new(move || s2.config().console.clone());
    api.clone().merge(crate::console::router(crate::console::Console::new(api, check_token, targets)))
}

/// The API of spec §7 alone (the console calls it in process).
fn api_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/-/healthy", get(ops::healthy))
        .route("/-/ready", get(ops::ready))
        .route("/-/reload", post(ops::reload))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/rules", get(rules::list))
        .route("/api/v1/rules/{rule}/explain", get(explain::explain_rule))
        .route("/api/v1/incidents", get(incidents::list).post(incidents::declare))
        .route("/api/v1/incidents/{id}", get(incidents::get_one))
        .route("/api/v1/incidents/{id}/events", post(incidents::post_event))
        .route("/api/v1/incidents/{id}/samples", get(samples::list))
        .route("/api/v1/notifications", get(notifications::list))
        .route("/api/v1/incidents/{id}/drafts", get(drafts::list))
        .route("/api/v1/incidents/{id}/drafts/{n}/publish", post(drafts::publish))
        .route("/api/v1/integrations/pagerduty", post(integrations::pagerduty).layer(axum::extract::DefaultBodyLimit::max(integrations::MAX_BODY)))
        .route("/api/v1/alertmanager", post(integrations::alertmanager).layer(axum::extract::DefaultBodyLimit::max(integrations::MAX_BODY)))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), access::require_read_token))
        .layer(axum::Extension(Arc::new(access::ReloadGate::default())))
        .with_state(shared)
}

/// Serves the API on `listener` until shutdown. Installs the metrics recorder (once per
/// process) and runs its upkeep for as long as the server runs.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) -> std::io::Result<()> {
    let handle = crate::telemetry::install();
    tokio::spawn(crate::telemetry::upkeep(handle, shared.shutdown.clone()));
    register_state_series(&shared).await;
    let token = shared.shutdown.clone();
    axum::serve(listener, router(shared)).with_graceful_shutdown(async move { token.cancelled().await }).await
}

/// Series whose values or labels come from the state and the configuration start right away:
/// open incidents, pending outbox entries, and a zero for every receiver × outcome.
async fn register_state_series(shared: &Arc<Shared>) {
    let s = shared.clone();
    let counts = tokio::task::spawn_blocking(move || {
        let core = s.core.lock().expect("core lock");
        let open = core.state.incidents.values().filter(|i| i.is_open()).count();
        (open, core.store.pending_count().ok())
    })
    .await;
    if let Ok((open, pending)) = counts {
        metrics::gauge!("herald_incidents_open").set(open as f64);
        if let Some(p) = pending {
            metrics::gauge!("herald_outbox_pending").set(p as f64);
        }
    }
    for r in &shared.config().receivers {
        for outcome in ["sent", "failed", "retried", "suppressed", "dry_run"] {
            metrics::counter!("herald_notifications_total", "receiver" => r.name.clone(), "outcome" => outcome).absolute(0);
        }
    }
}

/// An error answer: a status and `{"error": "..."}` (plus optional extra fields).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message, for people.
    pub message: String,
    /// More fields merged into the JSON body.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), extra: None }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %message, "API request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra.unwrap_or_default();
        body.insert("error".into(), self.message.into());
        let mut resp = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"herald\""));
        }
        resp
    }
}

/// Proof that the request carried the configured API token (an extractor for mutating calls).
///
/// No header or a wrong token: 401 with `WWW-Authenticate: Bearer`. No token configured
/// (`api.token_file` unset): 403, mutating calls are disabled.
#[derive(Debug)]
pub struct Authorized;

impl FromRequestParts<Arc<Shared>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let config = shared.config();
        let Some(expected) = config.api_token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutating API calls are disabled: set api.token_file in the configuration to enable them",
            ));
        };
        access::check_token(&parts.headers, expected).map(|()| Authorized)
    }
}

/// Compares two tokens in constant time (over their SHA-256 digests, so the length of the
/// expected token does not leak either).
pub fn tokens_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: Ts) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Runs blocking work (the core lock, SQLite) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(tokens_equal("s3cret", "s3cret"));
        assert!(!tokens_equal("s3cret", "s3cret "));
        assert!(!tokens_equal("", "s3cret"));
        assert!(!tokens_equal("S3cret", "s3cret"));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
