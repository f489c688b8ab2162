//! Which notifications the daemon would have sent for a replay's decisions, and when, without
//! an outbox: the same rules as `notify::plan` and the delivery worker, kept in memory.
//!
//! - each receiver a rule names gets one notification per decision; resolved ones only when
//!   the receiver's `send_resolved` (default `notification.send_resolved`) says so;
//! - prompts (firing `suggest_update`, `notify`, `internal_only`) go out `group_wait` after the
//!   decision; for chat receivers they join a group already waiting for the same subject and
//!   receiver; pages and resolutions go out at once;
//! - a maintenance window active at decision time suppresses it;
//! - `min_interval`: a firing prompt for an incident whose receiver got a message for the same
//!   incident less than `min_interval` before is suppressed;
//! - `repeat_interval`: a still-firing instance is notified again every `repeat_interval`
//!   after its last message to that receiver.
//!
//! Pure: no I/O, no clock. Never sends anything.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};

use crate::config::Config;
use crate::engine::{Decision, DecisionStatus, Phase, State, Subject, Ts};
use crate::notify::plan::is_page;

/// One notification the daemon would have sent (or suppressed).
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// When it would have gone out.
    pub at: Ts,
    /// When the decision behind it was made.
    pub decided_at: Ts,
    pub rule: String,
    pub subject: Subject,
    pub receiver: String,
    pub status: DecisionStatus,
    /// A page (`activate_comms_lead`, `escalate`, `engage_legal`).
    pub page: bool,
    /// A `repeat_interval` re-send of a still-firing instance.
    pub repeat: bool,
    /// Why it would not have been sent, if so.
    pub suppressed: Option<String>,
    pub incident: Option<String>,
}

/// The notification state of a replay.
pub struct Emulator<'a> {
    config: &'a Config,
    /// Chat prompt groups waiting: (subject key, receiver) → due time.
    waiting: HashMap<(String, String), Ts>,
    /// Per receiver: the last message sent (due time, incident or subject key).
    last_sent: HashMap<String, (Ts, String)>,
    /// Per (rule, subject key, receiver): the last firing message and its due time, for repeats.
    last_firing: HashMap<(String, String, String), Ts>,
}

impl<'a> Emulator<'a> {
    pub fn new(config: &'a Config) -> Emulator<'a> {
        Emulator { config, waiting: HashMap::new(), last_sent: HashMap::new(), last_firing: HashMap::new() }
    }

    /// The notifications for one evaluation's decisions.
    pub fn plan(&mut self, decisions: &[Decision]) -> Vec<Planned> {
        let mut out = Vec::new();
        for d in decisions {
            let at_dt = Utc.timestamp_millis_opt(d.at).single().unwrap_or_default();
            let window = self.config.maintenance_windows.iter().find(|w| w.active(at_dt, &|l| d.subject.get(l).map(str::to_string)));
            let incident = d.incident.as_ref().map(|i| i.id.clone());
            for name in &d.notify {
                let Some(receiver) = self.config.receivers.iter().find(|r| &r.name == name) else { continue };
                if d.status == DecisionStatus::Resolved && !receiver.send_resolved.unwrap_or(self.config.notification.send_resolved) {
                    continue;
                }
                let prompt = !is_page(d.action) && d.status == DecisionStatus::Firing;
                let mut due = if prompt { d.at + self.config.notification.group_wait.as_millis() as Ts } else { d.at };
                if prompt && crate::notify::receiver::is_chat(&receiver.kind) {
                    let key = (d.subject.key().to_string(), name.clone());
                    match self.waiting.get(&key) {
                        Some(&w) if w >= d.at => due = due.min(w),
                        _ => {
                            self.waiting.insert(key, due);
                        }
                    }
                }
                let mut suppressed = window.map(|w| format!("maintenance window {}", w.name));
                let scope = incident.clone().unwrap_or_else(|| d.subject.key().to_string());
                if suppressed.is_none() && prompt {
                    let min = self.config.notification.min_interval.as_millis() as Ts;
                    if let Some((last, last_scope)) = self.last_sent.get(name) {
                        if min > 0 && *last_scope == scope && due - last < min {
                            suppressed = Some(format!("min_interval ({} since the last message)", crate::config::PromDuration(std::time::Duration::from_millis((due - last) as u64))));
                        }
                    }
                }
                if suppressed.is_none() {
                    self.last_sent.insert(name.clone(), (due, scope));
                }
                let key = (d.rule.clone(), d.subject.key().to_string(), name.clone());
                match d.status {
                    DecisionStatus::Firing => {
                        self.last_firing.insert(key, due);
                    }
                    DecisionStatus::Resolved => {
                        self.last_firing.remove(&key);
                    }
                }
                out.push(Planned {
                    at: due,
                    decided_at: d.at,
                    rule: d.rule.clone(),
                    subject: d.subject.clone(),
                    receiver: name.clone(),
                    status: d.status,
                    page: is_page(d.action),
                    repeat: false,
                    suppressed,
                    incident: incident.clone(),
                });
            }
        }
        out
    }

    /// Repeats due at `now` for instances still firing in `state`.
    pub fn repeats(&mut self, state: &State, now: Ts) -> Vec<Planned> {
        let every = self.config.notification.repeat_interval.as_millis() as Ts;
        if every == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let now_dt = Utc.timestamp_millis_opt(now).single().unwrap_or_default();
        for ((rule, subject_key, receiver), last) in self.last_firing.iter_mut() {
            if now - *last < every {
                continue;
            }
            let Some((subject, _)) = state
                .instances
                .get(rule)
                .and_then(|m| m.iter().find(|(s, i)| s.key() == subject_key && i.phase == Phase::Firing))
            else {
                continue;
            };
            *last = now;
            let window = self.config.maintenance_windows.iter().find(|w| w.active(now_dt, &|l| subject.get(l).map(str::to_string)));
            let incident = state.incidents.get(subject).map(|i| i.id.clone());
            out.push(Planned {
                at: now,
                decided_at: now,
                rule: rule.clone(),
                subject: subject.clone(),
                receiver: receiver.clone(),
                status: DecisionStatus::Firing,
                page: false,
                repeat: true,
                suppressed: window.map(|w| format!("maintenance window {}", w.name)),
                incident,
            });
        }
        out.sort_by(|a, b| (&a.rule, &a.subject, &a.receiver).cmp(&(&b.rule, &b.subject, &b.receiver)));
        out
    }
}
