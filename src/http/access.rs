//! Who may call what: the bearer-token check shared by every protected endpoint, the read
//! guard for `api.read_requires_token`, and the reload rate limit.
//!
//! * Mutating calls always need the token ([`super::Authorized`]).
//! * `POST /-/reload` needs it when one is configured; without a token it stays open, as in
//!   Prometheus and Alertmanager (SIGHUP always works).
//! * With `api.read_requires_token: true`, every `GET`/`HEAD` under `/api/` needs it too
//!   ([`require_read_token`], a layer over the whole router, so endpoints added later are
//!   covered). `/metrics`, `/-/healthy` and `/-/ready` stay open for scrapers and probes.
//! * Reloads are rate-limited ([`ReloadGate`]): at most one per [`RELOAD_MIN_GAP`]; more
//!   get 429 with `Retry-After`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{tokens_equal, ApiError};
use crate::shared::Shared;

/// The shortest time between two reloads through the API.
pub const RELOAD_MIN_GAP: Duration = Duration::from_secs(1);

/// Checks `Authorization: Bearer <token>` against the configured token: 401 with
/// `WWW-Authenticate: Bearer` when it is missing or wrong.
pub fn check_token(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>` header")),
        Some(t) if tokens_equal(t, expected) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token")),
    }
}

/// A layer: with `api.read_requires_token`, reads under `/api/` need the token.
pub async fn require_read_token(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    if is_read && request.uri().path().starts_with("/api/") {
        let config = shared.config();
        if config.api_read_requires_token {
            // `check` refuses read_requires_token without a token; refuse rather than serve.
            let verdict = match config.api_token.as_deref() {
                Some(expected) => check_token(request.headers(), expected),
                None => Err(ApiError::new(StatusCode::FORBIDDEN, "api.read_requires_token is set but no api.token_file is configured")),
            };
            if let Err(e) = verdict {
                return e.into_response();
            }
        }
    }
    next.run(request).await
}

/// Admits at most one reload per `min_gap`.
#[derive(Debug)]
pub struct ReloadGate {
    min_gap: Duration,
    last: Mutex<Option<Instant>>,
}

impl Default for ReloadGate {
    fn default() -> Self {
        ReloadGate::new(RELOAD_MIN_GAP)
    }
}

impl ReloadGate {
    /// A gate admitting one reload per `min_gap`.
    pub fn new(min_gap: Duration) -> ReloadGate {
        ReloadGate { min_gap, last: Mutex::new(None) }
    }

    /// Admits a reload now, or says how long until the next one is admitted.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut last = self.last.lock().expect("reload gate lock");
        if let Some(wait) = last.and_then(|l| self.min_gap.checked_sub(now.saturating_duration_since(l))).filter(|w| !w.is_zero()) {
            return Err(wait);
        }
        *last = Some(now);
        Ok(())
    }
}

/// The 429 answer for a reload that came too soon: `Retry-After` in whole seconds (at least 1).
pub fn too_many_reloads(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("reloads are limited to one per {}s; retry in {secs}s", RELOAD_MIN_GAP.as_secs()),
    )
    .into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_one_reload_per_gap() {
        let gate = ReloadGate::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(gate.admit(t0).is_ok());
        let wait = gate.admit(t0 + Duration::from_millis(300)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(700));
        assert!(gate.admit(t0 + Duration::from_millis(999)).is_err());
        assert!(gate.admit(t0 + Duration::from_secs(1)).is_ok());
        let r = too_many_reloads(Duration::from_millis(700));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
