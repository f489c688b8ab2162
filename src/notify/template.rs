//! Message text: a title and a body rendered from a [`Notification`] with minijinja
//! (`UndefinedBehavior::Strict`, so a typo in a template is an error rather than empty text).
//!
//! The defaults are plain English, impact first, and end with the incident link. A rule may
//! override the title and/or the body with its own template source; an override is used for both
//! statuses (it can branch on `status`).
//!
//! Template context: every field of the generic webhook body (spec §6: `id`, `dedup_key`,
//! `status`, `rule`, `action`, `severity`, `subject`, `labels`, `annotations`, `values`,
//! `incident`, `starts_at`, `ends_at`, `dry_run`, `version`) plus these helpers:
//! * `subject_text` — the subject in words (`checkout`, or `service=checkout, region=eu`);
//! * `impact` — the `summary` annotation when present, otherwise a generic sentence built from the
//!   subject, the action and the rule;
//! * `next_step` — what the action asks people to do, in plain English;
//! * `starts_at_text`, `ends_at_text` — the times as `2024-05-01 12:00 UTC` (`ends_at_text` is
//!   none while firing).

use chrono::{DateTime, Utc};
use minijinja::Environment;

use super::message::{generic_webhook_body, Notification, Status};

/// Default title while firing.
pub const DEFAULT_TITLE_FIRING: &str = "{% if dry_run %}[DRY RUN] {% endif %}{{ impact }}";

/// Default title once resolved.
pub const DEFAULT_TITLE_RESOLVED: &str =
    "{% if dry_run %}[DRY RUN] {% endif %}Resolved: {{ subject_text }} — {{ rule }} no longer applies";

/// Default body while firing.
pub const DEFAULT_TEXT_FIRING: &str = "\
{{ impact }}

{% if annotations.description is defined %}
{{ annotations.description }}
{% endif %}

Next step: {{ next_step }}.
{% if annotations.draft_status_page is defined %}

Drafted status-page update (edit and approve: {{ annotations.drafts_url }}):
{{ annotations.draft_status_page }}
{% endif %}
{% if incident %}
Incident {{ incident.id }} ({{ incident.status }}){{ ': ' ~ incident.url if incident.url else '' }}
{% endif %}
{% if annotations.runbook_url is defined %}
Runbook: {{ annotations.runbook_url }}
{% endif %}
Severity {{ severity }} · rule {{ rule }} · since {{ starts_at_text }}{% if dry_run %} · dry run, no action needed{% endif %}
";

/// Default body once resolved.
pub const DEFAULT_TEXT_RESOLVED: &str = "\
Resolved: {{ subject_text }} — {{ rule }} no longer applies{% if ends_at_text %} since {{ ends_at_text }}{% endif %} (it started {{ starts_at_text }}).
{% if incident %}
Incident {{ incident.id }} is {{ incident.status }}{{ ': ' ~ incident.url if incident.url else '' }}
{% endif %}
Severity {{ severity }} · rule {{ rule }}{% if dry_run %} · dry run, no action needed{% endif %}
";

/// The annotation with which a rule overrides the message title.
pub const RULE_TITLE_ANNOTATION: &str = "title";
/// The annotation with which a rule overrides the message text.
pub const RULE_TEXT_ANNOTATION: &str = "text";

/// A rendered title and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedText {
    /// One line: headline of the message (Slack header, PagerDuty summary, card title).
    pub title: String,
    /// Several lines of plain text.
    pub text: String,
}

/// A template failed to compile or to render.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The template source does not compile.
    #[error("invalid {which} template: {message}")]
    Compile {
        /// `title` or `text`.
        which: &'static str,
        /// The parser's message, with line information.
        message: String,
    },
    /// Rendering failed (for example an undefined variable under strict mode).
    #[error("cannot render the {which} template: {message}")]
    Render {
        /// `title` or `text`.
        which: &'static str,
        /// The engine's message, with line information.
        message: String,
    },
}

/// Compiled title and body templates. Build once (per rule when it has overrides), render many
/// times.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    title_override: bool,
    text_override: bool,
}

const T_TITLE_FIRING: &str = "title.firing";
const T_TITLE_RESOLVED: &str = "title.resolved";
const T_TEXT_FIRING: &str = "text.firing";
const T_TEXT_RESOLVED: &str = "text.resolved";
const T_TITLE_OVERRIDE: &str = "title";
const T_TEXT_OVERRIDE: &str = "text";

fn compile_error(which: &'static str, e: minijinja::Error) -> TemplateError {
    TemplateError::Compile {
        which,
        message: e.to_string(),
    }
}

impl Templates {
    /// The default templates.
    pub fn new() -> Self {
        match Self::with_overrides(None, None) {
            Ok(t) => t,
            // The defaults are constants; the unit tests compile and render them.
            Err(e) => unreachable!("default templates must compile: {e}"),
        }
    }

    /// The defaults, with the title and/or body replaced by the given template sources.
    pub fn with_overrides(title: Option<&str>, text: Option<&str>) -> Result<Self, TemplateError> {
        // The one template environment: the same filters (`percent`, `duration`, `urlencode`)
        // and strictness as rule annotations.
        let mut env = crate::config::template::environment();
        let defaults = [
            (T_TITLE_FIRING, DEFAULT_TITLE_FIRING, "title"),
            (T_TITLE_RESOLVED, DEFAULT_TITLE_RESOLVED, "title"),
            (T_TEXT_FIRING, DEFAULT_TEXT_FIRING, "text"),
            (T_TEXT_RESOLVED, DEFAULT_TEXT_RESOLVED, "text"),
        ];
        for (name, src, which) in defaults {
            env.add_template(name, src)
                .map_err(|e| compile_error(which, e))?;
        }
        if let Some(src) = title {
            env.add_template_owned(T_TITLE_OVERRIDE, src.to_owned())
                .map_err(|e| compile_error("title", e))?;
        }
        if let Some(src) = text {
            env.add_template_owned(T_TEXT_OVERRIDE, src.to_owned())
                .map_err(|e| compile_error("text", e))?;
        }
        Ok(Templates {
            env,
            title_override: title.is_some(),
            text_override: text.is_some(),
        })
    }

    /// Renders the title: one line (newlines are folded into spaces). A rule overrides it
    /// with a `title` annotation (a template the engine already rendered), which wins over a
    /// receiver's `title` template and the default.
    pub fn render_title(&self, n: &Notification) -> Result<String, TemplateError> {
        if let Some(t) = n.annotations.get(RULE_TITLE_ANNOTATION) {
            return Ok(t.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        let name = match (self.title_override, n.status) {
            (true, _) => T_TITLE_OVERRIDE,
            (false, Status::Firing) => T_TITLE_FIRING,
            (false, Status::Resolved) => T_TITLE_RESOLVED,
        };
        let raw = self.render_named(name, "title", n)?;
        Ok(raw.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Renders the body text (trailing spaces trimmed, runs of blank lines collapsed). A rule
    /// overrides it with a `text` annotation, as for the title.
    pub fn render_text(&self, n: &Notification) -> Result<String, TemplateError> {
        if let Some(t) = n.annotations.get(RULE_TEXT_ANNOTATION) {
            return Ok(tidy_text(t));
        }
        let name = match (self.text_override, n.status) {
            (true, _) => T_TEXT_OVERRIDE,
            (false, Status::Firing) => T_TEXT_FIRING,
            (false, Status::Resolved) => T_TEXT_RESOLVED,
        };
        let raw = self.render_named(name, "text", n)?;
        Ok(tidy_text(&raw))
    }

    /// Renders both title and body.
    pub fn render(&self, n: &Notification) -> Result<RenderedText, TemplateError> {
        Ok(RenderedText {
            title: self.render_title(n)?,
            text: self.render_text(n)?,
        })
    }

    fn render_named(
        &self,
        name: &str,
        which: &'static str,
        n: &Notification,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Render {
                which,
                message: e.to_string(),
            })?;
        tmpl.render(context(n)).map_err(|e| TemplateError::Render {
            which,
            message: e.to_string(),
        })
    }
}

/// Renders a receiver's `title`/`text` override templates against sample notifications, as
/// `herald check` does: for every rule (with its group) that notifies the receiver (or one
/// generic sample when none does), firing and resolved, with and without an incident. The
/// samples carry the group's subject labels and signals, the rule's labels and the names of
/// its annotations, so a template that renders here fails at send time only on data (a
/// signal without a value, say). Returns each distinct failure as (`title` | `text`, message).
pub fn check_receiver_templates<'a>(
    title: Option<&str>,
    text: Option<&str>,
    rules: impl IntoIterator<Item = (&'a crate::config::Group, &'a crate::config::Rule)>,
    external_url: &str,
) -> Vec<(&'static str, String)> {
    let t = match Templates::with_overrides(title, text) {
        Ok(t) => t,
        Err(TemplateError::Compile { which, message } | TemplateError::Render { which, message }) => {
            return vec![(which, message)];
        }
    };
    let mut samples: Vec<(String, Notification)> = Vec::new();
    let mut any = false;
    for (g, r) in rules {
        any = true;
        for n in sample_notifications(g, r, external_url) {
            samples.push((format!("rule {:?}", r.name), n));
        }
    }
    if !any {
        let base = sample_base("Example", "notify", "warning", &["service".to_owned()], external_url);
        samples.extend(variants(base).into_iter().map(|n| ("a sample rule".to_owned(), n)));
    }
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (what, n) in samples {
        let when = format!(
            "{what} ({}, {} incident)",
            n.status.as_str(),
            if n.incident.is_some() { "with an" } else { "without an" }
        );
        let results = [
            title.map(|_| t.render_title(&n).map(|_| ())),
            text.map(|_| t.render_text(&n).map(|_| ())),
        ];
        for r in results.into_iter().flatten() {
            if let Err(TemplateError::Render { which, message } | TemplateError::Compile { which, message }) = r {
                if !out.iter().any(|(w, m)| *w == which && m.ends_with(&message)) {
                    out.push((which, format!("fails to render for {when}: {message}")));
                }
            }
        }
    }
    out
}

fn sample_base(rule: &str, action: &str, severity: &str, subject_labels: &[String], external_url: &str) -> Notification {
    let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    Notification {
        id: "hrld_sample".to_owned(),
        dedup_key: format!("INC-1/{rule}"),
        status: Status::Firing,
        rule: rule.to_owned(),
        action: action.to_owned(),
        severity: severity.to_owned(),
        subject: subject_labels.iter().map(|l| (l.clone(), "example".to_owned())).collect(),
        labels: Default::default(),
        annotations: Default::default(),
        values: Default::default(),
        incident: Some(super::message::IncidentRef {
            id: "INC-1".to_owned(),
            status: "investigating".to_owned(),
            opened_at: at,
            url: Some(format!("{external_url}/incidents/INC-1")),
        }),
        starts_at: at,
        ends_at: None,
        dry_run: false,
    }
}

/// Firing and resolved, with and without an incident.
fn variants(base: Notification) -> Vec<Notification> {
    let mut out = Vec::with_capacity(4);
    for resolved in [false, true] {
        for incident in [true, false] {
            let mut n = base.clone();
            if resolved {
                n.status = Status::Resolved;
                n.ends_at = Some(n.starts_at + chrono::Duration::hours(1));
            }
            if !incident {
                n.incident = None;
            }
            out.push(n);
        }
    }
    out
}

fn sample_notifications(g: &crate::config::Group, r: &crate::config::Rule, external_url: &str) -> Vec<Notification> {
    let mut base = sample_base(&r.name, r.action.as_str(), r.severity.as_str(), &g.subject_labels, external_url);
    base.labels = r.labels.clone();
    base.annotations = r.annotations.keys().map(|k| (k.clone(), "example".to_owned())).collect();
    base.values = g.signals.iter().map(|s| (s.name.clone(), 0.5)).collect();
    variants(base)
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn tidy_text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut blank_run = 0;
    for line in raw.lines().map(str::trim_end) {
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 || out.is_empty() {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// The subject in words: the value for a single label, `k=v, k=v` for several, `all subjects`
/// when empty.
pub fn subject_text(n: &Notification) -> String {
    match n.subject.len() {
        0 => "all subjects".to_owned(),
        1 => n.subject.values().next().cloned().unwrap_or_default(),
        _ => n
            .subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn action_impact(action: &str) -> &str {
    match action {
        "activate_comms_lead" => "customers may be affected",
        "suggest_update" => "a customer update is due",
        "escalate" => "the incident is getting worse",
        "engage_legal" => "possible security incident with legal impact",
        "internal_only" => "the impact is internal only",
        "notify" => "needs attention",
        other => other,
    }
}

/// What an action asks people to do, in plain English.
pub fn next_step(action: &str) -> &str {
    match action {
        "activate_comms_lead" => {
            "assign a communications lead and prepare the first customer update"
        }
        "suggest_update" => "post a customer update",
        "escalate" => "raise the update cadence and brief executives",
        "engage_legal" => {
            "engage legal and hold public communications until the incident lead agrees"
        }
        "internal_only" => "keep updates internal; no public update is needed",
        "notify" => "check the signals and the incident",
        other => other,
    }
}

/// The impact sentence: the `summary` annotation, or a generic sentence.
pub fn impact(n: &Notification) -> String {
    match n
        .annotations
        .get("summary")
        .filter(|s| !s.trim().is_empty())
    {
        Some(s) => s.clone(),
        None => format!(
            "{}: {} ({})",
            subject_text(n),
            action_impact(&n.action),
            n.rule
        ),
    }
}

fn human_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn context(n: &Notification) -> minijinja::Value {
    let mut body = generic_webhook_body(n);
    if let serde_json::Value::Object(map) = &mut body {
        let mut put = |k: &str, v: serde_json::Value| {
            map.insert(k.to_owned(), v);
        };
        put("subject_text", subject_text(n).into());
        put("impact", impact(n).into());
        put("next_step", next_step(&n.action).into());
        put("starts_at_text", human_time(&n.starts_at).into());
        put(
            "ends_at_text",
            n.ends_at
                .as_ref()
                .map(human_time)
                .map_or(serde_json::Value::Null, Into::into),
        );
    }
    json_to_value(&body)
}

/// Converts JSON to a template value (minijinja's `serde` feature is not enabled in this crate).
pub fn json_to_value(v: &serde_json::Value) -> minijinja::Value {
    use minijinja::Value;
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => {
            Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::tests::{sample_firing, sample_resolved};

    #[test]
    fn default_firing_title_is_the_summary() {
        let t = Templates::new();
        assert_eq!(
            t.render_title(&sample_firing()).unwrap(),
            "checkout: customers are affected — SLI 97.0% is below its 99.9% objective (8% of customers affected)"
        );
    }

    #[test]
    fn default_firing_text_is_impact_first_with_link() {
        let t = Templates::new();
        assert_eq!(
            t.render_text(&sample_firing()).unwrap(),
            "checkout: customers are affected — SLI 97.0% is below its 99.9% objective (8% of customers affected)\n\
             \n\
             Next step: assign a communications lead and prepare the first customer update.\n\
             Incident INC-42 (investigating): https://herald.example.com/incidents/INC-42\n\
             Runbook: https://runbooks.example.com/checkout\n\
             Severity critical · rule ActivateCommsLead · since 2024-05-01 12:00 UTC"
        );
    }

    #[test]
    fn a_prompt_carries_its_drafted_status_page_update() {
        let mut n = sample_firing();
        n.annotations.insert("draft_status_page".into(), "Some customers cannot check out.".into());
        n.annotations.insert("drafts_url".into(), "https://herald.example.com/api/v1/incidents/INC-42/drafts".into());
        let text = Templates::new().render_text(&n).unwrap();
        assert!(
            text.contains("\n\nDrafted status-page update (edit and approve: https://herald.example.com/api/v1/incidents/INC-42/drafts):\nSome customers cannot check out.\n"),
            "{text}"
        );
    }

    #[test]
    fn a_rule_overrides_title_and_text_over_a_receiver_override() {
        let mut n = sample_firing();
        n.annotations.insert("title".into(), "Checkout  is\ndown".into());
        n.annotations.insert("text".into(), "Say sorry first.\n\n\n\nThen explain.  ".into());
        let t = Templates::with_overrides(Some("receiver title"), Some("receiver text")).unwrap();
        assert_eq!(t.render_title(&n).unwrap(), "Checkout is down");
        assert_eq!(t.render_text(&n).unwrap(), "Say sorry first.\n\nThen explain.");
        n.annotations.remove("title");
        assert_eq!(t.render_title(&n).unwrap(), "receiver title");
    }

    #[test]
    fn generic_sentence_without_summary_and_without_incident() {
        let mut n = sample_firing();
        n.annotations.clear();
        n.incident = None;
        n.action = "suggest_update".to_owned();
        n.rule = "UpdateDue".to_owned();
        let t = Templates::new();
        assert_eq!(
            t.render_title(&n).unwrap(),
            "checkout: a customer update is due (UpdateDue)"
        );
        let text = t.render_text(&n).unwrap();
        assert!(
            text.starts_with("checkout: a customer update is due (UpdateDue)\n"),
            "{text}"
        );
        assert!(
            text.contains("Next step: post a customer update."),
            "{text}"
        );
        assert!(!text.contains("Incident"), "{text}");
        assert!(!text.contains("Runbook"), "{text}");
    }

    #[test]
    fn description_and_multi_label_subject() {
        let mut n = sample_firing();
        n.annotations.remove("summary");
        n.annotations.insert(
            "description".to_owned(),
            "Payments fail at the last step.".to_owned(),
        );
        n.subject.insert("region".to_owned(), "eu".to_owned());
        let text = Templates::new().render_text(&n).unwrap();
        assert!(
            text.starts_with(
                "region=eu, service=checkout: customers may be affected (ActivateCommsLead)\n\nPayments fail at the last step.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn resolved_defaults() {
        let t = Templates::new();
        let n = sample_resolved();
        assert_eq!(
            t.render_title(&n).unwrap(),
            "Resolved: checkout — ActivateCommsLead no longer applies"
        );
        assert_eq!(
            t.render_text(&n).unwrap(),
            "Resolved: checkout — ActivateCommsLead no longer applies since 2024-05-01 13:00 UTC (it started 2024-05-01 12:00 UTC).\n\
             Incident INC-42 is resolved: https://herald.example.com/incidents/INC-42\n\
             Severity critical · rule ActivateCommsLead"
        );
    }

    #[test]
    fn dry_run_is_visible() {
        let mut n = sample_firing();
        n.dry_run = true;
        let r = Templates::new().render(&n).unwrap();
        assert!(r.title.starts_with("[DRY RUN] checkout:"), "{}", r.title);
        assert!(r.text.ends_with("dry run, no action needed"), "{}", r.text);
    }

    #[test]
    fn overrides_replace_defaults_for_both_statuses() {
        let t = Templates::with_overrides(
            Some("{{ status | upper }} {{ subject.service }} ({{ values.sli }})"),
            Some("{{ rule }} is {{ status }}"),
        )
        .unwrap();
        assert_eq!(
            t.render_title(&sample_firing()).unwrap(),
            "FIRING checkout (0.97)"
        );
        assert_eq!(
            t.render_text(&sample_resolved()).unwrap(),
            "ActivateCommsLead is resolved"
        );
        // Only the title overridden: the body keeps the default.
        let t = Templates::with_overrides(Some("x"), None).unwrap();
        assert!(t
            .render_text(&sample_firing())
            .unwrap()
            .contains("Next step:"));
    }

    #[test]
    fn title_is_a_single_line() {
        let t = Templates::with_overrides(Some("a\n  b\n"), None).unwrap();
        assert_eq!(t.render_title(&sample_firing()).unwrap(), "a b");
    }

    #[test]
    fn compile_errors_name_the_template() {
        let err = Templates::with_overrides(Some("{{ rule "), None).unwrap_err();
        match &err {
            TemplateError::Compile { which, message } => {
                assert_eq!(*which, "title");
                assert!(message.contains("syntax error"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().starts_with("invalid title template: "),
            "{err}"
        );
        let err = Templates::with_overrides(None, Some("{% if %}")).unwrap_err();
        assert!(
            matches!(err, TemplateError::Compile { which: "text", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn strict_undefined_is_a_render_error() {
        let t = Templates::with_overrides(Some("{{ subject.nope }}"), Some("{{ no_such_var }}"))
            .unwrap();
        assert!(matches!(
            t.render_title(&sample_firing()),
            Err(TemplateError::Render { which: "title", .. })
        ));
        assert!(matches!(
            t.render_text(&sample_firing()),
            Err(TemplateError::Render { which: "text", .. })
        ));
    }
}
