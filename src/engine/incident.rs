//! Incidents and the events people (or the engine) apply to them (spec §4, §7).
//!
//! Pure data and pure transitions: [`Incident::apply`] returns what changed so callers can
//! persist it and update comms metrics. Storage and HTTP live elsewhere.

use serde::{Deserialize, Serialize};

pub use super::event::Event;
use super::event::HeraldEvent;
use super::instance::Ts;
use super::subject::Subject;
use crate::config::Severity;
use crate::expr::IncidentView;

/// Where an incident stands (statuspage-style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Investigating, Status::Identified, Status::Monitoring, Status::Resolved];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Investigating => "investigating",
            Status::Identified => "identified",
            Status::Monitoring => "monitoring",
            Status::Resolved => "resolved",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where a public update was posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    StatusPage,
    Email,
    Social,
    /// Internal channels: recorded, but not a *public* update.
    Internal,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::StatusPage, Channel::Email, Channel::Social, Channel::Internal];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::StatusPage => "status_page",
            Channel::Email => "email",
            Channel::Social => "social",
            Channel::Internal => "internal",
        }
    }
    pub fn parse(s: &str) -> Option<Channel> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl Serialize for Severity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Severity::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown severity {s:?} (valid: critical, warning, info)")))
    }
}

/// An incident: one per subject may be open at a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub subject: Subject,
    pub severity: Severity,
    pub status: Status,
    pub opened_at: Ts,
    pub resolved_at: Option<Ts>,
    pub acknowledged_at: Option<Ts>,
    pub security: bool,
    pub internal_only: bool,
    /// Public comms held until legal approves.
    pub legal_hold: bool,
    pub legal_pending: bool,
    pub legal_requested_at: Option<Ts>,
    /// Updates on non-internal channels.
    pub public_updates: u32,
    pub first_public_update_at: Option<Ts>,
    pub last_public_update_at: Option<Ts>,
    pub last_status_page_update_at: Option<Ts>,
    pub postmortem_published: bool,
    pub corrections: u32,
    pub false_positive: bool,
    /// The rule that opened it; it resolves when that rule has been inactive for its
    /// `resolve_after`. `None` for incidents declared by hand (they resolve through the API).
    pub activating_rule: Option<String>,
    /// Since when the activating rule has been known-inactive (the `resolve_after` countdown).
    /// Shifted forward across unknown evaluations and downtime, so only known-inactive time
    /// counts; persisted with the incident, so the countdown survives restarts.
    pub clear_since: Option<Ts>,
    /// The last evaluation that saw the countdown running: the time after it is shifted out
    /// of `clear_since` when the next evaluation is unknown, or after a restart.
    #[serde(default)]
    pub countdown_at: Option<Ts>,
    /// A person set the status: Herald no longer moves it (nor resolves the incident) itself.
    #[serde(default)]
    pub status_by_person: bool,
}

/// What the activating rule's instance shows for an incident at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// The rule's condition could not be decided: nothing moves, the countdown pauses.
    Unknown,
    /// The instance is live (pending or firing).
    Live { firing: bool },
    /// The instance is known inactive.
    Inactive,
}

/// What applying an event changed, for comms metrics (durations in seconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effect {
    pub first_update_latency: Option<f64>,
    pub update_interval: Option<f64>,
    pub public_update_channel: Option<Channel>,
    pub ack_latency: Option<f64>,
    pub legal_review: Option<f64>,
    pub correction: bool,
    pub false_positive: bool,
    pub resolved: bool,
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("incident {0} is already resolved")]
    AlreadyResolved(String),
    #[error("declare opens a new incident; it cannot be applied to incident {0}")]
    DeclareOnExisting(String),
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Incident {
    /// A new open incident.
    pub fn open(id: String, subject: Subject, severity: Severity, at: Ts, activating_rule: Option<String>) -> Incident {
        Incident {
            id,
            subject,
            severity,
            status: Status::Investigating,
            opened_at: at,
            resolved_at: None,
            acknowledged_at: None,
            security: false,
            internal_only: false,
            legal_hold: false,
            legal_pending: false,
            legal_requested_at: None,
            public_updates: 0,
            first_public_update_at: None,
            last_public_update_at: None,
            last_status_page_update_at: None,
            postmortem_published: false,
            corrections: 0,
            false_positive: false,
            activating_rule,
            clear_since: None,
            countdown_at: None,
            status_by_person: false,
        }
    }

    /// Whether it is still open.
    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }

    /// Marks it resolved.
    pub fn resolve(&mut self, at: Ts) {
        self.resolved_at = Some(at);
        self.status = Status::Resolved;
    }

    /// Engages legal: security incident, review pending, public comms on hold.
    pub fn engage_legal(&mut self, at: Ts) {
        self.security = true;
        if !self.legal_pending {
            self.legal_requested_at = Some(at);
        }
        self.legal_pending = true;
        self.legal_hold = true;
    }

    /// Whether it owes customers a postmortem: resolved, critical, none published yet.
    pub fn owes_postmortem(&self) -> bool {
        !self.is_open() && self.severity == Severity::Critical && !self.postmortem_published
    }

    /// Whether it still has an obligation that outlives resolution (a postmortem owed, a
    /// legal review pending): the engine keeps such incidents in memory after a newer one.
    pub fn has_obligations(&self) -> bool {
        !self.is_open() && (self.owes_postmortem() || self.legal_pending)
    }

    /// Follows the evidence of the activating rule at one evaluation (see "Incident lifecycle"
    /// in the README): `monitoring` once the rule stops firing, `investigating` when it fires
    /// again, resolved after `resolve_after` of known-inactive time. Unknown evaluations pause
    /// the countdown (its start is shifted forward). A status set by a person is left alone.
    /// Returns whether the incident changed (it must be persisted) and the status changes.
    pub fn follow(&mut self, evidence: Evidence, now: Ts, resolve_after_ms: i64) -> (bool, Option<HeraldEvent>) {
        if !self.is_open() {
            return (false, None);
        }
        let before = (self.clear_since, self.countdown_at, self.status);
        let mut change = None;
        match evidence {
            Evidence::Unknown => {
                if let (Some(since), Some(last)) = (self.clear_since.as_mut(), self.countdown_at.as_mut()) {
                    *since += (now - *last).max(0);
                    *last = now;
                }
            }
            Evidence::Live { firing } => {
                self.clear_since = None;
                self.countdown_at = None;
                if firing && self.status == Status::Monitoring && !self.status_by_person {
                    self.status = Status::Investigating;
                    change = Some(HeraldEvent::StatusChanged { from: Status::Monitoring, to: Status::Investigating, reason: "its rule fires again".into() });
                }
            }
            Evidence::Inactive => {
                let since = *self.clear_since.get_or_insert(now);
                self.countdown_at = Some(now);
                if !self.status_by_person {
                    if now - since >= resolve_after_ms {
                        let from = self.status;
                        self.resolve(now);
                        change = Some(HeraldEvent::StatusChanged { from, to: Status::Resolved, reason: "its rule has been inactive for resolve_after".into() });
                    } else if self.status == Status::Investigating || self.status == Status::Identified {
                        let from = self.status;
                        self.status = Status::Monitoring;
                        change = Some(HeraldEvent::StatusChanged { from, to: Status::Monitoring, reason: "its rule stopped firing".into() });
                    }
                }
            }
        }
        ((self.clear_since, self.countdown_at, self.status) != before, change)
    }

    /// Applies an event. On a resolved incident, only what makes sense after resolution is
    /// accepted (postmortem, correction, false positive, public update, legal review); a second
    /// `resolve` is accepted and changes nothing.
    pub fn apply(&mut self, event: &Event, at: Ts) -> Result<Effect, EventError> {
        let mut fx = Effect::default();
        let after_resolution_ok = matches!(
            event,
            Event::PostmortemPublished
                | Event::Correction
                | Event::FalsePositive
                | Event::PublicUpdate { .. }
                | Event::LegalRequested
                | Event::LegalApproved
                | Event::Resolve
                | Event::Status { value: Status::Resolved }
        );
        if !self.is_open() && !after_resolution_ok {
            return Err(EventError::AlreadyResolved(self.id.clone()));
        }
        match event {
            Event::Declare { .. } => return Err(EventError::DeclareOnExisting(self.id.clone())),
            Event::Ack => {
                if self.acknowledged_at.is_none() {
                    self.acknowledged_at = Some(at);
                    fx.ack_latency = Some(secs(at - self.opened_at));
                }
            }
            Event::PublicUpdate { channel } => {
                fx.public_update_channel = Some(*channel);
                if *channel != Channel::Internal {
                    match self.last_public_update_at {
                        None => fx.first_update_latency = Some(secs(at - self.opened_at)),
                        Some(last) => fx.update_interval = Some(secs(at - last)),
                    }
                    self.public_updates += 1;
                    self.first_public_update_at.get_or_insert(at);
                    self.last_public_update_at = Some(at);
                }
                if *channel == Channel::StatusPage {
                    self.last_status_page_update_at = Some(at);
                }
            }
            Event::Status { value: Status::Resolved } | Event::Resolve => {
                if self.is_open() {
                    self.resolve(at);
                    fx.resolved = true;
                }
            }
            Event::Status { value } => {
                self.status = *value;
                self.status_by_person = true;
            }
            Event::Security => self.security = true,
            Event::InternalOnly => self.internal_only = true,
            Event::LegalRequested => {
                if !self.legal_pending {
                    self.legal_requested_at = Some(at);
                }
                self.legal_pending = true;
            }
            Event::LegalApproved => {
                if let (true, Some(req)) = (self.legal_pending, self.legal_requested_at) {
                    fx.legal_review = Some(secs(at - req));
                }
                self.legal_pending = false;
                self.legal_hold = false;
            }
            Event::Correction => {
                self.corrections += 1;
                fx.correction = true;
            }
            Event::FalsePositive => {
                if !self.false_positive {
                    fx.false_positive = true;
                }
                self.false_positive = true;
            }
            Event::PostmortemPublished => self.postmortem_published = true,
        }
        Ok(fx)
    }

    /// What conditions see, at time `now`.
    pub fn view(&self, now: Ts) -> IncidentView<'_> {
        let since = |t: Ts| Some(secs(now - t));
        IncidentView {
            open: self.is_open(),
            resolved: !self.is_open(),
            id: Some(&self.id),
            severity: Some(self.severity.as_str()),
            status: Some(self.status.as_str()),
            age: since(self.opened_at),
            acknowledged: self.acknowledged_at.is_some(),
            security: self.security,
            internal_only: self.internal_only,
            legal_hold: self.legal_hold,
            legal_pending: self.legal_pending,
            since_legal_requested: self.legal_requested_at.and_then(since),
            public_updates: Some(self.public_updates as f64),
            since_last_public_update: since(self.last_public_update_at.unwrap_or(self.opened_at)),
            since_status_page_update: since(self.last_status_page_update_at.unwrap_or(self.opened_at)),
            postmortem_published: self.postmortem_published,
            since_resolved: self.resolved_at.and_then(since),
            postmortems_owed: if self.owes_postmortem() && !self.legal_hold { 1.0 } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc() -> Incident {
        Incident::open("INC-1".into(), Subject::new([("service", "checkout")]), Severity::Critical, 0, None)
    }

    #[test]
    fn public_updates_drive_cadence_fields() {
        let mut i = inc();
        let fx = i.apply(&Event::PublicUpdate { channel: Channel::StatusPage }, 600_000).unwrap();
        assert_eq!(fx.first_update_latency, Some(600.0));
        let fx = i.apply(&Event::PublicUpdate { channel: Channel::Email }, 1_500_000).unwrap();
        assert_eq!(fx.update_interval, Some(900.0));
        let fx = i.apply(&Event::PublicUpdate { channel: Channel::Internal }, 1_600_000).unwrap();
        assert_eq!((fx.first_update_latency, fx.update_interval), (None, None));
        let v = i.view(2_000_000);
        assert_eq!(v.public_updates, Some(2.0));
        assert_eq!(v.since_last_public_update, Some(500.0));
        assert_eq!(v.since_status_page_update, Some(1400.0));
    }

    #[test]
    fn legal_flow_and_review_time() {
        let mut i = inc();
        i.engage_legal(60_000);
        assert!(i.security && i.legal_hold && i.legal_pending);
        assert_eq!(i.view(120_000).since_legal_requested, Some(60.0));
        let fx = i.apply(&Event::LegalApproved, 3_660_000).unwrap();
        assert_eq!(fx.legal_review, Some(3600.0));
        assert!(!i.legal_hold && !i.legal_pending && i.security);
    }

    #[test]
    fn resolved_incidents_refuse_most_events() {
        let mut i = inc();
        assert!(i.apply(&Event::Status { value: Status::Resolved }, 10).unwrap().resolved);
        assert_eq!(i.apply(&Event::Ack, 20), Err(EventError::AlreadyResolved("INC-1".into())));
        assert!(i.apply(&Event::PostmortemPublished, 30).is_ok());
        let v = i.view(60_030);
        assert!(v.resolved && !v.open && v.postmortem_published);
        assert_eq!(v.since_resolved, Some(60.02));
    }

    #[test]
    fn ack_latency_is_reported_once() {
        let mut i = inc();
        assert_eq!(i.apply(&Event::Ack, 90_000).unwrap().ack_latency, Some(90.0));
        assert_eq!(i.apply(&Event::Ack, 95_000).unwrap().ack_latency, None);
    }
}
