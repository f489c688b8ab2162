//! `herald test`: rule unit tests on synthetic signals (spec §5).
//!
//! A test file names rule files and lists tests; each test feeds series (promtool notation)
//! and incident events for some subjects, then asserts which rule instances fire at given
//! times. The driver walks a timeline and calls the same [`Engine::evaluate_group`] the daemon
//! uses; it never re-implements rule semantics. A `downtime` restarts the engine from its state
//! saved in an in-memory store, as the daemon restarts from its file. No I/O beyond reading
//! the files.
//!
//! Bounds (so a test file can neither hang nor exhaust memory): intervals are at least 1s, and
//! every `at` lies within the longest input series plus one interval.

mod series;

pub use series::parse_series;

use crate::engine::SubjectMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::rules::{duration_at, err_at};
use crate::config::yaml::{self, RawInstance, Spanned, TestFile};
use crate::config::{load_rule_files, Diagnostic, Diagnostics, PromDuration, RuleSet};
use crate::engine::{DecisionStatus, Engine, Event, EventFields, GroupInput, Incident, SlotValues, State, Subject, Ts};
use crate::store::{Commit, Store};

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    /// Human-readable failures; empty when the test passed.
    pub failures: Vec<String>,
    /// With `--explain RULE`: every evaluation of that rule for each subject, explained.
    pub explanations: Vec<String>,
}

/// Options of a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Explain every evaluation of this rule.
    pub explain: Option<String>,
}

/// The shortest interval a test file may use.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The most evaluations one test may need (all groups together).
pub const MAX_EVALUATIONS: u64 = 1_000_000;

/// Why a test file could not be run at all.
#[derive(Debug)]
pub enum FileError {
    /// The file (or a rule file it names) could not be read: exit code 2.
    Unreadable(Diagnostics),
    /// The file or its rules are invalid: exit code 1.
    Invalid(Diagnostics),
}

/// Per (group index, slot): each subject's series.
type SeriesBySlot = HashMap<(usize, usize), SubjectMap<Vec<Option<f64>>>>;

struct PreparedTest {
    name: String,
    /// (group index, slot) → subject → series.
    series: SeriesBySlot,
    interval: Ts,
    /// (time, subject, event, incident id when the event names one).
    events: Vec<(Ts, Subject, Event, Option<String>)>,
    expects: Vec<Expect>,
    subjects: Vec<Subject>,
    /// `[from, until)` times Herald is down.
    downtime: Vec<(Ts, Ts)>,
}

struct Expect {
    at: Ts,
    at_text: String,
    kind: ExpectKind,
    instances: BTreeSet<(String, Subject)>,
    /// Expected annotations of listed instances (exact match).
    annotations: Vec<((String, Subject), BTreeMap<String, String>)>,
}

#[derive(Clone, Copy, PartialEq)]
enum ExpectKind {
    Firing,
    Includes,
    Excludes,
}

fn ms(d: Duration) -> Ts {
    d.as_millis() as Ts
}

/// Runs every test of one file.
pub fn run_file(path: &Path) -> Result<Vec<TestOutcome>, FileError> {
    run_file_with(path, &RunOptions::default())
}

/// An interval of a test file: a duration of at least [`MIN_INTERVAL`].
fn interval_at(path: &str, s: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<Duration> {
    let d = duration_at(path, s, diags)?;
    if d < MIN_INTERVAL {
        diags.push(err_at(path, s, format!("{what} must be at least 1s, not {:?}", s.value)));
        return None;
    }
    Some(d)
}

/// Runs every test of one file, with options.
pub fn run_file_with(path: &Path, options: &RunOptions) -> Result<Vec<TestOutcome>, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::Unreadable(Diagnostics(vec![Diagnostic::error(&shown, 0, 0, format!("cannot read test file: {e}"))])))?;
    let parsed = yaml::parse::<TestFile>(&shown, &text).map_err(FileError::Invalid)?;
    let file = &parsed.value;
    let mut diags = Diagnostics::default();

    let base = path.parent().unwrap_or(Path::new("."));
    let mut rule_paths = Vec::new();
    for rf in &file.rule_files {
        match expand_glob(base, &rf.value) {
            Ok(paths) if !paths.is_empty() => rule_paths.extend(paths),
            Ok(_) => diags.push(err_at(&shown, rf, format!("rule file {:?} matches no file", rf.value))),
            Err(e) => diags.push(err_at(&shown, rf, e)),
        }
    }
    let schema_errors = parsed.has_errors();
    if diags.has_errors() {
        let all = parsed.finish(diags);
        return Err(if schema_errors { FileError::Invalid(all) } else { FileError::Unreadable(all) });
    }
    let rules = match load_rule_files(&rule_paths) {
        Ok((r, _)) => r,
        Err(d) => return Err(FileError::Invalid(parsed.finish(d))),
    };
    let default_interval = match &file.evaluation_interval {
        Some(s) => interval_at(&shown, s, "evaluation_interval", &mut diags).unwrap_or(Duration::from_secs(60)),
        None => Duration::from_secs(60),
    };
    if let Some(rule) = &options.explain {
        if !rules.groups.iter().any(|g| g.rules.iter().any(|r| &r.name == rule)) {
            diags.push(Diagnostic::error(&shown, 0, 0, format!("--explain: no rule named {rule:?} in this file's rule files")));
        }
    }
    let mut prepared = Vec::new();
    for t in &file.tests {
        if let Some(p) = prepare(&shown, t, &rules, default_interval, &mut diags) {
            prepared.push(p);
        }
    }
    let diags = parsed.finish(diags);
    if diags.has_errors() {
        return Err(FileError::Invalid(diags));
    }
    let engine = Engine::new();
    Ok(prepared.iter().map(|t| run_test(&engine, &rules, default_interval, t, options)).collect())
}

/// Expands a path or glob relative to `base`, sorted.
pub fn expand_glob(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base.join(pattern) };
    let s = full.to_string_lossy();
    if !s.contains(['*', '?', '[']) {
        return Ok(vec![full]);
    }
    let mut out: Vec<PathBuf> = glob::glob(&s).map_err(|e| format!("invalid glob {pattern:?}: {e}"))?.filter_map(Result::ok).collect();
    out.sort();
    Ok(out)
}

fn parse_at(path: &str, s: &Spanned<String>, diags: &mut Diagnostics) -> Option<Ts> {
    duration_at(path, s, diags).map(ms)
}

fn prepare(path: &str, t: &yaml::RawTest, rules: &RuleSet, default_interval: Duration, diags: &mut Diagnostics) -> Option<PreparedTest> {
    let before = diags.errors().count();
    let interval = match &t.interval {
        Some(s) => interval_at(path, s, "interval", diags).unwrap_or(default_interval),
        None => default_interval,
    };
    let mut subjects = Vec::new();
    let mut series: SeriesBySlot = HashMap::new();
    let mut events = Vec::new();
    for input in &t.input {
        let subject = Subject::new(input.subject.value.clone());
        let names: Vec<String> = input.subject.value.keys().cloned().collect();
        let groups: Vec<usize> = rules
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                let mut l = g.subject_labels.clone();
                l.sort();
                l == names
            })
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            diags.push(err_at(path, &input.subject, format!("no rule group has subject labels [{}]", names.join(", "))));
            continue;
        }
        if subjects.contains(&subject) {
            diags.push(err_at(path, &input.subject, format!("subject {subject} is listed twice")));
        }
        subjects.push(subject.clone());
        for (name, src) in &input.signals {
            let values = match parse_series(&src.value) {
                Ok(v) => v,
                Err(e) => {
                    diags.push(err_at(path, src, format!("signal {name:?}: {e}")));
                    continue;
                }
            };
            let mut used = false;
            for &gi in &groups {
                if let Some(slot) = rules.groups[gi].slot(name) {
                    series.entry((gi, slot)).or_default().insert(subject.clone(), values.clone());
                    used = true;
                }
            }
            if !used {
                diags.push(err_at(path, src, format!("unknown signal {name:?}: no group for subject {subject} has it")));
            }
        }
        for e in &input.events {
            let at = parse_at(path, &e.at, diags).map(|at| (at, &e.at));
            match parse_event(path, e) {
                Ok(ev) => {
                    if let Some(at) = at {
                        events.push((at, subject.clone(), ev, e.incident.as_ref().map(|i| i.value.clone())));
                    }
                }
                Err(d) => diags.push(d),
            }
        }
    }
    // Every `at` must lie within the longest series plus one interval: the timeline is
    // bounded by the input, never by a typo (`at: 292y`).
    let series_end = series.values().flat_map(|m| m.values()).map(|v| v.len() as Ts).max().unwrap_or(0) * ms(interval);
    let within = |at: Ts, span: &Spanned<String>, diags: &mut Diagnostics| {
        if at > series_end {
            diags.push(err_at(
                path,
                span,
                format!(
                    "at {} is beyond the end of the input series ({} plus one interval); extend a series to cover it",
                    span.value,
                    PromDuration(Duration::from_millis((series_end - ms(interval)).max(0) as u64))
                ),
            ));
            false
        } else {
            true
        }
    };
    let mut events: Vec<(Ts, Subject, Event, Option<String>)> =
        events.into_iter().filter(|((at, span), _, _, _)| within(*at, span, diags)).map(|((at, _), s, e, id)| (at, s, e, id)).collect();
    let mut downtime = Vec::new();
    for d in &t.downtime {
        let (Some(from), Some(until)) = (parse_at(path, &d.from, diags), parse_at(path, &d.until, diags)) else { continue };
        if until <= from {
            diags.push(err_at(path, &d.until, "downtime `until` must be after `from`"));
        } else if within(until, &d.until, diags) {
            if let Some((at, _, e, _)) = events.iter().find(|(at, _, _, _)| (from..until).contains(at)) {
                diags.push(err_at(path, &d.from, format!("event {} at {} falls in this downtime: Herald's API is down then", e.kind(), PromDuration(Duration::from_millis(*at as u64)))));
            }
            downtime.push((from, until));
        }
    }
    events.sort_by_key(|(at, _, _, _)| *at);
    let rule_names: BTreeSet<&str> = rules.groups.iter().flat_map(|g| g.rules.iter().map(|r| r.name.as_str())).collect();
    let mut expects = Vec::new();
    for e in &t.expect {
        // A bad `at` is reported, and the rest of the expectation is still checked.
        let at = parse_at(path, &e.at, diags).filter(|at| within(*at, &e.at, diags));
        let lists = [(ExpectKind::Firing, &e.firing), (ExpectKind::Includes, &e.includes), (ExpectKind::Excludes, &e.excludes)];
        if lists.iter().all(|(_, l)| l.is_none()) {
            diags.push(err_at(path, &e.at, "an expectation needs `firing`, `includes` or `excludes`"));
        }
        for (kind, list) in lists {
            let Some(list) = list else { continue };
            let mut instances = BTreeSet::new();
            let mut annotations = Vec::new();
            for inst in list {
                if let Some(i) = resolve_instance(path, inst, &subjects, &rule_names, diags) {
                    if let Some(a) = &inst.annotations {
                        if kind == ExpectKind::Excludes {
                            diags.push(err_at(path, a, "`annotations` can only be expected of instances that fire (`firing` or `includes`)"));
                        }
                        annotations.push((i.clone(), a.value.clone()));
                    }
                    instances.insert(i);
                }
            }
            if let Some(at) = at {
                expects.push(Expect { at, at_text: e.at.value.clone(), kind, instances, annotations });
            }
        }
    }
    if diags.errors().count() > before {
        return None;
    }
    // Bound the work: every group evaluates from 0 to the last `at`.
    let end = expects.iter().map(|e| e.at).chain(events.iter().map(|e| e.0)).max().unwrap_or(0);
    let evaluations: u64 = rules.groups.iter().map(|g| end as u64 / (ms(g.interval_or(default_interval)).max(1) as u64) + 1).sum();
    if evaluations > MAX_EVALUATIONS {
        diags.push(err_at(path, &t.name, format!("this test needs {evaluations} evaluations (at most {MAX_EVALUATIONS}): use a longer interval")));
        return None;
    }
    Some(PreparedTest { name: t.name.value.clone(), series, interval: ms(interval), events, expects, subjects, downtime })
}

fn resolve_instance(
    path: &str,
    inst: &RawInstance,
    subjects: &[Subject],
    rule_names: &BTreeSet<&str>,
    diags: &mut Diagnostics,
) -> Option<(String, Subject)> {
    if !rule_names.contains(inst.rule.value.as_str()) {
        diags.push(err_at(path, &inst.rule, format!("unknown rule {:?}", inst.rule.value)));
        return None;
    }
    let subject = match &inst.subject {
        Some(m) => Subject::new(m.clone()),
        None if subjects.len() == 1 => subjects[0].clone(),
        None => {
            diags.push(err_at(path, &inst.rule, "name the subject: this test has more than one"));
            return None;
        }
    };
    Some((inst.rule.value.clone(), subject))
}

/// Reads a test-file event through the one event grammar, placing its error at the field.
pub(crate) fn parse_event(path: &str, e: &yaml::RawEvent) -> Result<Event, Diagnostic> {
    fn text(f: &Option<Spanned<String>>) -> Option<&str> {
        f.as_ref().map(|s| s.value.as_str())
    }
    let fields = EventFields {
        kind: &e.kind.value,
        channel: text(&e.channel),
        value: text(&e.value),
        severity: text(&e.severity),
        security: e.security,
        actor: text(&e.actor),
        note: text(&e.note),
    };
    Event::from_fields(&fields, true).map(|(ev, _)| ev).map_err(|err| {
        let span = match err.field {
            "channel" => e.channel.as_ref(),
            "value" => e.value.as_ref(),
            "severity" => e.severity.as_ref(),
            "actor" => e.actor.as_ref(),
            "note" => e.note.as_ref(),
            _ => None,
        };
        err_at(path, span.unwrap_or(&e.kind), err.message)
    })
}

/// Restarts the engine: saves the whole state to a fresh in-memory store, loads it back and
/// holds the timers over the downtime, as the daemon does at start.
fn restart(state: &State, rules: &RuleSet, now: Ts) -> Result<State, crate::store::StoreError> {
    let mut store = Store::open_in_memory()?;
    let names: Vec<&str> = rules.groups.iter().flat_map(|g| g.rules.iter().map(|r| r.name.as_str())).collect();
    let incidents: Vec<&Incident> = state.incidents.values().chain(state.earlier.values().flatten()).collect();
    store.commit(state, &Commit { rules: names.clone(), incidents, ..Default::default() })?;
    let mut restarted = store.load_state()?;
    restarted.hold_timers(&names, now);
    Ok(restarted)
}

fn run_test(engine: &Engine, rules: &RuleSet, default_interval: Duration, t: &PreparedTest, options: &RunOptions) -> TestOutcome {
    let mut failures = Vec::new();
    let mut explanations = Vec::new();
    // The annotations of each instance's last firing decision (what was sent).
    let mut sent: HashMap<(String, Subject), BTreeMap<String, String>> = HashMap::new();
    let end = t.expects.iter().map(|e| e.at).chain(t.events.iter().map(|e| e.0)).max().unwrap_or(0);
    // Timeline: (time, order, what). At equal times: events, then evaluations, then checks.
    enum Step {
        Restart,
        Event(usize),
        Eval(usize),
        Check(usize),
    }
    let mut timeline: Vec<(Ts, u8, Step)> = Vec::new();
    for &(_, until) in &t.downtime {
        timeline.push((until, 0, Step::Restart));
    }
    for (i, e) in t.events.iter().enumerate() {
        timeline.push((e.0, 1, Step::Event(i)));
    }
    for (gi, g) in rules.groups.iter().enumerate() {
        let iv = ms(g.interval_or(default_interval)).max(1);
        let mut at = 0;
        while at <= end {
            if !t.downtime.iter().any(|(from, until)| (*from..*until).contains(&at)) {
                timeline.push((at, 2, Step::Eval(gi)));
            }
            at += iv;
        }
    }
    for (i, e) in t.expects.iter().enumerate() {
        timeline.push((e.at, 3, Step::Check(i)));
    }
    timeline.sort_by_key(|(at, order, _)| (*at, *order));

    let mut state = State::default();
    for (at, _, step) in timeline {
        match step {
            Step::Restart => match restart(&state, rules, at) {
                Ok(s) => state = s,
                Err(e) => failures.push(format!("at {}: restart failed: {e}", PromDuration(Duration::from_millis(at as u64)))),
            },
            Step::Event(i) => {
                let (_, subject, ev, id) = &t.events[i];
                let applied = match id {
                    Some(id) => state.apply_event_by_id(id, ev, at),
                    None => state.apply_event(subject, ev, at),
                };
                if let Err(e) = applied {
                    failures.push(format!("at {}: event {} for {subject} failed: {e}", PromDuration(Duration::from_millis(at as u64)), ev.kind()));
                }
            }
            Step::Eval(gi) => {
                let g = &rules.groups[gi];
                let mut input = GroupInput::new(g);
                for slot in 0..g.slots.len() {
                    if let Some(per_subject) = t.series.get(&(gi, slot)) {
                        let idx = (at / t.interval) as usize;
                        let m = per_subject.iter().filter_map(|(s, v)| v.get(idx).copied().flatten().map(|x| (s.clone(), x))).collect();
                        input.slots[slot] = SlotValues::Series(std::sync::Arc::new(m));
                    }
                }
                let out = engine.evaluate_group(g, &input, &mut state, at);
                for d in out.decisions.into_iter().filter(|d| d.status == DecisionStatus::Firing) {
                    sent.insert((d.rule, d.subject), d.annotations);
                }
                if let Some(rule) = options.explain.as_ref().and_then(|n| g.rules.iter().find(|r| &r.name == n)) {
                    for subject in t.subjects.iter().filter(|s| s.has_label_names(&g.subject_labels)) {
                        explanations.push(crate::engine::explain::explain(g, rule, subject, &input, &state, at).text());
                    }
                }
            }
            Step::Check(i) => {
                let e = &t.expects[i];
                let firing: BTreeSet<(String, Subject)> = state.firing().into_iter().map(|(r, s)| (r.to_string(), s.clone())).collect();
                if let Some(mut msg) = check(e, &firing) {
                    msg.push_str(&explain(rules, &state, e, &firing, at));
                    failures.push(msg);
                }
                for (inst, want) in &e.annotations {
                    let got = sent.get(inst);
                    if firing.contains(inst) && got != Some(want) {
                        let show = |m: Option<&BTreeMap<String, String>>| serde_json::to_string_pretty(&m).unwrap_or_default().replace('\n', "\n      ");
                        failures.push(format!("at {}:\n    annotations of {}{}:\n      expected {}\n      got      {}", e.at_text, inst.0, inst.1, show(Some(want)), show(got)));
                    }
                }
            }
        }
    }
    TestOutcome { name: t.name.clone(), failures, explanations }
}

/// The state at check time of every instance the check is about (expected, or fired against
/// expectation): pending since when and how long `for` still needs, firing since when, or
/// inactive. Tells "the hold is too long" from "the condition never held".
fn explain(rules: &RuleSet, state: &State, e: &Expect, firing: &BTreeSet<(String, Subject)>, now: Ts) -> String {
    let about: BTreeSet<&(String, Subject)> = match e.kind {
        ExpectKind::Excludes => e.instances.intersection(firing).collect(),
        _ => e.instances.iter().chain(firing.difference(&e.instances)).collect(),
    };
    let at = |t: Ts| PromDuration(Duration::from_millis(t.max(0) as u64)).to_string();
    let mut out = String::from("    rule states:\n");
    for (rule, subject) in about {
        let r = rules.groups.iter().flat_map(|g| &g.rules).find(|r| &r.name == rule);
        let inst = state.instances.get(rule).and_then(|m| m.get(subject));
        let line = match (inst, r) {
            (_, None) => "no such rule".to_string(),
            (None, Some(_)) => "inactive (condition not true at the last evaluation)".to_string(),
            (Some(i), Some(r)) if i.phase == crate::engine::Phase::Pending => {
                let need = i.active_at + ms(r.for_);
                format!(
                    "pending since {} (`for: {}` needs it true until {}, {} more)",
                    at(i.active_at),
                    PromDuration(r.for_),
                    at(need),
                    at(need - now)
                )
            }
            (Some(i), Some(r)) => match i.keep_firing_since {
                Some(k) => format!(
                    "firing since {}, condition false since {} (`keep_firing_for: {}`)",
                    at(i.fired_at.unwrap_or(i.active_at)),
                    at(k),
                    PromDuration(r.keep_firing_for)
                ),
                None => format!("firing since {} (pending since {})", at(i.fired_at.unwrap_or(i.active_at)), at(i.active_at)),
            },
        };
        let _ = writeln!(out, "      {rule}{subject}: {line}");
    }
    out
}

fn show(set: &BTreeSet<(String, Subject)>) -> String {
    if set.is_empty() {
        return "      (none)\n".into();
    }
    set.iter().fold(String::new(), |mut s, (r, subj)| {
        let _ = writeln!(s, "      {r}{subj}");
        s
    })
}

fn check(e: &Expect, firing: &BTreeSet<(String, Subject)>) -> Option<String> {
    let (label, missing, unexpected): (&str, BTreeSet<_>, BTreeSet<_>) = match e.kind {
        ExpectKind::Firing => ("firing", e.instances.difference(firing).cloned().collect(), firing.difference(&e.instances).cloned().collect()),
        ExpectKind::Includes => ("includes", e.instances.difference(firing).cloned().collect(), BTreeSet::new()),
        ExpectKind::Excludes => ("excludes", BTreeSet::new(), e.instances.intersection(firing).cloned().collect()),
    };
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut msg = format!("at {}:\n    expected {label}:\n{}    got firing:\n{}", e.at_text, show(&e.instances), show(firing));
    if !missing.is_empty() {
        let _ = write!(msg, "    missing (expected to fire, did not):\n{}", show(&missing));
    }
    if !unexpected.is_empty() {
        let _ = write!(msg, "    unexpected (fired, should not):\n{}", show(&unexpected));
    }
    Some(msg)
}
