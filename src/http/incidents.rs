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
use crate::shared::{now_ms, Shared};
use crate::engine::event::valid_types;
use crate::engine::{ApplyError, Event, EventError, EventFields, EventNote, Incident, Subject};
use crate::store::{Commit, TimelineRow};

/// Most incidents one listing returns (`?limit=` may lower it).
const MAX_LIST: usize = 1000;

/// An incident as the API shows it: times in RFC 3339, subject label values scrubbed (unless
/// `notification.scrub.labels` is off).
pub fn incident_json(i: &Incident, scrubber: &crate::notify::Scrubber) -> Value {
    let t = |v: Option<crate::engine::Ts>| v.map(rfc3339);
    json!({
        "id": i.id,
        "subject": scrubber.subject(&i.subject).as_ref(),
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

/// One timeline entry: its fields, `at`, and who: `source` (person | herald), `actor`, `note`.
fn event_json(row: &TimelineRow) -> Value {
    let mut v = row.data.clone();
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
        m.insert("type".into(), row.kind.clone().into());
        m.insert("at".into(), rfc3339(row.at).into());
        m.insert("source".into(), row.source.clone().into());
        if let Some(a) = &row.actor {
            m.insert("actor".into(), a.clone().into());
        }
        if let Some(n) = &row.note {
            m.insert("note".into(), n.clone().into());
        }
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
    let planner = shared.planner.read().expect("planner lock").clone();
    let incidents = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        // Open incidents are at most one per subject, so filtering after a wide read is cheap.
        let all = core.store.incidents(if open.is_some() { 1_000_000 } else { limit }).map_err(ApiError::internal)?;
        Ok(all.into_iter().filter(|i| open.is_none_or(|o| i.is_open() == o)).take(limit).collect::<Vec<_>>())
    })
    .await?;
    let items: Vec<Value> = incidents.iter().map(|i| incident_json(i, planner.scrubber())).collect();
    Ok(Json(json!({ "incidents": items })))
}

pub(super) async fn get_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let planner = shared.planner.read().expect("planner lock").clone();
    let (inc, events) = blocking(move || {
        let core = shared.core.lock().expect("core lock");
        let inc = core.store.incident(&id).map_err(ApiError::internal)?.ok_or_else(|| not_found(&id))?;
        let events = core.store.timeline(&id).map_err(ApiError::internal)?;
        Ok((inc, events))
    })
    .await?;
    let mut v = incident_json(&inc, planner.scrubber());
    v["events"] = events.iter().map(event_json).collect::<Vec<_>>().into();
    Ok(Json(v))
}

/// Most labels a declared subject may have.
pub const MAX_SUBJECT_LABELS: usize = 32;
/// Longest label value of a declared subject (bytes).
pub const MAX_LABEL_VALUE: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareBody {
    #[serde(deserialize_with = "strict_labels")]
    subject: BTreeMap<String, String>,
    severity: String,
    #[serde(default)]
    security: Option<bool>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// An event body: every field any event type takes. Unknown fields and duplicate keys are
/// refused by serde; which fields belong to which type is the event grammar's business.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    security: Option<bool>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// A JSON object of string labels whose keys are unique (serde_json keeps the last duplicate).
fn strict_labels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of label names to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate label {k:?} in subject")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Checks a declared subject: Prometheus label names, at most 32 labels, values at most 1 KiB.
pub fn check_subject(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.is_empty() {
        return Err("subject must name at least one label, e.g. {\"service\": \"checkout\"}".into());
    }
    if labels.len() > MAX_SUBJECT_LABELS {
        return Err(format!("subject has {} labels; at most {MAX_SUBJECT_LABELS} are allowed", labels.len()));
    }
    for (k, v) in labels {
        let mut chars = k.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || k.starts_with("__") {
            return Err(format!("invalid label name {k:?}: it must match [a-zA-Z_][a-zA-Z0-9_]* and not start with \"__\" (as in Prometheus)"));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(format!("the value of label {k:?} is {} bytes long; at most {MAX_LABEL_VALUE} are allowed", v.len()));
        }
    }
    Ok(())
}

pub(super) async fn declare(State(shared): State<Arc<Shared>>, _auth: Authorized, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: DeclareBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid body: {e}; expected {{\"subject\": {{\"label\": \"value\", ...}}, \"severity\": \"critical|warning|info\", \"security\": false, \"actor\": \"...\", \"note\": \"...\"}}"
        ))
    })?;
    check_subject(&b.subject).map_err(ApiError::bad_request)?;
    shared.config().rules.check_subject(b.subject.keys()).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let fields = EventFields { kind: "declare", severity: Some(&b.severity), security: b.security, actor: b.actor.as_deref(), note: b.note.as_deref(), ..Default::default() };
    let (event, note) = Event::from_fields(&fields, true).map_err(|e| ApiError::bad_request(e.message))?;
    let subject = Subject::new(b.subject);
    let planner = shared.planner.read().expect("planner lock").clone();
    let inc = blocking(move || apply_and_commit(&shared, Target::Subject(&subject), &event, &note)).await?;
    Ok((StatusCode::CREATED, Json(incident_json(&inc, planner.scrubber()))))
}

pub(super) async fn post_event(State(shared): State<Arc<Shared>>, _auth: Authorized, Path(id): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let (event, note) = parse_event(&body)?;
    let planner = shared.planner.read().expect("planner lock").clone();
    let inc = blocking(move || apply_and_commit(&shared, Target::Id(&id), &event, &note)).await?;
    Ok(Json(incident_json(&inc, planner.scrubber())))
}

/// Parses an event body through the one event grammar, with a message that says what is
/// wrong and what is valid. Unknown fields and duplicate keys are refused.
fn parse_event(body: &[u8]) -> Result<(Event, EventNote), ApiError> {
    let valid = valid_types(false);
    let b: EventBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) if e.is_data() && !body.trim_ascii_start().starts_with(b"{") => {
            return Err(ApiError::bad_request(format!("the body must be a JSON object with a \"type\" (valid types: {valid})")))
        }
        Err(e) => return Err(ApiError::bad_request(format!("invalid event body: {e} (fields: type, channel, value, actor, note; valid types: {valid})"))),
    };
    let fields = EventFields {
        kind: &b.kind,
        channel: b.channel.as_deref(),
        value: b.value.as_deref(),
        severity: b.severity.as_deref(),
        security: b.security,
        actor: b.actor.as_deref(),
        note: b.note.as_deref(),
    };
    Event::from_fields(&fields, false).map_err(|e| ApiError::bad_request(format!("invalid {} event: {}", b.kind, e.message)))
}

enum Target<'a> {
    Subject(&'a Subject),
    Id(&'a str),
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no incident with id {id:?}"))
}

/// Applies an event and commits the incident and the event together, under the core lock.
/// A refused event changes nothing; if the commit fails, the state is reloaded from the
/// database ([`crate::shared::Core::roll_back`]). An incident that is neither a subject's
/// latest nor kept in memory for its obligations is read from the store.
fn apply_and_commit(shared: &Shared, target: Target<'_>, event: &Event, note: &EventNote) -> Result<Incident, ApiError> {
    let now = now_ms();
    let config = shared.config();
    let mut guard = shared.core.lock().expect("core lock");
    let core = &mut *guard;
    core.ensure_loaded(&config).map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the state cannot be read: {e}")))?;
    let applied = match target {
        Target::Subject(s) => core.state.apply_event(s, event, now),
        Target::Id(id) => match core.state.apply_event_by_id(id, event, now) {
            Err(ApplyError::UnknownId(id)) => match core.store.incident(&id) {
                Ok(Some(mut old)) => match old.apply(event, now) {
                    Ok(fx) => {
                        core.state.adopt(old.clone());
                        Ok((crate::engine::IncidentChange { kind: crate::engine::ChangeKind::Updated, incident: old }, fx))
                    }
                    Err(e) => Err(e.into()),
                },
                Ok(None) => Err(ApplyError::UnknownId(id)),
                Err(e) => return Err(ApiError::internal(e)),
            },
            other => other,
        },
    };
    let (change, fx) = match applied {
        Ok(r) => r,
        Err(e) => {
            return Err(match e {
                ApplyError::UnknownId(id) => not_found(&id),
                ApplyError::NoIncident(s) => ApiError::new(StatusCode::NOT_FOUND, format!("subject {s} has no incident")),
                e @ ApplyError::AlreadyOpen { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
                ApplyError::Event(e @ EventError::AlreadyResolved(_)) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
                ApplyError::Event(e @ EventError::DeclareOnExisting(_)) => ApiError::bad_request(e.to_string()),
            });
        }
    };
    let inc = change.incident;
    let commit = Commit { incidents: vec![&inc], noted_events: vec![(inc.id.as_str(), now, event, note)], ..Default::default() };
    if let Err(e) = core.store.commit(&core.state, &commit) {
        core.roll_back(&config);
        return Err(ApiError::internal(format!("the change could not be saved and was not applied: {e}")));
    }
    let open = core.state.incidents.values().filter(|i| i.is_open()).count();
    drop(guard);
    crate::telemetry::record_effect(&fx, &inc, open);
    tracing::info!(incident = %inc.id, event = event.kind(), actor = note.actor.as_deref().unwrap_or("-"), "incident event applied");
    Ok(inc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies_parse_with_clear_errors() {
        assert_eq!(parse_event(br#"{"type":"ack"}"#).unwrap().0, Event::Ack);
        assert_eq!(
            parse_event(br#"{"type":"public_update","channel":"email"}"#).unwrap().0,
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
        // Strict: unknown fields, fields of another type, duplicate keys.
        assert!(parse_event(br#"{"type":"ack","chanel":"email"}"#).unwrap_err().message.contains("unknown field `chanel`"));
        assert!(parse_event(br#"{"type":"ack","channel":"email"}"#).unwrap_err().message.contains("ack takes no `channel`"));
        assert!(parse_event(br#"{"type":"ack","type":"resolve"}"#).unwrap_err().message.contains("duplicate field `type`"));
        let (_, note) = parse_event(br#"{"type":"ack","actor":"alice","note":"paged by phone"}"#).unwrap();
        assert_eq!(note.actor.as_deref(), Some("alice"));
    }

    #[test]
    fn declared_subjects_are_limited() {
        let ok = |pairs: &[(&str, &str)]| check_subject(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        assert!(ok(&[("service", "checkout"), ("region", "eu")]).is_ok());
        assert!(ok(&[]).unwrap_err().contains("at least one"));
        assert!(ok(&[("1service", "x")]).unwrap_err().contains("invalid label name"));
        assert!(ok(&[("ser-vice", "x")]).unwrap_err().contains("invalid label name"));
        assert!(ok(&[("__name__", "x")]).unwrap_err().contains("__"));
        let long = "x".repeat(MAX_LABEL_VALUE + 1);
        assert!(ok(&[("service", &long)]).unwrap_err().contains("1025 bytes"));
        let many: BTreeMap<String, String> = (0..33).map(|i| (format!("l{i}"), "v".to_string())).collect();
        assert!(check_subject(&many).unwrap_err().contains("33 labels"));
        let e = serde_json::from_str::<DeclareBody>(r#"{"subject": {"service": "a", "service": "b"}, "severity": "info"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate label \"service\""), "{e}");
    }
}
