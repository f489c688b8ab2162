//! The replay's history: the range queries of each chunk, sent concurrently and laid on each
//! group's step grid as compact columns, while the engine walks the chunk before.
//!
//! This module owns the chunk plan (how many steps a chunk has, sized by the points the last
//! one held), the queries of a chunk (every signal of every group due in it, at most
//! [`MAX_CONCURRENT_QUERIES`] in flight), the retries, and the ticket history: a `prometheus`
//! ticket source is queried once over `[from − 7 days, to]` (cut at the chunk boundaries) and
//! the baseline's previous days are read from a rolling 7-day window of what was already
//! fetched, instead of seven more queries per chunk. A chunk's data is immutable once fetched.
//! It must not evaluate anything or decide what a value means: [`super::Run`] walks the chunks
//! in order and owns every piece of state.

use crate::engine::SubjectSet;
use crate::engine::SubjectMap;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::{ChunkFailure, Options};
use crate::config::daemon::TicketKind;
use crate::config::{Config, SignalSource};
use crate::engine::{Subject, Ts};
use crate::source::tickets::{BASELINE_DAYS, DAY_MS};
use crate::source::{is_absent, show_labels, MetricsSource, RangeColumn, SourceError, ABSENT, MAX_POINTS_PER_SERIES};

/// Steps in the first chunk, before the number of series is known (a day at 1m).
const FIRST_CHUNK_STEPS: i64 = 1_440;
/// Points (series × steps, all signals of all groups) one chunk may hold in memory. Two chunks
/// are held at once (one walked, one fetched), and each answer's JSON is about 22 bytes a
/// point while it is parsed: smaller chunks cost no wall time (measured from 1,500 to 10,000
/// steps) but hold less.
const POINTS_PER_CHUNK: i64 = 500_000;
/// Points (series × steps) a ticket source's rolling 7-day history may hold. A larger one
/// (a big fleet at a short step) is not kept: its previous days are queried with each chunk.
pub(super) const HISTORY_POINTS: i64 = 4_000_000;
/// Range requests of one chunk in flight at once.
pub(super) const MAX_CONCURRENT_QUERIES: usize = 8;

/// One signal's history over a chunk: per series, a value or [`ABSENT`] at every step.
pub(super) struct Dense {
    first: Ts,
    step: i64,
    n: usize,
    series: Vec<DenseSeries>,
}

struct DenseSeries {
    subject: Subject,
    labels: BTreeMap<String, String>,
    values: Vec<f64>,
}

impl Dense {
    /// Lays `columns` out as `n` steps from `first`; each series' subject is taken from
    /// `subjects` when it is there (so every chunk shares the subjects the state holds).
    pub(super) fn new(columns: Vec<RangeColumn>, subject_labels: &[String], first: Ts, step: i64, n: usize, subjects: &mut SubjectSet) -> Dense {
        let series = columns
            .into_iter()
            .map(|c| {
                let subject = Subject::new(subject_labels.iter().map(|l| (l.clone(), c.labels.get(l).cloned().unwrap_or_default())));
                let subject = match subjects.get(&subject) {
                    Some(s) => s.clone(),
                    None => {
                        subjects.insert(subject.clone());
                        subject
                    }
                };
                let mut values = c.values;
                values.resize(n, ABSENT);
                DenseSeries { subject, labels: c.labels, values }
            })
            .collect();
        Dense { first, step, n, series }
    }

    fn last(&self) -> Ts {
        self.first + (self.n as i64 - 1) * self.step
    }

    /// The step of time `t`, if `t` is one of this history's steps.
    fn index(&self, t: Ts) -> Option<usize> {
        (t >= self.first && t <= self.last() && (t - self.first) % self.step == 0).then(|| ((t - self.first) / self.step) as usize)
    }

    fn points(&self) -> i64 {
        (self.series.len() * self.n) as i64
    }

    /// Step `i` of this very history (its address and first time tell it from any other).
    pub(super) fn step_id(&self, i: usize) -> StepId {
        StepId { dense: self as *const Dense as usize, first: self.first, i }
    }

    /// Whether every series has the same value (or none) at steps `a` and `b`.
    pub(super) fn same_values(&self, a: usize, b: usize) -> bool {
        self.series.iter().all(|s| s.values[a].to_bits() == s.values[b].to_bits())
    }

    /// The values at step `i`, keyed by subject; two series for one subject is the same error
    /// the daemon's instant query gets.
    pub(super) fn at(&self, i: usize, subject_labels: &[String]) -> Result<SubjectMap<f64>, SourceError> {
        let mut m = SubjectMap::with_capacity_and_hasher(self.series.len(), Default::default());
        self.fill(i, subject_labels, &mut m)?;
        Ok(m)
    }

    /// [`Dense::at`] into `m` (emptied first, its allocation kept).
    pub(super) fn fill(&self, i: usize, subject_labels: &[String], m: &mut SubjectMap<f64>) -> Result<(), SourceError> {
        m.clear();
        for (k, s) in self.series.iter().enumerate() {
            let v = s.values[i];
            if is_absent(v) {
                continue;
            }
            if m.insert(s.subject.clone(), v).is_some() {
                let first = self.series[..k].iter().find(|o| o.subject == s.subject && !is_absent(o.values[i])).expect("the first series of the subject");
                return Err(SourceError::DuplicateSubject {
                    subject: s.subject.to_string(),
                    first: show_labels(&first.labels),
                    second: show_labels(&s.labels),
                    labels: subject_labels.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// A ticket source's days of a chunk queried one by one, day `k` at `[k]` once fetched.
type DaysFetched = Vec<Option<Dense>>;

/// One step of one [`Dense`] (see [`Dense::step_id`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct StepId {
    dense: usize,
    first: Ts,
    i: usize,
}

/// A `prometheus` ticket source's counts over a chunk and the days before it.
pub(super) enum TicketView {
    /// `days[k]` is the query shifted back `k` days (0 = the chunk's own steps).
    Days(Vec<Dense>),
    /// Consecutive pieces of one history on the group's step grid, from 7 days before the
    /// chunk's first step to its last.
    History(Vec<Arc<Dense>>),
}

impl TicketView {
    /// The counts of day `k` (0 = now, 1..=7 the baseline's days) for the evaluation at `t`:
    /// what the daemon's instant query at `t − k days` returns.
    pub(super) fn day(&self, k: i64, t: Ts, subject_labels: &[String]) -> Result<SubjectMap<f64>, SourceError> {
        let at = t - k * DAY_MS;
        let found = match self {
            TicketView::Days(days) => days.get(k as usize).and_then(|d| d.index(at).map(|i| (d, i))),
            TicketView::History(pieces) => pieces.iter().find_map(|d| d.index(at).map(|i| (&**d, i))),
        };
        match found {
            Some((d, i)) => d.at(i, subject_labels),
            None => Err(SourceError::Response(format!("no ticket history at {}", super::report::rfc3339(at)))),
        }
    }

    fn points(&self, n: usize) -> i64 {
        match self {
            TicketView::Days(days) => days.iter().map(|d| d.series.len() as i64 * n as i64).sum(),
            TicketView::History(pieces) => pieces.last().map_or(0, |d| d.series.len() as i64 * n as i64),
        }
    }
}

/// A group's history over one chunk.
pub(super) struct GroupChunk {
    pub(super) first: Ts,
    /// Per query slot.
    pub(super) slots: HashMap<usize, Result<Dense, String>>,
    /// Per `prometheus` ticket source.
    pub(super) tickets: HashMap<String, Result<TicketView, String>>,
}

/// Everything one chunk needs, fetched.
pub(super) struct Chunk {
    /// Its last instant: every group is evaluated up to here.
    pub(super) end: Ts,
    /// Per group; `None` for a group not due in the chunk.
    pub(super) groups: Vec<Option<GroupChunk>>,
    /// Range queries that kept failing, in the order of the groups and their signals.
    pub(super) failures: Vec<ChunkFailure>,
    /// Range requests sent (retries included).
    pub(super) requests: u64,
}

/// What a ticket query of a chunk is for.
#[derive(Clone, Copy, PartialEq)]
enum TicketPart {
    /// Day `k` of the chunk, queried on its own.
    Day(i64),
    /// The chunk's steps, appended to the history held.
    Next,
    /// The chunk's steps when no history is held: then the week before it is fetched as well
    /// ([`TicketPart::Back`]) if its size allows, else day by day.
    Start,
    /// The 7 days before the chunk, after [`TicketPart::Start`].
    Back,
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Slot(usize),
    Ticket(usize, TicketPart),
}

/// One range query of a chunk.
struct Job<'c> {
    gi: usize,
    target: Target,
    /// The signal (or `ticket source NAME`), for a failure.
    signal: String,
    query: &'c str,
    first: Ts,
    last: Ts,
}

/// A ticket source's rolling history for one group.
enum History {
    /// Consecutive pieces, the oldest first (empty: nothing held yet, or after a failure).
    Rolling(VecDeque<Arc<Dense>>),
    /// Too large to hold, or the step does not divide a day: queried day by day.
    DayByDay,
}

/// Fetches the chunks one after the other, each with every query it needs.
pub(super) struct Fetcher<'a, S> {
    config: &'a Config,
    source: &'a S,
    opts: &'a Options,
    ivs: Vec<i64>,
    min_iv: i64,
    max_points: i64,
    /// Each group's next evaluation time not yet fetched.
    next: Vec<Ts>,
    /// Steps (of the shortest interval) of the next chunk.
    steps: i64,
    start: Ts,
    /// (group, ticket source) → its history.
    histories: HashMap<(usize, String), History>,
    /// A history larger than this many points is not held (tests lower it).
    pub(super) history_points: i64,
    /// Every subject seen, shared by all chunks.
    subjects: SubjectSet,
}

/// A range query with the replay's retries: the columns, or the last error; and the attempts.
async fn fetch<S: MetricsSource>(source: &S, query: &str, first: Ts, last: Ts, step: i64, opts: &Options) -> (Result<Vec<RangeColumn>, String>, u32) {
    let attempts = opts.attempts.max(1);
    let mut delay = opts.retry_delay;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match source.range_columns(query, first, last, step).await {
            Ok(r) => return (Ok(r), attempt),
            Err(e) if attempt >= attempts => return (Err(e.to_string()), attempt),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "range query failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

impl<'a, S: MetricsSource> Fetcher<'a, S> {
    /// Plans the chunks from each group's first evaluation time `next[gi]` (`Ts::MAX`: never)
    /// up to `opts.to`, every group at its interval `ivs[gi]`.
    pub(super) fn new(config: &'a Config, source: &'a S, opts: &'a Options, ivs: Vec<i64>, next: Vec<Ts>) -> Self {
        let min_iv = ivs.iter().copied().min().unwrap_or(60_000);
        let max_points = opts.max_points.clamp(1, MAX_POINTS_PER_SERIES);
        let start = next.iter().copied().min().unwrap_or(opts.from);
        Fetcher { config, source, opts, ivs, min_iv, max_points, next, steps: FIRST_CHUNK_STEPS.min(max_points), start, histories: HashMap::new(), history_points: HISTORY_POINTS, subjects: SubjectSet::default() }
    }

    /// The next chunk, fetched; `None` after the last.
    pub(super) async fn next_chunk(&mut self) -> Option<Chunk> {
        let groups = &self.config.rules.groups;
        if self.start > self.opts.to || groups.is_empty() {
            return None;
        }
        let end = self.start.saturating_add(self.steps * self.min_iv - 1).min(self.opts.to);
        let mut spans: Vec<Option<(Ts, usize)>> = vec![None; groups.len()];
        let mut jobs: Vec<Job<'a>> = Vec::new();
        let config: &'a Config = self.config;
        for (gi, g) in config.rules.groups.iter().enumerate() {
            if self.next[gi] > end {
                continue;
            }
            let (first, iv) = (self.next[gi], self.ivs[gi]);
            let n = ((end - first) / iv + 1) as usize;
            let last = first + (n as i64 - 1) * iv;
            spans[gi] = Some((first, n));
            let mut planned: Vec<&str> = Vec::new();
            for s in &g.signals {
                match &s.source {
                    SignalSource::Query(q) => jobs.push(Job { gi, target: Target::Slot(s.slot), signal: s.name.clone(), query: q, first, last }),
                    SignalSource::Tickets { source: name, .. } => {
                        let Some((ti, TicketKind::Prometheus { query })) =
                            config.ticket_sources.iter().enumerate().find(|(_, t)| &t.name == name).map(|(i, t)| (i, &t.kind))
                        else {
                            continue;
                        };
                        if planned.contains(&name.as_str()) {
                            continue;
                        }
                        planned.push(name);
                        let signal = format!("ticket source {name}");
                        let back = BASELINE_DAYS * DAY_MS;
                        let history = self
                            .histories
                            .entry((gi, name.clone()))
                            .or_insert_with(|| if DAY_MS % iv == 0 { History::Rolling(VecDeque::new()) } else { History::DayByDay });
                        match history {
                            History::DayByDay => {
                                for k in 0..=BASELINE_DAYS {
                                    let shift = k * DAY_MS;
                                    let target = Target::Ticket(ti, TicketPart::Day(k));
                                    jobs.push(Job { gi, target, signal: signal.clone(), query, first: first - shift, last: last - shift });
                                }
                            }
                            History::Rolling(pieces) => {
                                let follows = pieces.back().is_some_and(|p| p.last() + iv == first) && pieces.front().is_some_and(|p| p.first <= first - back);
                                let part = if follows { TicketPart::Next } else { TicketPart::Start };
                                jobs.push(Job { gi, target: Target::Ticket(ti, part), signal, query, first, last });
                            }
                        }
                    }
                    SignalSource::Value(_) | SignalSource::Alertmanager => {}
                }
            }
        }

        let mut chunk = Chunk {
            end,
            groups: spans.iter().map(|s| s.map(|(first, _)| GroupChunk { first, slots: HashMap::new(), tickets: HashMap::new() })).collect(),
            failures: Vec::new(),
            requests: 0,
        };
        // Day-by-day ticket queries of a chunk, gathered before they make a view: day k at [k].
        let mut days: HashMap<(usize, usize), Result<DaysFetched, String>> = HashMap::new();
        // The chunk's own ticket counts while the week before it is fetched.
        let mut started: HashMap<(usize, usize), Dense> = HashMap::new();
        // A second round only when a ticket history starts: its size decides how to fetch it.
        while !jobs.is_empty() {
            let (source, opts, ivs) = (self.source, self.opts, &self.ivs);
            let results: Vec<(Result<Vec<RangeColumn>, String>, u32)> =
                stream::iter(jobs.iter().map(|j| fetch(source, j.query, j.first, j.last, ivs[j.gi], opts))).buffered(MAX_CONCURRENT_QUERIES).collect().await;
            let mut follow = Vec::new();
            for (job, (result, attempts)) in std::mem::take(&mut jobs).into_iter().zip(results) {
                chunk.requests += u64::from(attempts);
                let g = &groups[job.gi];
                let (first, n) = spans[job.gi].expect("planned for a due group");
                let iv = self.ivs[job.gi];
                if let Err(error) = &result {
                    // One failure per signal (a ticket source queried day by day included).
                    if !chunk.failures.iter().any(|f| f.group == g.name && f.signal == job.signal) {
                        chunk.failures.push(ChunkFailure { group: g.name.clone(), signal: job.signal.clone(), from: first, to: last_of(first, n, iv), attempts, error: error.clone() });
                    }
                }
                let steps = crate::source::grid_len(job.first, job.last, iv);
                let gc = chunk.groups[job.gi].as_mut().expect("planned for a due group");
                let Target::Ticket(ti, part) = job.target else {
                    let Target::Slot(slot) = job.target else { unreachable!() };
                    gc.slots.insert(slot, result.map(|c| Dense::new(c, &g.subject_labels, first, iv, n, &mut self.subjects)));
                    continue;
                };
                let name = &config.ticket_sources[ti].name;
                let key = (job.gi, ti);
                let history = self.histories.get_mut(&(job.gi, name.clone())).expect("planned with its history");
                let dense = result.map(|c| Dense::new(c, &g.subject_labels, job.first, iv, steps, &mut self.subjects));
                match (part, dense) {
                    (TicketPart::Day(k), dense) => {
                        let entry = days.entry(key).or_insert_with(|| Ok((0..=BASELINE_DAYS).map(|_| None).collect()));
                        match (entry.as_mut(), dense) {
                            (Ok(v), Ok(d)) => v[k as usize] = Some(d),
                            (Ok(_), Err(e)) => *entry = Err(e),
                            (Err(_), _) => {}
                        }
                    }
                    (TicketPart::Start, Ok(d)) => {
                        // A week of this source's series at this step: hold it only if small.
                        if d.series.len() as i64 * (BASELINE_DAYS * DAY_MS / iv) <= self.history_points {
                            let (from, to) = (first - BASELINE_DAYS * DAY_MS, first - iv);
                            follow.push(Job { gi: job.gi, target: Target::Ticket(ti, TicketPart::Back), signal: job.signal, query: job.query, first: from, last: to });
                            started.insert(key, d);
                        } else {
                            *history = History::DayByDay;
                            days.insert(key, Ok(std::iter::once(Some(d)).chain((1..=BASELINE_DAYS).map(|_| None)).collect()));
                            for k in 1..=BASELINE_DAYS {
                                let target = Target::Ticket(ti, TicketPart::Day(k));
                                follow.push(Job { gi: job.gi, target, signal: job.signal.clone(), query: job.query, first: first - k * DAY_MS, last: job.last - k * DAY_MS });
                            }
                        }
                    }
                    (TicketPart::Next | TicketPart::Back, Ok(d)) => {
                        let History::Rolling(pieces) = history else { unreachable!("a history piece is only fetched for a rolling history") };
                        if part == TicketPart::Back {
                            pieces.clear();
                            pieces.push_back(Arc::new(d));
                            pieces.push_back(Arc::new(started.remove(&key).expect("the chunk's own counts came first")));
                        } else {
                            pieces.push_back(Arc::new(d));
                        }
                        let oldest = first - BASELINE_DAYS * DAY_MS;
                        while pieces.front().is_some_and(|p| p.last() < oldest) {
                            pieces.pop_front();
                        }
                        gc.tickets.insert(name.clone(), Ok(TicketView::History(pieces.iter().cloned().collect())));
                        let series = pieces.back().map_or(0, |p| p.series.len() as i64);
                        if series * (BASELINE_DAYS * DAY_MS / iv) > self.history_points {
                            *history = History::DayByDay;
                        }
                    }
                    (TicketPart::Start | TicketPart::Next | TicketPart::Back, Err(e)) => {
                        if let History::Rolling(pieces) = history {
                            pieces.clear();
                        }
                        gc.tickets.insert(name.clone(), Err(e));
                    }
                }
            }
            jobs = follow;
        }
        for ((gi, ti), d) in days {
            let gc = chunk.groups[gi].as_mut().expect("planned for a due group");
            let view = d.map(|days| TicketView::Days(days.into_iter().map(|d| d.expect("every day fetched")).collect()));
            gc.tickets.insert(config.ticket_sources[ti].name.clone(), view);
        }

        // Size the next chunk by what this one held.
        let mut points = 0i64;
        for (gc, span) in chunk.groups.iter().zip(&spans) {
            let (Some(gc), Some((_, n))) = (gc, span) else { continue };
            points += gc.slots.values().filter_map(|d| d.as_ref().ok()).map(Dense::points).sum::<i64>();
            points += gc.tickets.values().filter_map(|d| d.as_ref().ok()).map(|v| v.points(*n)).sum::<i64>();
        }
        for (gi, span) in spans.iter().enumerate() {
            if let Some((first, n)) = span {
                self.next[gi] = first + *n as i64 * self.ivs[gi];
            }
        }
        if points > 0 {
            let per_step = (points / self.steps.max(1)).max(1);
            self.steps = (POINTS_PER_CHUNK / per_step).clamp(60.min(self.max_points), self.max_points);
        } else {
            self.steps = self.max_points;
        }
        self.start = end + 1;
        Some(chunk)
    }
}

fn last_of(first: Ts, n: usize, iv: i64) -> Ts {
    first + (n as i64 - 1) * iv
}
