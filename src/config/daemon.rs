//! `herald.yaml` → the validated daemon configuration (spec §3).
//!
//! Resolves `${VAR}` interpolation and `*_file` secrets, checks every receiver, ticket source
//! and maintenance window, loads the rule files it names, and cross-checks them (a rule's
//! `notify` must name a receiver; a query signal needs `prometheus`). All problems are
//! collected with locations. Reads local files (rules, secrets); never the network.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

use super::rules::{duration_at, err_at, is_identifier, parse_rule_sources};
use super::yaml::{self, ConfigFile, RawReceiver, RawTicketSource, Spanned};
use super::{Diagnostic, Diagnostics, RuleSet, SignalSource};

mod integrations;
pub use integrations::{AlertEvent, AlertMapping, AlertTarget, DraftSettings, ValueFrom, Integrations, StatusPage, StatusPageKind, STATUSPAGE_API_URL};

/// A lookup of environment variables; tests pass a map instead of mutating the process env.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub global: Global,
    pub prometheus: Option<PrometheusConfig>,
    pub ticket_sources: Vec<TicketSource>,
    pub receivers: Vec<Receiver>,
    pub notification: NotificationDefaults,
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// The API bearer token for mutating endpoints; `None` disables them.
    pub api_token: Option<String>,
    /// `api.read_requires_token`: reads of `/api/…` need the token too (default false).
    pub api_read_requires_token: bool,
    pub console: ConsoleConfig,
    /// Rule files after glob expansion.
    pub rule_files: Vec<PathBuf>,
    pub rules: RuleSet,
    /// This replica's share of the subjects (`shard:`; default: all of them).
    pub shard: crate::shard::Shard,
    /// Status pages Herald reads (and publishes approved drafts to).
    pub status_pages: Vec<StatusPage>,
    /// Inbound integrations (PagerDuty webhooks, Alertmanager).
    pub integrations: Integrations,
    /// Drafted-update template overrides.
    pub drafts: DraftSettings,
}

/// `console:`: when the console shows the next public update as due.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    /// The first public update is due this long after the incident opened (default 15m).
    pub first_update_due: Duration,
    /// Each next update is due this long after the last one (default 30m).
    pub update_due: Duration,
}

/// `global:`.
#[derive(Clone, Debug)]
pub struct Global {
    /// Default group interval (default 30s).
    pub evaluation_interval: Duration,
    /// HTTP listen address (default 127.0.0.1:9797).
    pub listen: SocketAddr,
    /// Where the SQLite state lives (default `data/` next to the config file).
    pub state_dir: PathBuf,
    /// Base URL for incident links (default `http://<listen>`).
    pub external_url: String,
    pub timezone: chrono_tz::Tz,
    /// How long finished outbox entries (sent, failed, suppressed, dry-run) and resolved
    /// incidents with their events are kept before they are pruned (default 30d).
    pub retention: Duration,
    /// After downtime, the daemon first replays the missed evaluations from Prometheus's
    /// history, up to this far back (default 1h; 0 disables). Older downtime is unknown.
    pub catch_up: Duration,
}

/// The default of `global.retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest `global.retention` accepted.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// `prometheus:`.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    pub url: String,
    pub timeout: Duration,
    pub headers: Vec<(String, String)>,
    pub auth: Auth,
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// HTTP authentication for an outbound client.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

/// A ticket system that yields `tickets` and `tickets_baseline` per subject.
#[derive(Clone, Debug)]
pub struct TicketSource {
    pub name: String,
    pub kind: TicketKind,
    /// The counting window (default 1h).
    pub window: Duration,
    /// How often to poll (default 5m); results are cached in between.
    pub poll_interval: Duration,
    pub timeout: Duration,
}

/// Ticket source types (spec §3).
#[derive(Clone, Debug)]
pub enum TicketKind {
    /// A PromQL count per subject.
    Prometheus { query: String },
    /// Zendesk Search count API; `query` is a template over `subject`.
    Zendesk { url: String, query: String, email: String, token: String },
    /// Any JSON endpoint; `url` is a template over `subject`.
    HttpJson { url: String, pointer: String, headers: Vec<(String, String)> },
}

/// Receiver types (spec §3).
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiverKind {
    Webhook { url: String, secret: Option<String> },
    Slack { url: String },
    PagerDuty { url: String, routing_key: String },
    Teams { url: String },
    Alertmanager { urls: Vec<String> },
    Log,
}

impl ReceiverKind {
    /// The type name as in the config.
    pub fn type_name(&self) -> &'static str {
        match self {
            ReceiverKind::Webhook { .. } => "webhook",
            ReceiverKind::Slack { .. } => "slack",
            ReceiverKind::PagerDuty { .. } => "pagerduty",
            ReceiverKind::Teams { .. } => "teams",
            ReceiverKind::Alertmanager { .. } => "alertmanager",
            ReceiverKind::Log => "log",
        }
    }
}

/// The default PagerDuty Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A named destination for notifications.
#[derive(Clone, Debug)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Overrides `notification.send_resolved`.
    pub send_resolved: Option<bool>,
    /// In dry-run, this receiver still gets messages, prefixed "[DRY RUN]".
    pub dry_run_target: bool,
    pub max_retry_duration: Option<Duration>,
    /// Parallel deliveries to this receiver (default 4).
    pub concurrency: u32,
    pub title_template: Option<String>,
    pub text_template: Option<String>,
}

/// `notification:` defaults.
#[derive(Clone, Debug)]
pub struct NotificationDefaults {
    /// Decisions for one subject within this window go out as one message (default 10s).
    pub group_wait: Duration,
    /// At most one message per incident and receiver within this (default 5m); pages
    /// (`activate_comms_lead`, `escalate`, `engage_legal`) are never held back by it.
    pub min_interval: Duration,
    /// Re-send a still-firing decision after this (default 4h).
    pub repeat_interval: Duration,
    /// Send resolved notifications (default true).
    pub send_resolved: bool,
    /// Give up retrying a delivery after this (default 24h).
    pub max_retry_duration: Duration,
    /// Extra redaction regexes.
    pub scrub_patterns: Vec<String>,
    /// Strings or regexes never redacted.
    pub scrub_allow: Vec<String>,
    /// `scrub.labels`: subject and label values are scrubbed wherever they leave Herald (logs,
    /// `/metrics`, the API, the outbox); default true.
    pub scrub_labels: bool,
}

/// A label matcher (Alertmanager syntax).
#[derive(Clone, Debug)]
pub struct Matcher {
    pub label: String,
    pub negate: bool,
    /// Anchored regex; equality matchers are escaped literals.
    pub regex: Regex,
}

impl Matcher {
    /// Whether a label value (empty when absent) matches.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value) != self.negate
    }
}

/// A recurring window in which decisions are recorded but notifications suppressed.
#[derive(Clone, Debug)]
pub struct MaintenanceWindow {
    pub name: String,
    pub schedule: String,
    pub cron: croner::Cron,
    pub duration: Duration,
    pub timezone: chrono_tz::Tz,
    pub matchers: Vec<Matcher>,
}

impl MaintenanceWindow {
    /// Whether the window is active at `at` for a subject's labels.
    pub fn active(&self, at: chrono::DateTime<chrono::Utc>, labels: &dyn Fn(&str) -> Option<String>) -> bool {
        if !self.matchers.iter().all(|m| m.matches(&labels(&m.label).unwrap_or_default())) {
            return false;
        }
        let local = at.with_timezone(&self.timezone);
        match self.cron.find_previous_occurrence(&local, true) {
            Ok(start) => (local - start).to_std().is_ok_and(|d| d < self.duration),
            Err(_) => false,
        }
    }
}

/// Parses a 5-field crontab schedule.
pub fn parse_cron(s: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    if s.split_whitespace().count() != 5 {
        return Err(format!("invalid schedule {s:?}: expected 5 crontab fields (minute hour day-of-month month day-of-week)"));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("invalid schedule {s:?}: {e}"))
}

fn parse_matcher(s: &str) -> Result<Matcher, String> {
    let re = Regex::new(r#"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$"#).expect("static regex");
    let c = re.captures(s).ok_or_else(|| format!("invalid matcher {s:?} (expected label=\"value\", label=~\"regex\", != or !~)"))?;
    let raw = &c[3];
    let value = raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(raw);
    let (negate, is_re) = match &c[2] {
        "=" => (false, false),
        "!=" => (true, false),
        "=~" => (false, true),
        _ => (true, true),
    };
    let pattern = if is_re { format!("^(?:{value})$") } else { format!("^{}$", regex::escape(value)) };
    let regex = Regex::new(&pattern).map_err(|e| {
        // The regex crate's message spans several lines; its last line says what is wrong.
        let text = e.to_string();
        let reason = text.lines().last().unwrap_or("").trim_start_matches("error: ").to_string();
        format!("invalid regex in matcher {s:?}: {reason}")
    })?;
    Ok(Matcher { label: c[1].to_string(), negate, regex })
}

/// Loads and validates a configuration file and the rule files it names.
pub fn load_config(path: &Path, env: Env<'_>) -> Result<(Config, Diagnostics), Diagnostics> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostics(vec![Diagnostic::error(&shown, 0, 0, format!("cannot read config file: {e}"))]))?;
    let mut parsed = yaml::parse::<ConfigFile>(&shown, &text)?;
    let raw = std::mem::take(&mut parsed.value);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut v = Validator { path: &shown, base: &base, env, diags: Diagnostics::default() };
    let cfg = v.config(raw, path);
    let diags = parsed.finish(v.diags);
    match cfg {
        Some(cfg) if !diags.has_errors() => Ok((cfg, diags)),
        _ => Err(diags),
    }
}

/// The checks between rules and the rest of a configuration: every `notify` names a receiver,
/// query signals need `prometheus:`, ticket signals name a configured source (a warning).
/// `load_config` runs them; `herald replay --diff` runs them on the other rule set.
pub fn cross_check(rules: &RuleSet, receivers: &[Receiver], has_prometheus: bool, ticket_sources: &[TicketSource]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let names: Vec<&str> = receivers.iter().map(|r| r.name.as_str()).collect();
    for g in &rules.groups {
        for r in &g.rules {
            for (n, l) in r.notify.iter().zip(&r.notify_locations) {
                if !names.contains(&n.as_str()) {
                    let known = if names.is_empty() { "none are defined".to_string() } else { format!("defined: {}", names.join(", ")) };
                    diags.push(Diagnostic::error(&l.path, l.line, l.col, format!("rule {:?}: unknown receiver {n:?} ({known})", r.name)));
                }
            }
        }
        for s in &g.signals {
            match &s.source {
                SignalSource::Query(_) if !has_prometheus => diags.push(Diagnostic::error(
                    &g.location.path,
                    g.location.line,
                    g.location.col,
                    format!("group {:?}: signal {:?} is a PromQL query but the config has no `prometheus:` section", g.name, s.name),
                )),
                SignalSource::Tickets { source, .. } if !ticket_sources.iter().any(|t| &t.name == source) => {
                    diags.push(Diagnostic::warning(
                        &g.location.path,
                        g.location.line,
                        g.location.col,
                        format!("group {:?}: signal {:?} uses ticket source {source:?}, which is not configured; rules that need it stay unknown", g.name, s.name),
                    ))
                }
                _ => {}
            }
        }
    }
    diags
}

/// The checks between `integrations.alertmanager` signal mappings and the rules: a mapping's
/// `signal` is declared `alertmanager: true` by some group whose subject labels are the
/// mapping's (errors at the mapping), and an `alertmanager: true` signal that no mapping sets
/// is a warning (its rules stay unknown).
pub fn check_alert_signals(rules: &RuleSet, mappings: &[AlertMapping]) -> Diagnostics {
    let mut diags = Diagnostics::default();
    let sorted = |l: &[String]| {
        let mut v = l.to_vec();
        v.sort();
        v
    };
    for m in mappings {
        let AlertTarget::Signal { name, .. } = &m.target else { continue };
        let l = &m.location;
        let declaring: Vec<&super::Group> =
            rules.groups.iter().filter(|g| g.signals.iter().any(|s| &s.name == name && s.source == SignalSource::Alertmanager)).collect();
        if declaring.is_empty() {
            let other = rules.groups.iter().find(|g| g.signals.iter().any(|s| &s.name == name));
            let msg = match other {
                Some(g) => format!("alertmanager mapping sets signal {name:?}, but group {:?} declares it with another source; declare it `{name}: {{alertmanager: true}}`", g.name),
                None => format!("alertmanager mapping sets signal {name:?}, which no group declares; add `{name}: {{alertmanager: true}}` to a group's `signals`"),
            };
            diags.push(Diagnostic::error(&l.path, l.line, l.col, msg));
            continue;
        }
        for g in declaring {
            if sorted(&g.subject_labels) != sorted(&m.subject_labels) {
                diags.push(Diagnostic::error(
                    &l.path,
                    l.line,
                    l.col,
                    format!(
                        "alertmanager mapping sets signal {name:?} for subjects [{}], but group {:?} keys its subjects by [{}]: its rules would never see the value (set the mapping's `subject`)",
                        m.subject_labels.join(", "),
                        g.name,
                        g.subject_labels.join(", ")
                    ),
                ));
            }
        }
    }
    for g in &rules.groups {
        for s in g.signals.iter().filter(|s| s.source == SignalSource::Alertmanager) {
            let set = mappings.iter().any(|m| matches!(&m.target, AlertTarget::Signal { name, .. } if name == &s.name));
            if !set {
                diags.push(Diagnostic::warning(
                    &g.location.path,
                    g.location.line,
                    g.location.col,
                    format!("group {:?}: signal {:?} comes from Alertmanager but no integrations.alertmanager mapping sets it; rules that need it stay unknown", g.name, s.name),
                ));
            }
        }
    }
    diags
}

struct Validator<'a> {
    path: &'a str,
    base: &'a Path,
    env: Env<'a>,
    diags: Diagnostics,
}

impl Validator<'_> {
    fn err<T>(&mut self, s: &Spanned<T>, msg: impl Into<String>) {
        self.diags.push(err_at(self.path, s, msg));
    }

    fn warn<T>(&mut self, s: &Spanned<T>, msg: impl Into<String>) {
        self.diags.push(Diagnostic::warning(self.path, s.line, s.col, msg));
    }

    fn duration(&mut self, s: &Option<Spanned<String>>, default: Duration) -> Duration {
        s.as_ref().and_then(|s| duration_at(self.path, s, &mut self.diags)).unwrap_or(default)
    }

    /// `${VAR}` interpolation; `$$` is a literal `$`.
    fn interp(&mut self, s: &Spanned<String>) -> String {
        let mut out = String::new();
        let mut rest = s.value.as_str();
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                match r.find('}') {
                    Some(end) => {
                        let name = &r[..end];
                        match (self.env)(name) {
                            Some(v) => out.push_str(&v),
                            None => self.err(s, format!("environment variable {name} is not set")),
                        }
                        rest = &r[end + 1..];
                    }
                    None => {
                        self.err(s, "unterminated ${...}");
                        return out;
                    }
                }
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn read_secret(&mut self, s: &Spanned<String>) -> Option<String> {
        let p = self.resolve_path(&s.value);
        match std::fs::read_to_string(&p) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                self.err(s, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }

    /// A secret given inline (interpolated) or through a file; exactly one.
    fn secret(&mut self, inline: &Option<Spanned<String>>, file: &Option<Spanned<String>>, what: &str) -> Option<String> {
        match (inline, file) {
            (Some(i), Some(_)) => {
                self.err(i, format!("give {what} or {what}_file, not both"));
                None
            }
            (Some(i), None) => {
                if !i.value.contains("${") {
                    self.warn(i, format!("{what} is written in the file; use ${{ENV_VAR}} or {what}_file to keep secrets out of YAML"));
                }
                Some(self.interp(i))
            }
            (None, Some(f)) => self.read_secret(f),
            (None, None) => None,
        }
    }

    fn url(&mut self, s: &Spanned<String>) -> String {
        let u = self.interp(s);
        match prometheus_http_query::reqwest::Url::parse(&u) {
            Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.host().is_some() => {}
            _ => self.err(s, format!("invalid URL {:?}: expected http:// or https:// with a host", s.value)),
        }
        u
    }

    fn headers(&mut self, h: &BTreeMap<String, Spanned<String>>) -> Vec<(String, String)> {
        h.iter().map(|(k, v)| (k.clone(), self.interp(v))).collect()
    }

    fn config(&mut self, raw: ConfigFile, path: &Path) -> Option<Config> {
        // global
        let g = &raw.global;
        let evaluation_interval = self.duration(&g.evaluation_interval, Duration::from_secs(30));
        if let Some(raw_interval) = g.evaluation_interval.as_ref().filter(|_| evaluation_interval < super::rules::MIN_INTERVAL) {
            self.err(raw_interval, format!("evaluation_interval {} is too short: the minimum is 1s", raw_interval.value));
        }
        let listen = match &g.listen {
            Some(l) => match self.interp(l).parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.err(l, format!("invalid listen address {:?} (expected host:port, e.g. 127.0.0.1:9797)", l.value));
                    SocketAddr::from(([127, 0, 0, 1], 9797))
                }
            },
            None => SocketAddr::from(([127, 0, 0, 1], 9797)),
        };
        let state_dir = g.state_dir.as_ref().map_or_else(|| self.base.join("data"), |s| self.resolve_path(&s.value));
        let external_url = match &g.external_url {
            Some(u) => self.url(u).trim_end_matches('/').to_string(),
            None => format!("http://{listen}"),
        };
        let timezone = match &g.timezone {
            Some(tz) => self.timezone(tz),
            None => chrono_tz::UTC,
        };
        let retention = self.duration(&g.retention, DEFAULT_RETENTION);
        if let Some(r) = g.retention.as_ref().filter(|_| retention < MIN_RETENTION) {
            self.err(r, "retention must be at least 1h (it bounds how long sent notifications and resolved incidents are kept)");
        }
        let catch_up = self.duration(&g.catch_up, Duration::from_secs(3600));

        let prometheus = raw.prometheus.as_ref().map(|p| self.prometheus(p));
        let ticket_sources = self.ticket_sources(&raw.ticket_sources);
        let receivers = self.receivers(&raw.receivers);
        let notification = self.notification(&raw.notification);
        if let Some(r) = g.retention.as_ref().filter(|_| retention >= MIN_RETENTION && retention < notification.repeat_interval) {
            self.err(r, format!("retention ({}) must be at least notification.repeat_interval ({}): repeats are timed from the last sent notification", r.value, super::PromDuration(notification.repeat_interval)));
        }
        let maintenance_windows = self.maintenance(&raw.maintenance_windows);
        let status_pages = self.status_pages(&raw.status_pages);
        let integrations = self.integrations(&raw.integrations);
        let drafts = self.drafts(&raw.drafts);
        let api_token = raw.api.token_file.as_ref().and_then(|f| self.read_secret(f));
        if let (Some(f), Some(t)) = (&raw.api.token_file, &api_token) {
            if t.is_empty() {
                self.err(f, "api token file is empty");
            }
        }
        let api_read_requires_token = raw.api.read_requires_token.as_ref().is_some_and(|r| r.value);
        if let Some(r) = raw.api.read_requires_token.as_ref().filter(|r| r.value && raw.api.token_file.is_none()) {
            self.err(r, "read_requires_token needs api.token_file (the token readers must present)");
        }

        let console = ConsoleConfig {
            first_update_due: self.duration(&raw.console.first_update_due, Duration::from_secs(15 * 60)),
            update_due: self.duration(&raw.console.update_due, Duration::from_secs(30 * 60)),
        };

        // rule files
        let mut rule_files = Vec::new();
        if raw.rule_files.is_empty() {
            self.diags.push(Diagnostic::warning(self.path, 1, 1, "no rule_files: Herald will evaluate nothing"));
        }
        for rf in &raw.rule_files {
            match crate::testing::expand_glob(self.base, &rf.value) {
                Ok(p) if p.is_empty() => self.err(rf, format!("rule_files entry {:?} matches no file", rf.value)),
                Ok(p) => rule_files.extend(p),
                Err(e) => self.err(rf, e),
            }
        }
        let mut sources = Vec::new();
        for p in &rule_files {
            match std::fs::read_to_string(p) {
                Ok(t) => sources.push((p.display().to_string(), t)),
                Err(e) => self.diags.push(Diagnostic::error(p.display().to_string(), 0, 0, format!("cannot read rule file: {e}"))),
            }
        }
        let rules = match parse_rule_sources(&sources) {
            Ok((r, w)) => {
                self.diags.extend(w);
                Some(r)
            }
            Err(d) => {
                self.diags.extend(d);
                None
            }
        };

        // cross-checks
        if let Some(rules) = &rules {
            self.receiver_templates(&raw.receivers, rules, &external_url);
            self.diags.extend(cross_check(rules, &receivers, prometheus.is_some(), &ticket_sources));
            self.diags.extend(check_alert_signals(rules, &integrations.alertmanager));
        }
        let shard = self.shard(&raw.shard);
        Some(Config {
            path: path.to_path_buf(),
            global: Global { evaluation_interval, listen, state_dir, external_url, timezone, retention, catch_up },
            prometheus,
            ticket_sources,
            receivers,
            notification,
            maintenance_windows,
            api_token,
            api_read_requires_token,
            console,
            rule_files,
            rules: rules?,
            shard,
            status_pages,
            integrations,
            drafts,
        })
    }

    /// `shard: {index, total}`: `total` >= 1 and `index` < `total`.
    fn shard(&mut self, raw: &Option<yaml::RawShard>) -> crate::shard::Shard {
        let Some(raw) = raw else { return crate::shard::Shard::default() };
        if raw.total.value == 0 {
            self.err(&raw.total, "shard.total must be at least 1");
            return crate::shard::Shard::default();
        }
        if raw.index.value >= raw.total.value {
            self.err(&raw.index, format!("shard.index must be below shard.total ({}): shards are numbered 0 to {}", raw.total.value, raw.total.value - 1));
            return crate::shard::Shard::default();
        }
        crate::shard::Shard { index: raw.index.value, total: raw.total.value }
    }

    /// Renders every receiver `title`/`text` template against sample notifications of the
    /// rules that notify it (templates that do not compile were reported already).
    fn receiver_templates(&mut self, raw: &[RawReceiver], rules: &RuleSet, external_url: &str) {
        for r in raw {
            if r.title.is_none() && r.text.is_none() {
                continue;
            }
            let (title, text) = (r.title.as_ref().map(|t| t.value.as_str()), r.text.as_ref().map(|t| t.value.as_str()));
            if crate::notify::Templates::with_overrides(title, text).is_err() {
                continue;
            }
            let notifying = rules.groups.iter().flat_map(|g| g.rules.iter().map(move |rule| (g, rule))).filter(|(_, rule)| rule.notify.contains(&r.name.value));
            for (which, message) in crate::notify::template::check_receiver_templates(title, text, notifying, external_url) {
                let at = if which == "title" { r.title.as_ref() } else { r.text.as_ref() };
                if let Some(at) = at.or(r.title.as_ref()).or(r.text.as_ref()) {
                    self.err(at, format!("receiver {:?}: {which} template {message}", r.name.value));
                }
            }
        }
    }

    fn timezone(&mut self, tz: &Spanned<String>) -> chrono_tz::Tz {
        tz.value.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            self.err(tz, format!("unknown time zone {:?} (use an IANA name such as Europe/Berlin or UTC)", tz.value));
            chrono_tz::UTC
        })
    }

    fn prometheus(&mut self, p: &yaml::RawPrometheus) -> PrometheusConfig {
        let url = self.url(&p.url).trim_end_matches('/').to_string();
        let timeout = self.duration(&p.timeout, Duration::from_secs(10));
        let headers = self.headers(&p.headers);
        let auth = match (&p.basic_auth, &p.bearer_token_file) {
            (Some(_), Some(b)) => {
                self.err(b, "use basic_auth or bearer_token_file, not both");
                Auth::None
            }
            (Some(b), None) => {
                let username = self.interp(&b.username);
                match self.secret(&b.password, &b.password_file, "password") {
                    Some(password) => Auth::Basic { username, password },
                    None => {
                        self.err(&b.username, "basic_auth needs password or password_file");
                        Auth::None
                    }
                }
            }
            (None, Some(b)) => self.read_secret(b).map_or(Auth::None, Auth::Bearer),
            (None, None) => Auth::None,
        };
        let (ca_file, insecure_skip_verify) = match &p.tls {
            Some(t) => {
                let ca = t.ca_file.as_ref().map(|c| {
                    let path = self.resolve_path(&c.value);
                    if !path.is_file() {
                        self.err(c, format!("CA file {} does not exist", path.display()));
                    }
                    path
                });
                (ca, t.insecure_skip_verify)
            }
            None => (None, false),
        };
        PrometheusConfig { url, timeout, headers, auth, ca_file, insecure_skip_verify }
    }

    fn ticket_sources(&mut self, raw: &[RawTicketSource]) -> Vec<TicketSource> {
        let mut out: Vec<TicketSource> = Vec::new();
        for t in raw {
            if out.iter().any(|o| o.name == t.name.value) {
                self.err(&t.name, format!("duplicate ticket source name {:?}", t.name.value));
            }
            let window = self.duration(&t.window, Duration::from_secs(3600));
            let poll_interval = self.duration(&t.poll_interval, Duration::from_secs(300));
            let timeout = self.duration(&t.timeout, Duration::from_secs(10));
            let allowed: &[&str] = match t.kind.value.as_str() {
                "prometheus" => &["query"],
                "zendesk" => &["url", "query", "email", "token_file"],
                "http_json" => &["url", "json_pointer", "headers"],
                other => {
                    self.err(&t.kind, format!("unknown ticket source type {other:?} (valid: prometheus, zendesk, http_json)"));
                    continue;
                }
            };
            let present = [
                ("query", t.query.is_some()),
                ("url", t.url.is_some()),
                ("email", t.email.is_some()),
                ("token_file", t.token_file.is_some()),
                ("json_pointer", t.json_pointer.is_some()),
                ("headers", !t.headers.is_empty()),
            ];
            for (field, is) in present {
                if is && !allowed.contains(&field) {
                    self.err(&t.kind, format!("`{field}` does not apply to {} ticket sources", t.kind.value));
                }
            }
            let need = |v: &mut Self, f: &Option<Spanned<String>>, name: &str| -> Option<Spanned<String>> {
                if f.is_none() {
                    v.err(&t.name, format!("{} ticket source {:?} needs `{name}`", t.kind.value, t.name.value));
                }
                f.clone()
            };
            let kind = match t.kind.value.as_str() {
                "prometheus" => {
                    let Some(q) = need(self, &t.query, "query") else { continue };
                    if let Some(d) = super::rules::promql_error(self.path, &q, "invalid PromQL") {
                        self.diags.push(d);
                    }
                    TicketKind::Prometheus { query: q.value }
                }
                "zendesk" => {
                    let (Some(u), Some(q), Some(e), Some(tf)) =
                        (need(self, &t.url, "url"), need(self, &t.query, "query"), need(self, &t.email, "email"), need(self, &t.token_file, "token_file"))
                    else {
                        continue;
                    };
                    let url = self.url(&u);
                    let email = self.interp(&e);
                    let token = self.read_secret(&tf).unwrap_or_default();
                    TicketKind::Zendesk { url, query: q.value, email, token }
                }
                _ => {
                    let (Some(u), Some(p)) = (need(self, &t.url, "url"), need(self, &t.json_pointer, "json_pointer")) else { continue };
                    if !p.value.starts_with('/') {
                        self.err(&p, "json_pointer must start with / (RFC 6901), e.g. /count");
                    }
                    let url = self.interp(&u);
                    let headers = self.headers(&t.headers);
                    TicketKind::HttpJson { url, pointer: p.value, headers }
                }
            };
            out.push(TicketSource { name: t.name.value.clone(), kind, window, poll_interval, timeout });
        }
        out
    }

    fn receivers(&mut self, raw: &[RawReceiver]) -> Vec<Receiver> {
        let mut out: Vec<Receiver> = Vec::new();
        let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
        for r in raw {
            if let Some((l, c)) = seen.insert(r.name.value.clone(), (r.name.line, r.name.col)) {
                self.err(&r.name, format!("duplicate receiver name {:?} (first defined at {}:{l}:{c})", r.name.value, self.path));
            }
            if r.name.value.is_empty() || r.name.value.contains(char::is_whitespace) {
                self.err(&r.name, format!("invalid receiver name {:?}", r.name.value));
            }
            let allowed: &[&str] = match r.kind.value.as_str() {
                "webhook" => &["url", "url_file", "secret", "secret_file", "headers"],
                "slack" | "teams" => &["url", "url_file"],
                "pagerduty" => &["url", "routing_key", "routing_key_file"],
                "alertmanager" => &["urls", "headers"],
                "log" => &[],
                other => {
                    self.err(&r.kind, format!("unknown receiver type {other:?} (valid: webhook, slack, pagerduty, teams, alertmanager, log)"));
                    continue;
                }
            };
            let present = [
                ("url", r.url.is_some()),
                ("url_file", r.url_file.is_some()),
                ("urls", !r.urls.is_empty()),
                ("secret", r.secret.is_some()),
                ("secret_file", r.secret_file.is_some()),
                ("routing_key", r.routing_key.is_some()),
                ("routing_key_file", r.routing_key_file.is_some()),
                ("headers", !r.headers.is_empty()),
            ];
            for (field, is) in present {
                if is && !allowed.contains(&field) {
                    self.err(&r.kind, format!("`{field}` does not apply to {} receivers", r.kind.value));
                }
            }
            let url = |v: &mut Self| -> Option<String> {
                match (&r.url, &r.url_file) {
                    (Some(u), None) => {
                        // Webhook URLs carry their own credential (anyone holding one can post).
                        if !u.value.contains("${") {
                            v.warn(u, "url is written in the file; a webhook URL is a secret: use ${ENV_VAR} or url_file to keep it out of YAML");
                        }
                        Some(v.url(u))
                    }
                    (None, Some(f)) => v.read_secret(f),
                    (Some(u), Some(_)) => {
                        v.err(u, "give url or url_file, not both");
                        None
                    }
                    (None, None) => None,
                }
            };
            let kind = match r.kind.value.as_str() {
                "webhook" | "slack" | "teams" => {
                    let Some(u) = url(self) else {
                        self.err(&r.name, format!("{} receiver {:?} needs `url` or `url_file`", r.kind.value, r.name.value));
                        continue;
                    };
                    match r.kind.value.as_str() {
                        "webhook" => {
                            let secret = self.secret(&r.secret, &r.secret_file, "secret");
                            if let (Some(value), Some(at)) = (&secret, r.secret.as_ref().or(r.secret_file.as_ref())) {
                                // Never echo the secret: the decoder's message names a position only.
                                if let Err(e) = crate::notify::WebhookSecret::new(value) {
                                    self.err(at, format!("unusable webhook secret: {e}"));
                                }
                            }
                            ReceiverKind::Webhook { url: u, secret }
                        }
                        "slack" => ReceiverKind::Slack { url: u },
                        _ => ReceiverKind::Teams { url: u },
                    }
                }
                "pagerduty" => {
                    let Some(key) = self.secret(&r.routing_key, &r.routing_key_file, "routing_key") else {
                        self.err(&r.name, format!("pagerduty receiver {:?} needs `routing_key` or `routing_key_file`", r.name.value));
                        continue;
                    };
                    let u = r.url.as_ref().map_or_else(|| PAGERDUTY_EVENTS_URL.to_string(), |u| self.url(u));
                    ReceiverKind::PagerDuty { url: u, routing_key: key }
                }
                "alertmanager" => {
                    if r.urls.is_empty() {
                        self.err(&r.name, format!("alertmanager receiver {:?} needs `urls` (every peer of the cluster)", r.name.value));
                        continue;
                    }
                    let urls = r.urls.iter().map(|u| self.url(u).trim_end_matches('/').to_string()).collect();
                    ReceiverKind::Alertmanager { urls }
                }
                _ => ReceiverKind::Log,
            };
            let timeout = self.duration(&r.timeout, Duration::from_secs(10));
            let max_retry_duration = r.max_retry_duration.as_ref().and_then(|d| duration_at(self.path, d, &mut self.diags));
            let concurrency = r.concurrency.as_ref().map_or(4, |c| {
                if c.value == 0 {
                    self.err(c, "concurrency must be at least 1");
                }
                c.value.max(1)
            });
            for (field, t) in [("title", &r.title), ("text", &r.text)] {
                if let Some(t) = t {
                    if let Err(e) = super::template::environment().template_from_str(&t.value) {
                        self.err(t, format!("{field} template: {e}"));
                    }
                }
            }
            let headers = self.headers(&r.headers);
            out.push(Receiver {
                name: r.name.value.clone(),
                kind,
                headers,
                timeout,
                send_resolved: r.send_resolved,
                dry_run_target: r.dry_run_target,
                max_retry_duration,
                concurrency,
                title_template: r.title.as_ref().map(|t| t.value.clone()),
                text_template: r.text.as_ref().map(|t| t.value.clone()),
            });
        }
        out
    }

    fn notification(&mut self, n: &yaml::RawNotification) -> NotificationDefaults {
        let check_re = |v: &mut Self, s: &Spanned<String>| {
            if let Err(e) = Regex::new(&s.value) {
                let text = e.to_string();
                v.err(s, format!("invalid regex: {}", text.lines().last().unwrap_or("").trim_start_matches("error: ")));
            }
        };
        for p in &n.scrub.extra_patterns {
            check_re(self, p);
        }
        NotificationDefaults {
            group_wait: self.duration(&n.group_wait, Duration::from_secs(10)),
            min_interval: self.duration(&n.min_interval, Duration::from_secs(300)),
            repeat_interval: self.duration(&n.repeat_interval, Duration::from_secs(4 * 3600)),
            send_resolved: n.send_resolved.unwrap_or(true),
            max_retry_duration: self.duration(&n.max_retry_duration, Duration::from_secs(24 * 3600)),
            scrub_patterns: n.scrub.extra_patterns.iter().map(|s| s.value.clone()).collect(),
            scrub_allow: n.scrub.allow.iter().map(|s| s.value.clone()).collect(),
            scrub_labels: n.scrub.labels.unwrap_or(true),
        }
    }

    fn maintenance(&mut self, raw: &[yaml::RawMaintenance]) -> Vec<MaintenanceWindow> {
        let mut out = Vec::new();
        for m in raw {
            let cron = match parse_cron(&m.schedule.value) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.err(&m.schedule, e);
                    None
                }
            };
            let duration = self.duration(&Some(m.duration.clone()), Duration::ZERO);
            if duration.is_zero() {
                self.err(&m.duration, "duration must be greater than 0");
            }
            let timezone = m.timezone.as_ref().map_or(chrono_tz::UTC, |t| self.timezone(t));
            let mut matchers = Vec::new();
            for s in &m.matchers {
                match parse_matcher(&s.value) {
                    Ok(mm) if is_identifier(&mm.label) => matchers.push(mm),
                    Ok(_) => self.err(s, "invalid label name"),
                    Err(e) => self.err(s, e),
                }
            }
            if let Some(cron) = cron {
                out.push(MaintenanceWindow { name: m.name.value.clone(), schedule: m.schedule.value.clone(), cron, duration, timezone, matchers });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn load_with(extra: &str) -> Result<Config, Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), "groups: []\n").unwrap();
        let path = dir.path().join("herald.yaml");
        std::fs::write(&path, format!("prometheus: {{url: 'http://127.0.0.1:9'}}\nrule_files: [rules.yaml]\n{extra}")).unwrap();
        load_config(&path, &|_| None).map(|(c, _)| c)
    }

    #[test]
    fn shard_defaults_to_everything_and_refuses_an_index_outside_total() {
        assert_eq!(load_with("").unwrap().shard, crate::shard::Shard { index: 0, total: 1 });
        assert_eq!(load_with("shard: {index: 1, total: 3}\n").unwrap().shard, crate::shard::Shard { index: 1, total: 3 });
        let e = load_with("shard: {index: 3, total: 3}\n").unwrap_err().to_string();
        assert!(e.contains("herald.yaml:3:") && e.contains("shard.index must be below shard.total (3): shards are numbered 0 to 2"), "{e}");
        let e = load_with("shard:\n  index: 0\n  total: 0\n").unwrap_err().to_string();
        assert!(e.contains("herald.yaml:5:10: shard.total must be at least 1"), "{e}");
    }

    #[test]
    fn cron_is_five_field_posix() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("0 9 * * 0").is_ok(), "0 = Sunday");
        assert!(parse_cron("0 0 9 * * 1").unwrap_err().contains("5 crontab fields"));
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn maintenance_window_is_active_inside_its_duration_in_its_timezone() {
        let w = MaintenanceWindow {
            name: "sat".into(),
            schedule: "0 2 * * 6".into(),
            cron: parse_cron("0 2 * * 6").unwrap(),
            duration: Duration::from_secs(2 * 3600),
            timezone: chrono_tz::Europe::Berlin,
            matchers: vec![parse_matcher("service=~\"check.*\"").unwrap()],
        };
        let labels = |n: &str| (n == "service").then(|| "checkout".to_string());
        // Saturday 2026-11-28 02:30 Berlin = 01:30 UTC.
        assert!(w.active(chrono::Utc.with_ymd_and_hms(2026, 11, 28, 1, 30, 0).unwrap(), &labels));
        assert!(!w.active(chrono::Utc.with_ymd_and_hms(2026, 11, 28, 3, 30, 0).unwrap(), &labels));
        assert!(!w.active(chrono::Utc.with_ymd_and_hms(2026, 11, 27, 1, 30, 0).unwrap(), &labels));
        let other = |_: &str| Some("search".to_string());
        assert!(!w.active(chrono::Utc.with_ymd_and_hms(2026, 11, 28, 1, 30, 0).unwrap(), &other));
    }

    #[test]
    fn matchers_follow_alertmanager_syntax() {
        assert!(parse_matcher("env!=\"dev\"").unwrap().matches("prod"));
        assert!(!parse_matcher("env!=\"dev\"").unwrap().matches("dev"));
        assert!(parse_matcher("service=checkout").unwrap().matches("checkout"));
        assert!(!parse_matcher("service=check").unwrap().matches("checkout"));
        assert!(parse_matcher("service!~\"a|b\"").unwrap().matches("c"));
        assert!(parse_matcher("oops").is_err());
    }
}
