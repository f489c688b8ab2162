//! `herald gameday`: rehearse incident comms against a scripted incident.
//!
//! This module owns the scenario file (signal overrides in the `herald test` input format, over
//! live data or instead of it), the [`ScenarioSource`] that applies them on top of Prometheus,
//! and the game day's records for the report (from its own state database, after the run).
//! The daemon itself runs unchanged, in dry-run and rehearsal mode (`daemon::rehearsal`): the
//! CLI wires it up. Nothing here sends or decides anything.

use crate::engine::SubjectMap;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::config::rules::{duration_at, err_at};
use crate::config::yaml::{self, RawScenario};
use crate::config::{Diagnostic, Diagnostics, RuleSet, SignalSource};
use crate::engine::{Channel, Event, Subject, Ts};
use crate::replay::IncidentRecord;
use crate::source::{MetricsSource, RangeSeries, Sample, SourceError};
use crate::store::{Store, StoreError};
use crate::testing::parse_series;

/// Per subject, a scripted value (or none) at every step.
pub type Scripted = SubjectMap<Vec<Option<f64>>>;

/// A validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Step of the series, ms.
    pub interval: Ts,
    /// Length of the game day in scenario time, ms.
    pub duration: Ts,
    /// Scripted values replace live data entirely (else they overlay it).
    pub replace: bool,
    /// Per signal name: per subject, a value (or none) at every step.
    pub overrides: BTreeMap<String, Scripted>,
}

/// Reads and validates a scenario against the rules it will run with.
pub fn load_scenario(path: &Path, rules: &RuleSet) -> Result<Scenario, Diagnostics> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostics(vec![Diagnostic::error(&shown, 0, 0, format!("cannot read scenario: {e}"))]))?;
    let raw: RawScenario = yaml::parse_all(&shown, &text)?;
    let mut diags = Diagnostics::default();
    let interval = raw.interval.as_ref().and_then(|s| duration_at(&shown, s, &mut diags)).map_or(60_000, |d| d.as_millis() as Ts);
    if interval == 0 {
        diags.push(err_at(&shown, raw.interval.as_ref().expect("parsed"), "interval must be greater than 0"));
    }
    let replace = match &raw.data {
        None => false,
        Some(d) if d.value == "overlay" => false,
        Some(d) if d.value == "replace" => true,
        Some(d) => {
            diags.push(err_at(&shown, d, format!("unknown data mode {:?} (valid: overlay, replace)", d.value)));
            false
        }
    };
    let mut overrides: BTreeMap<String, Scripted> = BTreeMap::new();
    let mut longest = 0usize;
    for input in &raw.input {
        let subject = Subject::new(input.subject.value.clone());
        let mut names: Vec<String> = input.subject.value.keys().cloned().collect();
        names.sort();
        let groups: Vec<_> = rules
            .groups
            .iter()
            .filter(|g| {
                let mut l = g.subject_labels.clone();
                l.sort();
                l == names
            })
            .collect();
        if groups.is_empty() {
            diags.push(err_at(&shown, &input.subject, format!("no rule group has subject labels [{}]", names.join(", "))));
            continue;
        }
        if let Some(e) = input.events.first() {
            diags.push(err_at(&shown, &e.at, "a game day takes no scripted events: participants post them through the API while it runs"));
        }
        for (name, src) in &input.signals {
            let queried = groups.iter().any(|g| g.signals.iter().any(|s| &s.name == name && matches!(s.source, SignalSource::Query(_))));
            if !queried {
                diags.push(err_at(&shown, src, format!("signal {name:?} is not a PromQL signal of any group for subject {subject}")));
                continue;
            }
            match parse_series(&src.value) {
                Ok(v) => {
                    longest = longest.max(v.len());
                    overrides.entry(name.clone()).or_default().insert(subject.clone(), v);
                }
                Err(e) => diags.push(err_at(&shown, src, format!("signal {name:?}: {e}"))),
            }
        }
    }
    let duration = match &raw.duration {
        Some(d) => duration_at(&shown, d, &mut diags).map_or(0, |d| d.as_millis() as Ts),
        None => longest as Ts * interval,
    };
    if duration <= 0 && !diags.has_errors() {
        diags.push(Diagnostic::error(&shown, 1, 1, "the scenario lasts no time: give `duration` or at least one series"));
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let name = raw.name.map_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), |n| n.value);
    Ok(Scenario { name, interval, duration, replace, overrides })
}

/// A [`MetricsSource`] that answers a group's signal queries with the scenario's values for
/// the scripted subjects (scenario time from `start`), over the live answer (`overlay`) or
/// instead of it (`replace`). Live queries are sent at the real time, never in the future.
pub struct ScenarioSource<S> {
    inner: S,
    start: Ts,
    interval: Ts,
    replace: bool,
    /// Query text → (subject labels, the overrides of its signal).
    by_query: HashMap<String, (Vec<String>, Scripted)>,
}

impl<S: MetricsSource> ScenarioSource<S> {
    /// Wraps `inner` for `scenario`, starting at `start` (the daemon's clock).
    pub fn new(inner: S, scenario: &Scenario, rules: &RuleSet, start: Ts) -> ScenarioSource<S> {
        let mut by_query = HashMap::new();
        for g in &rules.groups {
            for s in &g.signals {
                let (SignalSource::Query(q), Some(o)) = (&s.source, scenario.overrides.get(&s.name)) else { continue };
                let mine: Scripted =
                    o.iter().filter(|(subj, _)| subj.has_label_names(&g.subject_labels)).map(|(k, v)| (k.clone(), v.clone())).collect();
                if !mine.is_empty() {
                    by_query.entry(q.clone()).or_insert((g.subject_labels.clone(), mine));
                }
            }
        }
        ScenarioSource { inner, start, interval: scenario.interval.max(1), replace: scenario.replace, by_query }
    }

    async fn live(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        if self.replace {
            return Ok(Vec::new());
        }
        self.inner.instant(query, at.min(crate::rehearsal::wall_ms())).await
    }
}

impl<S: MetricsSource> MetricsSource for ScenarioSource<S> {
    async fn instant(&self, query: &str, at: Ts) -> Result<Vec<Sample>, SourceError> {
        let Some((labels, series)) = self.by_query.get(query) else { return self.live(query, at).await };
        let step = (at - self.start).div_euclid(self.interval);
        let scripted: HashMap<&Subject, f64> = series
            .iter()
            .filter_map(|(s, v)| usize::try_from(step).ok().and_then(|i| v.get(i).copied().flatten()).map(|x| (s, x)))
            .collect();
        let mut out = self.live(query, at).await?;
        out.retain(|sample| {
            let subject = Subject::new(labels.iter().map(|l| (l.clone(), sample.labels.get(l).cloned().unwrap_or_default())));
            !scripted.contains_key(&subject)
        });
        out.extend(scripted.into_iter().map(|(s, v)| Sample { labels: s.labels().map(|(k, v)| (k.to_string(), v.to_string())).collect(), value: v }));
        Ok(out)
    }

    async fn range(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<RangeSeries>, SourceError> {
        self.inner.range(query, start, end, step_ms).await
    }

    async fn range_columns(&self, query: &str, start: Ts, end: Ts, step_ms: i64) -> Result<Vec<crate::source::RangeColumn>, SourceError> {
        self.inner.range_columns(query, start, end, step_ms).await
    }
}

/// The game day's incidents as records for the report, from its state database. Time to
/// activation is measured from `start` (the beginning of the game day).
pub fn records(store: &Store, start: Ts) -> Result<Vec<IncidentRecord>, StoreError> {
    let mut out = Vec::new();
    let mut incidents = store.incidents(10_000)?;
    incidents.sort_by_key(|i| i.opened_at);
    for inc in incidents {
        let mut r = IncidentRecord {
            id: inc.id.clone(),
            subject: Some(inc.subject.clone()),
            severity: Some(inc.severity),
            opened_at: inc.opened_at,
            resolved_at: inc.resolved_at,
            condition_since: inc.activating_rule.as_ref().map(|_| start),
            activating_rule: inc.activating_rule.clone(),
            acknowledged_at: inc.acknowledged_at,
            internal_only: inc.internal_only,
            ..IncidentRecord::default()
        };
        if let Some(req) = inc.legal_requested_at {
            r.legal_reviews.push((req, None));
        }
        for (at, e) in store.events(&inc.id)? {
            match e {
                Event::PublicUpdate { channel } if channel != Channel::Internal => r.public_updates.push((at, channel)),
                Event::LegalApproved => {
                    if let Some(open) = r.legal_reviews.iter_mut().find(|(_, ok)| ok.is_none()) {
                        open.1 = Some(at);
                    }
                }
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}
