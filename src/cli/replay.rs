//! `herald replay`: evaluate the configured rules over a past time range from Prometheus's
//! history and print what would have happened — a timeline and per-incident figures (text), or
//! one JSON object. `--diff OTHER_RULES` prints only what another rule set would change.
//! Never sends, never opens the state database.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;

use super::{EXIT_FAILED, EXIT_USAGE};
use crate::config::{self, daemon::process_env, Config, Diagnostics, PromDuration};
use crate::engine::{ChangeKind, DecisionStatus, Subject, Ts};
use crate::replay::diff::{self, Diff, Item};
use crate::replay::report::{rfc3339, show_duration};
use crate::replay::{self, Outcome, Planned};
use crate::source::MAX_POINTS_PER_SERIES;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `herald replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The configuration file (its `prometheus:` is where history is read).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Start: RFC 3339 (2026-11-20T10:00:00Z) or relative to now (-2h, now-1d).
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// End: RFC 3339 or relative to now (now, -1h).
    #[arg(long, allow_hyphen_values = true)]
    pub to: String,
    /// Evaluate every group at this step instead of its interval (e.g. 1m).
    #[arg(long)]
    pub step: Option<PromDuration>,
    /// Replay a past incident's acks, updates and resolution: a YAML list or JSON lines of
    /// `{at, subject | incident, type, ...}` with the API's event types.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// `text` (a timeline and per-incident figures) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also replay these rule files (paths or globs) over the same history and print only
    /// what differs from the configured rules.
    #[arg(long, value_name = "OTHER_RULES", num_args = 1..)]
    pub diff: Vec<String>,
    /// Points per series per range request (Prometheus allows at most 11,000).
    #[arg(long, default_value_t = replay::DEFAULT_MAX_POINTS, value_parser = clap::value_parser!(i64).range(1..=MAX_POINTS_PER_SERIES))]
    pub max_points: i64,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now().timestamp_millis();
    let config = match config::load_config(&args.config, &process_env) {
        Ok((cfg, _warnings)) => cfg,
        Err(diags) => return Ok(refuse(&diags, "in the configuration")),
    };
    let times = (replay::parse_time(&args.from, now), replay::parse_time(&args.to, now));
    let (from, to) = match times {
        (Ok(f), Ok(t)) => (f.div_euclid(1000) * 1000, t),
        (Err(e), _) => return usage(&format!("--from: {e}")),
        (_, Err(e)) => return usage(&format!("--to: {e}")),
    };
    if to < from {
        return usage(&format!("--to ({}) is before --from ({})", rfc3339(to), rfc3339(from)));
    }
    if args.step.is_some_and(|s| s.as_millis() == 0) {
        return usage("--step must be greater than 0");
    }
    let mut opts = replay::Options::new(from, to);
    opts.step = args.step.map(|s| s.0);
    opts.max_points = args.max_points;
    if let Some(path) = &args.events {
        match replay::load_events(path, now) {
            Ok(e) => opts.events = e,
            Err(diags) => return Ok(refuse(&diags, "in the events file")),
        }
    }
    let other = if args.diff.is_empty() {
        None
    } else {
        match other_rules(&config, &args.diff) {
            Ok(c) => Some(c),
            Err(diags) => return Ok(refuse(&diags, "in the other rules")),
        }
    };
    let source = match super::live_source::LiveSource::new(config.prometheus.as_ref()) {
        Ok(s) => s,
        Err(e) => return usage(&format!("cannot set up the prometheus client: {e}")),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let base = runtime.block_on(replay::replay(&config, &source, &opts));
    let other = other.map(|c| runtime.block_on(replay::replay(&c, &source, &opts)));

    let mut stdout = String::new();
    match (&other, args.format) {
        (None, Format::Text) => text(&mut stdout, &config, &base),
        (None, Format::Json) => stdout = serde_json::to_string_pretty(&json(&base)).expect("serializes") + "\n",
        (Some(o), Format::Text) => diff_text(&mut stdout, &base, o, &args.diff.join(" ")),
        (Some(o), Format::Json) => {
            let d = diff::diff(&base, o);
            stdout = serde_json::to_string_pretty(&diff_json(&d)).expect("serializes") + "\n";
        }
    }
    print!("{stdout}");
    let mut failed = false;
    for o in std::iter::once(&base).chain(other.as_ref()) {
        if args.format == Format::Json {
            for n in &o.notes {
                eprintln!("note: {n}");
            }
        }
        for f in &o.failures {
            failed = true;
            eprintln!(
                "herald replay: {} of group {:?} from {} to {} failed after {} attempt{}: {}; those evaluations saw it as unknown",
                f.signal,
                f.group,
                rfc3339(f.from),
                rfc3339(f.to),
                f.attempts,
                if f.attempts == 1 { "" } else { "s" },
                f.error
            );
        }
    }
    Ok(if failed { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS })
}

fn usage(msg: &str) -> anyhow::Result<ExitCode> {
    eprintln!("herald replay: {msg}");
    Ok(ExitCode::from(EXIT_USAGE))
}

/// Prints located diagnostics; unreadable input is 2, invalid input 1.
fn refuse(diags: &Diagnostics, what: &str) -> ExitCode {
    for d in &diags.0 {
        eprintln!("{d}");
    }
    let n = diags.errors().count();
    eprintln!("herald replay: {n} error{} {what}", if n == 1 { "" } else { "s" });
    ExitCode::from(super::check::exit_code(diags))
}

/// The configuration with its rules replaced by other rule files, checked against it.
fn other_rules(config: &Config, patterns: &[String]) -> Result<Config, Diagnostics> {
    let mut paths = Vec::new();
    let mut diags = Diagnostics::default();
    for p in patterns {
        match crate::testing::expand_glob(std::path::Path::new("."), p) {
            Ok(v) if v.is_empty() => diags.push(config::Diagnostic::error(p, 0, 0, "matches no file")),
            Ok(v) => paths.extend(v),
            Err(e) => diags.push(config::Diagnostic::error(p, 0, 0, e)),
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let (rules, _) = config::load_rule_files(&paths)?;
    let mut checks = config::daemon::cross_check(&rules, &config.receivers, config.prometheus.is_some(), &config.ticket_sources);
    checks.extend(config::daemon::check_alert_signals(&rules, &config.integrations.alertmanager));
    if checks.has_errors() {
        return Err(checks);
    }
    let mut other = config.clone();
    other.rules = rules;
    other.rule_files = paths;
    Ok(other)
}


fn status_str(s: DecisionStatus) -> &'static str {
    match s {
        DecisionStatus::Firing => "firing",
        DecisionStatus::Resolved => "resolved",
    }
}

// --- JSON -----------------------------------------------------------------------------------

#[derive(Serialize)]
struct JsonOutcome<'a> {
    transitions: Vec<JsonTransition<'a>>,
    incidents: Vec<JsonIncident<'a>>,
    notifications: Vec<JsonNotification<'a>>,
}

#[derive(Serialize)]
struct JsonTransition<'a> {
    at: String,
    rule: &'a str,
    subject: &'a Subject,
    state: &'static str,
}

#[derive(Serialize)]
struct JsonIncident<'a> {
    id: &'a str,
    subject: Option<&'a Subject>,
    opened_at: String,
    resolved_at: Option<String>,
}

#[derive(Serialize)]
struct JsonNotification<'a> {
    at: String,
    rule: &'a str,
    subject: &'a Subject,
    receiver: &'a str,
    status: &'static str,
}

fn json(o: &Outcome) -> JsonOutcome<'_> {
    JsonOutcome {
        transitions: o.transitions.iter().map(|t| JsonTransition { at: rfc3339(t.at), rule: &t.rule, subject: &t.subject, state: t.to.as_str() }).collect(),
        incidents: o
            .incidents
            .iter()
            .map(|i| JsonIncident { id: &i.id, subject: i.subject.as_ref(), opened_at: rfc3339(i.opened_at), resolved_at: i.resolved_at.map(rfc3339) })
            .collect(),
        notifications: o.sent().map(json_notification).collect(),
    }
}

fn json_notification(n: &Planned) -> JsonNotification<'_> {
    JsonNotification { at: rfc3339(n.at), rule: &n.rule, subject: &n.subject, receiver: &n.receiver, status: status_str(n.status) }
}

#[derive(Serialize)]
struct JsonDiff {
    removed: serde_json::Value,
    added: serde_json::Value,
}

fn diff_json(d: &Diff) -> JsonDiff {
    let side = |items: &[Item]| {
        let mut t = Vec::new();
        let mut i = Vec::new();
        let mut n = Vec::new();
        for it in items {
            match it {
                Item::Transition { at, subject, rule, state } => {
                    t.push(serde_json::json!({"at": rfc3339(*at), "rule": rule, "subject": subject_json(subject), "state": state.as_str()}))
                }
                Item::Incident { opened_at, subject, resolved_at, id } => i.push(
                    serde_json::json!({"id": id, "subject": subject_json(subject), "opened_at": rfc3339(*opened_at), "resolved_at": resolved_at.map(rfc3339)}),
                ),
                Item::Notification { at, subject, rule, receiver, status } => n.push(
                    serde_json::json!({"at": rfc3339(*at), "rule": rule, "subject": subject_json(subject), "receiver": receiver, "status": status}),
                ),
            }
        }
        serde_json::json!({"transitions": t, "incidents": i, "notifications": n})
    };
    JsonDiff { removed: side(&d.removed), added: side(&d.added) }
}

fn subject_json(key: &str) -> serde_json::Value {
    Subject::parse_key(key).map_or(serde_json::Value::Null, |s| serde_json::to_value(&s).expect("serializes"))
}

// --- text -----------------------------------------------------------------------------------

/// Left-aligned columns.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn notification_text(n: &Planned) -> String {
    let kind = if n.status == DecisionStatus::Resolved {
        "resolved"
    } else if n.repeat {
        "repeat"
    } else if n.page {
        "page"
    } else {
        "prompt"
    };
    let mut s = format!("{kind} → {}", n.receiver);
    if n.at != n.decided_at && !n.repeat {
        let _ = write!(s, " at {}", rfc3339(n.at));
    }
    if let Some(why) = &n.suppressed {
        let _ = write!(s, " (suppressed: {why})");
    }
    s
}

fn text(out: &mut String, config: &Config, o: &Outcome) {
    let groups = config.rules.groups.len();
    let _ = writeln!(
        out,
        "Replay {} → {}: {groups} group{}, {} evaluations, {} range requests in {} chunk{}; nothing was sent.",
        rfc3339(o.from),
        rfc3339(o.to),
        if groups == 1 { "" } else { "s" },
        o.evaluations,
        o.requests,
        o.chunks,
        if o.chunks == 1 { "" } else { "s" },
    );
    for n in &o.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for f in &o.failures {
        let _ = writeln!(out, "FAILED: {} of group {:?} from {} to {}: {} (unknown there)", f.signal, f.group, rfc3339(f.from), rfc3339(f.to), f.error);
    }
    let _ = writeln!(out);

    // The timeline: (time, order, row). Events, then transitions with their notifications,
    // then incident changes, at each instant.
    let mut rows: Vec<(Ts, u8, usize, Vec<String>)> = Vec::new();
    for (i, e) in o.events.iter().enumerate() {
        let subject = e.subject.as_ref().map(Subject::to_string).unwrap_or_default();
        let what = match (&e.error, &e.incident) {
            (Some(err), _) => format!("NOT APPLIED: {err} ({})", e.location),
            (None, Some(id)) => format!("on {id}"),
            (None, None) => String::new(),
        };
        rows.push((e.at, 0, i, vec![rfc3339(e.at), subject, format!("event {}", e.kind), what]));
    }
    // Notifications by (decision time, rule, subject); repeats on their own rows.
    let mut by_decision: std::collections::HashMap<(Ts, &str, &Subject), Vec<&Planned>> = std::collections::HashMap::new();
    for (i, n) in o.notifications.iter().enumerate() {
        if n.repeat {
            rows.push((n.at, 1, i, vec![rfc3339(n.at), n.subject.to_string(), n.rule.clone(), "still firing".into(), notification_text(n)]));
        } else {
            by_decision.entry((n.decided_at, n.rule.as_str(), &n.subject)).or_default().push(n);
        }
    }
    for (i, t) in o.transitions.iter().enumerate() {
        let notes = by_decision.get(&(t.at, t.rule.as_str(), &t.subject)).map(|v| v.iter().map(|n| notification_text(n)).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        rows.push((t.at, 1, i, vec![rfc3339(t.at), t.subject.to_string(), t.rule.clone(), format!("{} → {}", t.from.as_str(), t.to.as_str()), notes]));
    }
    for (i, c) in o.incident_events.iter().enumerate() {
        let what = match c.kind {
            ChangeKind::Opened => "opened",
            ChangeKind::Resolved => "resolved",
            ChangeKind::Updated => "updated",
        };
        rows.push((c.at, 2, i, vec![rfc3339(c.at), c.subject.to_string(), format!("incident {}", c.id), what.into()]));
    }
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    if rows.is_empty() {
        let _ = writeln!(out, "Nothing happened: no rule left the inactive state.");
    } else {
        let mut table_rows = vec![vec!["TIME".into(), "SUBJECT".into(), "RULE".into(), "TRANSITION".into(), "NOTIFICATION".into()]];
        table_rows.extend(rows.into_iter().map(|r| r.3));
        table(out, &table_rows);
    }

    // Per-incident figures.
    let summaries = o.summaries();
    if !summaries.is_empty() {
        let _ = writeln!(out, "\nIncidents (targets: first public update 15m, updates at least every 30m, ack 30m, legal review 60m):");
    }
    for (r, s) in o.incidents.iter().zip(&summaries) {
        let subject = r.subject.as_ref().map(Subject::to_string).unwrap_or_default();
        let severity = r.severity.map(|s| s.as_str()).unwrap_or("");
        let resolved = match r.resolved_at {
            Some(t) => format!("resolved {} (open {})", rfc3339(t), show_duration(t - r.opened_at)),
            None => "still open at the end".into(),
        };
        let by = r.activating_rule.as_deref().map(|x| format!(" by {x}")).unwrap_or_else(|| " by hand".into());
        let _ = writeln!(out, "\n{} {subject} {severity}: opened {}{by}, {resolved}", r.id, rfc3339(r.opened_at));
        let activation = match s.time_to_activation.seconds {
            Some(_) => s.time_to_activation.value_text(),
            None => "-".into(),
        };
        let intervals: Vec<String> = s.update_intervals.iter().map(|x| show_duration((x * 1000.0) as Ts)).collect();
        let rows = vec![
            vec!["  time to activation".into(), activation, String::new()],
            vec!["  first public update".into(), s.first_public_update.value_text(), s.first_public_update.verdict_text()],
            vec![
                "  largest update gap".into(),
                s.largest_update_gap.value_text(),
                if intervals.is_empty() { s.largest_update_gap.verdict_text() } else { format!("{} (intervals: {})", s.largest_update_gap.verdict_text(), intervals.join(", ")) },
            ],
            vec!["  ack".into(), s.ack.value_text(), s.ack.verdict_text()],
            vec!["  legal review".into(), if s.legal_review.verdict == replay::report::Verdict::NotApplicable { "-".into() } else { s.legal_review.value_text() }, if s.legal_review.verdict == replay::report::Verdict::NotApplicable { "not requested".into() } else { s.legal_review.verdict_text() }],
        ];
        table(out, &rows);
    }
    let sent = o.sent().count();
    let suppressed = o.notifications.len() - sent;
    let _ = writeln!(
        out,
        "\n{} transition{}, {} incident{}, {sent} notification{} would have been sent{}.",
        o.transitions.len(),
        if o.transitions.len() == 1 { "" } else { "s" },
        o.incidents.len(),
        if o.incidents.len() == 1 { "" } else { "s" },
        if sent == 1 { "" } else { "s" },
        if suppressed > 0 { format!(" ({suppressed} more suppressed)") } else { String::new() },
    );
}

fn diff_text(out: &mut String, base: &Outcome, other: &Outcome, other_name: &str) {
    let d = diff::diff(base, other);
    let _ = writeln!(out, "Replay {} → {}: configured rules (-) vs {other_name} (+); only differences are shown.", rfc3339(base.from), rfc3339(base.to));
    for n in base.notes.iter().chain(other.notes.iter().filter(|n| !base.notes.contains(n))) {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out);
    if d.is_empty() {
        let _ = writeln!(out, "No difference: both rule sets make the same transitions, incidents and notifications.");
        return;
    }
    let mut rows: Vec<(Ts, u8, Vec<String>)> = Vec::new();
    for (sign, items) in [("-", &d.removed), ("+", &d.added)] {
        for it in items {
            let row = match it {
                Item::Transition { at, subject, rule, state } => vec![sign.into(), rfc3339(*at), subject.clone(), rule.clone(), format!("→ {}", state.as_str())],
                Item::Incident { opened_at, subject, resolved_at, id } => vec![
                    sign.into(),
                    rfc3339(*opened_at),
                    subject.clone(),
                    format!("incident {id}"),
                    resolved_at.map_or_else(|| "opened, still open at the end".into(), |r| format!("opened, resolved {}", rfc3339(r))),
                ],
                Item::Notification { at, subject, rule, receiver, status } => {
                    vec![sign.into(), rfc3339(*at), subject.clone(), rule.clone(), format!("{status} notification → {receiver}")]
                }
            };
            rows.push((it.at(), if sign == "-" { 0 } else { 1 }, row));
        }
    }
    rows.sort_by_key(|r| (r.0, r.1));
    table(out, &rows.into_iter().map(|r| r.2).collect::<Vec<_>>());
    let count = |items: &[Item], f: fn(&Item) -> bool| items.iter().filter(|i| f(i)).count();
    let is_n: fn(&Item) -> bool = |i| matches!(i, Item::Notification { .. });
    let is_i: fn(&Item) -> bool = |i| matches!(i, Item::Incident { .. });
    let _ = writeln!(
        out,
        "\nnotifications: {} only with the configured rules, {} only with {other_name}; incidents: {} and {}.",
        count(&d.removed, is_n),
        count(&d.added, is_n),
        count(&d.removed, is_i),
        count(&d.added, is_i),
    );
}
