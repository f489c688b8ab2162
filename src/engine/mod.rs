//! The engine: a pure, deterministic function of (rules, signal values, state, time) →
//! rule-instance transitions, decisions and incident changes.
//!
//! The daemon, `herald replay` and `herald test` all drive [`Engine::evaluate_group`]; none of
//! them re-implements a rule semantic. This module does no I/O, reads no clock and holds no
//! locks: time comes in as an argument, and the caller persists what comes out.
//!
//! One evaluation of a group:
//! 1. every rule's condition is decided, for every subject in any order, against the subject's
//!    signals and its latest incident as it was *before* this step; subjects with nothing to do
//!    (no rule true, no instance, no open incident) stop here, after their unknowns are counted.
//!
//! Then, for each remaining subject in sorted order (so incident ids and output are stable):
//! 2. each instance moves per [`instance::step`] (Prometheus `for`/`keep_firing_for`, with
//!    unknown holding state);
//! 3. the actions of rules that started firing take effect (open an incident, engage legal,
//!    mark internal-only);
//! 4. an incident opened by a rule of this group follows that rule ([`Incident::follow`]):
//!    `monitoring` when it stops firing, `investigating` when it fires again, resolved once it
//!    has been known-inactive (decided, every signal present) for its `resolve_after`;
//! 5. decisions (firing / resolved) are emitted with rendered annotations, and Herald's own
//!    timeline entries (incident opened, rule firing/resolved, status changed) with them.
//!
//! Per evaluation it also counts, per rule, the subjects whose condition was unknown and why
//! ([`UnknownReason`]). [`explain`] explains one rule for one subject from the same inputs.

pub mod event;
pub mod explain;
pub mod incident;
pub mod instance;
pub mod subject;

use std::collections::BTreeMap;

use minijinja::Value as TValue;
use serde::Serialize;

pub use event::{EventFields, EventNote, FieldError, HeraldEvent, TimelineEntry};
pub use incident::{Channel, Effect, Event, EventError, Evidence, Incident, Status};
pub use instance::{Instance, Phase, Ts};
pub use subject::{BuildSubjectHasher, Labels, Subject, SubjectMap, SubjectSet};

use crate::config::{template, Action, Group, Rule, Severity, SignalSource};
use crate::expr::{Ctx, IncidentField, IncidentView, Truth, Value};

/// Everything the engine remembers between evaluations. The daemon persists it; tests and
/// replay keep it in memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Pending and firing instances, by rule name then subject.
    pub instances: BTreeMap<String, SubjectMap<Instance>>,
    /// The latest incident of each subject (open or resolved).
    pub incidents: SubjectMap<Incident>,
    /// Earlier incidents of a subject that still have obligations after a newer one opened
    /// (a postmortem owed, a legal review pending), oldest first. Events reach them by id and
    /// `incident.postmortems_owed` counts them; they leave memory once nothing is owed.
    pub earlier: SubjectMap<Vec<Incident>>,
    /// The number of the next incident id.
    pub next_incident_seq: u64,
}

/// The values of one signal slot for one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotValues {
    /// Per-subject values (one query, keyed by the subject labels). Shared, so a value kept
    /// between evaluations (an `every:` signal, ticket counts between polls) is not copied.
    Series(std::sync::Arc<SubjectMap<f64>>),
    /// The same value for every subject.
    Constant(f64),
    /// The source failed or is not configured: every subject is without a value.
    Unavailable(String),
    /// Values for some subjects and `otherwise` for every other one: a pushed signal whose
    /// source reports only what is firing (Alertmanager), so a subject it did not mention is
    /// known to be quiet.
    SeriesOr { values: SubjectMap<f64>, otherwise: f64 },
}

impl SlotValues {
    /// The raw value of a subject (NaN included); `None` when it has none.
    pub fn get(&self, subject: &Subject) -> Option<f64> {
        self.lookup(subject).0
    }

    /// The raw value of a subject, and whether this slot names it explicitly (is one of
    /// [`SlotValues::keyed`]'s keys).
    pub fn lookup(&self, subject: &Subject) -> (Option<f64>, bool) {
        match self {
            SlotValues::Series(m) => m.get(subject).map_or((None, false), |v| (Some(*v), true)),
            SlotValues::Constant(c) => (Some(*c), false),
            SlotValues::Unavailable(_) => (None, false),
            SlotValues::SeriesOr { values, otherwise } => values.get(subject).map_or((Some(*otherwise), false), |v| (Some(*v), true)),
        }
    }

    /// The per-subject values this slot names explicitly (they make subjects of a group).
    pub fn keyed(&self) -> Option<&SubjectMap<f64>> {
        match self {
            SlotValues::Series(m) => Some(m),
            SlotValues::SeriesOr { values: m, .. } => Some(m),
            SlotValues::Constant(_) | SlotValues::Unavailable(_) => None,
        }
    }
}

/// One evaluation's input for one group: values for every slot of [`Group::slots`].
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInput {
    pub slots: Vec<SlotValues>,
}

impl GroupInput {
    /// Constants filled in, every other slot unavailable until the caller sets it.
    pub fn new(group: &Group) -> GroupInput {
        let mut slots = vec![SlotValues::Unavailable("not queried".into()); group.slots.len()];
        for s in &group.signals {
            match s.source {
                SignalSource::Value(v) => slots[s.slot] = SlotValues::Constant(v),
                SignalSource::Alertmanager => slots[s.slot] = SlotValues::Unavailable("no Alertmanager values in this run".into()),
                SignalSource::Query(_) | SignalSource::Tickets { .. } => {}
            }
        }
        GroupInput { slots }
    }
}

/// A rule instance changing phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub at: Ts,
    pub rule: String,
    pub subject: Subject,
    pub from: Phase,
    pub to: Phase,
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.labels().len()))?;
        for (k, v) in self.labels() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}
impl<'de> serde::Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, String>::deserialize(d)?;
        Ok(Subject::new(m))
    }
}

/// Whether a decision announces a rule starting or stopping to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionStatus {
    Firing,
    Resolved,
}

/// A reference to the incident a decision is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IncidentRef {
    pub id: String,
    pub status: Status,
    pub opened_at: Ts,
}

/// Something worth telling people: a rule started or stopped firing for a subject.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub at: Ts,
    pub rule: String,
    pub action: Action,
    pub severity: Severity,
    pub subject: Subject,
    pub status: DecisionStatus,
    /// When the instance started firing.
    pub starts_at: Ts,
    /// Signal values at decision time (slots with a value only).
    pub values: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub incident: Option<IncidentRef>,
    /// Receiver names from the rule.
    pub notify: Vec<String>,
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How an incident changed in a step or through an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Opened,
    Updated,
    Resolved,
}

/// An incident as it is after a change.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentChange {
    pub kind: ChangeKind,
    pub incident: Incident,
}

/// What one evaluation of one group produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    pub transitions: Vec<Transition>,
    pub decisions: Vec<Decision>,
    pub incidents: Vec<IncidentChange>,
    /// Subjects evaluated.
    pub subjects: usize,
    /// Rule evaluations that were unknown.
    pub unknown: u64,
    /// Per rule of the group (same order): subjects whose condition was unknown, by reason
    /// (index: [`UnknownReason`] `as usize`).
    pub unknown_by_rule: Vec<[u64; 4]>,
    /// Herald's own entries for incidents' timelines: incidents opened, rules firing and
    /// resolving for an incident's subject, status changes.
    pub timeline: Vec<TimelineEntry>,
    /// Rule instances whose stored form changed in this step, as (index into the group's
    /// rules, subject): created, dropped, or changed in anything but `last_eval` (which every
    /// evaluation moves; see [`Instance::same_stored`]). The daemon writes only these rows.
    pub changed_instances: Vec<(usize, Subject)>,
}

/// Why a condition could not be decided for a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownReason {
    /// A signal it reads returned no series for the subject.
    Absent,
    /// A signal it reads could not be queried (or its source is not configured).
    QueryFailed,
    /// A signal it reads is NaN.
    Nan,
    /// Every signal had a value: the expression itself was undecidable (a division by zero,
    /// or comparing values of different types).
    DivisionByZero,
}

impl UnknownReason {
    pub const ALL: [UnknownReason; 4] = [UnknownReason::Absent, UnknownReason::QueryFailed, UnknownReason::Nan, UnknownReason::DivisionByZero];
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownReason::Absent => "absent",
            UnknownReason::QueryFailed => "query_failed",
            UnknownReason::Nan => "nan",
            UnknownReason::DivisionByZero => "division_by_zero",
        }
    }

    /// Why a rule reading `slots` is unknown for `subject`: the first missing signal decides,
    /// a failed query before a NaN before an absent series.
    pub fn of(slots: &[usize], input: &GroupInput, subject: &Subject) -> UnknownReason {
        let mut reason = UnknownReason::DivisionByZero;
        for &slot in slots {
            let r = match &input.slots[slot] {
                SlotValues::Unavailable(_) => return UnknownReason::QueryFailed,
                other => match other.get(subject) {
                    None => UnknownReason::Absent,
                    Some(v) if v.is_nan() => UnknownReason::Nan,
                    Some(_) => continue,
                },
            };
            if reason == UnknownReason::DivisionByZero || r == UnknownReason::Nan {
                reason = r;
            }
        }
        reason
    }
}

/// Why a manual event could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("subject {0} has no incident")]
    NoIncident(Subject),
    #[error("subject {subject} already has open incident {id}")]
    AlreadyOpen { subject: Subject, id: String },
    #[error("no incident with id {0:?}")]
    UnknownId(String),
    #[error(transparent)]
    Event(#[from] EventError),
}

/// The rule engine. Holds only the template environment; all state is passed in.
pub struct Engine {
    templates: minijinja::Environment<'static>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine { templates: template::environment() }
    }
}

impl State {
    /// Instances currently firing, as (rule, subject), sorted.
    pub fn firing(&self) -> Vec<(&str, &Subject)> {
        let mut out: Vec<(&str, &Subject)> = self
            .instances
            .iter()
            .flat_map(|(r, m)| m.iter().filter(|(_, i)| i.phase == Phase::Firing).map(move |(s, _)| (r.as_str(), s)))
            .collect();
        out.sort();
        out
    }

    /// Treats the time since each instance's last evaluation as unknown (for the given rules):
    /// used after a restart, so downtime neither advances `for` nor counts down
    /// `keep_firing_for`.
    pub fn hold_timers(&mut self, rules: &[&str], now: Ts) {
        for r in rules {
            if let Some(m) = self.instances.get_mut(*r) {
                for i in m.values_mut() {
                    let prev = std::mem::replace(i, Instance { phase: Phase::Pending, active_at: 0, fired_at: None, keep_firing_since: None, last_eval: 0 });
                    *i = instance::step(Some(prev), Truth::Unknown, now, 0, 0).0.expect("unknown keeps an instance");
                }
            }
        }
        // The resolution countdown pauses the same way.
        for inc in self.incidents.values_mut() {
            if inc.activating_rule.as_deref().is_some_and(|r| rules.contains(&r)) {
                inc.follow(Evidence::Unknown, now, 0);
            }
        }
    }

    /// What a condition sees as `incident` for a subject: its latest incident, plus
    /// `postmortems_owed` counted over all its incidents.
    pub fn view(&self, subject: &Subject, now: Ts) -> IncidentView<'_> {
        let mut v = self.incidents.get(subject).map_or(IncidentView::NONE, |i| i.view(now));
        if let Some(older) = self.earlier.get(subject) {
            v.postmortems_owed += older.iter().filter(|i| i.owes_postmortem() && !i.legal_hold).count() as f64;
        }
        v
    }

    /// Keeps an incident read back from storage (not the subject's latest) in memory if it
    /// still has obligations.
    pub fn adopt(&mut self, inc: Incident) {
        let subject = inc.subject.clone();
        let list = self.earlier.entry(subject.clone()).or_default();
        list.retain(|i| i.id != inc.id);
        if inc.has_obligations() {
            list.push(inc);
            list.sort_by_key(|i| incident_seq(&i.id));
        }
        if list.is_empty() {
            self.earlier.remove(&subject);
        }
    }

    /// The subject's open incident, if any.
    pub fn open_incident(&self, subject: &Subject) -> Option<&Incident> {
        self.incidents.get(subject).filter(|i| i.is_open())
    }

    fn new_incident_id(&mut self) -> String {
        self.next_incident_seq += 1;
        format!("INC-{}", self.next_incident_seq)
    }

    /// Opens an incident for a subject (at most one open per subject).
    fn open(&mut self, subject: &Subject, severity: Severity, at: Ts, rule: Option<String>) -> Option<Incident> {
        if self.open_incident(subject).is_some() {
            return None;
        }
        let id = self.new_incident_id();
        let inc = Incident::open(id, subject.clone(), severity, at, rule);
        if let Some(prev) = self.incidents.insert(subject.clone(), inc.clone()) {
            if prev.has_obligations() {
                self.earlier.entry(subject.clone()).or_default().push(prev);
            }
        }
        Some(inc)
    }

    /// Applies a person's event to a subject's latest incident (`declare` opens one).
    pub fn apply_event(&mut self, subject: &Subject, event: &Event, at: Ts) -> Result<(IncidentChange, Effect), ApplyError> {
        if let Event::Declare { severity, security } = event {
            if let Some(open) = self.open_incident(subject) {
                return Err(ApplyError::AlreadyOpen { subject: subject.clone(), id: open.id.clone() });
            }
            let mut inc = self.open(subject, *severity, at, None).expect("checked: none open");
            if *security {
                inc.security = true;
                self.incidents.insert(subject.clone(), inc.clone());
            }
            return Ok((IncidentChange { kind: ChangeKind::Opened, incident: inc }, Effect::default()));
        }
        let inc = self.incidents.get_mut(subject).ok_or_else(|| ApplyError::NoIncident(subject.clone()))?;
        let fx = inc.apply(event, at)?;
        let kind = if fx.resolved { ChangeKind::Resolved } else { ChangeKind::Updated };
        Ok((IncidentChange { kind, incident: inc.clone() }, fx))
    }

    /// Applies an event to an incident by id: the subject's latest, or an earlier one that
    /// still has obligations. `UnknownId` means it is not in memory (the caller may read it
    /// from storage, apply the event with [`Incident::apply`] and [`State::adopt`] it).
    pub fn apply_event_by_id(&mut self, id: &str, event: &Event, at: Ts) -> Result<(IncidentChange, Effect), ApplyError> {
        if let Some(subject) = self.incidents.values().find(|i| i.id == id).map(|i| i.subject.clone()) {
            return self.apply_event(&subject, event, at);
        }
        let subject = self.earlier.iter().find(|(_, l)| l.iter().any(|i| i.id == id)).map(|(s, _)| s.clone()).ok_or_else(|| ApplyError::UnknownId(id.into()))?;
        let list = self.earlier.get_mut(&subject).expect("found above");
        let pos = list.iter().position(|i| i.id == id).expect("found above");
        if matches!(event, Event::Declare { .. }) {
            return Err(EventError::DeclareOnExisting(id.into()).into());
        }
        let fx = list[pos].apply(event, at)?;
        let inc = list[pos].clone();
        self.adopt(inc.clone());
        Ok((IncidentChange { kind: ChangeKind::Updated, incident: inc }, fx))
    }
}

/// The sequence number of an id `INC-<n>` (0 if it has another shape).
pub fn incident_seq(id: &str) -> u64 {
    id.trim_start_matches("INC-").parse().unwrap_or(0)
}

impl Engine {
    /// A new engine.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Evaluates one group at `now`. Deterministic: the same inputs and state give the same
    /// output and the same new state.
    pub fn evaluate_group(&self, group: &Group, input: &GroupInput, state: &mut State, now: Ts) -> StepOutput {
        debug_assert_eq!(input.slots.len(), group.slots.len());
        let mut out = StepOutput::default();

        // Take each rule's instance map out of the state for the loop (no lookup per subject).
        let mut maps: Vec<SubjectMap<Instance>> =
            group.rules.iter().map(|r| state.instances.remove(&r.name).unwrap_or_default()).collect();

        let mut values: Vec<Option<f64>> = vec![None; group.slots.len()];
        let mut started: Vec<usize> = Vec::new();
        let mut changed: Vec<(usize, Phase, Phase, Ts)> = Vec::new();
        let rule_slots: Vec<Vec<usize>> = group.rules.iter().map(|r| r.when.signals()).collect();
        // Conditions false without an open incident are not evaluated for subjects without one
        // (most of them); subject labels are read only if a condition reads them.
        let needs_open: Vec<bool> = group.rules.iter().map(|r| r.when.requires_open_incident()).collect();
        let reads_labels = group.rules.iter().any(|r| r.when.reads_subject_labels());
        out.unknown_by_rule = vec![[0; 4]; group.rules.len()];
        let n_rules = group.rules.len();
        // Subjects with a live instance of any rule: one lookup per subject, not one per rule.
        let instanced: std::collections::HashSet<&Subject, BuildSubjectHasher> = maps.iter().flat_map(|m| m.keys()).collect();

        // Pass 1, in any order: decide every rule for every subject against the state as it was
        // before this step (a subject's conditions read only its own incidents), count the
        // unknowns, and keep the subjects with something to do: a rule true, an instance to
        // step, or an open incident to follow. Usually a small share of them.
        //
        // The subjects are those of every keyed signal, every live instance, and every incident
        // with these labels, each visited once. Signals usually name the same subjects, so the
        // largest one's are visited first, counting for every other slot how many of them it
        // names: a slot that named as many as it has keys names no other subject, and its keys
        // are never walked. No set of all the subjects is built.
        let mut keyed: Vec<(usize, &SubjectMap<f64>)> = input.slots.iter().enumerate().filter_map(|(i, s)| s.keyed().map(|m| (i, m))).collect();
        keyed.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
        let mut hits = vec![0usize; group.slots.len()];
        let mut active: Vec<(Subject, usize)> = Vec::new();
        let mut all_truths: Vec<Truth> = Vec::new();
        let mut truths: Vec<Truth> = vec![Truth::Unknown; n_rules];
        let mut visit = |subject: &Subject, hits: &mut [usize]| {
            for ((slot, v), h) in input.slots.iter().zip(values.iter_mut()).zip(hits.iter_mut()) {
                let (value, named) = slot.lookup(subject);
                *h += usize::from(named);
                *v = value.filter(|x| !x.is_nan());
            }
            // (No allocation unless a condition reads a label.)
            let label_values: Vec<&str> =
                if reads_labels { group.subject_labels.iter().map(|l| subject.get(l).unwrap_or("")).collect() } else { Vec::new() };
            let view = state.view(subject, now);
            let ctx = Ctx { signals: &values, subject: &label_values, incident: &view, now: now as f64 / 1000.0 };
            let mut busy = view.open || (!instanced.is_empty() && instanced.contains(subject));
            for (ri, rule) in group.rules.iter().enumerate() {
                let truth = if needs_open[ri] && !view.open { Truth::False } else { rule.when.truth(&ctx) };
                truths[ri] = truth;
                if truth == Truth::Unknown {
                    out.unknown += 1;
                    out.unknown_by_rule[ri][UnknownReason::of(&rule_slots[ri], input, subject) as usize] += 1;
                }
                busy |= truth == Truth::True;
            }
            if busy {
                active.push((subject.clone(), all_truths.len()));
                all_truths.extend_from_slice(&truths);
            }
        };
        let mut visited = 0;
        if let Some(&(_, primary)) = keyed.first() {
            for subject in primary.keys() {
                visit(subject, &mut hits);
            }
            visited = primary.len();
        }
        // Subjects the largest signal does not name: usually none.
        let in_keyed = |s: &Subject| keyed.iter().any(|(_, m)| m.contains_key(s));
        let mut extra: std::collections::HashSet<&Subject, BuildSubjectHasher> = Default::default();
        for &(slot, m) in keyed.iter().skip(1) {
            if hits[slot] < m.len() {
                extra.extend(m.keys().filter(|s| !keyed[0].1.contains_key(*s)));
            }
        }
        extra.extend(maps.iter().flat_map(|m| m.keys()).filter(|s| !in_keyed(s)));
        extra.extend(state.incidents.keys().filter(|s| s.has_label_names(&group.subject_labels) && !in_keyed(s)));
        let mut ignored = vec![0usize; group.slots.len()];
        for subject in &extra {
            visit(subject, &mut ignored);
        }
        out.subjects = visited + extra.len();
        // Pass 2, in subject order (so output and incident ids are stable): step the busy ones.
        drop(extra);
        drop(instanced);
        active.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        for (subject, at) in &active {
            let at = *at;
            let truths = &all_truths[at..at + n_rules];
            for (slot, v) in input.slots.iter().zip(values.iter_mut()) {
                *v = slot.get(subject).filter(|x| !x.is_nan());
            }
            started.clear();
            changed.clear();
            for (ri, rule) in group.rules.iter().enumerate() {
                let truth = truths[ri];
                let map = &mut maps[ri];
                if truth != Truth::True && map.is_empty() {
                    continue; // inactive stays inactive: the common case, no hashing
                }
                let prev = map.remove(subject);
                let starts = prev.as_ref().and_then(|i| i.fired_at).unwrap_or(now);
                let before = prev.clone();
                let (next, change) = instance::step(prev, truth, now, rule.for_.as_millis() as i64, rule.keep_firing_for.as_millis() as i64);
                let stored_change = match (&before, &next) {
                    (None, None) => false,
                    (Some(a), Some(b)) => !a.same_stored(b),
                    _ => true,
                };
                if stored_change {
                    out.changed_instances.push((ri, subject.clone()));
                }
                if let Some(i) = next {
                    map.insert(subject.clone(), i);
                }
                if let Some((from, to)) = change {
                    out.transitions.push(Transition { at: now, rule: rule.name.clone(), subject: subject.clone(), from, to });
                    if to == Phase::Firing {
                        started.push(ri);
                    }
                    changed.push((ri, from, to, starts));
                }
            }

            // Actions take effect after the step.
            for &ri in &started {
                let rule = &group.rules[ri];
                match rule.action {
                    Action::ActivateCommsLead => {
                        if let Some(inc) = state.open(subject, rule.severity, now, Some(rule.name.clone())) {
                            out.timeline.push(TimelineEntry { incident: inc.id.clone(), at: now, event: HeraldEvent::IncidentOpened { rule: rule.name.clone() } });
                            out.incidents.push(IncidentChange { kind: ChangeKind::Opened, incident: inc });
                        }
                    }
                    Action::EngageLegal => {
                        let opened = state.open(subject, rule.severity, now, Some(rule.name.clone()));
                        let inc = state.incidents.get_mut(subject).expect("open or just opened");
                        inc.engage_legal(now);
                        let kind = if opened.is_some() { ChangeKind::Opened } else { ChangeKind::Updated };
                        if opened.is_some() {
                            out.timeline.push(TimelineEntry { incident: inc.id.clone(), at: now, event: HeraldEvent::IncidentOpened { rule: rule.name.clone() } });
                        }
                        out.incidents.push(IncidentChange { kind, incident: inc.clone() });
                    }
                    Action::InternalOnly => {
                        if let Some(inc) = state.incidents.get_mut(subject).filter(|i| i.is_open()) {
                            if !inc.internal_only {
                                inc.internal_only = true;
                                out.incidents.push(IncidentChange { kind: ChangeKind::Updated, incident: inc.clone() });
                            }
                        }
                    }
                    Action::SuggestUpdate | Action::Escalate | Action::Notify => {}
                }
            }

            let mut status_event = None;
            // Lifecycle: the incident follows the evidence of its activating rule, if that rule
            // belongs to this group (monitoring, investigating, resolved after resolve_after).
            if let Some(inc) = state.incidents.get_mut(subject).filter(|i| i.is_open()) {
                if let Some(ri) = inc.activating_rule.as_ref().and_then(|r| group.rules.iter().position(|x| &x.name == r)) {
                    // Known inactive means decided with every signal the rule reads present:
                    // an incident never resolves while part of its evidence is missing.
                    let evidence = match (truths[ri], maps[ri].get(subject)) {
                        (Truth::Unknown, _) => Evidence::Unknown,
                        (_, Some(i)) => Evidence::Live { firing: i.phase == Phase::Firing },
                        (_, None) if rule_slots[ri].iter().any(|&slot| values[slot].is_none()) => Evidence::Unknown,
                        (_, None) => Evidence::Inactive,
                    };
                    let (changed, event) = inc.follow(evidence, now, group.rules[ri].resolve_after.as_millis() as i64);
                    // After the decisions' entries: the rule resolved, then the status moved.
                    status_event = event.map(|event| TimelineEntry { incident: inc.id.clone(), at: now, event });
                    if changed {
                        let kind = if inc.is_open() { ChangeKind::Updated } else { ChangeKind::Resolved };
                        out.incidents.push(IncidentChange { kind, incident: inc.clone() });
                    }
                }
            }

            // Decisions, with the incident as it is after the step.
            for &(ri, from, to, starts) in &changed {
                let status = match (from, to) {
                    (_, Phase::Firing) => DecisionStatus::Firing,
                    (Phase::Firing, Phase::Inactive) => DecisionStatus::Resolved,
                    _ => continue,
                };
                let rule = &group.rules[ri];
                let incident = state.incidents.get(subject);
                if let Some(inc) = incident {
                    let event = match status {
                        DecisionStatus::Firing => HeraldEvent::RuleFiring { rule: rule.name.clone() },
                        DecisionStatus::Resolved => HeraldEvent::RuleResolved { rule: rule.name.clone() },
                    };
                    out.timeline.push(TimelineEntry { incident: inc.id.clone(), at: now, event });
                }
                let d = self.decision(group, rule, subject, &values, state, status, now, starts);
                out.decisions.push(d);
            }
            out.timeline.extend(status_event);
        }
        for (rule, map) in group.rules.iter().zip(maps) {
            state.instances.insert(rule.name.clone(), map);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn decision(
        &self,
        group: &Group,
        rule: &Rule,
        subject: &Subject,
        values: &[Option<f64>],
        state: &State,
        status: DecisionStatus,
        now: Ts,
        starts_at: Ts,
    ) -> Decision {
        let incident = state.incidents.get(subject);
        let vals: BTreeMap<String, f64> =
            group.slots.iter().zip(values).filter_map(|(n, v)| v.map(|v| (n.clone(), v))).collect();
        let ctx = template_context(group, rule, subject, values, &state.view(subject, now), now);
        let annotations = rule
            .annotations
            .iter()
            .map(|(k, src)| {
                let text = template::render(&self.templates, src, &ctx).unwrap_or_else(|e| format!("{src} (template error: {e})"));
                (k.clone(), text)
            })
            .collect();
        Decision {
            at: now,
            rule: rule.name.clone(),
            action: rule.action,
            severity: rule.severity,
            subject: subject.clone(),
            status,
            starts_at,
            values: vals,
            labels: rule.labels.clone(),
            annotations,
            incident: incident.map(|i| IncidentRef { id: i.id.clone(), status: i.status, opened_at: i.opened_at }),
            notify: rule.notify.clone(),
        }
    }
}

/// The variables an annotation template sees: every signal (a number or none), `subject`,
/// `incident` (as conditions see it, see [`State::view`]), `now`, `rule`, `severity`, `action`.
pub fn template_context(group: &Group, rule: &Rule, subject: &Subject, values: &[Option<f64>], view: &IncidentView<'_>, now: Ts) -> TValue {
    let mut map: BTreeMap<String, TValue> =
        group.slots.iter().zip(values).map(|(n, v)| (n.clone(), v.map_or(TValue::from(()), TValue::from))).collect();
    let subj: BTreeMap<String, TValue> = subject.labels().map(|(k, v)| (k.to_string(), TValue::from(v))).collect();
    map.insert("subject".into(), TValue::from(subj));
    let inc: BTreeMap<&str, TValue> = IncidentField::ALL
        .iter()
        .map(|(n, f)| {
            let v = match view.get(*f) {
                Value::Bool(b) => TValue::from(b),
                Value::Num(x) => TValue::from(x),
                Value::Str(s) => TValue::from(s),
                Value::None | Value::Unknown => TValue::from(()),
            };
            (*n, v)
        })
        .collect();
    map.insert("incident".into(), TValue::from(inc));
    map.insert("now".into(), TValue::from(now / 1000));
    map.insert("rule".into(), TValue::from(rule.name.as_str()));
    map.insert("severity".into(), TValue::from(rule.severity.as_str()));
    map.insert("action".into(), TValue::from(rule.action.as_str()));
    TValue::from(map)
}

#[cfg(test)]
mod tests;
