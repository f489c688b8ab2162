//! Alertmanager API v2 sink: the body of `POST /api/v2/alerts`, an array of `postableAlert`.
//!
//! Labels: every `labels` entry, then the subject labels (a subject label wins over a rule label
//! with the same name, since the subject identifies the instance), then `alertname` = rule and
//! `severity` = Herald's severity (these two always win: they identify the alert in
//! Alertmanager). Annotations: the rule's annotations plus `herald_action`, and
//! `herald_incident_id` / `herald_incident_url` when there is an incident (annotations do not
//! take part in Alertmanager's identity, labels do).
//!
//! Times: `startsAt` = `starts_at`. A firing alert gets `endsAt` = `now + validity`, where the
//! caller derives `validity` from its resend interval (e.g. 4 × resend) so that Alertmanager
//! resolves the alert by itself if Herald stops re-sending; a resolved alert gets `endsAt` = its
//! resolution time (`ends_at`, or `now` when unknown).

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::notify::message::{format_time, Notification, Status};

/// The `POST /api/v2/alerts` body (a one-element array) for `n`.
///
/// `generator_url` is the link Alertmanager shows as the alert's source (omitted when `None`).
pub fn alertmanager_alerts(
    n: &Notification,
    generator_url: Option<&str>,
    validity: Duration,
    now: DateTime<Utc>,
) -> Value {
    let mut labels = Map::new();
    for (k, v) in n.labels.iter().chain(n.subject.iter()) {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    labels.insert("alertname".into(), n.rule.clone().into());
    labels.insert("severity".into(), n.severity.clone().into());

    let mut annotations: Map<String, Value> = n
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    annotations.insert("herald_action".into(), n.action.clone().into());
    if let Some(inc) = &n.incident {
        annotations.insert("herald_incident_id".into(), inc.id.clone().into());
        if let Some(url) = &inc.url {
            annotations.insert("herald_incident_url".into(), url.clone().into());
        }
    }

    let ends_at = match n.status {
        Status::Firing => now + validity,
        Status::Resolved => n.ends_at.unwrap_or(now),
    };

    let mut alert = Map::new();
    alert.insert("labels".into(), Value::Object(labels));
    alert.insert("annotations".into(), Value::Object(annotations));
    alert.insert("startsAt".into(), format_time(&n.starts_at).into());
    alert.insert("endsAt".into(), format_time(&ends_at).into());
    if let Some(url) = generator_url {
        alert.insert("generatorURL".into(), url.into());
    }
    json!([alert])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::{sample_firing, sample_resolved};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 10, 0).unwrap()
    }

    const GEN: &str = "https://herald.example.com/rules/ActivateCommsLead";

    #[test]
    fn firing_snapshot() {
        let body = alertmanager_alerts(&sample_firing(), Some(GEN), Duration::minutes(4), now());
        assert_eq!(
            body,
            json!([{
                "labels": {
                    "alertname": "ActivateCommsLead",
                    "severity": "critical",
                    "service": "checkout",
                    "team": "payments"
                },
                "annotations": {
                    "summary": "checkout: customers are affected — SLI 97.0% is below its 99.9% objective (8% of customers affected)",
                    "runbook_url": "https://runbooks.example.com/checkout",
                    "herald_action": "activate_comms_lead",
                    "herald_incident_id": "INC-42",
                    "herald_incident_url": "https://herald.example.com/incidents/INC-42"
                },
                "startsAt": "2024-05-01T12:00:00Z",
                "endsAt": "2024-05-01T12:14:00Z",
                "generatorURL": GEN
            }])
        );
    }

    #[test]
    fn resolved_ends_at_resolution_time() {
        let body = alertmanager_alerts(&sample_resolved(), Some(GEN), Duration::minutes(4), now());
        assert_eq!(body[0]["endsAt"], "2024-05-01T13:00:00Z");
        let mut n = sample_resolved();
        n.ends_at = None;
        let body = alertmanager_alerts(&n, None, Duration::minutes(4), now());
        assert_eq!(body[0]["endsAt"], "2024-05-01T12:10:00Z");
        assert!(body[0].get("generatorURL").is_none());
    }

    #[test]
    fn identity_labels_cannot_be_overridden() {
        let mut n = sample_firing();
        n.labels.insert("alertname".into(), "Other".into());
        n.labels.insert("severity".into(), "info".into());
        n.labels.insert("service".into(), "from-labels".into());
        let body = alertmanager_alerts(&n, None, Duration::minutes(4), now());
        let labels = &body[0]["labels"];
        assert_eq!(labels["alertname"], "ActivateCommsLead");
        assert_eq!(labels["severity"], "critical");
        assert_eq!(labels["service"], "checkout");
    }
}
