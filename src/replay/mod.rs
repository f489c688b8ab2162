//! `herald replay`: evaluates the configured groups over a past time range, from Prometheus's
//! history, as ONE continuous state machine through the same [`Engine::evaluate_group`] the
//! daemon uses, so `for`, `keep_firing_for`, incidents and `resolve_after` behave exactly as
//! they would have live.
//!
//! This module owns the replay timeline: every group is evaluated at `from + k × interval`
//! (its own interval, or `--step`), groups interleaved in time order, events from an events
//! file applied at their times (before the evaluations of the same instant, as `herald test`
//! does). History comes from range queries, cut into chunks of at most `max_points` steps
//! (Prometheus refuses more than 11,000 points per series); the engine state, the `every:`
//! signal holds and the ticket caches are carried across chunks, so a chunk boundary is
//! invisible to the rules. A point a range query returns is exactly what the instant query
//! the daemon would have sent at that time returns, so each evaluation sees the daemon's input.
//!
//! - Ticket sources of the `prometheus` kind are replayed from their query (and its 7 previous
//!   days for the baseline) with the same poll cache as live; other kinds have no history and
//!   their rules are unknown (a note says so).
//! - A range query that fails is retried, then reported with its time range in
//!   [`Outcome::failures`]; its evaluations see the signal as unavailable (unknown), as the
//!   daemon would have. It is never silently skipped.
//!
//! It must not send anything, open the state database, or re-implement a rule semantic: the
//! notifications are computed by [`notifications::Emulator`] and never leave the process.

pub mod diff;
pub mod events;
mod fetch;
#[cfg(test)]
mod tests;
pub mod notifications;
pub mod report;

use crate::engine::SubjectMap;
use std::collections::HashMap;
use std::time::Duration;

pub use events::{load_events, EventTarget, TimedEvent};
pub use notifications::Planned;
pub use report::{summarize, IncidentRecord, IncidentSummary};

use crate::config::daemon::TicketKind;
use crate::config::{Config, PromDuration, SignalSource};
use crate::engine::{ChangeKind, Engine, Event, GroupInput, Incident, Phase, SlotValues, State, StepOutput, Subject, Transition, Ts};
use crate::source::tickets::BASELINE_DAYS;
use crate::source::{median, MetricsSource, SourceError};
use fetch::{GroupChunk, TicketView};

/// Default points per series per range request: under Prometheus's limit of 11,000.
pub const DEFAULT_MAX_POINTS: i64 = 10_000;

/// How to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// First evaluation time (unix ms, whole seconds).
    pub from: Ts,
    /// No evaluation after this time.
    pub to: Ts,
    /// Evaluate every group at this step instead of its interval.
    pub step: Option<Duration>,
    /// Points per series per range request (at most 11,000).
    pub max_points: i64,
    /// Attempts per range request before the chunk is reported as failed.
    pub attempts: u32,
    /// Pause before a retry (doubled after each failure).
    pub retry_delay: Duration,
    /// People's events, sorted by time.
    pub events: Vec<TimedEvent>,
    /// Stop at the first range query that keeps failing (the daemon's catch-up: it must not
    /// hold up the start for long when Prometheus is down).
    pub stop_on_failure: bool,
}

impl Options {
    /// Defaults for a range: each group's interval, 10,000 points per request, 3 attempts.
    pub fn new(from: Ts, to: Ts) -> Options {
        Options {
            from,
            to,
            step: None,
            max_points: DEFAULT_MAX_POINTS,
            attempts: 3,
            retry_delay: Duration::from_millis(500),
            events: Vec::new(),
            stop_on_failure: false,
        }
    }
}

/// A range query that kept failing.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkFailure {
    pub group: String,
    /// The signal (or `ticket source NAME`).
    pub signal: String,
    /// The evaluations of this time range saw the signal as unavailable.
    pub from: Ts,
    pub to: Ts,
    pub attempts: u32,
    pub error: String,
}

/// An event of the events file, as applied.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedEvent {
    pub at: Ts,
    pub location: String,
    pub kind: &'static str,
    pub subject: Option<Subject>,
    pub incident: Option<String>,
    /// Why it could not be applied (e.g. no incident at that time).
    pub error: Option<String>,
}

/// An incident opening or resolving, for the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentEvent {
    pub at: Ts,
    pub kind: ChangeKind,
    pub id: String,
    pub subject: Subject,
}

/// What a replay found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub from: Ts,
    pub to: Ts,
    pub transitions: Vec<Transition>,
    /// Every notification, the suppressed ones included (with the reason).
    pub notifications: Vec<Planned>,
    /// In order of opening.
    pub incidents: Vec<IncidentRecord>,
    pub incident_events: Vec<IncidentEvent>,
    pub events: Vec<AppliedEvent>,
    /// Things the reader must know (e.g. ticket sources without history).
    pub notes: Vec<String>,
    pub failures: Vec<ChunkFailure>,
    /// Group evaluations.
    pub evaluations: u64,
    /// Rule evaluations (rules × subjects of each group evaluation).
    pub rule_evaluations: u64,
    /// Range requests sent (retries included).
    pub requests: u64,
    pub chunks: u64,
}

impl Outcome {
    /// The notifications that would have been sent (not suppressed).
    pub fn sent(&self) -> impl Iterator<Item = &Planned> {
        self.notifications.iter().filter(|n| n.suppressed.is_none())
    }
    /// Per-incident figures against the targets, as of the end of the replay.
    pub fn summaries(&self) -> Vec<IncidentSummary> {
        self.incidents.iter().map(|r| summarize(r, self.to)).collect()
    }
}

/// Parses a time: RFC 3339, `now`, or relative to now (`-2h`, `now-2h`, `now+5m`).
pub fn parse_time(s: &str, now: Ts) -> Result<Ts, String> {
    let s = s.trim();
    let rel = |sign: i64, d: &str| -> Result<Ts, String> {
        let d: PromDuration = d.parse().map_err(|e| format!("{e}"))?;
        Ok(now + sign * d.as_millis() as Ts)
    };
    if s == "now" {
        return Ok(now);
    }
    if let Some(d) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        return rel(-1, d);
    }
    if let Some(d) = s.strip_prefix("now+") {
        return rel(1, d);
    }
    chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).map_err(|_| {
        format!("invalid time {s:?}: use RFC 3339 (2026-11-20T10:00:00Z) or a time relative to now (now, -2h, now-30m)")
    })
}

type SubjectValues = SubjectMap<f64>;

/// `tickets` and `tickets_baseline` at `t` from a chunk's ticket history: the count at `t` and,
/// per subject, the median of its counts at the same time on the 7 previous days, as the
/// daemon's `prometheus` ticket source computes them from its 8 instant queries.
fn ticket_counts(view: &TicketView, t: Ts, labels: &[String]) -> Result<(SubjectValues, SubjectValues), SourceError> {
    let now = view.day(0, t, labels)?;
    let mut per_day: SubjectMap<Vec<f64>> = SubjectMap::default();
    for k in 1..=BASELINE_DAYS {
        for (s, v) in view.day(k, t, labels)? {
            per_day.entry(s).or_default().push(v);
        }
    }
    let baseline: SubjectMap<f64> = per_day.into_iter().filter_map(|(s, v)| median(v).map(|m| (s, m))).collect();
    Ok((now, baseline))
}

/// The map of a slot that is to hold per-subject values (emptied when it was something else).
fn series_slot(slot: &mut SlotValues) -> &mut SubjectMap<f64> {
    if !matches!(slot, SlotValues::Series(_)) {
        *slot = SlotValues::Series(std::sync::Arc::new(SubjectMap::default()));
    }
    match slot {
        SlotValues::Series(m) => std::sync::Arc::make_mut(m),
        _ => unreachable!("set above"),
    }
}

/// Ticket counts as of a poll: (polled at, tickets, baseline).
type TicketSnapshot = (Ts, SubjectMap<f64>, SubjectMap<f64>);

/// An `every:` signal's values as of its last query: (fetched at, values).
type Held = (Ts, std::sync::Arc<SubjectMap<f64>>);

/// Everything carried across chunks.
struct Run<'a> {
    config: &'a Config,
    engine: Engine,
    state: State,
    emulator: notifications::Emulator<'a>,
    out: Outcome,
    /// `every:` signals: (group, slot) → (fetched at, values).
    holds: HashMap<(usize, usize), Held>,
    /// Ticket counts: (source, subject labels) → (fetched at, tickets, baseline).
    ticket_cache: Vec<((String, Vec<String>), TicketSnapshot)>,
    /// Each group's input, reused from step to step.
    inputs: Vec<GroupInput>,
    /// Per group and slot: the chunk step its input values were read from, if they were.
    filled: Vec<Vec<Option<fetch::StepId>>>,
    /// When each instance last became active: (rule, subject) → time.
    active_since: HashMap<(String, Subject), Ts>,
    /// Incident id → index in `out.incidents`.
    incident_index: HashMap<String, usize>,
}

/// Replays `config`'s groups over `[opts.from, opts.to]` against `source`.
pub async fn replay<S: MetricsSource>(config: &Config, source: &S, opts: &Options) -> Outcome {
    let start = vec![opts.from; config.rules.groups.len()];
    drive(config, source, opts, State::default(), start, false).await.0
}

/// What [`catch_up`] hands back to the daemon.
pub struct CatchUp {
    /// The state after the missed evaluations.
    pub state: State,
    /// Every evaluation's output, in time order: (group index, time, output).
    pub steps: Vec<(usize, Ts, StepOutput)>,
    /// Range queries that kept failing (then the daemon treats the downtime as unknown).
    pub failures: Vec<ChunkFailure>,
}

/// The daemon's catch-up after downtime: evaluates each listed group from its first missed
/// evaluation time up to `to` (inclusive) on `state`, exactly as the live loop would have,
/// and returns the new state and every step's output. Nothing is planned or sent here.
pub async fn catch_up<S: MetricsSource>(config: &Config, source: &S, state: State, first: &[(usize, Ts)], to: Ts) -> CatchUp {
    let mut start = vec![Ts::MAX; config.rules.groups.len()];
    for &(gi, t) in first {
        // Whole seconds: range queries are answered at whole-second steps.
        start[gi] = t.div_euclid(1000) * 1000 + if t.rem_euclid(1000) == 0 { 0 } else { 1000 };
    }
    let from = start.iter().copied().min().unwrap_or(to);
    let mut opts = Options::new(from, to);
    opts.attempts = 1;
    opts.stop_on_failure = true;
    let (out, state, steps) = drive(config, source, &opts, state, start, true).await;
    CatchUp { state, steps, failures: out.failures }
}

/// The replay loop: every group from `next[gi]` (`Ts::MAX`: not at all) to `opts.to`, on `state`.
/// Chunk N+1 is fetched while the engine walks chunk N; the chunks are walked strictly in
/// order, so the state is carried exactly as in one sequential pass.
async fn drive<S: MetricsSource>(
    config: &Config,
    source: &S,
    opts: &Options,
    state: State,
    mut next: Vec<Ts>,
    keep_steps: bool,
) -> (Outcome, State, Vec<(usize, Ts, StepOutput)>) {
    let groups = &config.rules.groups;
    let ivs: Vec<i64> = groups.iter().map(|g| (opts.step.unwrap_or(g.interval_or(config.global.evaluation_interval)).as_millis() as i64).max(1)).collect();
    let mut steps_out = Vec::new();
    let mut run = Run {
        config,
        engine: Engine::new(),
        state,
        emulator: notifications::Emulator::new(config),
        out: Outcome { from: opts.from, to: opts.to, ..Outcome::default() },
        holds: HashMap::new(),
        ticket_cache: Vec::new(),
        inputs: groups.iter().map(GroupInput::new).collect(),
        filled: groups.iter().map(|g| vec![None; g.slots.len()]).collect(),
        active_since: HashMap::new(),
        incident_index: HashMap::new(),
    };
    run.note_ticket_sources();
    let mut events = opts.events.iter().peekable();
    let mut fetcher = fetch::Fetcher::new(config, source, opts, ivs.clone(), next.clone());
    let mut current = fetcher.next_chunk().await;
    while let Some(mut chunk) = current.take() {
        run.out.chunks += 1;
        run.out.requests += chunk.requests;
        let failed = !chunk.failures.is_empty();
        run.out.failures.append(&mut chunk.failures);
        if opts.stop_on_failure && failed {
            return (run.out, run.state, steps_out);
        }
        let walk = run.walk(&chunk, &ivs, &mut next, &mut events, keep_steps.then_some(&mut steps_out));
        let (following, ()) = tokio::join!(fetcher.next_chunk(), walk);
        current = following;
    }
    for e in events {
        if e.at <= opts.to {
            run.apply_event(e);
        } else {
            run.out.notes.push(format!("{}: event {} at {} is after the end of the replay; not applied", e.location, e.event.kind(), e.at));
        }
    }
    (run.out, run.state, steps_out)
}

/// How long the walk of a chunk runs before it lets the next chunk's queries make progress.
const WALK_SLICE: Duration = Duration::from_millis(2);

impl Run<'_> {
    fn note_ticket_sources(&mut self) {
        for g in &self.config.rules.groups {
            for s in g.signals.iter().filter(|s| s.source == SignalSource::Alertmanager) {
                let note = format!("signal {:?} comes from Alertmanager and has no history to replay: rules of group {:?} that read it are unknown throughout", s.name, g.name);
                if !self.out.notes.contains(&note) {
                    self.out.notes.push(note);
                }
            }
            for s in &g.signals {
                let SignalSource::Tickets { source, .. } = &s.source else { continue };
                let note = match self.config.ticket_sources.iter().find(|t| &t.name == source) {
                    None => format!("ticket source {source:?} is not configured: rules of group {:?} that read `{}` are unknown", g.name, s.name),
                    Some(t) => match &t.kind {
                        TicketKind::Prometheus { .. } => continue,
                        TicketKind::Zendesk { .. } => format!("ticket source {source:?} (zendesk) has no history to replay: rules of group {:?} that read `{}` are unknown throughout", g.name, s.name),
                        TicketKind::HttpJson { .. } => format!("ticket source {source:?} (http_json) has no history to replay: rules of group {:?} that read `{}` are unknown throughout", g.name, s.name),
                    },
                };
                if !self.out.notes.contains(&note) {
                    self.out.notes.push(note);
                }
            }
        }
    }

    /// Walks a chunk in time order: events first, then the groups due at that instant. It
    /// yields every [`WALK_SLICE`] so the next chunk's queries, joined with it, progress.
    async fn walk(
        &mut self,
        chunk: &fetch::Chunk,
        ivs: &[i64],
        next: &mut [Ts],
        events: &mut std::iter::Peekable<std::slice::Iter<'_, TimedEvent>>,
        mut steps_out: Option<&mut Vec<(usize, Ts, StepOutput)>>,
    ) {
        let mut slice = std::time::Instant::now();
        while let Some((t, gi)) = (0..next.len()).filter(|&gi| next[gi] <= chunk.end).map(|gi| (next[gi], gi)).min() {
            while let Some(e) = events.next_if(|e| e.at <= t) {
                self.apply_event(e);
            }
            let g = chunk.groups[gi].as_ref().expect("fetched for every group due in the chunk");
            let idx = ((t - g.first) / ivs[gi]) as usize;
            let out = self.evaluate(gi, g, idx, t);
            if let Some(steps) = steps_out.as_deref_mut() {
                steps.push((gi, t, out));
            }
            next[gi] += ivs[gi];
            if slice.elapsed() >= WALK_SLICE {
                tokio::task::yield_now().await;
                slice = std::time::Instant::now();
            }
        }
    }

    fn evaluate(&mut self, gi: usize, chunk: &GroupChunk, idx: usize, t: Ts) -> StepOutput {
        let config = self.config;
        let g = &config.rules.groups[gi];
        // The group's input of the step before, every slot overwritten below (its maps reused).
        let mut input = std::mem::replace(&mut self.inputs[gi], GroupInput { slots: Vec::new() });
        for s in &g.signals {
            match &s.source {
                // Pushed values have no history: unknown throughout (noted once).
                SignalSource::Value(_) | SignalSource::Alertmanager => {}
                SignalSource::Query(_) => {
                    if let (Some(every), Some((at, values))) = (s.every, self.holds.get(&(gi, s.slot))) {
                        if t - at < every.as_millis() as Ts {
                            input.slots[s.slot] = SlotValues::Series(values.clone());
                            self.filled[gi][s.slot] = None;
                            continue;
                        }
                    }
                    let filled = &mut self.filled[gi][s.slot];
                    match &chunk.slots[&s.slot] {
                        Err(e) => {
                            input.slots[s.slot] = SlotValues::Unavailable(e.clone());
                            *filled = None;
                        }
                        Ok(d) => {
                            // The step before's values, kept when no series changed.
                            let kept = idx > 0 && *filled == Some(d.step_id(idx - 1)) && d.same_values(idx - 1, idx);
                            let result = if kept { Ok(()) } else { d.fill(idx, &g.subject_labels, series_slot(&mut input.slots[s.slot])) };
                            match result {
                                Ok(()) => {
                                    *filled = Some(d.step_id(idx));
                                    if s.every.is_some() {
                                        let SlotValues::Series(m) = &input.slots[s.slot] else { unreachable!("filled above") };
                                        self.holds.insert((gi, s.slot), (t, m.clone()));
                                    }
                                }
                                Err(e) => {
                                    input.slots[s.slot] = SlotValues::Unavailable(e.to_string());
                                    *filled = None;
                                }
                            }
                        }
                    }
                }
                SignalSource::Tickets { source, baseline_slot } => {
                    self.tickets(source, &g.subject_labels, chunk, t, &mut input.slots, s.slot, *baseline_slot);
                }
            }
        }
        let out = self.engine.evaluate_group(g, &input, &mut self.state, t);
        self.inputs[gi] = input;
        self.out.evaluations += 1;
        self.out.rule_evaluations += (out.subjects * g.rules.len()) as u64;
        for tr in &out.transitions {
            if tr.from == Phase::Inactive {
                self.active_since.insert((tr.rule.clone(), tr.subject.clone()), tr.at);
            }
        }
        for c in &out.incidents {
            self.record_incident(c.kind, &c.incident, t);
        }
        let planned = self.emulator.plan(&out.decisions);
        self.out.notifications.extend(planned);
        let repeats = self.emulator.repeats(&self.state, t);
        self.out.notifications.extend(repeats);
        self.out.transitions.extend(out.transitions.iter().cloned());
        out
    }

    /// Sets `tickets` and `tickets_baseline` (slots `count` and `baseline`) at `t`, with the
    /// live poll cache.
    #[allow(clippy::too_many_arguments)]
    fn tickets(&mut self, source: &str, labels: &[String], chunk: &GroupChunk, t: Ts, slots: &mut [SlotValues], count: usize, baseline: usize) {
        let mut unavailable = |m: String| {
            slots[count] = SlotValues::Unavailable(m.clone());
            slots[baseline] = SlotValues::Unavailable(m);
        };
        let Some(cfg) = self.config.ticket_sources.iter().find(|s| s.name == source) else {
            return unavailable(format!("ticket source {source:?} is not configured"));
        };
        if !matches!(cfg.kind, TicketKind::Prometheus { .. }) {
            return unavailable(format!("ticket source {source:?} has no history to replay"));
        }
        let cached = self.ticket_cache.iter().position(|((s, l), _)| s == source && l == labels);
        if let Some((at, c, b)) = cached.map(|i| &self.ticket_cache[i].1) {
            if *at <= t && t - at < cfg.poll_interval.as_millis() as Ts {
                series_slot(&mut slots[count]).clone_from(c);
                series_slot(&mut slots[baseline]).clone_from(b);
                return;
            }
        }
        let view = match chunk.tickets.get(source) {
            Some(Ok(v)) => v,
            Some(Err(e)) => return unavailable(e.clone()),
            None => return unavailable(format!("ticket source {source:?} was not queried")),
        };
        match ticket_counts(view, t, labels) {
            Ok((c, b)) => {
                let snapshot = (t, c.clone(), b.clone());
                match cached {
                    Some(i) => self.ticket_cache[i].1 = snapshot,
                    None => self.ticket_cache.push(((source.to_string(), labels.to_vec()), snapshot)),
                }
                slots[count] = SlotValues::Series(std::sync::Arc::new(c));
                slots[baseline] = SlotValues::Series(std::sync::Arc::new(b));
            }
            Err(e) => unavailable(e.to_string()),
        }
    }

    fn apply_event(&mut self, e: &TimedEvent) {
        let result = match &e.target {
            EventTarget::Subject(s) => self.state.apply_event(s, &e.event, e.at),
            EventTarget::Incident(id) => self.state.apply_event_by_id(id, &e.event, e.at),
        };
        let mut applied = AppliedEvent { at: e.at, location: e.location.clone(), kind: e.event.kind(), subject: None, incident: None, error: None };
        match result {
            Ok((change, effect)) => {
                let inc = &change.incident;
                applied.subject = Some(inc.subject.clone());
                applied.incident = Some(inc.id.clone());
                self.record_incident(change.kind, inc, e.at);
                if let Some(i) = self.incident_index.get(&inc.id).copied() {
                    let r = &mut self.out.incidents[i];
                    if let Event::PublicUpdate { channel } = e.event {
                        if channel != crate::engine::Channel::Internal {
                            r.public_updates.push((e.at, channel));
                        }
                    }
                    if effect.legal_review.is_some() {
                        if let Some(open) = r.legal_reviews.iter_mut().find(|(_, ok)| ok.is_none()) {
                            open.1 = Some(e.at);
                        }
                    }
                }
            }
            Err(err) => {
                if let EventTarget::Subject(s) = &e.target {
                    applied.subject = Some(s.clone());
                }
                if let EventTarget::Incident(id) = &e.target {
                    applied.incident = Some(id.clone());
                }
                applied.error = Some(err.to_string());
            }
        }
        self.out.events.push(applied);
    }

    /// Keeps the incident's record in step with the engine's incident.
    fn record_incident(&mut self, kind: ChangeKind, inc: &Incident, at: Ts) {
        let i = match self.incident_index.get(&inc.id) {
            Some(&i) => i,
            None => {
                let condition_since = inc.activating_rule.as_ref().and_then(|r| self.active_since.get(&(r.clone(), inc.subject.clone())).copied());
                self.out.incidents.push(IncidentRecord {
                    id: inc.id.clone(),
                    subject: Some(inc.subject.clone()),
                    severity: Some(inc.severity),
                    opened_at: inc.opened_at,
                    activating_rule: inc.activating_rule.clone(),
                    condition_since,
                    ..IncidentRecord::default()
                });
                self.incident_index.insert(inc.id.clone(), self.out.incidents.len() - 1);
                self.out.incidents.len() - 1
            }
        };
        let r = &mut self.out.incidents[i];
        r.resolved_at = inc.resolved_at;
        r.acknowledged_at = inc.acknowledged_at;
        r.internal_only = inc.internal_only;
        if let (true, Some(req)) = (inc.legal_pending, inc.legal_requested_at) {
            if !r.legal_reviews.iter().any(|(q, _)| *q == req) {
                r.legal_reviews.push((req, None));
            }
        }
        if matches!(kind, ChangeKind::Opened | ChangeKind::Resolved) {
            self.out.incident_events.push(IncidentEvent { at, kind, id: inc.id.clone(), subject: inc.subject.clone() });
        }
    }
}
