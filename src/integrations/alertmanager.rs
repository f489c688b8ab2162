//! Alertmanager's webhook (version 4) as input: existing security and SLO alerts feed Herald.
//!
//! Each alert of a notification is matched against `integrations.alertmanager` (first mapping
//! whose matchers all match wins). A mapping names an `event` or a `signal`.
//!
//! **Events.** A FIRING alert applies the mapping's event (`security`, `internal_only`,
//! `legal_requested`) to the open incident of the subject built from the alert's labels; a
//! firing `security` alert for a subject without an open incident declares one (critical,
//! security), as `EngageLegal` would. Resolved alerts change nothing (flags are cleared by
//! people, e.g. `legal_approved`). Alertmanager re-sends a firing group every
//! `repeat_interval`; each alert episode (fingerprint + `startsAt`) applies once.
//!
//! **Signals.** A firing alert sets the signal for its subject to the number in `value_from`
//! (an annotation or a label) or 1; a resolved alert, or one whose `endsAt` has passed, takes
//! its value back. A subject's value is the largest of its firing alerts' values, and a subject
//! with none reads 0 (Alertmanager tells about what fires; silence about a subject is "not
//! firing"), but only once Herald has heard from Alertmanager at all: before the first
//! notification the signal is unknown, because a pipeline that never delivered is not an all
//! clear. A notification lists every alert of its group, so an alert stored for that group and
//! missing from a later notification has resolved (its own resolved notification was lost) and
//! is cleared. A value that is not a finite number is reported as `bad_value` and changes
//! nothing. The values live in the store (`alert_signals`), so they survive restarts; the
//! daemon's evaluation reads them like any other signal ([`signal_slot`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::daemon::{AlertEvent, AlertMapping, AlertTarget, ValueFrom};
use crate::shared::Core;
use crate::engine::{Event, SlotValues, Subject, Ts};
use crate::store::{AlertSignal, AlertSignalWrite, Extra, Mark, Store, StoreError};

/// The fields of a webhook notification Herald reads.
#[derive(Debug, Deserialize)]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub status: String,
    /// Identifies the Alertmanager aggregation group the notification is about.
    #[serde(rename = "groupKey", default)]
    pub group_key: String,
    /// Alerts left out because of the receiver's `max_alerts`.
    #[serde(rename = "truncatedAlerts", default)]
    pub truncated_alerts: u64,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

impl Alert {
    /// Alertmanager's fingerprint, or (for a hand-made body without one) one of the labels.
    pub fn key(&self) -> String {
        if !self.fingerprint.is_empty() {
            return self.fingerprint.clone();
        }
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("labels:{}", super::fingerprint(&labels.join(",")))
    }

    /// `endsAt` in unix ms; `None` when unset (Alertmanager sends the zero time,
    /// 0001-01-01T00:00:00Z, for alerts still firing).
    pub fn ends_at_ms(&self) -> Option<Ts> {
        chrono::DateTime::parse_from_rfc3339(&self.ends_at).ok().map(|t| t.timestamp_millis()).filter(|t| *t > 0)
    }

    /// Whether the alert is firing at `now`: reported firing, and its `endsAt` (if any) not past.
    pub fn firing_at(&self, now: Ts) -> bool {
        self.status == "firing" && self.ends_at_ms().is_none_or(|e| e > now)
    }
}

/// The value a firing alert gives its signal: the number in `value_from`, or 1.
pub fn alert_value(alert: &Alert, from: Option<&ValueFrom>) -> Result<f64, String> {
    let (text, what) = match from {
        None => return Ok(1.0),
        Some(ValueFrom::Annotation(n)) => (alert.annotations.get(n), format!("annotation {n:?}")),
        Some(ValueFrom::Label(n)) => (alert.labels.get(n), format!("label {n:?}")),
    };
    let text = text.ok_or_else(|| format!("the alert has no {what}"))?;
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{what} is {text:?}, not a finite number")),
    }
}

/// What one alert did.
#[derive(Debug, PartialEq, serde::Serialize)]
pub struct AlertOutcome {
    pub fingerprint: String,
    /// Events: applied | declared | already_applied | resolved_ignored | no_incident.
    /// Signals: signal_set | signal_cleared | bad_value. Both: unmatched | no_subject.
    pub result: &'static str,
    pub incident: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why an alert changed nothing (`bad_value`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    let mut signals = AlertSignalWrite { at: now, ..Default::default() };
    for a in &n.alerts {
        let mut o = AlertOutcome { fingerprint: a.fingerprint.clone(), result: "unmatched", incident: None, signal: None, value: None, reason: None };
        let Some(m) = mappings.iter().find(|m| m.matches(&a.labels)) else {
            out.push(o);
            continue;
        };
        let labels: Vec<(&str, &str)> = m.subject_labels.iter().filter_map(|l| a.labels.get(l).map(|v| (l.as_str(), v.as_str()))).collect();
        let subject = (labels.len() == m.subject_labels.len()).then(|| Subject::new(labels));
        match &m.target {
            AlertTarget::Signal { name, value_from } => {
                o.signal = Some(name.clone());
                let Some(subject) = subject else {
                    o.result = "no_subject";
                    out.push(o);
                    continue;
                };
                if !a.firing_at(now) {
                    signals.clear.push((name.clone(), a.key()));
                    o.result = "signal_cleared";
                } else {
                    match alert_value(a, value_from.as_ref()) {
                        Ok(v) => {
                            signals.set.push(AlertSignal {
                                signal: name.clone(),
                                fingerprint: a.key(),
                                subject,
                                value: v,
                                group_key: n.group_key.clone(),
                                starts_at: super::parse_time(Some(a.starts_at.as_str())),
                                ends_at: a.ends_at_ms(),
                            });
                            o.result = "signal_set";
                            o.value = Some(v);
                        }
                        Err(why) => {
                            tracing::warn!(fingerprint = %a.fingerprint, signal = %name, reason = %why, "Alertmanager alert with a bad value ignored");
                            o.result = "bad_value";
                            o.reason = Some(why);
                        }
                    }
                }
                tracing::info!(fingerprint = %a.fingerprint, signal = %name, result = o.result, value = ?o.value, "Alertmanager alert");
                out.push(o);
            }
            AlertTarget::Event(ev) => {
                let ev = *ev;
                if a.status != "firing" {
                    o.result = "resolved_ignored";
                    out.push(o);
                    continue;
                }
                let Some(subject) = subject else {
                    o.result = "no_subject";
                    out.push(o);
                    continue;
                };
                apply_event(core, &subject, a, ev, now, &mut o)?;
                tracing::info!(fingerprint = %a.fingerprint, subject = %subject, event = ev.as_str(), result = o.result, "Alertmanager alert");
                out.push(o);
            }
        }
    }
    // The group's full list, unless `max_alerts` cut it short.
    if !n.group_key.is_empty() && n.truncated_alerts == 0 {
        signals.group = Some((n.group_key.clone(), n.alerts.iter().map(Alert::key).collect()));
    }
    let dropped = core.store.write_alert_signals(&signals).map_err(|e| e.to_string())?;
    for (signal, fp) in dropped {
        tracing::info!(fingerprint = %fp, signal = %signal, "Alertmanager alert no longer in its group: resolved");
    }
    Ok(out)
}

fn apply_event(core: &mut Core, subject: &Subject, a: &Alert, ev: AlertEvent, now: Ts, o: &mut AlertOutcome) -> Result<(), String> {
    let key = format!("am:{}:{}:{}", a.fingerprint, a.starts_at, ev.as_str());
    if core.store.seen(&key).map_err(|e| e.to_string())?.is_some() {
        o.result = "already_applied";
        return Ok(());
    }
    let at = super::parse_time(Some(a.starts_at.as_str())).min(now);
    let open = core.state.open_incident(subject).map(|i| i.id.clone());
    let mark = |id: Option<String>| Extra { marks: vec![Mark { key: key.clone(), incident_id: id, fingerprint: "firing".into(), at: now }], ..Default::default() };
    match (open, ev) {
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
            let inc = super::declare_external(core, subject, true, now.max(at), &mark(None)).map_err(|e| e.to_string())?;
            o.result = "declared";
            o.incident = Some(inc.id);
        }
        (None, _) => {
            o.result = "no_incident";
        }
    }
    Ok(())
}

/// The slot values of an `alertmanager: true` signal at `now` for the daemon's evaluation:
/// unavailable when no mapping sets it or Herald has never heard from Alertmanager, else the
/// stored values with 0 for every other subject.
pub fn signal_slot(store: &Store, mappings: &[AlertMapping], signal: &str, now: Ts) -> Result<SlotValues, StoreError> {
    if !mappings.iter().any(|m| matches!(&m.target, AlertTarget::Signal { name, .. } if name == signal)) {
        return Ok(SlotValues::Unavailable(format!("no integrations.alertmanager mapping sets {signal:?}")));
    }
    if store.alertmanager_heard_at()?.is_none() {
        return Ok(SlotValues::Unavailable("no Alertmanager notification received yet".into()));
    }
    Ok(SlotValues::SeriesOr { values: store.alert_signal_values(signal, now)?, otherwise: 0.0 })
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
        assert_eq!(n.group_key, "{}:{alertname=\"SecurityBreach\"}");
        assert_eq!(n.alerts[0].ends_at_ms(), None, "the zero time of a firing alert is no end");
    }

    fn alert(status: &str, annotations: &[(&str, &str)], ends_at: &str) -> Alert {
        Alert {
            status: status.into(),
            labels: BTreeMap::from([("alertname".to_string(), "SLOBurnFast".to_string()), ("service".to_string(), "checkout".to_string()), ("burn".to_string(), "7.5".to_string())]),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            starts_at: "2026-11-27T10:00:00Z".into(),
            ends_at: ends_at.into(),
            fingerprint: "f1".into(),
        }
    }

    #[test]
    fn the_value_is_the_named_annotation_or_label_as_a_number_else_1() {
        let ann = |n: &str| Some(ValueFrom::Annotation(n.into()));
        let a = alert("firing", &[("value", " 14.4 "), ("sci", "1.2e+01"), ("pct", "14%"), ("nan", "NaN"), ("inf", "+Inf"), ("empty", "")], "");
        assert_eq!(alert_value(&a, None), Ok(1.0), "no value_from: a firing alert is 1");
        assert_eq!(alert_value(&a, ann("value").as_ref()), Ok(14.4));
        assert_eq!(alert_value(&a, ann("sci").as_ref()), Ok(12.0), "Prometheus' {{ $value }} formatting");
        assert_eq!(alert_value(&a, Some(&ValueFrom::Label("burn".into()))), Ok(7.5));
        for bad in ["pct", "nan", "inf", "empty"] {
            let e = alert_value(&a, ann(bad).as_ref()).unwrap_err();
            assert!(e.contains("not a finite number") && e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(alert_value(&a, ann("missing").as_ref()).unwrap_err(), "the alert has no annotation \"missing\"");
        assert_eq!(alert_value(&a, Some(&ValueFrom::Label("nope".into()))).unwrap_err(), "the alert has no label \"nope\"");
    }

    #[test]
    fn an_alert_fires_until_resolved_or_its_ends_at() {
        let now = crate::integrations::parse_time(Some("2026-11-27T11:00:00Z"));
        assert!(alert("firing", &[], "0001-01-01T00:00:00Z").firing_at(now));
        assert!(alert("firing", &[], "").firing_at(now));
        assert!(alert("firing", &[], "2026-11-27T11:05:00Z").firing_at(now));
        assert!(!alert("firing", &[], "2026-11-27T10:59:59Z").firing_at(now), "endsAt passed");
        assert!(!alert("resolved", &[], "2026-11-27T10:30:00Z").firing_at(now));
        let mut a = alert("firing", &[], "");
        assert_eq!(a.key(), "f1");
        a.fingerprint.clear();
        assert!(a.key().starts_with("labels:"), "a body without fingerprints still keys alerts by their labels");
    }

    /// A daemon core over a fresh store, and the mappings of a config that declares
    /// `burn_rate` from Alertmanager.
    fn setup(dir: &std::path::Path) -> (Core, Vec<AlertMapping>) {
        std::fs::write(dir.join("rules.yaml"), "groups:\n  - name: g\n    subject: [service]\n    signals:\n      burn_rate: {alertmanager: true}\n    rules:\n      - {name: Burn, when: 'burn_rate > 3', action: escalate}\n").unwrap();
        std::fs::write(
            dir.join("herald.yaml"),
            "rule_files: [rules.yaml]\nintegrations:\n  alertmanager:\n    - {matchers: ['alertname=\"SLOBurnFast\"'], signal: burn_rate, value_from: 'annotation:value'}\n    - {matchers: ['alertname=\"SecurityBreach\"'], event: security}\n",
        )
        .unwrap();
        let (config, _) = crate::config::load_config(&dir.join("herald.yaml"), &|_| None).unwrap();
        let store = Store::open_dir(&dir.join("state")).unwrap();
        (Core { state: Default::default(), store, rewrite_groups: Default::default(), stale: false }, config.integrations.alertmanager)
    }

    fn body(group: &str, alerts: &[(&str, &str, &str, &str)]) -> Notification {
        let alerts: Vec<serde_json::Value> = alerts
            .iter()
            .map(|(fp, status, service, value)| {
                serde_json::json!({"status": status, "fingerprint": fp, "labels": {"alertname": "SLOBurnFast", "service": service},
                    "annotations": {"value": value}, "startsAt": "2026-11-27T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z"})
            })
            .collect();
        parse(serde_json::json!({"version": "4", "groupKey": group, "status": "firing", "alerts": alerts}).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn firing_alerts_set_the_signal_resolved_ones_clear_it_and_bad_values_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, mappings) = setup(dir.path());
        let checkout = Subject::new([("service", "checkout")]);
        let search = Subject::new([("service", "search")]);
        let slot = |core: &Core| signal_slot(&core.store, &mappings, "burn_rate", 1_000).unwrap();
        assert_eq!(slot(&core), SlotValues::Unavailable("no Alertmanager notification received yet".into()), "unknown until Alertmanager is heard from");
        assert!(matches!(signal_slot(&core.store, &mappings, "other", 0).unwrap(), SlotValues::Unavailable(m) if m.contains("no integrations.alertmanager mapping")));

        let out = handle(&mut core, &mappings, &body("g1", &[("a", "firing", "checkout", "14.4"), ("b", "firing", "search", "lots")]), 1_000).unwrap();
        assert_eq!(out.iter().map(|o| o.result).collect::<Vec<_>>(), vec!["signal_set", "bad_value"]);
        assert_eq!(out[0].value, Some(14.4));
        assert!(out[1].reason.as_deref().unwrap().contains("\"lots\", not a finite number"), "{out:?}");
        let SlotValues::SeriesOr { values, otherwise } = slot(&core) else { panic!("{:?}", slot(&core)) };
        assert_eq!(values, crate::engine::SubjectMap::from_iter([(checkout.clone(), 14.4)]), "the bad value set nothing");
        assert_eq!(otherwise, 0.0, "every other subject: no alert, 0");
        assert_eq!(SlotValues::SeriesOr { values, otherwise }.get(&search), Some(0.0));

        // A bad value for an alert that was fine keeps the value it had.
        let out = handle(&mut core, &mappings, &body("g1", &[("a", "firing", "checkout", "oops")]), 2_000).unwrap();
        assert_eq!(out[0].result, "bad_value");
        assert_eq!(slot(&core).get(&checkout), Some(14.4));

        // Resolved: back to 0.
        let out = handle(&mut core, &mappings, &body("g1", &[("a", "resolved", "checkout", "14.4")]), 3_000).unwrap();
        assert_eq!(out[0].result, "signal_cleared");
        assert_eq!(slot(&core).get(&checkout), Some(0.0));
        assert_eq!(core.store.alertmanager_heard_at().unwrap(), Some(3_000));

        // Unmatched alerts and alerts without the subject's labels change nothing.
        let n = parse(br#"{"version":"4","groupKey":"g2","alerts":[{"status":"firing","labels":{"alertname":"Other","service":"x"}},{"status":"firing","labels":{"alertname":"SLOBurnFast"},"annotations":{"value":"9"}}]}"#).unwrap();
        let out = handle(&mut core, &mappings, &n, 4_000).unwrap();
        assert_eq!(out.iter().map(|o| o.result).collect::<Vec<_>>(), vec!["unmatched", "no_subject"]);
    }

    #[test]
    fn a_group_that_no_longer_lists_an_alert_clears_it_unless_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (mut core, mappings) = setup(dir.path());
        let checkout = Subject::new([("service", "checkout")]);
        let search = Subject::new([("service", "search")]);
        handle(&mut core, &mappings, &body("g1", &[("a", "firing", "checkout", "5"), ("b", "firing", "search", "6")]), 1_000).unwrap();
        // `a` resolved while Herald was down; the group's next notification lists only `b`.
        let mut n = body("g1", &[("b", "firing", "search", "6")]);
        n.truncated_alerts = 1;
        handle(&mut core, &mappings, &n, 2_000).unwrap();
        assert_eq!(signal_slot(&core.store, &mappings, "burn_rate", 2_000).unwrap().get(&checkout), Some(5.0), "a truncated list proves nothing");
        handle(&mut core, &mappings, &body("g1", &[("b", "firing", "search", "6")]), 3_000).unwrap();
        let v = signal_slot(&core.store, &mappings, "burn_rate", 3_000).unwrap();
        assert_eq!((v.get(&checkout), v.get(&search)), (Some(0.0), Some(6.0)));
        // Another group's notification leaves g1's alerts alone.
        handle(&mut core, &mappings, &body("g2", &[]), 4_000).unwrap();
        assert_eq!(signal_slot(&core.store, &mappings, "burn_rate", 4_000).unwrap().get(&search), Some(6.0));
    }
}
