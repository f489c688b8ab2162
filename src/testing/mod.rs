//! `herald test`: rule unit tests on synthetic signals (spec §5).
//!
//! A test file names rule files and lists tests; each test feeds series (promtool notation)
//! and incident events for some subjects, then asserts which rule instances fire at given
//! times. The driver walks a timeline and calls the same [`Engine::evaluate_group`] the daemon
//! uses; it never re-implements rule semantics. No I/O beyond reading the files.

mod series;

pub use series::parse_series;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::rules::{duration_at, err_at};
use crate::config::yaml::{self, RawInstance, Spanned, TestFile};
use crate::config::{load_rule_files, Diagnostic, Diagnostics, PromDuration, RuleSet, Severity};
use crate::engine::{Channel, Engine, Event, GroupInput, SlotValues, State, Status, Subject, Ts};

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub name: String,
    /// Human-readable failures; empty when the test passed.
    pub failures: Vec<String>,
}

/// Why a test file could not be run at all.
#[derive(Debug)]
pub enum FileError {
    /// The file (or a rule file it names) could not be read: exit code 2.
    Unreadable(Diagnostics),
    /// The file or its rules are invalid: exit code 1.
    Invalid(Diagnostics),
}

/// Per (group index, slot): each subject's series.
type SeriesBySlot = HashMap<(usize, usize), HashMap<Subject, Vec<Option<f64>>>>;

struct PreparedTest {
    name: String,
    /// (group index, slot) → subject → series.
    series: SeriesBySlot,
    interval: Ts,
    events: Vec<(Ts, Subject, Event)>,
    expects: Vec<Expect>,
}

struct Expect {
    at: Ts,
    at_text: String,
    kind: ExpectKind,
    instances: BTreeSet<(String, Subject)>,
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
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::Unreadable(Diagnostics(vec![Diagnostic::error(&shown, 0, 0, format!("cannot read test file: {e}"))])))?;
    let file: TestFile = yaml::parse(&shown, &text).map_err(|d| FileError::Invalid(Diagnostics(vec![d])))?;
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
    if diags.has_errors() {
        return Err(FileError::Unreadable(diags));
    }
    let rules = match load_rule_files(&rule_paths) {
        Ok((r, _)) => r,
        Err(d) => return Err(FileError::Invalid(d)),
    };
    let default_interval = match &file.evaluation_interval {
        Some(s) => duration_at(&shown, s, &mut diags).unwrap_or(Duration::from_secs(60)),
        None => Duration::from_secs(60),
    };
    let mut prepared = Vec::new();
    for t in &file.tests {
        if let Some(p) = prepare(&shown, t, &rules, default_interval, &mut diags) {
            prepared.push(p);
        }
    }
    if diags.has_errors() {
        return Err(FileError::Invalid(diags));
    }
    let engine = Engine::new();
    Ok(prepared.iter().map(|t| run_test(&engine, &rules, default_interval, t)).collect())
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
        Some(s) => duration_at(path, s, diags).unwrap_or(default_interval),
        None => default_interval,
    };
    if interval.is_zero() {
        diags.push(err_at(path, t.interval.as_ref().unwrap(), "interval must be greater than 0"));
    }
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
            let at = parse_at(path, &e.at, diags);
            match parse_event(path, e) {
                Ok(ev) => {
                    if let Some(at) = at {
                        events.push((at, subject.clone(), ev));
                    }
                }
                Err(d) => diags.push(d),
            }
        }
    }
    events.sort_by_key(|(at, _, _)| *at);
    let rule_names: BTreeSet<&str> = rules.groups.iter().flat_map(|g| g.rules.iter().map(|r| r.name.as_str())).collect();
    let mut expects = Vec::new();
    for e in &t.expect {
        // A bad `at` is reported, and the rest of the expectation is still checked.
        let at = parse_at(path, &e.at, diags);
        let lists = [(ExpectKind::Firing, &e.firing), (ExpectKind::Includes, &e.includes), (ExpectKind::Excludes, &e.excludes)];
        if lists.iter().all(|(_, l)| l.is_none()) {
            diags.push(err_at(path, &e.at, "an expectation needs `firing`, `includes` or `excludes`"));
        }
        for (kind, list) in lists {
            let Some(list) = list else { continue };
            let mut instances = BTreeSet::new();
            for inst in list {
                if let Some(i) = resolve_instance(path, inst, &subjects, &rule_names, diags) {
                    instances.insert(i);
                }
            }
            if let Some(at) = at {
                expects.push(Expect { at, at_text: e.at.value.clone(), kind, instances });
            }
        }
    }
    if diags.errors().count() > before {
        return None;
    }
    Some(PreparedTest { name: t.name.value.clone(), series, interval: ms(interval), events, expects })
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

pub(crate) fn parse_event(path: &str, e: &yaml::RawEvent) -> Result<Event, Diagnostic> {
    let need = |field: &Option<Spanned<String>>, name: &str| {
        field.as_ref().map(|s| s.value.clone()).ok_or_else(|| err_at(path, &e.kind, format!("event {:?} needs `{name}`", e.kind.value)))
    };
    Ok(match e.kind.value.as_str() {
        "declare" => {
            let sev = need(&e.severity, "severity")?;
            let severity = Severity::parse(&sev).ok_or_else(|| err_at(path, e.severity.as_ref().unwrap(), format!("unknown severity {sev:?}")))?;
            Event::Declare { severity, security: e.security.unwrap_or(false) }
        }
        "ack" => Event::Ack,
        "public_update" => {
            let ch = need(&e.channel, "channel")?;
            let channel = Channel::parse(&ch).ok_or_else(|| {
                err_at(path, e.channel.as_ref().unwrap(), format!("unknown channel {ch:?} (valid: status_page, email, social, internal)"))
            })?;
            Event::PublicUpdate { channel }
        }
        "status" => {
            let v = need(&e.value, "value")?;
            let value = Status::parse(&v).ok_or_else(|| {
                err_at(path, e.value.as_ref().unwrap(), format!("unknown status {v:?} (valid: investigating, identified, monitoring, resolved)"))
            })?;
            Event::Status { value }
        }
        "security" => Event::Security,
        "internal_only" => Event::InternalOnly,
        "legal_requested" => Event::LegalRequested,
        "legal_approved" => Event::LegalApproved,
        "correction" => Event::Correction,
        "false_positive" => Event::FalsePositive,
        "postmortem_published" => Event::PostmortemPublished,
        "resolve" => Event::Resolve,
        other => {
            return Err(err_at(
                path,
                &e.kind,
                format!("unknown event type {other:?} (valid: declare, ack, public_update, status, security, internal_only, legal_requested, legal_approved, correction, false_positive, postmortem_published, resolve)"),
            ))
        }
    })
}

fn run_test(engine: &Engine, rules: &RuleSet, default_interval: Duration, t: &PreparedTest) -> TestOutcome {
    let mut failures = Vec::new();
    let end = t.expects.iter().map(|e| e.at).chain(t.events.iter().map(|e| e.0)).max().unwrap_or(0);
    // Timeline: (time, order, what). At equal times: events, then evaluations, then checks.
    enum Step {
        Event(usize),
        Eval(usize),
        Check(usize),
    }
    let mut timeline: Vec<(Ts, u8, Step)> = Vec::new();
    for (i, e) in t.events.iter().enumerate() {
        timeline.push((e.0, 0, Step::Event(i)));
    }
    for (gi, g) in rules.groups.iter().enumerate() {
        let iv = ms(g.interval_or(default_interval)).max(1);
        let mut at = 0;
        while at <= end {
            timeline.push((at, 1, Step::Eval(gi)));
            at += iv;
        }
    }
    for (i, e) in t.expects.iter().enumerate() {
        timeline.push((e.at, 2, Step::Check(i)));
    }
    timeline.sort_by_key(|(at, order, _)| (*at, *order));

    let mut state = State::default();
    for (at, _, step) in timeline {
        match step {
            Step::Event(i) => {
                let (_, subject, ev) = &t.events[i];
                if let Err(e) = state.apply_event(subject, ev, at) {
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
                        input.slots[slot] = SlotValues::Series(m);
                    }
                }
                engine.evaluate_group(g, &input, &mut state, at);
            }
            Step::Check(i) => {
                let e = &t.expects[i];
                let firing: BTreeSet<(String, Subject)> = state.firing().into_iter().map(|(r, s)| (r.to_string(), s.clone())).collect();
                if let Some(msg) = check(e, &firing) {
                    failures.push(msg);
                }
            }
        }
    }
    TestOutcome { name: t.name.clone(), failures }
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
