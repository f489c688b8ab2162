//! From decisions to outbox entries: which receivers get what, when, under which id and
//! dedup key. Runs inside the evaluation's transaction, so it does no network I/O; it reads
//! the store only to apply noise control.
//!
//! - **Ids**: `hrld_<random>` per notification, kept on every retry (the `webhook-id`).
//! - **Dedup keys**: `<incident>/<rule>` when the instance started firing inside an incident,
//!   else `<rule>/<subject hash>/<start>`: the firing and resolved messages of one episode share
//!   it, and no label value (possibly personal data) leaks through it.
//! - **group_wait**: prompts (`suggest_update`, `internal_only`) wait `group_wait` so a burst of
//!   decisions for one subject can go out together; pages (`activate_comms_lead`, `escalate`,
//!   `engage_legal`) and `notify` go out at once.
//! - **Maintenance windows**: entries are recorded as `suppressed`, never sent.
//! - **send_resolved**: per receiver, defaulting to `notification.send_resolved`.
//! - Every payload is scrubbed before it is stored.
//!
//! # Noise control
//!
//! - **Grouping** (`group_wait`): a prompt for a chat receiver (slack, teams, log) joins the
//!   group of prompts already waiting for the same subject and receiver: it takes the earliest
//!   waiting entry's `not_before`, so the whole group becomes due together (the first prompt
//!   starts the timer, as in Alertmanager). The worker sends a due group as ONE message (the
//!   most severe first, each decision's impact line then its body) and marks every entry of the
//!   group together. Webhook, PagerDuty and Alertmanager keep one request per notification:
//!   their payloads are per decision.
//! - **`min_interval`** (per incident and receiver, applied by the worker at delivery time, see
//!   [`held_by_min_interval`]): a firing prompt (`suggest_update`, `internal_only`) for an
//!   incident whose receiver got a message (sent or dry-run) less than `min_interval` ago
//!   waits until `min_interval` has passed ([`DEFERRED`]); then it is sent if its rule still
//!   fires for the subject, and recorded `suppressed` only if it no longer does. Pages
//!   (`activate_comms_lead`, `escalate`, `engage_legal`), `notify` (telemetry warnings) and
//!   resolved messages are never held back, nor delayed by `group_wait`. Without an incident,
//!   the subject plays the incident's part.
//! - **`repeat_interval`** ([`Planner::plan_repeats`], run periodically by the worker): a rule
//!   instance that is still firing and whose last entry for a receiver is a firing message
//!   older than `repeat_interval` gets a new entry with the SAME dedup key and a new id (the
//!   stored payload, re-stamped). Alertmanager receivers are re-sent every
//!   max(group interval, 1m) instead (their alerts carry `endsAt` = 4 × that), capped by
//!   `repeat_interval`. Repeats are enqueued through [`Store::commit`] like any entry.
//! - **Reloads**: ids and dedup keys live in the store, not in the configuration, so a reload
//!   never re-sends what was already sent; repeats are timed from the store's last entry.
//! - **Metrics**: entries planned as `suppressed` (maintenance) count in
//!   `herald_notifications_total{outcome="suppressed"}` when planned.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Action, Config};
use crate::engine::{Decision, DecisionStatus, Phase, State, Subject, Ts};
use crate::notify::{IncidentRef, Notification, ScrubConfig, ScrubError, Scrubber, Status};
use crate::store::{OutboxEntry, OutboxState, Store};

/// Whether an action pages (goes out at once, never held back by noise control).
pub fn is_page(action: Action) -> bool {
    matches!(action, Action::ActivateCommsLead | Action::Escalate | Action::EngageLegal)
}

/// Whether noise control may delay or merge a decision of this action: prompts
/// (`suggest_update`, `internal_only`) only. Pages and `notify` (the telemetry warnings:
/// missing data must reach people as it happens) are never delayed, merged or held back.
pub fn is_deferrable(action: Action) -> bool {
    matches!(action, Action::SuggestUpdate | Action::InternalOnly)
}

/// [`is_deferrable`] by action name.
pub fn is_deferrable_str(action: &str) -> bool {
    matches!(action, "suggest_update" | "internal_only")
}

/// `last_error` of an entry `min_interval` deferred: when it becomes due, it is sent only if
/// its rule still fires for the subject.
pub const DEFERRED: &str = "deferred by min_interval";

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
            secrets: configured_secrets(config),
            exempt: vec![config.global.external_url.clone()],
            keep_labels: !config.notification.scrub_labels,
        })?;
        Ok(Planner { scrubber })
    }

    /// The content filter (the worker scrubs rendered text with it).
    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// Turns decisions into outbox entries.
    pub fn plan(&self, decisions: &[Decision], config: &Config, store: &Store, now: Ts, dry_run: bool) -> Vec<OutboxEntry> {
        let mut out: Vec<OutboxEntry> = Vec::new();
        let now_dt = Utc.timestamp_millis_opt(now).single().unwrap_or_else(Utc::now);
        for d in decisions {
            let dedup_key = dedup_key(d);
            let outbox_subject = self.scrubber.outbox_subject(&d.subject);
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
                let prompt = is_deferrable(d.action) && d.status == DecisionStatus::Firing;
                let wait = if prompt { config.notification.group_wait.as_millis() as Ts } else { 0 };
                let mut not_before = now + wait;
                if prompt && crate::notify::receiver::is_chat(&receiver.kind) {
                    // Join the group already waiting for this subject and receiver.
                    let subject = outbox_subject.as_str();
                    let waiting = out
                        .iter()
                        .filter(|e| e.receiver == *name && e.subject == subject && e.state == OutboxState::Pending)
                        .map(|e| e.not_before)
                        .chain(match store.pending_for(subject, name) {
                            Ok(v) => v.into_iter().filter(|e| e.attempts == 0 && e.not_before > now && is_prompt_payload(&e.payload)).map(|e| e.not_before).collect(),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read pending entries for grouping");
                                Vec::new()
                            }
                        })
                        .min();
                    if let Some(w) = waiting {
                        not_before = not_before.min(w);
                    }
                }
                if suppressed {
                    metrics::counter!("herald_notifications_total", "receiver" => name.clone(), "outcome" => "suppressed").increment(1);
                }
                let retry = receiver.max_retry_duration.unwrap_or(config.notification.max_retry_duration).as_millis() as Ts;
                out.push(OutboxEntry {
                    id: n.id.clone(),
                    dedup_key: dedup_key.clone(),
                    receiver: name.clone(),
                    rule: d.rule.clone(),
                    subject: outbox_subject.clone(),
                    status: n.status.as_str().to_string(),
                    payload,
                    created_at: now,
                    not_before,
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

/// Every secret value of a configuration, for the content filter: webhook secrets, routing
/// keys, Slack and Teams URLs (their path is the credential), the Prometheus password and bearer
/// token, ticket-source tokens, the API token, and header values whose name says they carry a
/// credential (`Authorization`, `*token*`, `*key*`, `*secret*`, `*auth*`, `*password*`,
/// `Cookie`).
pub fn configured_secrets(config: &Config) -> Vec<String> {
    use crate::config::daemon::{Auth, ReceiverKind, TicketKind};
    fn credential_headers(h: &[(String, String)], out: &mut Vec<String>) {
        for (k, v) in h {
            let k = k.to_ascii_lowercase();
            if ["auth", "token", "key", "secret", "password", "cookie"].iter().any(|w| k.contains(w)) {
                // `Bearer xyz` / `Basic xyz`: the credential is the last word.
                out.push(v.clone());
                if let Some((_, cred)) = v.rsplit_once(' ') {
                    out.push(cred.to_owned());
                }
            }
        }
    }
    let mut out = Vec::new();
    for r in &config.receivers {
        match &r.kind {
            ReceiverKind::Webhook { secret: Some(s), .. } => out.push(s.clone()),
            ReceiverKind::Slack { url } | ReceiverKind::Teams { url } => out.push(url.clone()),
            ReceiverKind::PagerDuty { routing_key, .. } => out.push(routing_key.clone()),
            _ => {}
        }
        credential_headers(&r.headers, &mut out);
    }
    if let Some(p) = &config.prometheus {
        match &p.auth {
            Auth::Basic { password, .. } => out.push(password.clone()),
            Auth::Bearer(t) => out.push(t.clone()),
            Auth::None => {}
        }
        credential_headers(&p.headers, &mut out);
    }
    for t in &config.ticket_sources {
        match &t.kind {
            TicketKind::Zendesk { token, .. } => out.push(token.clone()),
            TicketKind::HttpJson { headers, .. } => credential_headers(headers, &mut out),
            TicketKind::Prometheus { .. } => {}
        }
    }
    out.extend(config.api_token.clone());
    out
}

impl Planner {
    /// Repeats for still-firing rule instances (see the module doc, `repeat_interval`): for
    /// every firing instance and every receiver of its rule, a new entry (new id, same dedup
    /// key) when the last entry is a firing message older than the receiver's repeat interval.
    /// Nothing is repeated while the last entry is still pending. Maintenance windows apply.
    pub fn plan_repeats(&self, config: &Config, state: &State, store: &Store, now: Ts, dry_run: bool) -> Result<Vec<OutboxEntry>, crate::store::StoreError> {
        let now_dt = Utc.timestamp_millis_opt(now).single().unwrap_or_else(Utc::now);
        let mut out = Vec::new();
        for group in &config.rules.groups {
            let interval = group.interval_or(config.global.evaluation_interval);
            for rule in &group.rules {
                let Some(instances) = state.instances.get(&rule.name) else { continue };
                for (subject, inst) in instances {
                    if inst.phase != Phase::Firing {
                        continue;
                    }
                    let fired_at = inst.fired_at.unwrap_or(inst.active_at);
                    for name in &rule.notify {
                        let Some(receiver) = config.receivers.iter().find(|r| &r.name == name) else { continue };
                        let Some(last) = store.last_for_instance(&rule.name, &self.scrubber.outbox_subject(subject), name)? else { continue };
                        if last.status != "firing" || last.state == OutboxState::Pending || last.created_at < fired_at {
                            continue;
                        }
                        let mut every = config.notification.repeat_interval;
                        if matches!(receiver.kind, crate::config::daemon::ReceiverKind::Alertmanager { .. }) {
                            every = every.min(crate::notify::receiver::alertmanager_resend(interval));
                        }
                        if now - last.created_at < every.as_millis() as Ts {
                            continue;
                        }
                        if let Some(e) = self.repeat_entry(&last, config, receiver, subject, now, now_dt, dry_run) {
                            out.push(e);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn repeat_entry(
        &self,
        last: &OutboxEntry,
        config: &Config,
        receiver: &crate::config::daemon::Receiver,
        subject: &Subject,
        now: Ts,
        now_dt: chrono::DateTime<Utc>,
        dry_run: bool,
    ) -> Option<OutboxEntry> {
        let mut n: Notification = match serde_json::from_str(&last.payload) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(id = %last.id, error = %e, "cannot repeat: stored payload is not a notification");
                return None;
            }
        };
        n.id = new_id();
        n.dry_run = dry_run;
        let suppressed = config.maintenance_windows.iter().any(|w| w.active(now_dt, &|l| subject.get(l).map(str::to_string)));
        if suppressed {
            metrics::counter!("herald_notifications_total", "receiver" => receiver.name.clone(), "outcome" => "suppressed").increment(1);
        }
        let retry = receiver.max_retry_duration.unwrap_or(config.notification.max_retry_duration).as_millis() as Ts;
        Some(OutboxEntry {
            id: n.id.clone(),
            dedup_key: last.dedup_key.clone(),
            receiver: last.receiver.clone(),
            rule: last.rule.clone(),
            subject: last.subject.clone(),
            status: last.status.clone(),
            payload: serde_json::to_string(&n).expect("notifications serialize"),
            created_at: now,
            not_before: now,
            deadline: now + retry,
            attempts: 0,
            state: if suppressed { OutboxState::Suppressed } else { OutboxState::Pending },
            last_error: suppressed.then(|| "maintenance window".to_string()),
            delivered_at: None,
        })
    }
}

/// Whether a stored payload is a firing prompt (not a page, not resolved).
fn is_prompt_payload(payload: &str) -> bool {
    serde_json::from_str::<Notification>(payload).is_ok_and(|n| n.status == Status::Firing && is_deferrable_str(&n.action))
}

/// Whether an action name pages (see [`is_page`]).
pub fn is_page_str(action: &str) -> bool {
    matches!(action, "activate_comms_lead" | "escalate" | "engage_legal")
}

/// `min_interval` (see the module doc): until when a prompt must wait because its receiver got
/// a message for the same incident (or subject, without one) less than `min_interval` before
/// `now` (`None`: it may go now). `last_delivered` is the receiver's latest delivered entry for
/// the subject. Only deferrable prompts ([`is_deferrable_str`]) ever wait.
pub fn held_by_min_interval(n: &Notification, last_delivered: Option<&OutboxEntry>, now: Ts, min_interval: std::time::Duration) -> Option<Ts> {
    if n.status != Status::Firing || !is_deferrable_str(&n.action) || min_interval.is_zero() {
        return None;
    }
    let at = last_delivered?.delivered_at?;
    let until = at + min_interval.as_millis() as Ts;
    if now >= until {
        return None;
    }
    let last_incident = serde_json::from_str::<Notification>(&last_delivered?.payload).ok().and_then(|l| l.incident.map(|i| i.id));
    (last_incident == n.incident.as_ref().map(|i| i.id.clone())).then_some(until)
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
        subject: d.subject.labels().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        labels: d.labels.clone(),
        annotations: d.annotations.clone(),
        values: d.values.clone(),
        incident: d.incident.as_ref().map(|i| IncidentRef {
            id: i.id.clone(),
            status: i.status.as_str().to_string(),
            opened_at: rfc3339(i.opened_at),
            url: Some(format!("{external_url}/incidents/{}", i.id)),
        }),
        starts_at: rfc3339(d.starts_at),
        ends_at: (d.status == DecisionStatus::Resolved).then(|| rfc3339(d.at)),
        dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::sample_firing;
    use std::time::Duration;

    fn delivered(payload: &Notification, at: Ts) -> OutboxEntry {
        OutboxEntry {
            id: "n0".into(),
            dedup_key: "INC-1/R".into(),
            receiver: "r".into(),
            rule: "R".into(),
            subject: "s".into(),
            status: "firing".into(),
            payload: serde_json::to_string(payload).unwrap(),
            created_at: at,
            not_before: at,
            deadline: at + 1,
            attempts: 1,
            state: OutboxState::Sent,
            last_error: None,
            delivered_at: Some(at),
        }
    }

    #[test]
    fn min_interval_defers_prompts_only() {
        let mut prompt = sample_firing();
        prompt.action = "suggest_update".into();
        let last = delivered(&prompt, 1_000);
        let five_min = Duration::from_secs(300);
        assert_eq!(held_by_min_interval(&prompt, Some(&last), 61_000, five_min), Some(301_000), "a prompt within min_interval waits until it ends");
        assert_eq!(held_by_min_interval(&prompt, Some(&last), 1_000 + 300_000, five_min), None, "after min_interval");
        assert_eq!(held_by_min_interval(&prompt, None, 61_000, five_min), None, "nothing sent yet");
        let mut page = prompt.clone();
        page.action = "escalate".into();
        assert_eq!(held_by_min_interval(&page, Some(&last), 61_000, five_min), None, "pages are never held back");
        // Regression: TelemetryGap's warning was swallowed after an activation page.
        let mut gap = prompt.clone();
        gap.action = "notify".into();
        assert_eq!(held_by_min_interval(&gap, Some(&last), 61_000, five_min), None, "a notify about missing data is never held back");
        let mut resolved = prompt.clone();
        resolved.status = Status::Resolved;
        assert_eq!(held_by_min_interval(&resolved, Some(&last), 61_000, five_min), None, "resolutions are never held back");
        let mut other = prompt.clone();
        if let Some(i) = other.incident.as_mut() {
            i.id = "INC-other".into();
        } else {
            other.incident = Some(IncidentRef { id: "INC-other".into(), status: "investigating".into(), opened_at: Utc::now(), url: None });
        }
        assert_eq!(held_by_min_interval(&other, Some(&last), 61_000, five_min), None, "another incident is not held back");
        assert!(!is_deferrable(Action::Notify) && !is_deferrable(Action::EngageLegal) && is_deferrable(Action::SuggestUpdate));
    }
}
