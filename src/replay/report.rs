//! Per-incident comms figures against the documented targets: time to activation, first public
//! update (15m), every update interval and the largest (cadence 15–30m, so at most 30m), ack
//! (30m), legal review (60m). Used by `herald replay` and `herald gameday`. Pure.

use serde::Serialize;

use crate::config::{PromDuration, Severity};
use crate::engine::{Channel, Subject, Ts};

/// First public update within 15 minutes of opening.
pub const FIRST_UPDATE_TARGET: Ts = 15 * 60_000;
/// Public updates every 15–30 minutes: no gap longer than 30 minutes.
pub const UPDATE_GAP_TARGET: Ts = 30 * 60_000;
/// Stakeholders acknowledge within 30 minutes.
pub const ACK_TARGET: Ts = 30 * 60_000;
/// Legal reviews within 60 minutes.
pub const LEGAL_REVIEW_TARGET: Ts = 60 * 60_000;

/// What happened to one incident, as recorded by a replay or a game day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncidentRecord {
    pub id: String,
    pub subject: Option<Subject>,
    pub severity: Option<Severity>,
    pub opened_at: Ts,
    pub resolved_at: Option<Ts>,
    /// The rule that opened it (none when declared by hand).
    pub activating_rule: Option<String>,
    /// When that rule's condition started to hold (its instance went pending or firing).
    pub condition_since: Option<Ts>,
    pub acknowledged_at: Option<Ts>,
    pub internal_only: bool,
    /// Public updates (internal ones excluded), in order.
    pub public_updates: Vec<(Ts, Channel)>,
    /// Legal reviews: (requested, approved if it was).
    pub legal_reviews: Vec<(Ts, Option<Ts>)>,
}

/// Whether a figure met its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// Not done yet, and not overdue either.
    Pending,
    /// Does not apply (e.g. no legal review requested, internal-only incident).
    NotApplicable,
}

/// One figure: its value (when there is one), its target and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measure {
    pub seconds: Option<f64>,
    pub target_seconds: Option<f64>,
    pub verdict: Verdict,
}

impl Measure {
    fn new(value: Option<Ts>, target: Option<Ts>, verdict: Verdict) -> Measure {
        let s = |ms: Ts| ms as f64 / 1000.0;
        Measure { seconds: value.map(s), target_seconds: target.map(s), verdict }
    }

    /// A duration against a target: met when within it; when not done, missed once overdue.
    fn against(value: Option<Ts>, elapsed: Ts, target: Ts) -> Measure {
        let verdict = match value {
            Some(v) if v <= target => Verdict::Met,
            Some(_) => Verdict::Missed,
            None if elapsed > target => Verdict::Missed,
            None => Verdict::Pending,
        };
        Measure::new(value, Some(target), verdict)
    }

    /// `12m`, `1h4m`, or `none`.
    pub fn value_text(&self) -> String {
        self.seconds.map_or_else(|| "none".into(), |s| show_duration((s * 1000.0) as Ts))
    }

    /// `met (target 15m)`, `MISSED (target 30m)`, …
    pub fn verdict_text(&self) -> String {
        let target = self.target_seconds.map(|t| format!(" (target {})", show_duration((t * 1000.0) as Ts))).unwrap_or_default();
        match self.verdict {
            Verdict::Met => format!("met{target}"),
            Verdict::Missed => format!("MISSED{target}"),
            Verdict::Pending => format!("not yet due{target}"),
            Verdict::NotApplicable => "n/a".into(),
        }
    }
}

/// A time as RFC 3339 UTC at one-second precision (`2026-11-20T10:05:00Z`).
pub fn rfc3339(ms: Ts) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A duration in Prometheus syntax, at one-second precision (`1h4m`, `45s`, `0s`).
pub fn show_duration(ms: Ts) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    PromDuration::from_secs(secs).to_string()
}

/// The figures of one incident.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentSummary {
    pub id: String,
    /// From the condition starting to hold to the incident opening (none when declared by hand).
    pub time_to_activation: Measure,
    pub first_public_update: Measure,
    /// Every interval between consecutive public updates, in seconds.
    pub update_intervals: Vec<f64>,
    /// The largest interval without a public update while open (including the open-ended one
    /// from the last update to resolution or the end).
    pub largest_update_gap: Measure,
    pub ack: Measure,
    pub legal_review: Measure,
}

/// The figures of an incident as of `end` (the end of the replay or game day).
pub fn summarize(r: &IncidentRecord, end: Ts) -> IncidentSummary {
    let until = r.resolved_at.unwrap_or(end).max(r.opened_at);
    let elapsed = until - r.opened_at;
    let activation = match r.condition_since {
        Some(since) => Measure::new(Some(r.opened_at - since), None, Verdict::NotApplicable),
        None => Measure::new(None, None, Verdict::NotApplicable),
    };
    let updates: Vec<Ts> = r.public_updates.iter().map(|u| u.0).collect();
    let (first, gap) = if r.internal_only {
        (Measure::new(None, None, Verdict::NotApplicable), Measure::new(None, None, Verdict::NotApplicable))
    } else {
        let first = Measure::against(updates.first().map(|t| t - r.opened_at), elapsed, FIRST_UPDATE_TARGET);
        let gap = match updates.last() {
            None => Measure::new(None, Some(UPDATE_GAP_TARGET), Verdict::NotApplicable),
            Some(last) => {
                // The open-ended gap counts only while the incident is open.
                let tail = (r.resolved_at.is_none() || until > *last).then(|| until - last);
                let largest = updates.windows(2).map(|w| w[1] - w[0]).chain(tail).max().unwrap_or(0);
                let verdict = if largest <= UPDATE_GAP_TARGET { Verdict::Met } else { Verdict::Missed };
                Measure::new(Some(largest), Some(UPDATE_GAP_TARGET), verdict)
            }
        };
        (first, gap)
    };
    let ack = Measure::against(r.acknowledged_at.map(|t| t - r.opened_at), elapsed, ACK_TARGET);
    let legal = if r.legal_reviews.is_empty() {
        Measure::new(None, None, Verdict::NotApplicable)
    } else {
        // The slowest review decides; a pending one counts until `end` (it keeps its clock
        // after resolution).
        let worst = r.legal_reviews.iter().map(|(req, ok)| (ok.map(|a| a - req), end - req)).max_by_key(|(v, e)| v.unwrap_or(*e)).expect("not empty");
        Measure::against(worst.0, worst.1, LEGAL_REVIEW_TARGET)
    };
    IncidentSummary {
        id: r.id.clone(),
        time_to_activation: activation,
        first_public_update: first,
        update_intervals: updates.windows(2).map(|w| (w[1] - w[0]) as f64 / 1000.0).collect(),
        largest_update_gap: gap,
        ack,
        legal_review: legal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Ts = 60_000;

    fn record() -> IncidentRecord {
        IncidentRecord { id: "INC-1".into(), opened_at: 10 * MIN, condition_since: Some(5 * MIN), ..Default::default() }
    }

    #[test]
    fn figures_against_targets() {
        let mut r = record();
        r.acknowledged_at = Some(20 * MIN);
        r.public_updates = vec![(22 * MIN, Channel::StatusPage), (45 * MIN, Channel::Email), (90 * MIN, Channel::StatusPage)];
        r.resolved_at = Some(100 * MIN);
        r.legal_reviews = vec![(12 * MIN, Some(80 * MIN))];
        let s = summarize(&r, 200 * MIN);
        assert_eq!(s.time_to_activation.seconds, Some(300.0));
        assert_eq!((s.first_public_update.seconds, s.first_public_update.verdict), (Some(720.0), Verdict::Met));
        assert_eq!(s.update_intervals, vec![23.0 * 60.0, 45.0 * 60.0]);
        assert_eq!((s.largest_update_gap.seconds, s.largest_update_gap.verdict), (Some(2700.0), Verdict::Missed));
        assert_eq!(s.ack.verdict, Verdict::Met);
        assert_eq!((s.legal_review.seconds, s.legal_review.verdict), (Some(68.0 * 60.0), Verdict::Missed));
        assert_eq!(s.largest_update_gap.verdict_text(), "MISSED (target 30m)");
        assert_eq!(s.first_public_update.value_text(), "12m");
    }

    #[test]
    fn nothing_done_is_missed_only_once_overdue() {
        let r = record();
        let early = summarize(&r, 20 * MIN);
        assert_eq!(early.first_public_update.verdict, Verdict::Pending);
        assert_eq!(early.ack.verdict, Verdict::Pending);
        assert_eq!(early.legal_review.verdict, Verdict::NotApplicable);
        let late = summarize(&r, 50 * MIN);
        assert_eq!(late.first_public_update.verdict, Verdict::Missed);
        assert_eq!(late.ack.verdict, Verdict::Missed);
        assert_eq!(late.ack.value_text(), "none");
        // The open-ended gap since the last update counts while open.
        let mut r = record();
        r.public_updates = vec![(15 * MIN, Channel::StatusPage)];
        assert_eq!(summarize(&r, 60 * MIN).largest_update_gap.verdict, Verdict::Missed);
        assert_eq!(summarize(&r, 40 * MIN).largest_update_gap.verdict, Verdict::Met);
    }
}
