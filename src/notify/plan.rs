//! From decisions to outbox entries: which receivers get what, when, under which id and
//! dedup key. Runs inside the evaluation's transaction, so it does no network I/O; it reads
//! the store only to apply noise control.
//!
//! - **Ids**: `hrld_<random>` per notification, kept on every retry (the `webhook-id`).
//! - **Dedup keys**: `<incident>/<rule>` when the instance started firing inside an incident,
//!   else `<rule>/<subject hash>/<start>`: the firing and resolved messages of one episode share
//!   it, and no label value (possibly personal data) leaks through it.
//! - **group_wait**: prompts (`suggest_update`, `notify`, `internal_only`) wait `group_wait` so a
//!   burst of decisions for one subject can go out together; pages (`activate_comms_lead`,
//!   `escalate`, `engage_legal`) go out at once.
//! - **Maintenance windows**: entries are recorded as `suppressed`, never sent.
//! - **send_resolved**: per receiver, defaulting to `notification.send_resolved`.
//! - Every payload is scrubbed before it is stored.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Action, Config};
use crate::engine::{Decision, DecisionStatus, Ts};
use crate::notify::{IncidentRef, Notification, ScrubConfig, ScrubError, Scrubber, Status};
use crate::store::{OutboxEntry, OutboxState, Store};

/// Whether an action pages (goes out at once, never held back by noise control).
pub fn is_page(action: Action) -> bool {
    matches!(action, Action::ActivateCommsLead | Action::Escalate | Action::EngageLegal)
}

/// Built once per configuration: holds the compiled content filter.
pub struct Planner {
    scrubber: Scrubber,
}

impl Planner {
    /// Compiles the content filter of a configuration.
    pub fn new(config: &Config) -> Result<Planner, ScrubError> {
        let scrubber = Scrubber::new(&ScrubConfig {
            extra_patterns: config.notification.scrub_patterns.clone(),
            allow: config.notification.scrub_allow.clone(),
        })?;
        Ok(Planner { scrubber })
    }

    /// Turns decisions into outbox entries.
    pub fn plan(&self, decisions: &[Decision], config: &Config, store: &Store, now: Ts, dry_run: bool) -> Vec<OutboxEntry> {
        let _ = store;
        let mut out = Vec::new();
        let now_dt = Utc.timestamp_millis_opt(now).single().unwrap_or_else(Utc::now);
        for d in decisions {
            let dedup_key = dedup_key(d);
            let suppressed = config.maintenance_windows.iter().any(|w| w.active(now_dt, &|l| d.subject.get(l).map(str::to_string)));
            for name in &d.notify {
                let Some(receiver) = config.receivers.iter().find(|r| &r.name == name) else {
                    tracing::error!(receiver = %name, rule = %d.rule, "unknown receiver (config validation should have refused this)");
                    continue;
                };
                if d.status == DecisionStatus::Resolved && !receiver.send_resolved.unwrap_or(config.notification.send_resolved) {
                    continue;
                }
                let mut n = notification(d, new_id(), dedup_key.clone(), &config.global.external_url, dry_run);
                self.scrubber.scrub_notification(&mut n);
                let payload = serde_json::to_string(&n).expect("notifications serialize");
                let wait = if is_page(d.action) || d.status == DecisionStatus::Resolved { 0 } else { config.notification.group_wait.as_millis() as Ts };
                let retry = receiver.max_retry_duration.unwrap_or(config.notification.max_retry_duration).as_millis() as Ts;
                out.push(OutboxEntry {
                    id: n.id.clone(),
                    dedup_key: dedup_key.clone(),
                    receiver: name.clone(),
                    rule: d.rule.clone(),
                    subject: d.subject.key().to_string(),
                    status: n.status.as_str().to_string(),
                    payload,
                    created_at: now,
                    not_before: now + wait,
                    deadline: now + retry,
                    attempts: 0,
                    state: if suppressed { OutboxState::Suppressed } else { OutboxState::Pending },
                    last_error: suppressed.then(|| "maintenance window".to_string()),
                    delivered_at: None,
                });
            }
        }
        out
    }
}

fn new_id() -> String {
    format!("hrld_{:032x}", rand::random::<u128>())
}

/// The dedup key of a decision (see the module doc).
pub fn dedup_key(d: &Decision) -> String {
    match &d.incident {
        Some(i) if i.opened_at <= d.starts_at => format!("{}/{}", i.id, d.rule),
        _ => {
            let h = Sha256::digest(d.subject.key().as_bytes());
            let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("{}/{hex}/{}", d.rule, d.starts_at)
        }
    }
}

fn rfc3339(ms: Ts) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The receiver-independent message for a decision.
pub fn notification(d: &Decision, id: String, dedup_key: String, external_url: &str, dry_run: bool) -> Notification {
    Notification {
        id,
        dedup_key,
        status: match d.status {
            DecisionStatus::Firing => Status::Firing,
            DecisionStatus::Resolved => Status::Resolved,
        },
        rule: d.rule.clone(),
        action: d.action.as_str().to_string(),
        severity: d.severity.as_str().to_string(),
        subject: d.subject.labels().iter().cloned().collect::<BTreeMap<_, _>>(),
        labels: d.labels.clone(),
        annotations: d.annotations.clone(),
        values: d.values.clone(),
        incident: d.incident.as_ref().map(|i| IncidentRef {
            id: i.id.clone(),
            status: i.status.as_str().to_string(),
            opened_at: rfc3339(i.opened_at),
            url: Some(format!("{external_url}/api/v1/incidents/{}", i.id)),
        }),
        starts_at: rfc3339(d.starts_at),
        ends_at: (d.status == DecisionStatus::Resolved).then(|| rfc3339(d.at)),
        dry_run,
    }
}
