//! PagerDuty Webhooks v3 as input: pager acks become `ack` events.
//!
//! - **Signature**: `X-PagerDuty-Signature` carries one or more `v1=<hex HMAC-SHA256 of the raw
//!   body>`, comma-separated (several during a secret rotation); one must match, compared in
//!   constant time. No or a wrong signature is refused.
//! - **Replays**: a delivery whose `event.occurred_at` is more than [`MAX_AGE`] in the past (or
//!   in the future) is refused; a delivery of an event id already applied is accepted and
//!   changes nothing.
//! - **Matching**: `event.data.incident_key` is the `dedup_key` Herald sent with the page
//!   (Events API v2), which names the Herald incident.
//! - **Events**: `incident.acknowledged` → `ack` at `occurred_at`; `incident.resolved` → `ack`
//!   too (someone handled the page; Herald's incident still resolves on its own signals or a
//!   person's `resolve`); `incident.reassigned` → nothing changes (recorded as seen).

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::shared::Core;
use crate::engine::{Event, Ts};
use crate::store::{Extra, Mark};

/// Deliveries older than this are refused as replays.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// Event types Herald acts on.
pub const EVENT_TYPES: [&str; 3] = ["incident.acknowledged", "incident.resolved", "incident.reassigned"];

/// Whether the header carries a valid `v1` signature of `body` under `secret`.
pub fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    header
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .any(|sig| crate::http::tokens_equal(&sig.to_ascii_lowercase(), &expected))
}

/// The `v1=` header value for a body (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("v1={}", mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[derive(Debug, Deserialize)]
struct Envelope {
    event: PdEvent,
}

/// The fields of a v3 event Herald reads.
#[derive(Debug, Deserialize)]
pub struct PdEvent {
    pub id: String,
    pub event_type: String,
    pub occurred_at: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PdError {
    #[error("invalid PagerDuty v3 webhook body: {0}")]
    Malformed(String),
    #[error("event {id} occurred at {at}, more than 5 minutes from now: refused as a replay")]
    Stale { id: String, at: String },
    #[error("incident_key {0:?} is not a dedup key Herald sent")]
    UnknownIncident(String),
    #[error("{0}")]
    Store(String),
}

/// What a delivery did.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Events applied to an incident.
    Applied { incident: String, events: Vec<&'static str> },
    /// An event type Herald does not act on, or one already applied.
    Ignored(String),
}

/// Parses a verified body.
pub fn parse(body: &[u8]) -> Result<PdEvent, PdError> {
    let e: Envelope = serde_json::from_slice(body).map_err(|e| PdError::Malformed(e.to_string()))?;
    Ok(e.event)
}

/// Applies a verified, parsed event (under the core lock).
pub fn handle(core: &mut Core, ev: &PdEvent, now: Ts) -> Result<Outcome, PdError> {
    let at = chrono::DateTime::parse_from_rfc3339(&ev.occurred_at)
        .map_err(|e| PdError::Malformed(format!("event.occurred_at {:?}: {e}", ev.occurred_at)))?
        .timestamp_millis();
    if (now - at).abs() > MAX_AGE.as_millis() as Ts {
        return Err(PdError::Stale { id: ev.id.clone(), at: ev.occurred_at.clone() });
    }
    if !EVENT_TYPES.contains(&ev.event_type.as_str()) {
        return Ok(Outcome::Ignored(format!("event type {} is not used by Herald", ev.event_type)));
    }
    let key = format!("pd:{}", ev.id);
    if core.store.seen(&key).map_err(|e| PdError::Store(e.to_string()))?.is_some() {
        return Ok(Outcome::Ignored(format!("event {} was already applied", ev.id)));
    }
    let Some(dedup) = ev.data.get("incident_key").and_then(|v| v.as_str()) else {
        return Err(PdError::Malformed("event.data.incident_key is missing".into()));
    };
    let incident = core.store.incident_for_dedup_key(dedup).map_err(|e| PdError::Store(e.to_string()))?.ok_or_else(|| PdError::UnknownIncident(dedup.to_string()))?;
    let events: Vec<(Ts, Event)> = match ev.event_type.as_str() {
        "incident.acknowledged" | "incident.resolved" => vec![(at.min(now), Event::Ack)],
        _ => Vec::new(),
    };
    let x = Extra { marks: vec![Mark { key, incident_id: Some(incident.clone()), fingerprint: ev.event_type.clone(), at }], ..Default::default() };
    let applied = super::apply_external(core, &incident, &events, &x).map_err(|e| PdError::Store(e.to_string()))?;
    tracing::info!(incident = %incident, event_type = %ev.event_type, applied = ?applied.applied, "PagerDuty webhook applied");
    Ok(Outcome::Applied { incident, events: applied.applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_documented_scheme() {
        let body = br#"{"event":{"id":"x"}}"#;
        let good = sign("s3cret", body);
        assert!(good.starts_with("v1=") && good.len() == 3 + 64);
        assert!(verify("s3cret", body, &good));
        assert!(verify("s3cret", body, &format!("v1=00ff,{good}")), "any of several signatures (secret rotation)");
        assert!(verify("s3cret", body, &good.to_uppercase().replace("V1=", "v1=")), "hex case does not matter");
        assert!(!verify("other", body, &good));
        assert!(!verify("s3cret", br#"{"event":{"id":"y"}}"#, &good));
        assert!(!verify("s3cret", body, ""));
        assert!(!verify("s3cret", body, &good.replace("v1=", "v2=")));
    }

    #[test]
    fn the_documented_example_payload_parses() {
        let body = include_bytes!("../../tests/fixtures/integrations/pagerduty_v3_incident_acknowledged.json");
        let ev = parse(body).unwrap();
        assert_eq!(ev.event_type, "incident.acknowledged");
        assert_eq!(ev.data["incident_key"], "d3640fbd41094207a1c11e58e46b1662");
        assert!(matches!(parse(b"{\"event\":1}"), Err(PdError::Malformed(_))));
    }
}
