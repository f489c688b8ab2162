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
pub mod notifications;
pub mod report;

use std::collections::HashMap;
use std::time::Duration;

pub use events::{load_events, EventTarget, TimedEvent};
pub use notifications::Planned;
pub use report::{summarize, IncidentRecord, IncidentSummary};

use crate::config::daemon::TicketKind;
use crate::config::{Config, PromDuration, SignalSource};
use crate::engine::{ChangeKind, Engine, Event, GroupInput, Incident, Phase, SlotValues, State, StepOutput, Subject, Transition, Ts};
use crate::source::tickets::{BASELINE_DAYS, DAY_MS};
use crate::source::{median, MetricsSource, RangeSeries, SourceError, MAX_POINTS_PER_SERIES};

/// Default points per series per range request: under Prometheus's limit of 11,000.
pub const DEFAULT_MAX_POINTS: i64 = 10_000;
/// Steps in the first chunk, before the number of series is known (a day at 1m).
const FIRST_CHUNK_STEPS: i64 = 1_440;
/// Points (series × steps, all signals of a group) one chunk may hold in memory.
const POINTS_PER_CHUNK: i64 = 4_000_000;

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

/// One signal's history over a chunk: per series, a value or nothing at every step.
struct Dense {
    series: Vec<DenseSeries>,
}

struct DenseSeries {
    subject: Subject,
    labels: std::collections::BTreeMap<String, String>,
    values: Vec<Option<f64>>,
}

impl Dense {
    fn new(result: Vec<RangeSeries>, subject_labels: &[String], first: Ts, step: i64, n: usize) -> Dense {
        let series = result
            .into_iter()
            .map(|rs| {
                let subject = Subject::new(subject_labels.iter().map(|l| (l.clone(), rs.labels.get(l).cloned().unwrap_or_default())));
                let mut values = vec![None; n];
                for (t, v) in rs.points {
                    let offset = t - first;
                    let i = (offset + step / 2).div_euclid(step);
                    if (0..n as i64).contains(&i) && (offset - i * step).abs() < 500 {
                        values[i as usize] = Some(v);
                    }
                }
                DenseSeries { subject, labels: rs.labels, values }
            })
            .collect();
        Dense { series }
    }

    /// The values at step `i`, keyed by subject; two series for one subject is the same error
    /// the daemon's instant query gets.
    fn at(&self, i: usize, subject_labels: &[String]) -> Result<HashMap<Subject, f64>, SourceError> {
        let mut m: HashMap<Subject, f64> = HashMap::with_capacity(self.series.len());
        let mut origin: HashMap<&Subject, usize> = HashMap::new();
        for (k, s) in self.series.iter().enumerate() {
            let Some(v) = s.values[i] else { continue };
            if let Some(first) = origin.insert(&s.subject, k) {
                return Err(SourceError::DuplicateSubject {
                    subject: s.subject.to_string(),
                    first: crate::source::show_labels(&self.series[first].labels),
                    second: crate::source::show_labels(&s.labels),
                    labels: subject_labels.join(", "),
                });
            }
            m.insert(s.subject.clone(), v);
        }
        Ok(m)
    }
}

/// A group's history over one chunk.
struct GroupChunk {
    first: Ts,
    /// Per query slot.
    slots: HashMap<usize, Result<Dense, String>>,
    /// Per `prometheus` ticket source: day 0 (now) to day 7.
    tickets: HashMap<String, Result<Vec<Dense>, String>>,
}

impl GroupChunk {
    /// Series held, over every signal (and every day of the ticket queries).
    fn series(&self) -> usize {
        let slots: usize = self.slots.values().filter_map(|d| d.as_ref().ok()).map(|d| d.series.len()).sum();
        let tickets: usize = self.tickets.values().filter_map(|d| d.as_ref().ok()).flatten().map(|d| d.series.len()).sum();
        slots + tickets
    }
}

/// Ticket counts as of a poll: (polled at, tickets, baseline).
type TicketSnapshot = (Ts, HashMap<Subject, f64>, HashMap<Subject, f64>);

/// Everything carried across chunks.
struct Run<'a> {
    config: &'a Config,
    engine: Engine,
    state: State,
    emulator: notifications::Emulator<'a>,
    out: Outcome,
    /// `every:` signals: (group, slot) → (fetched at, values).
    holds: HashMap<(usize, usize), (Ts, HashMap<Subject, f64>)>,
    /// Ticket counts: (source, subject labels) → (fetched at, tickets, baseline).
    ticket_cache: HashMap<(String, Vec<String>), TicketSnapshot>,
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
    let min_iv = ivs.iter().copied().min().unwrap_or(60_000);
    let max_points = opts.max_points.clamp(1, MAX_POINTS_PER_SERIES);
    let mut steps_out = Vec::new();
    let mut run = Run {
        config,
        engine: Engine::new(),
        state,
        emulator: notifications::Emulator::new(config),
        out: Outcome { from: opts.from, to: opts.to, ..Outcome::default() },
        holds: HashMap::new(),
        ticket_cache: HashMap::new(),
        active_since: HashMap::new(),
        incident_index: HashMap::new(),
    };
    run.note_ticket_sources();
    let mut events = opts.events.iter().peekable();
    let mut steps = FIRST_CHUNK_STEPS.min(max_points);
    let mut chunk_start = next.iter().copied().min().unwrap_or(opts.from);
    while chunk_start <= opts.to && !groups.is_empty() {
        let chunk_end = chunk_start.saturating_add(steps * min_iv - 1).min(opts.to);
        run.out.chunks += 1;
        let mut chunks: Vec<Option<GroupChunk>> = Vec::with_capacity(groups.len());
        let mut points = 0i64;
        for gi in 0..groups.len() {
            if next[gi] > chunk_end {
                chunks.push(None);
                continue;
            }
            let n = ((chunk_end - next[gi]) / ivs[gi] + 1) as usize;
            let c = run.fetch_group(source, gi, next[gi], ivs[gi], n, opts).await;
            points += c.series() as i64 * n as i64;
            chunks.push(Some(c));
            if opts.stop_on_failure && !run.out.failures.is_empty() {
                return (run.out, run.state, steps_out);
            }
        }
        // Walk the chunk in time order: events first, then the groups due at that instant.
        while let Some((t, gi)) = (0..groups.len()).filter(|&gi| next[gi] <= chunk_end).map(|gi| (next[gi], gi)).min() {
            while let Some(e) = events.next_if(|e| e.at <= t) {
                run.apply_event(e);
            }
            let chunk = chunks[gi].as_ref().expect("fetched for every group due in the chunk");
            let idx = ((t - chunk.first) / ivs[gi]) as usize;
            let out = run.evaluate(gi, chunk, idx, t);
            if keep_steps {
                steps_out.push((gi, t, out));
            }
            next[gi] += ivs[gi];
        }
        // Size the next chunk by what this one held.
        if points > 0 {
            let per_step = (points / steps.max(1)).max(1);
            steps = (POINTS_PER_CHUNK / per_step).clamp(60.min(max_points), max_points);
        } else {
            steps = max_points;
        }
        chunk_start = chunk_end + 1;
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

async fn fetch<S: MetricsSource>(source: &S, query: &str, first: Ts, last: Ts, step: i64, opts: &Options, requests: &mut u64) -> Result<Vec<RangeSeries>, (String, u32)> {
    let attempts = opts.attempts.max(1);
    let mut delay = opts.retry_delay;
    let mut attempt = 0;
    loop {
        attempt += 1;
        *requests += 1;
        match source.range(query, first, last, step).await {
            Ok(r) => return Ok(r),
            Err(e) if attempt >= attempts => return Err((e.to_string(), attempt)),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "range query failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

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

    async fn fetch_group<S: MetricsSource>(&mut self, source: &S, gi: usize, first: Ts, step: i64, n: usize, opts: &Options) -> GroupChunk {
        let g = &self.config.rules.groups[gi];
        let last = first + (n as i64 - 1) * step;
        let mut chunk = GroupChunk { first, slots: HashMap::new(), tickets: HashMap::new() };
        let fail = |out: &mut Outcome, signal: String, error: String, attempts: u32| {
            out.failures.push(ChunkFailure { group: g.name.clone(), signal, from: first, to: last, attempts, error: error.clone() });
            error
        };
        for s in &g.signals {
            match &s.source {
                SignalSource::Query(q) => {
                    let r = match fetch(source, q, first, last, step, opts, &mut self.out.requests).await {
                        Ok(r) => Ok(Dense::new(r, &g.subject_labels, first, step, n)),
                        Err((e, a)) => Err(fail(&mut self.out, s.name.clone(), e, a)),
                    };
                    chunk.slots.insert(s.slot, r);
                }
                SignalSource::Tickets { source: name, .. } => {
                    let Some(TicketKind::Prometheus { query }) = self.config.ticket_sources.iter().find(|t| &t.name == name).map(|t| &t.kind) else { continue };
                    if chunk.tickets.contains_key(name) {
                        continue;
                    }
                    let mut days = Vec::new();
                    let mut err = None;
                    for k in 0..=BASELINE_DAYS {
                        let shift = k * DAY_MS;
                        match fetch(source, query, first - shift, last - shift, step, opts, &mut self.out.requests).await {
                            Ok(r) => days.push(Dense::new(r, &g.subject_labels, first - shift, step, n)),
                            Err((e, a)) => {
                                err = Some(fail(&mut self.out, format!("ticket source {name}"), e, a));
                                break;
                            }
                        }
                    }
                    chunk.tickets.insert(name.clone(), err.map_or(Ok(days), Err));
                }
                SignalSource::Value(_) | SignalSource::Alertmanager => {}
            }
        }
        chunk
    }

    fn evaluate(&mut self, gi: usize, chunk: &GroupChunk, idx: usize, t: Ts) -> StepOutput {
        let config = self.config;
        let g = &config.rules.groups[gi];
        let mut input = GroupInput::new(g);
        for s in &g.signals {
            match &s.source {
                // Pushed values have no history: unknown throughout (noted once).
                SignalSource::Value(_) | SignalSource::Alertmanager => {}
                SignalSource::Query(_) => {
                    if let (Some(every), Some((at, values))) = (s.every, self.holds.get(&(gi, s.slot))) {
                        if t - at < every.as_millis() as Ts {
                            input.slots[s.slot] = SlotValues::Series(values.clone());
                            continue;
                        }
                    }
                    input.slots[s.slot] = match &chunk.slots[&s.slot] {
                        Err(e) => SlotValues::Unavailable(e.clone()),
                        Ok(d) => match d.at(idx, &g.subject_labels) {
                            Ok(m) => {
                                if s.every.is_some() {
                                    self.holds.insert((gi, s.slot), (t, m.clone()));
                                }
                                SlotValues::Series(m)
                            }
                            Err(e) => SlotValues::Unavailable(e.to_string()),
                        },
                    };
                }
                SignalSource::Tickets { source, baseline_slot } => {
                    let (count, baseline) = self.tickets(source, &g.subject_labels, chunk, idx, t);
                    input.slots[s.slot] = count;
                    input.slots[*baseline_slot] = baseline;
                }
            }
        }
        let out = self.engine.evaluate_group(g, &input, &mut self.state, t);
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

    /// `tickets` and `tickets_baseline` at `t`, with the live poll cache.
    fn tickets(&mut self, source: &str, labels: &[String], chunk: &GroupChunk, idx: usize, t: Ts) -> (SlotValues, SlotValues) {
        let unavailable = |m: String| (SlotValues::Unavailable(m.clone()), SlotValues::Unavailable(m));
        let Some(cfg) = self.config.ticket_sources.iter().find(|s| s.name == source) else {
            return unavailable(format!("ticket source {source:?} is not configured"));
        };
        if !matches!(cfg.kind, TicketKind::Prometheus { .. }) {
            return unavailable(format!("ticket source {source:?} has no history to replay"));
        }
        let key = (source.to_string(), labels.to_vec());
        if let Some((at, c, b)) = self.ticket_cache.get(&key) {
            if *at <= t && t - at < cfg.poll_interval.as_millis() as Ts {
                return (SlotValues::Series(c.clone()), SlotValues::Series(b.clone()));
            }
        }
        let days = match chunk.tickets.get(source) {
            Some(Ok(d)) => d,
            Some(Err(e)) => return unavailable(e.clone()),
            None => return unavailable(format!("ticket source {source:?} was not queried")),
        };
        let counts = (|| -> Result<_, SourceError> {
            let now = days[0].at(idx, labels)?;
            let mut per_day: HashMap<Subject, Vec<f64>> = HashMap::new();
            for d in &days[1..] {
                for (s, v) in d.at(idx, labels)? {
                    per_day.entry(s).or_default().push(v);
                }
            }
            let baseline: HashMap<Subject, f64> = per_day.into_iter().filter_map(|(s, v)| median(v).map(|m| (s, m))).collect();
            Ok((now, baseline))
        })();
        match counts {
            Ok((c, b)) => {
                self.ticket_cache.insert(key, (t, c.clone(), b.clone()));
                (SlotValues::Series(c), SlotValues::Series(b))
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
