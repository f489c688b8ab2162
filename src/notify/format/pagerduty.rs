//! PagerDuty Events API v2 (`POST https://events.pagerduty.com/v2/enqueue`).
//!
//! Firing → `trigger` with the full payload; resolved → `resolve` carrying only `routing_key`,
//! `event_action` and `dedup_key` (PagerDuty ignores anything else on resolve). The dedup key is the
//! notification's (stable per incident and rule), cut to PagerDuty's 255 characters.
//!
//! Mapping: `payload.summary` = rendered title (≤1024 chars); `source` = the subject as
//! `k=v,k=v` (`herald` when empty); `severity` from Herald's severity ([`pagerduty_severity`]);
//! `timestamp` = `starts_at`; `component` = subject label `service` and `group` = label `team`
//! when present; `class` = the action; `custom_details` = rule, action, severity, subject,
//! labels, annotations, values, incident and dry-run flag; `links` = incident and runbook.
//!
//! Sizes, whatever the label and annotation lengths: `summary` ≤ 1,024 characters (PagerDuty's
//! limit); `source`, `component`, `group` and `class` ≤ [`MAX_FIELD_CHARS`] (PagerDuty shows
//! them as one-line fields); every string in `custom_details` ≤ [`MAX_DETAIL_CHARS`]; and the
//! whole event below PagerDuty's 512 KB limit ([`MAX_EVENT_BYTES`]: past it, `custom_details`
//! keeps only rule, action, severity and incident).

use serde_json::{json, Map, Value};

use super::truncate_chars;
use crate::notify::message::{format_time, values_to_json, Notification, Status};

/// PagerDuty's maximum summary length.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// PagerDuty's maximum dedup key length.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// Herald's cap for `source`, `component`, `group` and `class`.
pub const MAX_FIELD_CHARS: usize = 255;
/// Herald's cap for each label, annotation or subject value in `custom_details`.
pub const MAX_DETAIL_CHARS: usize = 2048;
/// The largest event Herald sends (PagerDuty refuses events above 512 KB).
pub const MAX_EVENT_BYTES: usize = 500_000;

fn capped(m: &std::collections::BTreeMap<String, String>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| (truncate_chars(k, MAX_FIELD_CHARS), truncate_chars(v, MAX_DETAIL_CHARS).into()))
        .collect()
}

/// Maps Herald's severity to PagerDuty's: `critical`, `warning`, `info` map to themselves; any
/// other value (config validation should prevent it) maps to `error`.
pub fn pagerduty_severity(severity: &str) -> &'static str {
    match severity {
        "critical" => "critical",
        "warning" => "warning",
        "info" => "info",
        _ => "error",
    }
}

fn source(n: &Notification) -> String {
    if n.subject.is_empty() {
        "herald".to_owned()
    } else {
        n.subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The Events API v2 body for `n`; `title` is the rendered one-line title (the summary).
pub fn pagerduty_event(n: &Notification, routing_key: &str, title: &str) -> Value {
    let dedup_key = truncate_chars(&n.dedup_key, MAX_DEDUP_KEY_CHARS);
    if n.status == Status::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }

    let mut payload = Map::new();
    payload.insert(
        "summary".into(),
        truncate_chars(title, MAX_SUMMARY_CHARS).into(),
    );
    payload.insert("source".into(), truncate_chars(&source(n), MAX_FIELD_CHARS).into());
    payload.insert("severity".into(), pagerduty_severity(&n.severity).into());
    payload.insert("timestamp".into(), format_time(&n.starts_at).into());
    if let Some(service) = n.subject.get("service") {
        payload.insert("component".into(), truncate_chars(service, MAX_FIELD_CHARS).into());
    }
    if let Some(team) = n.labels.get("team") {
        payload.insert("group".into(), truncate_chars(team, MAX_FIELD_CHARS).into());
    }
    payload.insert("class".into(), truncate_chars(&n.action, MAX_FIELD_CHARS).into());
    payload.insert(
        "custom_details".into(),
        json!({
            "rule": n.rule,
            "action": n.action,
            "severity": n.severity,
            "subject": capped(&n.subject),
            "labels": capped(&n.labels),
            "annotations": capped(&n.annotations),
            "values": values_to_json(&n.values),
            "incident_id": n.incident.as_ref().map(|i| i.id.clone()),
            "incident_status": n.incident.as_ref().map(|i| i.status.clone()),
            "dry_run": n.dry_run,
        }),
    );

    let mut links = Vec::new();
    if let Some(inc) = &n.incident {
        if let Some(url) = &inc.url {
            links.push(json!({"href": url, "text": format!("Incident {}", inc.id)}));
        }
    }
    if let Some(runbook) = n.annotations.get("runbook_url").filter(|u| u.len() <= MAX_DETAIL_CHARS) {
        links.push(json!({"href": runbook, "text": "Runbook"}));
    }

    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "links": links,
    });
    if serde_json::to_vec(&event).map_or(0, |b| b.len()) > MAX_EVENT_BYTES {
        event["payload"]["custom_details"] = json!({
            "rule": truncate_chars(&n.rule, MAX_FIELD_CHARS),
            "action": n.action,
            "severity": n.severity,
            "incident_id": n.incident.as_ref().map(|i| i.id.clone()),
            "truncated": "labels and annotations were too large for PagerDuty",
        });
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::{sample_firing, sample_resolved};

    const KEY: &str = "R0123456789abcdef0123456789abcd";

    #[test]
    fn trigger_snapshot() {
        let n = sample_firing();
        let body = pagerduty_event(&n, KEY, "checkout: customers are affected");
        assert_eq!(
            body,
            json!({
                "routing_key": KEY,
                "event_action": "trigger",
                "dedup_key": "ActivateCommsLead:service=checkout",
                "payload": {
                    "summary": "checkout: customers are affected",
                    "source": "service=checkout",
                    "severity": "critical",
                    "timestamp": "2024-05-01T12:00:00Z",
                    "component": "checkout",
                    "group": "payments",
                    "class": "activate_comms_lead",
                    "custom_details": {
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
                        "incident_id": "INC-42",
                        "incident_status": "investigating",
                        "dry_run": false
                    }
                },
                "links": [
                    {"href": "https://herald.example.com/incidents/INC-42", "text": "Incident INC-42"},
                    {"href": "https://runbooks.example.com/checkout", "text": "Runbook"}
                ]
            })
        );
    }

    #[test]
    fn resolve_carries_only_the_key_fields() {
        let body = pagerduty_event(&sample_resolved(), KEY, "ignored");
        assert_eq!(
            body,
            json!({
                "routing_key": KEY,
                "event_action": "resolve",
                "dedup_key": "ActivateCommsLead:service=checkout"
            })
        );
    }

    #[test]
    fn severity_mapping() {
        assert_eq!(pagerduty_severity("critical"), "critical");
        assert_eq!(pagerduty_severity("warning"), "warning");
        assert_eq!(pagerduty_severity("info"), "info");
        assert_eq!(pagerduty_severity("bogus"), "error");
        let mut n = sample_firing();
        n.severity = "info".to_owned();
        assert_eq!(pagerduty_event(&n, KEY, "t")["payload"]["severity"], "info");
    }

    #[test]
    fn long_summary_and_dedup_key_are_truncated() {
        let mut n = sample_firing();
        n.dedup_key = "k".repeat(300);
        let body = pagerduty_event(&n, KEY, &"é".repeat(2000));
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), 1024);
        assert!(summary.ends_with('…'));
        assert_eq!(body["dedup_key"].as_str().unwrap().chars().count(), 255);
    }

    #[test]
    fn optional_fields_are_omitted_when_absent() {
        let mut n = sample_firing();
        n.subject.clear();
        n.labels.clear();
        n.annotations.clear();
        n.incident = None;
        let body = pagerduty_event(&n, KEY, "t");
        let payload = body["payload"].as_object().unwrap();
        assert_eq!(payload["source"], "herald");
        assert!(!payload.contains_key("component"));
        assert!(!payload.contains_key("group"));
        assert_eq!(body["links"], json!([]));
        assert_eq!(payload["custom_details"]["incident_id"], Value::Null);
    }
}
