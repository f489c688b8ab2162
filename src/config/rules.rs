//! Rule files → the validated rule model the engine runs (spec §4).
//!
//! Collects every problem with its location: bad durations, invalid PromQL, conditions that do
//! not parse or name unknown signals, unknown actions or severities, templates that do not
//! compile or use unknown variables, duplicate rule names. Receiver names in `notify` are
//! checked against the config in [`super::daemon`], because rule files can be checked alone.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::template;
use super::yaml::{self, RawGroup, RawRule, RuleFile, Spanned};
use super::{Diagnostic, Diagnostics, PromDuration};
use crate::expr::{self, Expr, Scope};

/// The shortest group or evaluation interval: each evaluation queries every signal and writes
/// the state, so a millisecond interval would hammer Prometheus and the disk.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Default `resolve_after` for rules that open incidents.
pub const DEFAULT_RESOLVE_AFTER: Duration = Duration::from_secs(30 * 60);

/// All rule groups of a configuration.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub groups: Vec<Group>,
}

impl RuleSet {
    /// Checks that `labels` name exactly the subject labels of some group, so an incident
    /// declared with them is one the rules can see (`{team: …}` when every group keys on
    /// `service` would open an incident no rule ever evaluates). The error lists the groups.
    pub fn check_subject<'a>(&self, labels: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        let mut given: Vec<&str> = labels.into_iter().map(String::as_str).collect();
        given.sort_unstable();
        let matches = |g: &Group| {
            let mut want: Vec<&str> = g.subject_labels.iter().map(String::as_str).collect();
            want.sort_unstable();
            want == given
        };
        if self.groups.iter().any(matches) {
            return Ok(());
        }
        let groups: Vec<String> = self.groups.iter().map(|g| format!("{} [{}]", g.name, g.subject_labels.join(", "))).collect();
        Err(format!(
            "subject labels [{}] match no group's `subject` (groups: {}); the rules would never see this incident",
            given.join(", "),
            if groups.is_empty() { "none".to_string() } else { groups.join("; ") }
        ))
    }
}

/// A place in a file, for messages about a rule after loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: String,
    pub line: u64,
    pub col: u64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path, self.line, self.col)
    }
}

/// One group: signals queried once per evaluation, rules decided per subject.
#[derive(Clone, Debug)]
pub struct Group {
    pub name: String,
    /// `None`: the global evaluation interval (or the test file's).
    pub interval: Option<Duration>,
    /// Labels that identify one subject across signals.
    pub subject_labels: Vec<String>,
    pub signals: Vec<Signal>,
    /// Slot names, index = slot; what conditions and templates can name.
    pub slots: Vec<String>,
    pub rules: Vec<Rule>,
    pub location: Location,
}

impl Group {
    /// The interval, with a default for groups that do not set one.
    pub fn interval_or(&self, default: Duration) -> Duration {
        self.interval.unwrap_or(default)
    }
    /// The slot of a signal name.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s == name)
    }
}

/// A named input of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    pub name: String,
    pub slot: usize,
    pub source: SignalSource,
    /// For queries: re-query at most this often, reusing the last values in between
    /// (`None`: every evaluation). For slow-moving signals such as a 1h burn rate.
    pub every: Option<Duration>,
}

/// Where a signal's values come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SignalSource {
    /// One PromQL instant query per evaluation; series keyed by the subject labels.
    Query(String),
    /// The same constant for every subject.
    Value(f64),
    /// A ticket source from the config: provides this slot (count) and `baseline_slot`.
    Tickets { source: String, baseline_slot: usize },
    /// Pushed by Alertmanager's webhook (`alertmanager: true`): an `integrations.alertmanager`
    /// mapping names this signal; a firing alert sets it for its subject, every other subject
    /// reads 0 once Alertmanager has been heard from (see `integrations::alertmanager`).
    Alertmanager,
}

/// What a rule does when it starts firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ActivateCommsLead,
    SuggestUpdate,
    Escalate,
    EngageLegal,
    InternalOnly,
    Notify,
}

impl Action {
    pub const ALL: [Action; 6] =
        [Action::ActivateCommsLead, Action::SuggestUpdate, Action::Escalate, Action::EngageLegal, Action::InternalOnly, Action::Notify];
    /// The name used in rule files, payloads and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ActivateCommsLead => "activate_comms_lead",
            Action::SuggestUpdate => "suggest_update",
            Action::Escalate => "escalate",
            Action::EngageLegal => "engage_legal",
            Action::InternalOnly => "internal_only",
            Action::Notify => "notify",
        }
    }
    /// Whether this action opens an incident when none is open.
    pub fn opens_incident(self) -> bool {
        matches!(self, Action::ActivateCommsLead | Action::EngageLegal)
    }
}

/// How urgent a rule is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
    /// Parses the rule-file spelling.
    pub fn parse(s: &str) -> Option<Severity> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A validated rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique across the whole configuration.
    pub name: String,
    /// The condition as written.
    pub when_src: String,
    pub when: Expr,
    /// Prometheus `for`: how long the condition must hold before firing.
    pub for_: Duration,
    /// Prometheus `keep_firing_for`.
    pub keep_firing_for: Duration,
    /// For incident-opening rules: how long the rule must be inactive before its incident resolves.
    pub resolve_after: Duration,
    pub action: Action,
    pub severity: Severity,
    /// Receiver names.
    pub notify: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Annotation templates (minijinja source).
    pub annotations: BTreeMap<String, String>,
    pub location: Location,
    /// Where each `notify` entry was written, for config-level checks.
    pub notify_locations: Vec<Location>,
}

/// Names a signal cannot take: they mean something else in conditions.
const RESERVED: [&str; 16] =
    ["subject", "incident", "now", "duration", "and", "or", "not", "is", "in", "if", "else", "true", "false", "none", "rule", "values"];

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads, parses and validates rule files. Every problem is reported; the set is returned only
/// when there is no error (with any warnings).
pub fn load_rule_files(paths: &[impl AsRef<Path>]) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let mut sources = Vec::new();
    let mut diags = Diagnostics::default();
    for path in paths {
        let shown = path.as_ref().display().to_string();
        match std::fs::read_to_string(path.as_ref()) {
            Ok(t) => sources.push((shown, t)),
            Err(e) => diags.push(Diagnostic::error(&shown, 0, 0, format!("cannot read rule file: {e}"))),
        }
    }
    match parse_rule_sources(&sources) {
        Ok((set, warnings)) if !diags.has_errors() => Ok((set, warnings)),
        Ok((_, warnings)) => {
            diags.extend(warnings);
            Err(diags)
        }
        Err(more) => {
            diags.extend(more);
            Err(diags)
        }
    }
}

/// Validates rule files given as (name, text) pairs.
pub fn parse_rule_sources(sources: &[(String, String)]) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut set = RuleSet::default();
    let mut rule_names: HashMap<String, Location> = HashMap::new();
    let mut group_names: HashMap<String, Location> = HashMap::new();
    for (shown, text) in sources {
        let mut parsed = match yaml::parse::<RuleFile>(shown, text) {
            Ok(f) => f,
            Err(d) => {
                diags.extend(d);
                continue;
            }
        };
        let mut found = Diagnostics::default();
        for raw in std::mem::take(&mut parsed.value.groups) {
            if let Some(g) = validate_group(shown, raw, &mut found, &mut rule_names, &mut group_names) {
                set.groups.push(g);
            }
        }
        diags.extend(parsed.finish(found));
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok((set, diags))
    }
}

pub(crate) fn loc<T>(path: &str, s: &Spanned<T>) -> Location {
    Location { path: path.to_string(), line: s.line, col: s.col }
}

pub(crate) fn err_at<T>(path: &str, s: &Spanned<T>, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(path, s.line, s.col, msg)
}

/// Parses a PromQL query; on error, a diagnostic pointing at the offending column inside the
/// query (when the query is written on one line), not at its start.
pub(crate) fn promql_error(path: &str, q: &Spanned<String>, what: &str) -> Option<Diagnostic> {
    let e = promql_parser::parser::parse(&q.value).err()?;
    let e = e.trim();
    let mut d = err_at(path, q, format!("{what}: {e}"));
    let text = &q.value;
    let len = text.len() as u64;
    // Only a one-line plain or quoted scalar maps query offsets to file columns.
    let opening = match q.source_len {
        n if n == len => Some(0),
        n if n == len + 2 => Some(1),
        _ => None,
    };
    if let (Some(opening), false) = (opening, text.contains('\n')) {
        if let Some(offset) = promql_error_offset(text, e) {
            d.col = q.col + opening + text[..offset].chars().count() as u64;
        }
    }
    Some(d)
}

/// Where in `query` the parse error `msg` is: the unclosed parenthesis, or the first character
/// at which a prefix of the query fails with the same message (the lexer and parser read left
/// to right, so that is the character they stopped at).
fn promql_error_offset(query: &str, msg: &str) -> Option<usize> {
    if msg == "unclosed left parenthesis" {
        let mut open = Vec::new();
        let mut quote = None;
        for (i, c) in query.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quote = Some(c),
                (None, '(') => open.push(i),
                (None, ')') => {
                    open.pop();
                }
                _ => {}
            }
        }
        return open.first().copied();
    }
    // The parser's catch-all message names no token: a shorter prefix failing with it proves
    // nothing, so only the start of the query is known.
    if query.len() > 2048 || msg == "invalid promql query" {
        return None;
    }
    let ends = query.char_indices().map(|(i, c)| (i, i + c.len_utf8()));
    for (start, end) in ends {
        if end < query.len() && promql_parser::parser::parse(&query[..end]).err().as_deref().map(str::trim) == Some(msg) {
            return Some(start);
        }
    }
    None
}

pub(crate) fn duration_at(path: &str, s: &Spanned<String>, diags: &mut Diagnostics) -> Option<Duration> {
    match s.value.parse::<PromDuration>() {
        Ok(d) => Some(d.0),
        Err(e) => {
            diags.push(err_at(path, s, e.to_string()));
            None
        }
    }
}

fn validate_group(
    path: &str,
    raw: RawGroup,
    diags: &mut Diagnostics,
    rule_names: &mut HashMap<String, Location>,
    group_names: &mut HashMap<String, Location>,
) -> Option<Group> {
    let errors_before = diags.errors().count();
    let gloc = loc(path, &raw.name);
    if raw.name.value.trim().is_empty() {
        diags.push(err_at(path, &raw.name, "group name must not be empty"));
    }
    if let Some(first) = group_names.insert(raw.name.value.clone(), gloc.clone()) {
        diags.push(err_at(path, &raw.name, format!("duplicate group name {:?} (first defined at {first})", raw.name.value)));
    }
    let interval = raw.interval.as_ref().and_then(|i| duration_at(path, i, diags));
    if let (Some(i), Some(raw_interval)) = (interval, &raw.interval) {
        if i < MIN_INTERVAL {
            diags.push(err_at(path, raw_interval, format!("interval {} is too short: the minimum is 1s", raw_interval.value)));
        }
    }
    let mut subject_labels = Vec::new();
    for l in &raw.subject {
        if !is_identifier(&l.value) {
            diags.push(err_at(path, l, format!("invalid subject label name {:?}", l.value)));
        } else if subject_labels.contains(&l.value) {
            diags.push(err_at(path, l, format!("subject label {:?} is listed twice", l.value)));
        } else {
            subject_labels.push(l.value.clone());
        }
    }

    // Signals → slots. A ticket signal `x` also provides `x_baseline`.
    let mut signals = Vec::new();
    let mut slots: Vec<String> = Vec::new();
    for (name, s) in &raw.signals {
        if !is_identifier(name) || RESERVED.contains(&name.as_str()) {
            diags.push(err_at(path, s, format!("invalid signal name {name:?}: use letters, digits and _, not a reserved word")));
            continue;
        }
        let given = [s.value.query.is_some(), s.value.value.is_some(), s.value.ticket_source.is_some(), s.value.alertmanager.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            diags.push(err_at(path, s, format!("signal {name:?} needs exactly one of `query`, `value`, `ticket_source` or `alertmanager: true`")));
            continue;
        }
        if let Some(am) = s.value.alertmanager.as_ref().filter(|a| !a.value) {
            diags.push(err_at(path, am, format!("signal {name:?}: `alertmanager: false` declares no source; write `alertmanager: true` or give a `query`")));
            continue;
        }
        let slot = slots.len();
        slots.push(name.clone());
        let source = if let Some(q) = &s.value.query {
            if let Some(d) = promql_error(path, q, &format!("invalid PromQL in signal {name:?}")) {
                diags.push(d);
            }
            SignalSource::Query(q.value.clone())
        } else if let Some(v) = &s.value.value {
            if !v.value.is_finite() {
                diags.push(err_at(path, v, format!("signal {name:?}: value must be a finite number")));
            }
            SignalSource::Value(v.value)
        } else if s.value.alertmanager.is_some() {
            SignalSource::Alertmanager
        } else {
            let src = s.value.ticket_source.as_ref().expect("checked above");
            let baseline_slot = slots.len();
            slots.push(format!("{name}_baseline"));
            SignalSource::Tickets { source: src.value.clone(), baseline_slot }
        };
        let every = match &s.value.every {
            None => None,
            Some(e) if !matches!(source, SignalSource::Query(_)) => {
                diags.push(err_at(path, e, format!("signal {name:?}: `every` only applies to `query` signals")));
                None
            }
            Some(e) => duration_at(path, e, diags).filter(|d| {
                let ok = !d.is_zero();
                if !ok {
                    diags.push(err_at(path, e, "every must be greater than 0"));
                }
                ok
            }),
        };
        signals.push(Signal { name: name.clone(), slot, source, every });
    }
    for (i, s) in slots.iter().enumerate() {
        if slots[..i].contains(s) {
            let at = raw.signals.get(s).map_or((gloc.line, gloc.col), |sp| (sp.line, sp.col));
            diags.push(Diagnostic::error(path, at.0, at.1, format!("signal {s:?} is also provided by a ticket_source signal")));
        }
    }

    let scope = Scope { signals: slots.clone(), subject_labels: subject_labels.clone() };
    let mut rules = Vec::new();
    for r in raw.rules {
        if let Some(rule) = validate_rule(path, r, &scope, diags, rule_names) {
            rules.push(rule);
        }
    }
    if diags.errors().count() > errors_before {
        return None;
    }
    Some(Group { name: raw.name.value, interval, subject_labels, signals, slots, rules, location: gloc })
}

fn validate_rule(
    path: &str,
    r: RawRule,
    scope: &Scope,
    diags: &mut Diagnostics,
    rule_names: &mut HashMap<String, Location>,
) -> Option<Rule> {
    let errors_before = diags.errors().count();
    let location = loc(path, &r.name);
    if !is_identifier(&r.name.value) {
        diags.push(err_at(path, &r.name, format!("invalid rule name {:?}: use letters, digits and _", r.name.value)));
    }
    if let Some(first) = rule_names.insert(r.name.value.clone(), location.clone()) {
        diags.push(err_at(path, &r.name, format!("duplicate rule name {:?} (first defined at {first})", r.name.value)));
    }
    let when = match expr::compile(&r.when.value, scope) {
        Ok(e) => Some(e),
        Err(e) => {
            let col = expr_column(&r.when, e.offset);
            diags.push(Diagnostic::error(path, r.when.line, col, format!("in `when`: {}", e.message)));
            None
        }
    };
    let for_ = r.for_.as_ref().map_or(Some(Duration::ZERO), |d| duration_at(path, d, diags));
    let keep_firing_for = r.keep_firing_for.as_ref().map_or(Some(Duration::ZERO), |d| duration_at(path, d, diags));
    let resolve_after = r.resolve_after.as_ref().map_or(Some(DEFAULT_RESOLVE_AFTER), |d| duration_at(path, d, diags));
    let action = Action::ALL.into_iter().find(|a| a.as_str() == r.action.value);
    if action.is_none() {
        let names: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
        diags.push(err_at(path, &r.action, format!("unknown action {:?} (valid: {})", r.action.value, names.join(", "))));
    }
    if let (Some(a), Some(ra)) = (action, &r.resolve_after) {
        if !a.opens_incident() {
            diags.push(err_at(path, ra, format!("resolve_after only applies to rules that open incidents (activate_comms_lead, engage_legal), not {}", a.as_str())));
        }
    }
    let severity = match &r.severity {
        None => Some(Severity::Warning),
        Some(s) => {
            let v = Severity::parse(&s.value);
            if v.is_none() {
                diags.push(err_at(path, s, format!("unknown severity {:?} (valid: critical, warning, info)", s.value)));
            }
            v
        }
    };
    for k in r.labels.keys() {
        if !is_identifier(k) {
            diags.push(err_at(path, &r.name, format!("rule {:?}: invalid label name {k:?}", r.name.value)));
        }
    }
    let mut annotations = BTreeMap::new();
    for (k, src) in &r.annotations {
        if let Err(msg) = template::check(&src.value, scope) {
            diags.push(err_at(path, src, format!("annotation {k:?}: {msg}")));
        }
        annotations.insert(k.clone(), src.value.clone());
    }
    let mut notify = Vec::new();
    let mut notify_locations = Vec::new();
    for n in &r.notify {
        if notify.contains(&n.value) {
            diags.push(err_at(path, n, format!("receiver {:?} is listed twice", n.value)));
        }
        notify.push(n.value.clone());
        notify_locations.push(loc(path, n));
    }
    if diags.errors().count() > errors_before {
        return None;
    }
    Some(Rule {
        name: r.name.value,
        when_src: r.when.value,
        when: when?,
        for_: for_?,
        keep_firing_for: keep_firing_for?,
        resolve_after: resolve_after?,
        action: action?,
        severity: severity?,
        notify,
        labels: r.labels,
        annotations,
        location,
        notify_locations,
    })
}

/// The column of a byte offset inside a one-line scalar (plain or quoted); for multi-line
/// scalars, the scalar's own column.
fn expr_column(s: &Spanned<String>, offset: usize) -> u64 {
    if s.value.contains('\n') {
        return s.col;
    }
    let chars = s.value[..offset.min(s.value.len())].chars().count() as u64;
    // A quoted scalar is longer in the source than its value: skip the opening quote.
    let quoted = s.source_len > s.value.len() as u64;
    s.col + chars + u64::from(quoted)
}
