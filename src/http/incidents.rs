//! Incidents: list, show (with events), declare, and apply events (spec §7).
//!
//! A mutating call applies the event to the in-memory state and persists the incident and the
//! event in one [`Store::commit`](crate::store::Store::commit), both under the `core` lock;
//! if the commit fails, the in-memory change is rolled back and the caller gets a 500. Comms
//! metrics are recorded only after the commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, rfc3339, ApiError, Authorized};
use crate::config::Severity;
use crate::daemon::{now_ms, Shared};
use crate::engine::{ApplyError, Event, EventError, Incident, Subject, Ts};
use crate::store::Commit;

/// Event types accepted by `POST /api/v1/incidents/{id}/events`.
pub const EVENT_TYPES: [&str; 12] = [
    "ack",
    "public_update",
    "status",
    "security",
    "internal_only",
    "legal_requested",
    "legal_approved",
    "correction",
    "false_positive",
    "postmortem_published",
    "resolve",
    // Listed last: accepted by the parser only to answer with a pointer to the right endpoint.
    "declare",
];

/// Most incidents one listing returns (`?limit=` may lower it).
const MAX_LIST: usize = 1000;

/// An incident as the API shows it: times in RFC 3339.
pub fn incident_json(i: &Incident) -> Value {
    let t = |v: Option<Ts>| v.map(rfc3339);
    json!({
        "id": i.id,
        "subject": i.subject,
        "severity": i.severity.as_str(),
        "status": i.status.as_str(),
        "open": i.is_open(),
        "opened_at": rfc3339(i.opened_at),
        "resolved_at": t(i.resolved_at),
        "acknowledged_at": t(i.acknowledged_at),
        "security": i.security,
        "internal_only": i.internal_only,
        "legal_hold": i.legal_hold,
        "legal_pending": i.legal_pending,
        "legal_requested_at": t(i.legal_requested_at),
        "public_updates": i.public_updates,
        "first_public_update_at": t(i.first_public_update_at),
        "last_public_update_at": t(i.last_public_update_at),
        "last_status_page_update_at": t(i.last_status_page_update_at),
        "postmortem_published": i.postmortem_published,
        "corrections": i.corrections,
        "false_positive": i.false_positive,
        "activating_rule": i.activating_rule,
    })
}

fn event_json(at: Ts, e: &Event) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_else(|_| json!({ "type": e.kind() }));
    if let Value::Object(m) = &mut v {
        m.insert("at".into(), rfc3339(at).into());
    }
    v
}

pub(super) async fn list(State(shared): State<Arc<Shared>>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let open = match q.get("open").map(String::as_str) {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => return Err(ApiError::bad_request(format!("open must be true or false, not {other:?}"))),
    };
    let limit = match q.get("limit") {
        None => MAX_LIST,
        Some(l) => l.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::bad_request(format!("limit must be a positive integer, not {l:?}")))?.min(MAX_LIST),
    };
    let incidents = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        // Open incidents are at most one per subject, so filtering after a wide read is cheap.
        let all = core.store.incidents(if open.is_some() { 1_000_000 } else { limit }).map_err(ApiError::internal)?;
        Ok(all.into_iter().filter(|i| open.is_none_or(|o| i.is_open() == o)).take(limit).collect::<Vec<_>>())
    })
    .await?;
    let items: Vec<Value> = incidents.iter().map(incident_json).collect();
    Ok(Json(json!({ "incidents": items })))
}

pub(super) async fn get_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (inc, events) = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        let inc = core.store.incident(&id).map_err(ApiError::internal)?.ok_or_else(|| not_found(&id))?;
        let events = core.store.events(&id).map_err(ApiError::internal)?;
        Ok((inc, events))
    })
    .await?;
    let mut v = incident_json(&inc);
    v["events"] = events.iter().map(|(at, e)| event_json(*at, e)).collect::<Vec<_>>().into();
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    subject: BTreeMap<String, String>,
    severity: Severity,
    #[serde(default)]
    security: bool,
}

pub(super) async fn declare(State(shared): State<Arc<Shared>>, _auth: Authorized, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: DeclareBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid body: {e}; expected {{\"subject\": {{\"label\": \"value\", ...}}, \"severity\": \"critical|warning|info\", \"security\": false}}"
        ))
    })?;
    if b.subject.is_empty() {
        return Err(ApiError::bad_request("subject must name at least one label, e.g. {\"service\": \"checkout\"}"));
    }
    shared.config().rules.check_subject(b.subject.keys()).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let subject = Subject::new(b.subject);
    let event = Event::Declare { severity: b.severity, security: b.security };
    let inc = blocking(move || apply_and_commit(&shared, Target::Subject(&subject), &event)).await?;
    Ok((StatusCode::CREATED, Json(incident_json(&inc))))
}

pub(super) async fn post_event(State(shared): State<Arc<Shared>>, _auth: Authorized, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let event = parse_event(&body)?;
    let inc = blocking(move || apply_and_commit(&shared, Target::Id(&id), &event)).await?;
    Ok(Json(incident_json(&inc)))
}

/// Parses an event body, with a message that says what is wrong and what is valid.
fn parse_event(body: &[u8]) -> Result<Event, ApiError> {
    let valid = EVENT_TYPES[..EVENT_TYPES.len() - 1].join(", ");
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request(format!("the body must be a JSON object with a \"type\" (valid types: {valid})")));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(ApiError::bad_request(format!("\"type\" must be a string (valid types: {valid})"))),
        None => return Err(ApiError::bad_request(format!("missing \"type\" (valid types: {valid})"))),
    };
    if kind == "declare" {
        return Err(ApiError::bad_request("declare opens a new incident: POST /api/v1/incidents instead"));
    }
    if !EVENT_TYPES.contains(&kind) {
        return Err(ApiError::bad_request(format!("unknown event type {kind:?} (valid types: {valid})")));
    }
    serde_json::from_value::<Event>(v.clone()).map_err(|e| {
        let hint = match kind {
            "public_update" => "; public_update needs \"channel\": status_page | email | social | internal",
            "status" => "; status needs \"value\": investigating | identified | monitoring | resolved",
            _ => "",
        };
        ApiError::bad_request(format!("invalid {kind} event: {e}{hint}"))
    })
}

enum Target<'a> {
    Subject(&'a Subject),
    Id(&'a str),
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no incident with id {id:?}"))
}

/// Applies an event and commits the incident and the event together, under the core lock.
/// Rolls the in-memory state back if anything fails.
fn apply_and_commit(shared: &Shared, target: Target<'_>, event: &Event) -> Result<Incident, ApiError> {
    let now = now_ms();
    let mut guard = shared.core.lock().expect("core lock");
    let core = &mut *guard;
    let snapshot = core.state.clone();
    let applied = match target {
        Target::Subject(s) => core.state.apply_event(s, event, now),
        Target::Id(id) => core.state.apply_event_by_id(id, event, now),
    };
    let (change, fx) = match applied {
        Ok(r) => r,
        Err(e) => {
            core.state = snapshot;
            return Err(match e {
                ApplyError::UnknownId(id) => match core.store.incident(&id) {
                    Ok(Some(old)) => {
                        let latest = core.state.incidents.get(&old.subject).map_or_else(String::new, |l| l.id.clone());
                        ApiError::new(
                            StatusCode::CONFLICT,
                            format!("incident {id} is no longer its subject's latest incident ({latest} is); events apply to the latest one"),
                        )
                    }
                    Ok(None) => not_found(&id),
                    Err(e) => ApiError::internal(e),
                },
                ApplyError::NoIncident(s) => ApiError::new(StatusCode::NOT_FOUND, format!("subject {s} has no incident")),
                e @ ApplyError::AlreadyOpen { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
                ApplyError::Event(e @ EventError::AlreadyResolved(_)) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
                ApplyError::Event(e @ EventError::DeclareOnExisting(_)) => ApiError::bad_request(e.to_string()),
            });
        }
    };
    let inc = change.incident;
    let commit = Commit { incidents: vec![&inc], events: vec![(inc.id.as_str(), now, event)], ..Default::default() };
    if let Err(e) = core.store.commit(&core.state, &commit) {
        core.state = snapshot;
        return Err(ApiError::internal(format!("the change could not be saved and was not applied: {e}")));
    }
    let open = core.state.incidents.values().filter(|i| i.is_open()).count();
    drop(guard);
    crate::telemetry::record_effect(&fx, &inc, open);
    tracing::info!(incident = %inc.id, event = event.kind(), "incident event applied");
    Ok(inc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies_parse_with_clear_errors() {
        assert_eq!(parse_event(br#"{"type":"ack"}"#).unwrap(), Event::Ack);
        assert_eq!(
            parse_event(br#"{"type":"public_update","channel":"email"}"#).unwrap(),
            Event::PublicUpdate { channel: crate::engine::Channel::Email }
        );
        let e = parse_event(br#"{"type":"nope"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("unknown event type \"nope\"") && e.message.contains("postmortem_published"), "{}", e.message);
        assert!(!e.message.contains("declare"), "{}", e.message);
        let e = parse_event(br#"{"type":"public_update"}"#).unwrap_err();
        assert!(e.message.contains("channel"), "{}", e.message);
        let e = parse_event(br#"{"type":"status","value":"sleeping"}"#).unwrap_err();
        assert!(e.message.contains("investigating"), "{}", e.message);
        assert!(parse_event(b"[]").unwrap_err().message.contains("JSON object"));
        assert!(parse_event(br#"{"type":"declare","severity":"critical"}"#).unwrap_err().message.contains("POST /api/v1/incidents"));
    }
}
