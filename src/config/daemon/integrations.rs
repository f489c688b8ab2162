//! `status_pages:`, `integrations:` and `drafts:` → their validated model.
//!
//! A child of `config::daemon`, so it shares the validator (located diagnostics, `${VAR}`
//! interpolation, `*_file` secrets). Reads local files only (secrets, draft templates).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::super::yaml::{RawAlertMapping, RawDrafts, RawIntegrations, RawStatusPage, Spanned};
use super::super::rules::{loc, Location};
use super::{parse_matcher, Matcher, Validator};
use crate::engine::Subject;

/// The Statuspage REST API v1 base URL.
pub const STATUSPAGE_API_URL: &str = "https://api.statuspage.io/v1";

/// A status page Herald reads (and, for `statuspage`, publishes approved drafts to).
#[derive(Clone, Debug)]
pub struct StatusPage {
    pub name: String,
    pub kind: StatusPageKind,
    /// API base (`statuspage`) or the page's own address (`statuspage_public`), no trailing `/`.
    pub url: String,
    /// How often the page is read (default 1m).
    pub poll_interval: Duration,
    /// Per-request timeout (default 10s).
    pub timeout: Duration,
    /// Component id → the subject it stands for.
    pub components: Vec<(String, Subject)>,
}

impl StatusPage {
    /// The subject a component id stands for.
    pub fn subject_of(&self, component: &str) -> Option<&Subject> {
        self.components.iter().find(|(c, _)| c == component).map(|(_, s)| s)
    }
    /// The component ids that stand for a subject.
    pub fn components_of(&self, subject: &Subject) -> Vec<&str> {
        self.components.iter().filter(|(_, s)| s == subject).map(|(c, _)| c.as_str()).collect()
    }
}

/// How a status page is read.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusPageKind {
    /// Atlassian Statuspage REST API v1 (`Authorization: OAuth <key>`).
    Api { page_id: String, api_key: String },
    /// The unauthenticated public JSON (`/api/v2/summary.json`, `/api/v2/incidents.json`).
    Public,
}

/// `integrations:`.
#[derive(Clone, Debug, Default)]
pub struct Integrations {
    /// Verifies `X-PagerDuty-Signature` on `POST /api/v1/integrations/pagerduty`; `None`
    /// disables the endpoint.
    pub pagerduty_secret: Option<String>,
    /// Alertmanager webhook mappings, tried in order (first match wins).
    pub alertmanager: Vec<AlertMapping>,
}

/// Maps matching Alertmanager alerts to an incident event or to a signal's value.
#[derive(Clone, Debug)]
pub struct AlertMapping {
    pub matchers: Vec<Matcher>,
    /// Alert labels that form the subject.
    pub subject_labels: Vec<String>,
    /// What a matching alert does.
    pub target: AlertTarget,
    /// Where the mapping's `signal` (or, without one, its first matcher) was written.
    pub location: Location,
}

/// What a matching alert does.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertTarget {
    /// `event:` — a firing alert applies the event to the subject's open incident (`security`
    /// declares one, critical, when none is open).
    Event(AlertEvent),
    /// `signal:` — a firing alert sets the signal for its subject (to `value_from`, or 1); a
    /// resolved one sets it back to 0.
    Signal { name: String, value_from: Option<ValueFrom> },
}

/// `value_from:` of a signal mapping: the alert annotation or label holding the number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueFrom {
    Annotation(String),
    Label(String),
}

impl ValueFrom {
    /// Parses `annotation:NAME` or `label:NAME`.
    pub fn parse(s: &str) -> Result<ValueFrom, String> {
        let bad = || format!("invalid value_from {s:?}: expected `annotation:NAME` or `label:NAME`, e.g. annotation:value");
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad());
        }
        match kind.trim() {
            "annotation" => Ok(ValueFrom::Annotation(name.to_string())),
            "label" if super::super::rules::is_identifier(name) => Ok(ValueFrom::Label(name.to_string())),
            "label" => Err(format!("invalid value_from {s:?}: {name:?} is not a label name")),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for ValueFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueFrom::Annotation(n) => write!(f, "annotation:{n}"),
            ValueFrom::Label(n) => write!(f, "label:{n}"),
        }
    }
}

/// Events an Alertmanager alert can raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertEvent {
    Security,
    InternalOnly,
    LegalRequested,
}

impl AlertEvent {
    const ALL: [(&'static str, AlertEvent); 3] =
        [("security", AlertEvent::Security), ("internal_only", AlertEvent::InternalOnly), ("legal_requested", AlertEvent::LegalRequested)];
    /// The event type name.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, e)| *e == self).map_or("security", |(n, _)| n)
    }
}

impl AlertMapping {
    /// Whether an alert's labels match every matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matchers.iter().all(|m| m.matches(labels.get(&m.label).map_or("", String::as_str)))
    }
}

/// `drafts:`: template overrides, by template name (`status_page`, `support`, …).
#[derive(Clone, Debug, Default)]
pub struct DraftSettings {
    pub templates_dir: Option<PathBuf>,
    /// Override sources read from `templates_dir` (`<name>.j2`).
    pub templates: BTreeMap<String, String>,
}

impl Validator<'_> {
    pub(super) fn status_pages(&mut self, raw: &[RawStatusPage]) -> Vec<StatusPage> {
        let mut out: Vec<StatusPage> = Vec::new();
        for p in raw {
            if out.iter().any(|o| o.name == p.name.value) {
                self.err(&p.name, format!("duplicate status page name {:?}", p.name.value));
            }
            let poll_interval = self.duration(&p.poll_interval, Duration::from_secs(60));
            if poll_interval < Duration::from_secs(1) {
                if let Some(s) = &p.poll_interval {
                    self.err(s, "poll_interval must be at least 1s (Statuspage allows 1 request/s)");
                }
            }
            let timeout = self.duration(&p.timeout, Duration::from_secs(10));
            let kind = match p.kind.value.as_str() {
                "statuspage" => {
                    let page_id = match &p.page_id {
                        Some(id) => self.interp(id),
                        None => {
                            self.err(&p.kind, format!("statuspage {:?} needs `page_id`", p.name.value));
                            String::new()
                        }
                    };
                    let api_key = self.secret(&p.api_key, &p.api_key_file, "api_key");
                    if api_key.is_none() && p.api_key.is_none() && p.api_key_file.is_none() {
                        self.err(&p.kind, format!("statuspage {:?} needs `api_key_file` (or `api_key: ${{ENV_VAR}}`)", p.name.value));
                    }
                    StatusPageKind::Api { page_id, api_key: api_key.unwrap_or_default() }
                }
                "statuspage_public" => {
                    for (field, is) in [("page_id", &p.page_id), ("api_key", &p.api_key), ("api_key_file", &p.api_key_file)] {
                        if let Some(s) = is {
                            self.err(s, format!("`{field}` does not apply to statuspage_public pages (they are read without a key)"));
                        }
                    }
                    if p.url.is_none() {
                        self.err(&p.kind, format!("statuspage_public {:?} needs `url` (the page's address, e.g. https://status.example.com)", p.name.value));
                    }
                    StatusPageKind::Public
                }
                other => {
                    self.err(&p.kind, format!("unknown status page type {other:?} (valid: statuspage, statuspage_public)"));
                    continue;
                }
            };
            let url = match &p.url {
                Some(u) => self.url(u),
                None => STATUSPAGE_API_URL.to_string(),
            }
            .trim_end_matches('/')
            .to_string();
            let mut components = Vec::new();
            for (id, labels) in &p.components {
                if labels.value.is_empty() {
                    self.err(labels, format!("component {id:?} must map to at least one subject label, e.g. {{service: checkout}}"));
                    continue;
                }
                components.push((id.clone(), Subject::new(labels.value.clone())));
            }
            if components.is_empty() {
                self.warn(&p.name, format!("status page {:?} maps no components: its incidents cannot be linked to Herald's", p.name.value));
            }
            out.push(StatusPage { name: p.name.value.clone(), kind, url, poll_interval, timeout, components });
        }
        out
    }

    pub(super) fn integrations(&mut self, raw: &RawIntegrations) -> Integrations {
        let pagerduty_secret = raw.pagerduty.as_ref().and_then(|pd| {
            let s = self.secret(&pd.webhook_secret, &pd.webhook_secret_file, "webhook_secret");
            if s.as_deref() == Some("") {
                if let Some(f) = pd.webhook_secret_file.as_ref().or(pd.webhook_secret.as_ref()) {
                    self.err(f, "the PagerDuty webhook secret is empty");
                }
            }
            s
        });
        let alertmanager = raw.alertmanager.iter().filter_map(|m| self.alert_mapping(m)).collect();
        Integrations { pagerduty_secret, alertmanager }
    }

    fn alert_mapping(&mut self, m: &RawAlertMapping) -> Option<AlertMapping> {
        let mut matchers = Vec::new();
        for s in &m.matchers {
            match parse_matcher(&s.value) {
                Ok(x) => matchers.push(x),
                Err(e) => self.err(s, e),
            }
        }
        let subject_labels: Vec<String> = match &m.subject {
            Some(l) => l.iter().map(|s| s.value.clone()).collect(),
            None => vec!["service".to_string()],
        };
        for l in m.subject.iter().flatten() {
            if !super::super::rules::is_identifier(&l.value) {
                self.err(l, format!("invalid subject label name {:?}", l.value));
            }
        }
        let first = m.matchers.first().cloned().unwrap_or(Spanned { value: String::new(), line: 1, col: 1, source_len: 0 });
        let target = match (&m.event, &m.signal) {
            (None, None) => {
                self.err(&first, "an alertmanager mapping needs `event` (security, internal_only or legal_requested) or `signal` (a signal declared `alertmanager: true`)");
                return None;
            }
            (Some(ev), Some(_)) => {
                self.err(ev, "an alertmanager mapping takes `event` or `signal`, not both");
                return None;
            }
            (Some(ev), None) => {
                if let Some(v) = &m.value_from {
                    self.err(v, "`value_from` applies to `signal` mappings only");
                }
                let Some(event) = AlertEvent::ALL.iter().find(|(n, _)| *n == ev.value).map(|(_, e)| *e) else {
                    self.err(ev, format!("unknown event {:?} for alertmanager alerts (valid: security, internal_only, legal_requested)", ev.value));
                    return None;
                };
                AlertTarget::Event(event)
            }
            (None, Some(sig)) => {
                if !super::super::rules::is_identifier(&sig.value) {
                    self.err(sig, format!("invalid signal name {:?}", sig.value));
                    return None;
                }
                let value_from = match &m.value_from {
                    None => None,
                    Some(v) => match ValueFrom::parse(&v.value) {
                        Ok(x) => Some(x),
                        Err(e) => {
                            self.err(v, e);
                            return None;
                        }
                    },
                };
                AlertTarget::Signal { name: sig.value.clone(), value_from }
            }
        };
        let at = m.signal.as_ref().or(m.event.as_ref()).unwrap_or(&first);
        if m.matchers.is_empty() {
            self.err(at, "an alertmanager mapping needs at least one matcher, e.g. alertname=\"SecurityAlert\"");
            return None;
        }
        if matchers.len() != m.matchers.len() {
            return None; // reported above; a mapping with a dropped matcher would match too much
        }
        Some(AlertMapping { matchers, subject_labels, target, location: loc(self.path, m.signal.as_ref().unwrap_or(&first)) })
    }

    pub(super) fn drafts(&mut self, raw: &RawDrafts) -> DraftSettings {
        let Some(dir) = &raw.templates_dir else { return DraftSettings::default() };
        let path = self.resolve_path(&dir.value);
        let mut templates = BTreeMap::new();
        match std::fs::read_dir(&path) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let p = e.path();
                    let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".j2")) else { continue };
                    if !crate::drafts::TEMPLATE_NAMES.contains(&name) {
                        self.warn(dir, format!("{}: not a draft template (known: {})", p.display(), crate::drafts::TEMPLATE_NAMES.join(", ")));
                        continue;
                    }
                    match std::fs::read_to_string(&p) {
                        Ok(src) => {
                            if let Err(e) = crate::drafts::check_template(&src) {
                                self.err(dir, format!("{}: {e}", p.display()));
                            }
                            templates.insert(name.to_string(), src);
                        }
                        Err(e) => self.err(dir, format!("cannot read {}: {e}", p.display())),
                    }
                }
            }
            Err(e) => self.err(dir, format!("cannot read templates_dir {}: {e}", path.display())),
        }
        DraftSettings { templates_dir: Some(path), templates }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_config;

    fn load(extra: &str) -> Result<crate::config::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), "groups: []\n").unwrap();
        std::fs::write(dir.path().join("key"), "k3y\n").unwrap();
        std::fs::write(dir.path().join("herald.yaml"), format!("rule_files: [rules.yaml]\n{extra}")).unwrap();
        let env = |n: &str| (n == "SP_KEY").then(|| "from-env".to_string());
        load_config(&dir.path().join("herald.yaml"), &env).map(|(c, _)| c).map_err(|d| d.to_string())
    }

    #[test]
    fn status_pages_and_integrations_load() {
        let c = load(
            "status_pages:\n  - {name: main, type: statuspage, page_id: p1, api_key_file: key, components: {c1: {service: checkout}}}\n  - {name: pub, type: statuspage_public, url: 'https://status.example.com/', poll_interval: 30s}\n  - {name: env, type: statuspage, page_id: p2, api_key: '${SP_KEY}'}\n\
             integrations:\n  pagerduty: {webhook_secret_file: key}\n  alertmanager:\n    - {matchers: ['alertname=\"Sec\"'], event: security}\n",
        )
        .unwrap();
        assert_eq!(c.status_pages.len(), 3);
        assert_eq!(c.status_pages[0].url, super::STATUSPAGE_API_URL);
        assert_eq!(c.status_pages[0].kind, super::StatusPageKind::Api { page_id: "p1".into(), api_key: "k3y".into() });
        assert_eq!(c.status_pages[0].poll_interval, std::time::Duration::from_secs(60));
        assert_eq!(c.status_pages[1].url, "https://status.example.com");
        assert_eq!(c.status_pages[2].kind, super::StatusPageKind::Api { page_id: "p2".into(), api_key: "from-env".into() });
        assert_eq!(c.status_pages[0].subject_of("c1").unwrap().get("service"), Some("checkout"));
        assert_eq!(c.integrations.pagerduty_secret.as_deref(), Some("k3y"));
        assert_eq!(c.integrations.alertmanager[0].subject_labels, vec!["service"]);
    }

    #[test]
    fn every_mistake_is_reported_with_its_location() {
        let e = load(
            "status_pages:\n  - {name: a, type: statuspage}\n  - {name: b, type: statuspage_public, page_id: x}\n  - {name: c, type: nope}\n  - {name: d, type: statuspage, page_id: p, api_key_file: key, poll_interval: 500ms}\n\
             integrations:\n  alertmanager:\n    - {matchers: ['alertname=~\"(\"'], event: security}\n    - {matchers: ['a=\"b\"'], event: explode}\n    - {matchers: ['a=\"b\"']}\n",
        )
        .unwrap_err();
        for want in [
            "herald.yaml:3:21: statuspage \"a\" needs `page_id`",
            "statuspage \"a\" needs `api_key_file`",
            "herald.yaml:4:49: `page_id` does not apply to statuspage_public pages",
            "statuspage_public \"b\" needs `url`",
            "unknown status page type \"nope\"",
            "poll_interval must be at least 1s",
            "invalid regex in matcher",
            "unknown event \"explode\"",
            "herald.yaml:11:19: an alertmanager mapping needs `event`",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        assert!(!e.contains("at least one matcher"), "an invalid matcher is reported once:\n{e}");
    }

    /// A config whose rules declare `burn_rate` from Alertmanager for `[service]` subjects.
    fn load_am(rules: &str, mappings: &str) -> Result<(crate::config::Config, String), String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        std::fs::write(dir.path().join("herald.yaml"), format!("rule_files: [rules.yaml]\nintegrations:\n  alertmanager:\n{mappings}")).unwrap();
        load_config(&dir.path().join("herald.yaml"), &|_| None).map(|(c, w)| (c, w.to_string())).map_err(|d| d.to_string())
    }

    const BURN_RULES: &str = "groups:\n  - name: slo\n    subject: [service]\n    signals:\n      burn_rate: {alertmanager: true}\n    rules:\n      - {name: Burn, when: 'burn_rate > 3', action: escalate}\n";

    #[test]
    fn a_mapping_may_set_a_signal_from_an_annotation_or_label() {
        let (c, warnings) = load_am(
            BURN_RULES,
            "    - {matchers: ['alertname=\"SLOBurnFast\"'], signal: burn_rate, value_from: 'annotation:value'}\n    - {matchers: ['alertname=\"SLOBurnSlow\"'], subject: [service], signal: burn_rate, value_from: 'label:burn'}\n    - {matchers: ['alertname=\"SLOBurnAny\"'], signal: burn_rate}\n",
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings}");
        let targets: Vec<_> = c.integrations.alertmanager.iter().map(|m| m.target.clone()).collect();
        assert_eq!(
            targets,
            vec![
                super::AlertTarget::Signal { name: "burn_rate".into(), value_from: Some(super::ValueFrom::Annotation("value".into())) },
                super::AlertTarget::Signal { name: "burn_rate".into(), value_from: Some(super::ValueFrom::Label("burn".into())) },
                super::AlertTarget::Signal { name: "burn_rate".into(), value_from: None },
            ]
        );
    }

    #[test]
    fn signal_mappings_are_checked_against_the_rules_with_locations() {
        let mappings = [
            "{matchers: ['a=\"1\"'], signal: burn_rate, event: security}",
            "{matchers: ['a=\"2\"'], signal: burn_rate, value_from: 'value'}",
            "{matchers: ['a=\"3\"'], event: security, value_from: 'annotation:value'}",
            "{matchers: ['a=\"4\"'], signal: nowhere}",
            "{matchers: ['a=\"5\"'], subject: [team], signal: burn_rate}",
            "{matchers: ['a=\"6\"'], signal: burn_rate, value_from: 'label:not-a-label'}",
        ];
        let e = load_am(BURN_RULES, &mappings.iter().map(|m| format!("    - {m}\n")).collect::<String>())
        .unwrap_err();
        for want in [
            "herald.yaml:4:55: an alertmanager mapping takes `event` or `signal`, not both",
            "herald.yaml:5:60: invalid value_from \"value\": expected `annotation:NAME` or `label:NAME`",
            "herald.yaml:6:58: `value_from` applies to `signal` mappings only",
            "herald.yaml:7:37: alertmanager mapping sets signal \"nowhere\", which no group declares; add `nowhere: {alertmanager: true}`",
            "herald.yaml:8:54: alertmanager mapping sets signal \"burn_rate\" for subjects [team], but group \"slo\" keys its subjects by [service]",
            "invalid value_from \"label:not-a-label\": \"not-a-label\" is not a label name",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        // Declared with another source.
        let e = load_am(BURN_RULES.replace("{alertmanager: true}", "{value: 1}").as_str(), "    - {matchers: ['a=\"1\"'], signal: burn_rate}\n").unwrap_err();
        assert!(e.contains("group \"slo\" declares it with another source; declare it `burn_rate: {alertmanager: true}`"), "{e}");
        // A signal from Alertmanager that no mapping sets: a warning, located at its group.
        let (_, warnings) = load_am(BURN_RULES, "    - {matchers: ['a=\"1\"'], event: security}\n").unwrap();
        assert!(warnings.contains("rules.yaml:2:11: warning: group \"slo\": signal \"burn_rate\" comes from Alertmanager but no integrations.alertmanager mapping sets it"), "{warnings}");
        // `alertmanager: false` is not a source.
        let e = load_am(&BURN_RULES.replace("alertmanager: true", "alertmanager: false"), "    - {matchers: ['a=\"1\"'], event: security}\n").unwrap_err();
        assert!(e.contains("`alertmanager: false` declares no source"), "{e}");
    }
}
