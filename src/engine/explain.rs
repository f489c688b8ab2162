//! Why a rule does or does not fire for one subject: the signals it read (or why each has no
//! value), every clause of its `when` with its truth (true / false / unknown), the `for` and
//! `keep_firing_for` progress, the instance state and, for the incident the rule opened, the
//! `resolve_after` countdown.
//!
//! Pure, like the rest of the engine: [`explain`] reads an evaluation's input and the state
//! after it. The daemon's API and `herald test --explain` call it; neither re-derives a rule's
//! semantics.

use std::fmt::Write as _;

use serde::Serialize;

use super::{GroupInput, Phase, SlotValues, State, Subject, Ts, UnknownReason};
use crate::config::{Group, PromDuration, Rule};
use crate::expr::{BinOp, Ctx, Expr, IncidentField, Truth};

/// One evaluation of one rule for one subject, explained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// Evaluation time (unix ms).
    pub at: Ts,
    pub rule: String,
    pub subject: Subject,
    /// The signals the condition reads.
    pub signals: Vec<SignalValue>,
    /// The condition, clause by clause.
    pub when: Clause,
    /// Why the condition is unknown, when it is.
    pub unknown_reason: Option<UnknownReason>,
    /// The instance after the evaluation: inactive, pending or firing.
    pub state: Phase,
    /// `for`: how long the condition has been true (known evaluations only) of how long.
    pub r#for: Option<Progress>,
    /// `keep_firing_for`: how long the condition has been false while firing, of how long.
    pub keep_firing_for: Option<Progress>,
    /// The incident this rule opened, if it is open: its status and `resolve_after` countdown.
    pub incident: Option<IncidentProgress>,
}

/// One signal's value, or why it has none.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignalValue {
    pub name: String,
    pub value: Option<f64>,
    /// Why there is no value: `absent`, `query_failed: …` or `nan`.
    pub why: Option<String>,
}

/// A clause of `when` and its truth; `and`/`or` chains list their operands as clauses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Clause {
    pub text: String,
    /// `true`, `false` or `unknown`.
    pub truth: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clauses: Vec<Clause>,
}

/// Time counted toward a threshold, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub elapsed_s: f64,
    pub needed_s: f64,
}

/// The countdown of an incident opened by the explained rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentProgress {
    pub id: String,
    pub status: &'static str,
    /// Known-inactive time counted toward `resolve_after` (absent while the rule is live).
    pub resolve_after: Option<Progress>,
    /// A person set the status: Herald will not move it or resolve the incident itself.
    pub status_by_person: bool,
}

fn truth_name(t: Truth) -> &'static str {
    match t {
        Truth::True => "true",
        Truth::False => "false",
        Truth::Unknown => "unknown",
    }
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// Explains rule `rule` of `group` for `subject`, from an evaluation's input and the state
/// after it (incident fields are read as they are after the evaluation).
pub fn explain(group: &Group, rule: &Rule, subject: &Subject, input: &GroupInput, state: &State, now: Ts) -> Explanation {
    let values: Vec<Option<f64>> = input
        .slots
        .iter()
        .map(|s| s.get(subject).filter(|x| !x.is_nan()))
        .collect();
    let slots = rule.when.signals();
    let signals = slots
        .iter()
        .map(|&slot| {
            let why = match &input.slots[slot] {
                SlotValues::Unavailable(e) => Some(format!("query_failed: {e}")),
                SlotValues::Constant(_) => None,
                SlotValues::Series(m) => match m.get(subject) {
                    None => Some(format!("absent: the query returned {} series, none for this subject", m.len())),
                    Some(v) if v.is_nan() => Some("nan".into()),
                    Some(_) => None,
                },
                SlotValues::SeriesOr { .. } => None,
            };
            SignalValue { name: group.slots[slot].clone(), value: values[slot], why }
        })
        .collect();
    let label_values: Vec<&str> = group.subject_labels.iter().map(|l| subject.get(l).unwrap_or("")).collect();
    let view = state.view(subject, now);
    let ctx = Ctx { signals: &values, subject: &label_values, incident: &view, now: now as f64 / 1000.0 };
    let when = clause(&rule.when, &ctx, group);
    let truth = rule.when.truth(&ctx);
    let instance = state.instances.get(&rule.name).and_then(|m| m.get(subject));
    let phase = instance.map_or(Phase::Inactive, |i| i.phase);
    let for_ms = rule.for_.as_millis() as i64;
    let keep_ms = rule.keep_firing_for.as_millis() as i64;
    let r#for = (for_ms > 0).then(|| {
        let elapsed = match instance {
            Some(i) if i.phase == Phase::Pending => now - i.active_at,
            Some(i) => i.fired_at.unwrap_or(i.active_at) - i.active_at,
            None => 0,
        };
        Progress { elapsed_s: secs(elapsed), needed_s: secs(for_ms) }
    });
    let keep_firing_for = (keep_ms > 0 && phase == Phase::Firing).then(|| Progress { elapsed_s: secs(instance.and_then(|i| i.keep_firing_since).map_or(0, |k| now - k)), needed_s: secs(keep_ms) });
    let incident = state.incidents.get(subject).filter(|i| i.activating_rule.as_deref() == Some(rule.name.as_str()) && i.is_open()).map(|i| IncidentProgress {
        id: i.id.clone(),
        status: i.status.as_str(),
        resolve_after: i.clear_since.map(|c| Progress { elapsed_s: secs(now - c), needed_s: secs(rule.resolve_after.as_millis() as i64) }),
        status_by_person: i.status_by_person,
    });
    Explanation {
        at: now,
        rule: rule.name.clone(),
        subject: subject.clone(),
        signals,
        when,
        unknown_reason: (truth == Truth::Unknown).then(|| UnknownReason::of(&slots, input, subject)),
        state: phase,
        r#for,
        keep_firing_for,
        incident,
    }
}

fn clause(e: &Expr, ctx: &Ctx<'_>, group: &Group) -> Clause {
    let mut operands = Vec::new();
    match e {
        Expr::And(..) => flatten(e, true, &mut operands),
        Expr::Or(..) => flatten(e, false, &mut operands),
        _ => {}
    }
    Clause { text: render(e, group), truth: truth_name(e.truth(ctx)), clauses: operands.into_iter().map(|o| clause(o, ctx, group)).collect() }
}

fn flatten<'e>(e: &'e Expr, and: bool, out: &mut Vec<&'e Expr>) {
    match (e, and) {
        (Expr::And(a, b), true) | (Expr::Or(a, b), false) => {
            flatten(a, and, out);
            flatten(b, and, out);
        }
        _ => out.push(e),
    }
}

/// Writes a condition back as text (names resolved, parentheses where needed).
pub fn render(e: &Expr, group: &Group) -> String {
    let mut s = String::new();
    write_expr(&mut s, e, group, 0);
    s
}

fn op_str(op: BinOp) -> (&'static str, u8) {
    match op {
        BinOp::Or => ("or", 1),
        BinOp::And => ("and", 2),
        BinOp::Eq => ("==", 4),
        BinOp::Ne => ("!=", 4),
        BinOp::Lt => ("<", 4),
        BinOp::Le => ("<=", 4),
        BinOp::Gt => (">", 4),
        BinOp::Ge => (">=", 4),
        BinOp::In => ("in", 4),
        BinOp::NotIn => ("not in", 4),
        BinOp::Add => ("+", 5),
        BinOp::Sub => ("-", 5),
        BinOp::Mul => ("*", 6),
        BinOp::Div => ("/", 6),
        BinOp::FloorDiv => ("//", 6),
        BinOp::Rem => ("%", 6),
        BinOp::Pow => ("**", 7),
    }
}

fn write_expr(s: &mut String, e: &Expr, g: &Group, parent: u8) {
    let bin = |s: &mut String, op: BinOp, a: &Expr, b: &Expr| {
        let (txt, prec) = op_str(op);
        if prec < parent {
            s.push('(');
        }
        write_expr(s, a, g, prec);
        let _ = write!(s, " {txt} ");
        write_expr(s, b, g, prec + 1);
        if prec < parent {
            s.push(')');
        }
    };
    match e {
        Expr::Num(n) => {
            let _ = write!(s, "{n}");
        }
        Expr::Str(t) => {
            let _ = write!(s, "{t:?}");
        }
        Expr::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Expr::None => s.push_str("none"),
        Expr::Signal(i) => s.push_str(&g.slots[*i]),
        Expr::SubjectLabel(i) => {
            let _ = write!(s, "subject.{}", g.subject_labels[*i]);
        }
        Expr::Incident(f) => {
            let name = IncidentField::ALL.iter().find(|(_, x)| x == f).map_or("?", |(n, _)| n);
            let _ = write!(s, "incident.{name}");
        }
        Expr::Now => s.push_str("now"),
        Expr::Neg(a) => {
            s.push('-');
            write_expr(s, a, g, 8);
        }
        Expr::Not(a) => {
            if parent > 3 {
                s.push('(');
            }
            s.push_str("not ");
            write_expr(s, a, g, 3);
            if parent > 3 {
                s.push(')');
            }
        }
        Expr::And(a, b) => bin(s, BinOp::And, a, b),
        Expr::Or(a, b) => bin(s, BinOp::Or, a, b),
        Expr::Bin(op, a, b) => bin(s, *op, a, b),
        Expr::IsDefined(a, want) => test(s, a, g, if *want { "is defined" } else { "is not defined" }),
        Expr::IsNone(a, want) => test(s, a, g, if *want { "is none" } else { "is not none" }),
        Expr::IsNumber(a, want) => test(s, a, g, if *want { "is number" } else { "is not number" }),
        Expr::If(c, t, e) => {
            s.push('(');
            write_expr(s, t, g, 0);
            s.push_str(" if ");
            write_expr(s, c, g, 0);
            if let Some(e) = e {
                s.push_str(" else ");
                write_expr(s, e, g, 0);
            }
            s.push(')');
        }
        Expr::List(items) => {
            s.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_expr(s, it, g, 0);
            }
            s.push(']');
        }
    }
}

fn test(s: &mut String, a: &Expr, g: &Group, what: &str) {
    write_expr(s, a, g, 9);
    s.push(' ');
    s.push_str(what);
}

impl Explanation {
    /// A plain-text rendering for people (the CLI prints it; the API returns it as `text`).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{} {} at {}: {}", self.rule, self.subject, show_time(self.at), self.state.as_str());
        for sig in &self.signals {
            match (sig.value, &sig.why) {
                (Some(v), _) => {
                    let _ = writeln!(s, "  signal {} = {v}", sig.name);
                }
                (None, Some(why)) => {
                    let _ = writeln!(s, "  signal {}: no value ({why})", sig.name);
                }
                (None, None) => {
                    let _ = writeln!(s, "  signal {}: no value", sig.name);
                }
            }
        }
        write_clause(&mut s, &self.when, 1, "when");
        if let Some(r) = self.unknown_reason {
            let _ = writeln!(s, "  unknown because: {}", r.as_str());
        }
        if let Some(p) = self.r#for {
            let when = match self.state {
                Phase::Pending => format!(": fires at the first evaluation at or after {} if it stays true", show_time(self.at + ((p.needed_s - p.elapsed_s) * 1000.0) as Ts)),
                Phase::Inactive => String::from(": starts counting when the condition is true"),
                Phase::Firing => String::new(),
            };
            let _ = writeln!(s, "  for: {} of {}{when}", dur(p.elapsed_s), dur(p.needed_s));
        }
        if let Some(p) = self.keep_firing_for {
            let _ = writeln!(s, "  keep_firing_for: false for {} of {}", dur(p.elapsed_s), dur(p.needed_s));
        }
        if let Some(i) = &self.incident {
            let pinned = if i.status_by_person { ", status set by a person: Herald will not resolve it" } else { "" };
            match i.resolve_after {
                Some(p) => {
                    let _ = writeln!(s, "  incident {} {}: known-inactive {} of resolve_after {}{pinned}", i.id, i.status, dur(p.elapsed_s), dur(p.needed_s));
                }
                None => {
                    let _ = writeln!(s, "  incident {} {}: resolve_after countdown not running (the rule is live, unknown, or a signal it reads has no value){pinned}", i.id, i.status);
                }
            }
        }
        s
    }
}

/// A live evaluation time as RFC 3339; a `herald test` time (from 0) as a duration.
fn show_time(at: Ts) -> String {
    const YEAR_MS: Ts = 365 * 86_400_000;
    match chrono::DateTime::from_timestamp_millis(at) {
        Some(t) if at >= YEAR_MS => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        _ => dur(at as f64 / 1000.0),
    }
}

fn dur(secs: f64) -> String {
    PromDuration(std::time::Duration::from_millis((secs.max(0.0) * 1000.0) as u64)).to_string()
}

fn write_clause(s: &mut String, c: &Clause, depth: usize, label: &str) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(s, "{pad}{label}{:<8} {}", format!(" {}", c.truth), c.text);
    for sub in &c.clauses {
        write_clause(s, sub, depth + 1, "-");
    }
}
