//! Alertmanager's webhook (version 4) as input: existing security alerts feed Herald.
//!
//! Each alert of a notification is matched against `integrations.alertmanager` (first mapping
//! whose matchers all match wins). A FIRING alert applies the mapping's event (`security`,
//! `internal_only`, `legal_requested`) to the open incident of the subject built from the
//! alert's labels; a firing `security` alert for a subject without an open incident declares
//! one (critical, security), as `EngageLegal` would. Resolved alerts change nothing (flags are
//! cleared by people, e.g. `legal_approved`). Alertmanager re-sends a firing group every
//! `repeat_interval`; each alert episode (fingerprint + `startsAt`) applies once.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::daemon::{AlertEvent, AlertMapping};
use crate::daemon::Core;
use crate::engine::{Event, Subject, Ts};
use crate::store::{Extra, Mark};

/// The fields of a webhook notification Herald reads.
#[derive(Debug, Deserialize)]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub status: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// What one alert did.
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct AlertOutcome {
    pub fingerprint: String,
    /// applied | declared | already_applied | resolved_ignored | unmatched | no_subject
    pub result: &'static str,
    pub incident: Option<String>,
}

/// Parses a body; refuses versions other than 4.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    let n: Notification = serde_json::from_slice(body).map_err(|e| format!("invalid Alertmanager webhook body: {e}"))?;
    if n.version != "4" {
        return Err(format!("unsupported Alertmanager webhook version {:?} (Herald reads version \"4\")", n.version));
    }
    Ok(n)
}

/// Applies a notification's alerts (under the core lock).
pub fn handle(core: &mut Core, mappings: &[AlertMapping], n: &Notification, now: Ts) -> Result<Vec<AlertOutcome>, String> {
    let mut out = Vec::new();
    for a in &n.alerts {
        let mut o = AlertOutcome { fingerprint: a.fingerprint.clone(), result: "unmatched", incident: None };
        let Some(m) = mappings.iter().find(|m| m.matches(&a.labels)) else {
            out.push(o);
            continue;
        };
        if a.status != "firing" {
            o.result = "resolved_ignored";
            out.push(o);
            continue;
        }
        let labels: Vec<(&str, &str)> = m.subject_labels.iter().filter_map(|l| a.labels.get(l).map(|v| (l.as_str(), v.as_str()))).collect();
        if labels.len() != m.subject_labels.len() {
            o.result = "no_subject";
            out.push(o);
            continue;
        }
        let subject = Subject::new(labels);
        let key = format!("am:{}:{}:{}", a.fingerprint, a.starts_at, m.event.as_str());
        if core.store.seen(&key).map_err(|e| e.to_string())?.is_some() {
            o.result = "already_applied";
            out.push(o);
            continue;
        }
        let at = super::parse_time(Some(a.starts_at.as_str())).min(now);
        let open = core.state.open_incident(&subject).map(|i| i.id.clone());
        let mark = |id: Option<String>| Extra { marks: vec![Mark { key: key.clone(), incident_id: id, fingerprint: "firing".into(), at: now }], ..Default::default() };
        match (open, m.event) {
            (Some(id), ev) => {
                let event = match ev {
                    AlertEvent::Security => Event::Security,
                    AlertEvent::InternalOnly => Event::InternalOnly,
                    AlertEvent::LegalRequested => Event::LegalRequested,
                };
                super::apply_external(core, &id, &[(now, event)], &mark(Some(id.clone()))).map_err(|e| e.to_string())?;
                o.result = "applied";
                o.incident = Some(id);
            }
            (None, AlertEvent::Security) => {
                let inc = super::declare_external(core, &subject, true, now.max(at), &mark(None)).map_err(|e| e.to_string())?;
                o.result = "declared";
                o.incident = Some(inc.id);
            }
            (None, _) => {
                o.result = "no_incident";
            }
        }
        tracing::info!(fingerprint = %a.fingerprint, subject = %subject, event = m.event.as_str(), result = o.result, "Alertmanager alert");
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_payload_parses_and_other_versions_are_refused() {
        let n = parse(include_bytes!("../../tests/fixtures/integrations/alertmanager_webhook_v4.json")).unwrap();
        assert_eq!(n.alerts.len(), 1);
        assert_eq!(n.alerts[0].labels["alertname"], "SecurityBreach");
        assert!(parse(br#"{"version":"3","alerts":[]}"#).unwrap_err().contains("version \"3\""));
        assert!(parse(b"{").unwrap_err().contains("invalid Alertmanager webhook body"));
    }
}
