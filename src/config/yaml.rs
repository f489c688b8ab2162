//! The raw file formats, exactly as written, and the one place that parses YAML.
//!
//! These structs are the schema: [`parse`] reads a file into a located tree and deserializes
//! them from it, reporting every unknown key (their `fields`), wrong type and missing field,
//! not just the first (see `yaml/tree.rs`). Values we validate later are [`Spanned`] so errors
//! can point at them. Polymorphic sections (receivers, ticket sources) are flat structs with a
//! `type` field checked after parsing, because serde-saphyr loses spans inside tagged enums.
//! Nothing outside this module imports `serde_saphyr`; swapping the YAML crate is a one-file change.

use std::collections::{BTreeMap, HashSet};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{Diagnostic, Diagnostics};

mod tree;

/// A value with the line and column it was written at.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub line: u64,
    pub col: u64,
    /// Length in the source (bytes), quotes included: tells a quoted scalar from a plain one.
    pub source_len: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a located value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Spanned<T>, A::Error> {
                let missing = || serde::de::Error::custom("incomplete location");
                let line = a.next_element()?.ok_or_else(missing)?;
                let col = a.next_element()?.ok_or_else(missing)?;
                let source_len = a.next_element()?.ok_or_else(missing)?;
                let value = a.next_element()?.ok_or_else(missing)?;
                Ok(Spanned { value, line, col, source_len })
            }
        }
        d.deserialize_struct(tree::SPANNED, &["line", "col", "source_len", "value"], V(std::marker::PhantomData))
    }
}

/// A file parsed as far as its mistakes allow: the value built from every part that was valid,
/// and the schema errors found on the way (all of them, not just the first).
#[derive(Debug)]
pub struct Parsed<T> {
    pub value: T,
    path: String,
    errors: Diagnostics,
    /// (line, col) of objects that lost a broken value: later errors about them are follow-ons.
    damaged: HashSet<(u64, u64)>,
}

impl<T> Parsed<T> {
    /// True when the file had schema errors.
    pub fn has_errors(&self) -> bool {
        self.errors.has_errors()
    }

    /// The schema errors, followed by `later` (the semantic checks of [`Parsed::value`]),
    /// minus the later errors about objects already reported as broken.
    pub fn finish(self, later: Diagnostics) -> Diagnostics {
        let mut all = self.errors;
        for d in later.0 {
            if !(d.is_error() && d.path == self.path && self.damaged.contains(&(d.line, d.col))) {
                all.push(d);
            }
        }
        all
    }
}

/// [`parse`] for files with no later semantic pass of their own: every schema error (all of
/// them, located) refuses the file.
pub fn parse_all<T: DeserializeOwned>(path: &str, text: &str) -> Result<T, Diagnostics> {
    let parsed = parse::<T>(path, text)?;
    if parsed.has_errors() {
        return Err(parsed.finish(Diagnostics::default()));
    }
    Ok(parsed.value)
}

/// The deepest nesting of mappings and sequences a Herald file may have.
pub const MAX_NESTING: usize = 24;

/// Parses one YAML document into `T`, reporting every schema error with its location.
///
/// Syntax errors (which leave no tree) and a document whose top level is unusable are `Err`.
/// Otherwise `T` is built from the valid parts and the errors ride along in [`Parsed`].
pub fn parse<T: DeserializeOwned>(path: &str, text: &str) -> Result<Parsed<T>, Diagnostics> {
    // Herald's files nest a handful of levels; a tight bound keeps every recursive step after
    // the parse (the located tree's deserializer, validation) far from the stack's end, also on
    // the reload thread (found by the fuzz smoke with a 2 MiB stack).
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_NESTING;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let mut root: tree::Node = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, col) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut msg = e.without_snippet().to_string();
        // serde-saphyr appends the location in prose; we print it as path:line:col instead.
        if let Some(i) = msg.rfind(" at line ") {
            msg.truncate(i);
        }
        msg = msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        if text.trim().is_empty() {
            msg = "file is empty".into();
        }
        Diagnostics(vec![Diagnostic::error(path, line, col, msg)])
    })?;
    if root.is_null() {
        return Err(Diagnostics(vec![Diagnostic::error(path, 1, 1, "file is empty")]));
    }
    let nodes = root.number(0);
    let mut walk = tree::Walk {
        path,
        text,
        pruned: HashSet::new(),
        diags: Default::default(),
        damaged: Default::default(),
    };
    // Each failed walk prunes one broken node, so this ends within `nodes` walks.
    for _ in 0..=nodes {
        match T::deserialize(tree::De { node: &root, walk: &walk }) {
            Ok(value) => {
                return Ok(Parsed {
                    value,
                    path: path.to_string(),
                    errors: Diagnostics(walk.diags.into_inner()),
                    damaged: walk.damaged.into_inner(),
                })
            }
            Err(tree::Error::Reported(id)) if id != root.id() && walk.pruned.insert(id) => {}
            Err(e) => {
                let mut diags = walk.diags.into_inner();
                if diags.is_empty() {
                    diags.push(Diagnostic::error(path, 1, 1, e.to_string()));
                }
                return Err(Diagnostics(diags));
            }
        }
    }
    unreachable!("every failed walk prunes a node")
}

// ---------------------------------------------------------------------------------------------
// Rule files (spec §4)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Spanned<String>,
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    #[serde(default)]
    pub subject: Vec<Spanned<String>>,
    #[serde(default)]
    pub signals: BTreeMap<String, Spanned<RawSignal>>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignal {
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    #[serde(default)]
    pub value: Option<Spanned<f64>>,
    #[serde(default)]
    pub ticket_source: Option<Spanned<String>>,
    /// `alertmanager: true`: values pushed by Alertmanager's webhook through an
    /// `integrations.alertmanager` mapping that names this signal.
    #[serde(default)]
    pub alertmanager: Option<Spanned<bool>>,
    /// Re-query at most this often (default: every evaluation); values are reused in between.
    #[serde(default)]
    pub every: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub when: Spanned<String>,
    #[serde(default, rename = "for")]
    pub for_: Option<Spanned<String>>,
    #[serde(default)]
    pub keep_firing_for: Option<Spanned<String>>,
    #[serde(default)]
    pub resolve_after: Option<Spanned<String>>,
    pub action: Spanned<String>,
    #[serde(default)]
    pub severity: Option<Spanned<String>>,
    #[serde(default)]
    pub notify: Vec<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Rule unit-test files (spec §5)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub rule_files: Vec<Spanned<String>>,
    #[serde(default)]
    pub evaluation_interval: Option<Spanned<String>>,
    pub tests: Vec<RawTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub name: Spanned<String>,
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    #[serde(default)]
    pub input: Vec<RawInput>,
    #[serde(default)]
    pub expect: Vec<RawExpect>,
    /// Times Herald is down: no evaluation in `[from, until)`, then a restart from the saved state.
    #[serde(default)]
    pub downtime: Vec<RawDowntime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDowntime {
    pub from: Spanned<String>,
    pub until: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub subject: Spanned<BTreeMap<String, String>>,
    #[serde(default)]
    pub signals: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub events: Vec<RawEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    pub at: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub channel: Option<Spanned<String>>,
    #[serde(default)]
    pub value: Option<Spanned<String>>,
    #[serde(default)]
    pub severity: Option<Spanned<String>>,
    #[serde(default)]
    pub security: Option<bool>,
    #[serde(default)]
    pub actor: Option<Spanned<String>>,
    #[serde(default)]
    pub note: Option<Spanned<String>>,
    /// The incident by id (default: the subject's latest), as the API addresses it.
    #[serde(default)]
    pub incident: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub at: Spanned<String>,
    #[serde(default)]
    pub firing: Option<Vec<RawInstance>>,
    #[serde(default)]
    pub includes: Option<Vec<RawInstance>>,
    #[serde(default)]
    pub excludes: Option<Vec<RawInstance>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub rule: Spanned<String>,
    #[serde(default)]
    pub subject: Option<BTreeMap<String, String>>,
    /// The instance's annotations, matched exactly (like promtool's `exp_annotations`).
    #[serde(default)]
    pub annotations: Option<Spanned<BTreeMap<String, String>>>,
}

// ---------------------------------------------------------------------------------------------
// herald.yaml (spec §3)

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub prometheus: Option<RawPrometheus>,
    #[serde(default)]
    pub ticket_sources: Vec<RawTicketSource>,
    #[serde(default)]
    pub receivers: Vec<RawReceiver>,
    #[serde(default)]
    pub notification: RawNotification,
    #[serde(default)]
    pub maintenance_windows: Vec<RawMaintenance>,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub console: RawConsole,
    #[serde(default)]
    pub rule_files: Vec<Spanned<String>>,
    /// `shard: {index, total}`: evaluate only this replica's share of the subjects.
    #[serde(default)]
    pub shard: Option<RawShard>,
    #[serde(default)]
    pub status_pages: Vec<RawStatusPage>,
    #[serde(default)]
    pub integrations: RawIntegrations,
    #[serde(default)]
    pub drafts: RawDrafts,
}

/// `console:` — the web console's update targets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    #[serde(default)]
    pub first_update_due: Option<Spanned<String>>,
    #[serde(default)]
    pub update_due: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    #[serde(default)]
    pub evaluation_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub state_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub external_url: Option<Spanned<String>>,
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    /// How long delivered/failed notifications and resolved incidents are kept (default 30d).
    #[serde(default)]
    pub retention: Option<Spanned<String>>,
    /// Missed evaluations replayed from Prometheus's history after downtime (default 1h).
    #[serde(default)]
    pub catch_up: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub url: Spanned<String>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub basic_auth: Option<RawBasicAuth>,
    #[serde(default)]
    pub bearer_token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: Spanned<String>,
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTicketSource {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// prometheus: PromQL count per subject. zendesk: the search query (a template).
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// The counting window (default 1h).
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    /// zendesk: https://<subdomain>.zendesk.com; http_json: the URL (a template).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub email: Option<Spanned<String>>,
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub json_pointer: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub url_file: Option<Spanned<String>>,
    /// alertmanager: every peer of the cluster.
    #[serde(default)]
    pub urls: Vec<Spanned<String>>,
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub routing_key: Option<Spanned<String>>,
    #[serde(default)]
    pub routing_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub send_resolved: Option<bool>,
    #[serde(default)]
    pub dry_run_target: bool,
    #[serde(default)]
    pub max_retry_duration: Option<Spanned<String>>,
    #[serde(default)]
    pub concurrency: Option<Spanned<u32>>,
    /// Message title template override.
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    /// Message text template override.
    #[serde(default)]
    pub text: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotification {
    #[serde(default)]
    pub group_wait: Option<Spanned<String>>,
    #[serde(default)]
    pub min_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub repeat_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub send_resolved: Option<bool>,
    #[serde(default)]
    pub max_retry_duration: Option<Spanned<String>>,
    #[serde(default)]
    pub scrub: RawScrub,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrub {
    #[serde(default)]
    pub extra_patterns: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Scrub subject and label values wherever they leave Herald (default true).
    #[serde(default)]
    pub labels: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    pub name: Spanned<String>,
    pub schedule: Spanned<String>,
    pub duration: Spanned<String>,
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    /// Alertmanager-style matchers: `service="checkout"`, `team=~"pay.*"`, `env!="dev"`.
    #[serde(default)]
    pub matchers: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub read_requires_token: Option<Spanned<bool>>,
}

/// `shard:` in `herald.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    pub index: Spanned<u32>,
    pub total: Spanned<u32>,
}

// Status pages, inbound integrations and drafted updates

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatusPage {
    pub name: Spanned<String>,
    /// `statuspage` (REST API v1) or `statuspage_public` (the page's public JSON).
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub page_id: Option<Spanned<String>>,
    #[serde(default)]
    pub api_key: Option<Spanned<String>>,
    #[serde(default)]
    pub api_key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Component id → subject labels.
    #[serde(default)]
    pub components: BTreeMap<String, Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntegrations {
    #[serde(default)]
    pub pagerduty: Option<RawPagerDutyInbound>,
    #[serde(default)]
    pub alertmanager: Vec<RawAlertMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPagerDutyInbound {
    #[serde(default)]
    pub webhook_secret: Option<Spanned<String>>,
    #[serde(default)]
    pub webhook_secret_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertMapping {
    /// Alertmanager-style label matchers; all must match.
    pub matchers: Vec<Spanned<String>>,
    /// Alert labels that form the subject (default `[service]`).
    #[serde(default)]
    pub subject: Option<Vec<Spanned<String>>>,
    /// The incident event a firing alert applies (`security`, `internal_only`, `legal_requested`).
    #[serde(default)]
    pub event: Option<Spanned<String>>,
    /// Instead of an event: the signal (declared `alertmanager: true` in a group) a firing
    /// alert sets for its subject.
    #[serde(default)]
    pub signal: Option<Spanned<String>>,
    /// With `signal`: where the value comes from, `annotation:NAME` or `label:NAME` (default: 1).
    #[serde(default)]
    pub value_from: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrafts {
    /// A directory of minijinja templates that override the built-in ones by file name.
    #[serde(default)]
    pub templates_dir: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Replay event files (`herald replay --events FILE`): a list in YAML, or one flow mapping per
// line (JSON lines, which are YAML too).

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplayEvent {
    pub at: Spanned<String>,
    #[serde(default)]
    pub subject: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub incident: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub channel: Option<Spanned<String>>,
    #[serde(default)]
    pub value: Option<Spanned<String>>,
    #[serde(default)]
    pub severity: Option<Spanned<String>>,
    #[serde(default)]
    pub security: Option<bool>,
    #[serde(default)]
    pub actor: Option<Spanned<String>>,
    #[serde(default)]
    pub note: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Game-day scenarios (`herald gameday SCENARIO.yaml`): signal overrides in the `herald test`
// input format.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// The step of the series (default 1m).
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    /// How long the game day lasts in scenario time (default: the longest series).
    #[serde(default)]
    pub duration: Option<Spanned<String>>,
    /// `overlay` (over live data, the default) or `replace` (instead of it).
    #[serde(default)]
    pub data: Option<Spanned<String>>,
    pub input: Vec<RawInput>,
}

#[cfg(test)]
mod nesting_tests {
    /// Regression (fuzz smoke, 2 MiB reload stack): deep nesting is refused with a location
    /// before anything recursive runs on it.
    #[test]
    fn nesting_deeper_than_the_bound_is_a_located_error() {
        let deep = format!("a: {}1{}", "[".repeat(super::MAX_NESTING + 8), "]".repeat(super::MAX_NESTING + 8));
        let Err(err) = super::parse::<serde_json::Value>("deep.yaml", &deep) else { panic!("deep nesting was accepted") };
        let text = err.to_string();
        assert!(text.contains("deep.yaml:1:"), "{text}");
        let fine = format!("a: {}1{}", "[".repeat(8), "]".repeat(8));
        assert!(super::parse::<serde_json::Value>("fine.yaml", &fine).is_ok());
    }
}
