//! The incident event grammar, written once: which event types exist, which fields each one
//! takes, which values are valid, and what Herald itself records on an incident's timeline.
//!
//! Every reader of events goes through [`Event::from_fields`]: the API (JSON bodies), `herald
//! test` files (YAML) and `POST /api/v1/incidents` (a `declare`). Each reader only maps its
//! syntax to [`EventFields`] and places the [`FieldError`] (a JSON message, a `path:line:col`).
//! Storage serializes [`Event`] with serde; it never reads what a person typed.
//!
//! This module does no I/O and knows nothing about JSON or YAML.

use serde::{Deserialize, Serialize};

use super::incident::{Channel, Status};
use crate::config::Severity;

/// Something a person did to an incident (the API's event types, plus `declare`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Declare {
        severity: Severity,
        #[serde(default)]
        security: bool,
    },
    Ack,
    PublicUpdate {
        channel: Channel,
    },
    Status {
        value: Status,
    },
    Security,
    InternalOnly,
    LegalRequested,
    LegalApproved,
    Correction,
    FalsePositive,
    PostmortemPublished,
    Resolve,
}

/// Every event type, `declare` last (it opens an incident rather than changing one).
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
    "declare",
];

/// Longest `actor` accepted (characters).
pub const MAX_ACTOR: usize = 200;
/// Longest `note` accepted (characters).
pub const MAX_NOTE: usize = 4096;

/// An event as written, before validation. Readers fill what the input had; absent fields
/// are `None`. `actor` and `note` are accepted on every type.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventFields<'a> {
    /// `type`.
    pub kind: &'a str,
    pub channel: Option<&'a str>,
    pub value: Option<&'a str>,
    pub severity: Option<&'a str>,
    pub security: Option<bool>,
    pub actor: Option<&'a str>,
    pub note: Option<&'a str>,
}

/// Which field of an event is wrong, and why (the reader adds the location).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The field to point at: `type` when the problem is the type or a missing field.
    pub field: &'static str,
    pub message: String,
}

/// Who recorded a person's event and why: optional, free text, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventNote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn err(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError { field, message: message.into() }
}

/// The valid types, for messages (`declare` optional).
pub fn valid_types(with_declare: bool) -> String {
    let n = if with_declare { EVENT_TYPES.len() } else { EVENT_TYPES.len() - 1 };
    EVENT_TYPES[..n].join(", ")
}

impl Event {
    /// Validates an event as written: the type exists, every field it needs is there, every
    /// field given belongs to it, and every value is valid. `declare` is accepted only when
    /// `allow_declare` (test files and the declare endpoint, not the events endpoint).
    pub fn from_fields<'f>(f: &EventFields<'f>, allow_declare: bool) -> Result<(Event, EventNote), FieldError> {
        let kind = f.kind;
        if !EVENT_TYPES.contains(&kind) {
            return Err(err("type", format!("unknown event type {kind:?} (valid: {})", valid_types(allow_declare))));
        }
        if kind == "declare" && !allow_declare {
            return Err(err("type", "declare opens a new incident: POST /api/v1/incidents instead"));
        }
        // Fields a type does not take are refused, so a typo never passes silently.
        let takes: &[&str] = match kind {
            "declare" => &["severity", "security"],
            "public_update" => &["channel"],
            "status" => &["value"],
            _ => &[],
        };
        for (name, given) in [("channel", f.channel.is_some()), ("value", f.value.is_some()), ("severity", f.severity.is_some()), ("security", f.security.is_some())] {
            if given && !takes.contains(&name) {
                let wants = if takes.is_empty() { String::from("no fields but `actor` and `note`") } else { format!("`{}`", takes.join("`, `")) };
                let field = match name {
                    "channel" => "channel",
                    "value" => "value",
                    "severity" => "severity",
                    _ => "security",
                };
                return Err(err(field, format!("{kind} takes no `{name}` (it takes {wants})")));
            }
        }
        let note = EventNote { actor: bounded("actor", f.actor, MAX_ACTOR)?, note: bounded("note", f.note, MAX_NOTE)? };
        let need = |v: Option<&'f str>, name: &str, valid: &str| v.ok_or_else(|| err("type", format!("{kind} needs `{name}`: {valid}")));
        let event = match kind {
            "declare" => {
                let s = need(f.severity, "severity", "critical | warning | info")?;
                let severity = Severity::parse(s).ok_or_else(|| err("severity", format!("unknown severity {s:?} (valid: critical, warning, info)")))?;
                Event::Declare { severity, security: f.security.unwrap_or(false) }
            }
            "ack" => Event::Ack,
            "public_update" => {
                let c = need(f.channel, "channel", "status_page | email | social | internal")?;
                let channel = Channel::parse(c).ok_or_else(|| err("channel", format!("unknown channel {c:?} (valid: status_page, email, social, internal)")))?;
                Event::PublicUpdate { channel }
            }
            "status" => {
                let v = need(f.value, "value", "investigating | identified | monitoring | resolved")?;
                let value = Status::parse(v).ok_or_else(|| err("value", format!("unknown status {v:?} (valid: investigating, identified, monitoring, resolved)")))?;
                Event::Status { value }
            }
            "security" => Event::Security,
            "internal_only" => Event::InternalOnly,
            "legal_requested" => Event::LegalRequested,
            "legal_approved" => Event::LegalApproved,
            "correction" => Event::Correction,
            "false_positive" => Event::FalsePositive,
            "postmortem_published" => Event::PostmortemPublished,
            _ => Event::Resolve,
        };
        Ok((event, note))
    }

    /// The event's type name, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Declare { .. } => "declare",
            Event::Ack => "ack",
            Event::PublicUpdate { .. } => "public_update",
            Event::Status { .. } => "status",
            Event::Security => "security",
            Event::InternalOnly => "internal_only",
            Event::LegalRequested => "legal_requested",
            Event::LegalApproved => "legal_approved",
            Event::Correction => "correction",
            Event::FalsePositive => "false_positive",
            Event::PostmortemPublished => "postmortem_published",
            Event::Resolve => "resolve",
        }
    }
}

fn bounded(name: &'static str, v: Option<&str>, max: usize) -> Result<Option<String>, FieldError> {
    match v {
        Some(s) if s.chars().count() > max => Err(err(if name == "actor" { "actor" } else { "note" }, format!("`{name}` is longer than {max} characters"))),
        Some(s) => Ok(Some(s.to_string())),
        None => Ok(None),
    }
}

/// Something Herald itself decided or did about an incident: its half of the incident's
/// timeline (people's events are the other half).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeraldEvent {
    /// A rule opened the incident.
    IncidentOpened { rule: String },
    /// A rule started firing for the incident's subject.
    RuleFiring { rule: String },
    /// A rule stopped firing.
    RuleResolved { rule: String },
    /// Herald moved the status (investigating ↔ monitoring, or resolved after `resolve_after`).
    StatusChanged { from: Status, to: Status, reason: String },
}

impl HeraldEvent {
    /// The type name stored and shown.
    pub fn kind(&self) -> &'static str {
        match self {
            HeraldEvent::IncidentOpened { .. } => "incident_opened",
            HeraldEvent::RuleFiring { .. } => "rule_firing",
            HeraldEvent::RuleResolved { .. } => "rule_resolved",
            HeraldEvent::StatusChanged { .. } => "status_changed",
        }
    }
}

/// One entry of an incident's timeline produced by an evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub incident: String,
    pub at: super::Ts,
    pub event: HeraldEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: EventFields<'_>) -> Result<Event, FieldError> {
        Event::from_fields(&f, true).map(|(e, _)| e)
    }

    #[test]
    fn one_grammar_for_every_reader() {
        assert_eq!(parse(EventFields { kind: "ack", ..Default::default() }), Ok(Event::Ack));
        assert_eq!(parse(EventFields { kind: "public_update", channel: Some("email"), ..Default::default() }), Ok(Event::PublicUpdate { channel: Channel::Email }));
        let e = parse(EventFields { kind: "ack", channel: Some("email"), ..Default::default() }).unwrap_err();
        assert_eq!(e.field, "channel");
        assert!(e.message.contains("ack takes no `channel`"), "{e}");
        let e = parse(EventFields { kind: "status", ..Default::default() }).unwrap_err();
        assert!(e.message.contains("status needs `value`"), "{e}");
        let e = parse(EventFields { kind: "status", value: Some("sleeping"), ..Default::default() }).unwrap_err();
        assert_eq!(e.field, "value");
        let e = parse(EventFields { kind: "nope", ..Default::default() }).unwrap_err();
        assert!(e.message.contains("declare") && e.message.contains("postmortem_published"), "{e}");
        let e = Event::from_fields(&EventFields { kind: "declare", severity: Some("critical"), ..Default::default() }, false).unwrap_err();
        assert!(e.message.contains("POST /api/v1/incidents"), "{e}");
        let (_, note) = Event::from_fields(&EventFields { kind: "ack", actor: Some("alice"), note: Some("on it"), ..Default::default() }, false).unwrap();
        assert_eq!(note, EventNote { actor: Some("alice".into()), note: Some("on it".into()) });
        let long = "x".repeat(MAX_ACTOR + 1);
        assert_eq!(Event::from_fields(&EventFields { kind: "ack", actor: Some(&long), ..Default::default() }, false).unwrap_err().field, "actor");
        // Every type round-trips through its name.
        for t in EVENT_TYPES {
            let f = EventFields { kind: t, channel: (t == "public_update").then_some("email"), value: (t == "status").then_some("identified"), severity: (t == "declare").then_some("info"), ..Default::default() };
            assert_eq!(parse(f).unwrap().kind(), t);
        }
    }
}
