//! The receiver-independent notification (spec §6) and the generic webhook body.
//!
//! A [`Notification`] is what the engine hands to the notification layer: one decision about one
//! rule instance, already resolved to plain data. Every receiver format in
//! [`crate::notify::format`] is a pure function of it.
//!
//! Serialization choices:
//! * timestamps are RFC 3339 in UTC with a `Z` suffix and only as many fractional digits as needed
//!   (`2024-05-01T12:00:00Z`);
//! * `values` holds finite numbers as JSON numbers; non-finite values use the Prometheus API's
//!   string spellings `"NaN"`, `"+Inf"` and `"-Inf"` (JSON has no such numbers, and `null` would
//!   lose the distinction between "no value" and "infinite burn rate"). A signal without a value is
//!   simply absent from the map.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Whether the rule instance is firing or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The rule instance is firing.
    Firing,
    /// The rule instance stopped firing (or its incident resolved).
    Resolved,
}

impl Status {
    /// The lowercase wire spelling (`firing` | `resolved`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// A reference to the incident a notification belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRef {
    /// Herald's incident id.
    pub id: String,
    /// Incident status: investigating | identified | monitoring | resolved.
    pub status: String,
    /// When the incident was opened.
    #[serde(with = "rfc3339")]
    pub opened_at: DateTime<Utc>,
    /// Link to the incident (built from `global.external_url`); `None` when no external URL is
    /// configured. Serialized as `null` then.
    pub url: Option<String>,
}

/// One outgoing notification, independent of the receiver type. Field names and meaning follow
/// spec §6 exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification; the same on every delivery attempt (it is the `webhook-id`).
    pub id: String,
    /// Stable per incident and rule, so that receivers (PagerDuty, Alertmanager, …) correlate the
    /// firing and resolved messages.
    pub dedup_key: String,
    /// Firing or resolved.
    pub status: Status,
    /// Name of the rule that made the decision.
    pub rule: String,
    /// The rule's action (activate_comms_lead | suggest_update | escalate | engage_legal |
    /// internal_only | notify).
    pub action: String,
    /// The rule's severity (critical | warning | info).
    pub severity: String,
    /// The subject labels that identify the rule instance (e.g. `service=checkout`).
    pub subject: BTreeMap<String, String>,
    /// Extra labels from the rule.
    pub labels: BTreeMap<String, String>,
    /// Annotations from the rule, already expanded (e.g. `summary`, `description`, `runbook_url`).
    pub annotations: BTreeMap<String, String>,
    /// Signal values at decision time, by signal name. Non-finite values serialize as the strings
    /// `"NaN"`, `"+Inf"`, `"-Inf"` (see the module doc).
    #[serde(with = "values_serde")]
    pub values: BTreeMap<String, f64>,
    /// The subject's incident, when there is one.
    pub incident: Option<IncidentRef>,
    /// When the rule instance started firing.
    #[serde(with = "rfc3339")]
    pub starts_at: DateTime<Utc>,
    /// When the rule instance resolved; `None` while firing.
    #[serde(with = "rfc3339_opt")]
    pub ends_at: Option<DateTime<Utc>>,
    /// True when Herald runs with `--dry-run` (or in a game day): the message is for rehearsal.
    pub dry_run: bool,
}

/// Version of the generic webhook payload (spec §6).
pub const GENERIC_WEBHOOK_VERSION: &str = "1";

/// The generic webhook body (spec §6): every field of the notification plus `version: "1"`.
pub fn generic_webhook_body(n: &Notification) -> serde_json::Value {
    let mut v = serde_json::to_value(n).unwrap_or_else(|_| {
        // Serializing plain strings, maps, finite-or-stringified floats and timestamps cannot fail.
        unreachable!("Notification serialization is infallible")
    });
    if let serde_json::Value::Object(map) = &mut v {
        map.insert(
            "version".to_owned(),
            serde_json::Value::String(GENERIC_WEBHOOK_VERSION.to_owned()),
        );
    }
    v
}

/// Formats a timestamp the way every Herald payload does: RFC 3339, UTC, `Z` suffix.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A signal value as JSON: a number when finite, otherwise `"NaN"`, `"+Inf"` or `"-Inf"`.
pub fn value_to_json(v: f64) -> serde_json::Value {
    if v.is_nan() {
        serde_json::Value::String("NaN".to_owned())
    } else if v.is_infinite() {
        serde_json::Value::String(if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned())
    } else {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

/// All values as a JSON object (see [`value_to_json`]).
pub fn values_to_json(values: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::Value::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(*v)))
            .collect(),
    )
}

fn parse_time<E: serde::de::Error>(s: &str) -> Result<DateTime<Utc>, E> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| E::custom(format!("invalid RFC 3339 timestamp {s:?}: {e}")))
}

mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse_time(&s)
    }
}

mod rfc3339_opt {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => parse_time(&s).map(Some),
            None => Ok(None),
        }
    }
}

mod values_serde {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Num(f64),
        Str(String),
    }

    pub fn serialize<S: Serializer>(v: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        values_to_json(v).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let raw = BTreeMap::<String, Wire>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, w)| {
                let v = match w {
                    Wire::Num(n) => n,
                    Wire::Str(s) => match s.as_str() {
                        "NaN" => f64::NAN,
                        "+Inf" | "Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        other => s.parse::<f64>().map_err(|_| {
                            serde::de::Error::custom(format!("invalid value {other:?} for {k}"))
                        })?,
                    },
                };
                Ok((k, v))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    /// A fixed firing notification shared by the format snapshot tests.
    pub(crate) fn sample_firing() -> Notification {
        Notification {
            id: "01HZX3K9Q2N5V7R8T0W4Y6B1C3".to_owned(),
            dedup_key: "ActivateCommsLead:service=checkout".to_owned(),
            status: Status::Firing,
            rule: "ActivateCommsLead".to_owned(),
            action: "activate_comms_lead".to_owned(),
            severity: "critical".to_owned(),
            subject: BTreeMap::from([("service".to_owned(), "checkout".to_owned())]),
            labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            annotations: BTreeMap::from([
                (
                    "summary".to_owned(),
                    "checkout: customers are affected — SLI 97.0% is below its 99.9% objective (8% of customers affected)".to_owned(),
                ),
                ("runbook_url".to_owned(), "https://runbooks.example.com/checkout".to_owned()),
            ]),
            values: BTreeMap::from([
                ("sli".to_owned(), 0.97),
                ("objective".to_owned(), 0.999),
                ("affected_ratio".to_owned(), 0.08),
            ]),
            incident: Some(IncidentRef {
                id: "INC-42".to_owned(),
                status: "investigating".to_owned(),
                opened_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 5, 0).unwrap(),
                url: Some("https://herald.example.com/incidents/INC-42".to_owned()),
            }),
            starts_at: Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap(),
            ends_at: None,
            dry_run: false,
        }
    }

    /// The same rule instance, resolved at 13:00.
    pub(crate) fn sample_resolved() -> Notification {
        let mut n = sample_firing();
        n.id = "01HZX4AAAAAAAAAAAAAAAAAAAA".to_owned();
        n.status = Status::Resolved;
        n.ends_at = Some(Utc.with_ymd_and_hms(2024, 5, 1, 13, 0, 0).unwrap());
        if let Some(i) = n.incident.as_mut() {
            i.status = "resolved".to_owned();
        }
        n
    }

    #[test]
    fn generic_webhook_body_snapshot() {
        let body = generic_webhook_body(&sample_firing());
        assert_eq!(
            body,
            json!({
                "version": "1",
                "id": "01HZX3K9Q2N5V7R8T0W4Y6B1C3",
                "dedup_key": "ActivateCommsLead:service=checkout",
                "status": "firing",
                "rule": "ActivateCommsLead",
                "action": "activate_comms_lead",
                "severity": "critical",
                "subject": {"service": "checkout"},
                "labels": {"team": "payments"},
                "annotations": {
                    "summary": "checkout: customers are affected — SLI 97.0% is below its 99.9% objective (8% of customers affected)",
                    "runbook_url": "https://runbooks.example.com/checkout"
                },
                "values": {"sli": 0.97, "objective": 0.999, "affected_ratio": 0.08},
                "incident": {
                    "id": "INC-42",
                    "status": "investigating",
                    "opened_at": "2024-05-01T12:05:00Z",
                    "url": "https://herald.example.com/incidents/INC-42"
                },
                "starts_at": "2024-05-01T12:00:00Z",
                "ends_at": null,
                "dry_run": false
            })
        );
    }

    #[test]
    fn resolved_body_has_status_and_ends_at() {
        let body = generic_webhook_body(&sample_resolved());
        assert_eq!(body["status"], "resolved");
        assert_eq!(body["ends_at"], "2024-05-01T13:00:00Z");
        assert_eq!(body["incident"]["status"], "resolved");
    }

    #[test]
    fn non_finite_values_serialize_as_strings_and_round_trip() {
        let mut n = sample_firing();
        n.values = BTreeMap::from([
            ("a".to_owned(), f64::NAN),
            ("b".to_owned(), f64::INFINITY),
            ("c".to_owned(), f64::NEG_INFINITY),
            ("d".to_owned(), 3.5),
        ]);
        let body = generic_webhook_body(&n);
        assert_eq!(
            body["values"],
            json!({"a": "NaN", "b": "+Inf", "c": "-Inf", "d": 3.5})
        );
        // The body is valid JSON text and reads back into an equal notification (NaN aside).
        let text = serde_json::to_string(&n).unwrap();
        let back: Notification = serde_json::from_str(&text).unwrap();
        assert!(back.values["a"].is_nan());
        assert_eq!(back.values["b"], f64::INFINITY);
        assert_eq!(back.values["c"], f64::NEG_INFINITY);
        assert_eq!(back.values["d"], 3.5);
    }

    #[test]
    fn round_trip_preserves_notification() {
        let n = sample_resolved();
        let back: Notification = serde_json::from_value(serde_json::to_value(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn fractional_seconds_are_kept() {
        let t = Utc.timestamp_opt(1_714_564_800, 250_000_000).unwrap();
        assert_eq!(format_time(&t), "2024-05-01T12:00:00.250Z");
    }
}
