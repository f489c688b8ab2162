//! Drafted updates: for every `suggest_update` decision about an incident, the text a person
//! would post, per audience, for a person to edit and approve.
//!
//! Audiences ([`TEMPLATE_NAMES`]):
//! - `status_page`: the primary public channel. Impact first, plain English, no status-speak
//!   and no internal detail (no rule names, incident ids or signal values), "next update by
//!   HH:MM", and the status page named as the source of truth.
//! - `support`: a brief for Support and Sales (what customers see, what to tell them, the
//!   workaround) so they neither duplicate nor contradict the status page.
//! - `internal`: the same facts plus the signals, the incident id and the rule.
//! - `executive`: one paragraph: impact, customers affected, time open, budget burn.
//! - `customer_email`: only once the incident is resolved or its postmortem is published, with
//!   the postmortem as its backbone. Social posts are never drafted.
//!
//! Numbers come from the decision (signal values at decision time) and the incident (start,
//! duration, status). Every text passes the content filter. Templates are minijinja files
//! compiled into the binary; `drafts.templates_dir` overrides them by file name
//! (`status_page.j2`, …). Pure: the caller stores drafts and passes the time in.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

use crate::config::daemon::DraftSettings;
use crate::config::Action;
use crate::engine::{Decision, DecisionStatus, Incident, Status, Ts};
use crate::notify::Scrubber;

/// The audiences, in the order they are listed.
pub const TEMPLATE_NAMES: [&str; 5] = ["status_page", "support", "internal", "executive", "customer_email"];

const BUILTIN: [(&str, &str); 5] = [
    ("status_page", include_str!("templates/status_page.j2")),
    ("support", include_str!("templates/support.j2")),
    ("internal", include_str!("templates/internal.j2")),
    ("executive", include_str!("templates/executive.j2")),
    ("customer_email", include_str!("templates/customer_email.j2")),
];

/// One drafted update, as stored and as `GET /api/v1/incidents/{id}/drafts` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// The rule whose decision asked for the update.
    pub rule: String,
    /// RFC 3339.
    pub created_at: String,
    /// "HH:MM UTC" (in `global.timezone`), also in the texts.
    pub next_update_by: String,
    /// The Statuspage status the draft proposes (the incident's status).
    pub status: String,
    /// Audience → text.
    pub audiences: BTreeMap<String, String>,
}

/// Checks a template: it must compile and render against a sample context.
pub fn check_template(src: &str) -> Result<(), String> {
    let env = environment();
    let t = env.template_from_str(src).map_err(|e| e.to_string())?;
    t.render(sample()).map(|_| ()).map_err(|e| e.to_string())
}

fn environment() -> Environment<'static> {
    crate::config::template::environment()
}

fn sample() -> minijinja::Value {
    context! {
        service_name => "checkout", affected_percent => "8%", started_at => "10:00 UTC", started_date => "27 Nov 2026",
        resolved_at => "10:45 UTC", open_for => "45 minutes", next_update_by => "11:15 UTC", progress => "We are working to find the cause.",
        status => "investigating", resolved => false, postmortem_published => false, public_updates => 0, incident_id => "INC-1",
        rule => "PreparePublicUpdate", burn_rate => "4.2", signals => BTreeMap::from([("sli", "0.97")]),
    }
}

/// Renders drafts with the built-in templates and a team's overrides.
pub struct Drafter {
    env: Environment<'static>,
    tz: chrono_tz::Tz,
}

impl Drafter {
    /// Compiles the templates (overrides replace built-ins by name).
    pub fn new(settings: &DraftSettings, tz: chrono_tz::Tz) -> Result<Drafter, String> {
        let mut env = environment();
        for (name, src) in BUILTIN {
            let src = settings.templates.get(name).cloned().unwrap_or_else(|| src.to_string());
            env.add_template_owned(name.to_string(), src).map_err(|e| format!("draft template {name}: {e}"))?;
        }
        Ok(Drafter { env, tz })
    }

    /// The drafts for one decision about `incident`, at `now`; `None` unless the decision is a
    /// firing `suggest_update`.
    pub fn draft(&self, d: &Decision, incident: &Incident, now: Ts, scrubber: &Scrubber) -> Option<Draft> {
        if d.action != Action::SuggestUpdate || d.status != DecisionStatus::Firing {
            return None;
        }
        let hhmm = |t: Ts| Utc.timestamp_millis_opt(t).single().map(|t| t.with_timezone(&self.tz).format("%H:%M %Z").to_string()).unwrap_or_default();
        let burn = d.values.get("burn_rate").copied().filter(|v| v.is_finite());
        // Cadence: every 30 minutes, every 15 while the budget burns faster than 3x.
        let cadence_min = if burn.is_some_and(|b| b > 3.0) { 15 } else { 30 };
        let next = now + cadence_min * 60_000;
        let resolved = !incident.is_open();
        let end = incident.resolved_at.unwrap_or(now);
        let affected = d.values.get("affected_ratio").copied().filter(|v| v.is_finite() && *v > 0.0).map(|v| {
            let p = v * 100.0;
            if p >= 10.0 { format!("{p:.0}%") } else { format!("{}%", format!("{p:.1}").trim_end_matches(".0")) }
        });
        let service_name = incident.subject.get("service").map_or_else(|| incident.subject.labels().map(|(_, v)| v).collect::<Vec<_>>().join(" "), str::to_string);
        let progress = match incident.status {
            Status::Investigating => "We are working to find the cause.",
            Status::Identified => "We have found the cause and are working on a fix.",
            Status::Monitoring => "A fix is in place and we are checking that it works.",
            Status::Resolved => "",
        };
        let signals: BTreeMap<&str, String> = d.values.iter().map(|(k, v)| (k.as_str(), format!("{}", (v * 1000.0).round() / 1000.0))).collect();
        let ctx = context! {
            service_name, affected_percent => affected, started_at => hhmm(incident.opened_at),
            started_date => Utc.timestamp_millis_opt(incident.opened_at).single().map(|t| t.with_timezone(&self.tz).format("%-d %b %Y").to_string()).unwrap_or_default(),
            resolved_at => incident.resolved_at.map(hhmm), open_for => human_duration(end - incident.opened_at),
            next_update_by => hhmm(next), progress, status => incident.status.as_str(), resolved,
            postmortem_published => incident.postmortem_published, public_updates => incident.public_updates,
            incident_id => incident.id.clone(), rule => d.rule.clone(), burn_rate => burn.map(|b| format!("{b:.1}")), signals,
        };
        let mut audiences = BTreeMap::new();
        for name in TEMPLATE_NAMES {
            if name == "customer_email" && !(resolved || incident.postmortem_published) {
                continue;
            }
            let text = match self.env.get_template(name).and_then(|t| t.render(&ctx)) {
                Ok(t) => t.trim().to_string(),
                Err(e) => {
                    tracing::error!(template = name, error = %e, "cannot render a draft");
                    continue;
                }
            };
            audiences.insert(name.to_string(), scrubber.scrub_str(&text).into_owned());
        }
        Some(Draft {
            rule: d.rule.clone(),
            created_at: crate::http::rfc3339(now),
            next_update_by: hhmm(next),
            status: incident.status.as_str().to_string(),
            audiences,
        })
    }
}

/// "45 minutes", "1 hour 5 minutes", "2 days 3 hours".
pub fn human_duration(ms: i64) -> String {
    let mins = (ms.max(0) / 60_000) as u64;
    let plural = |n: u64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    match (mins / 1440, (mins % 1440) / 60, mins % 60) {
        (0, 0, m) => plural(m, "minute"),
        (0, h, 0) => plural(h, "hour"),
        (0, h, m) => format!("{} {}", plural(h, "hour"), plural(m, "minute")),
        (d, h, _) => format!("{} {}", plural(d, "day"), plural(h, "hour")),
    }
}

/// Drafts for the firing `suggest_update` decisions of one step; adds the status-page draft
/// and a pointer to all drafts to each decision's annotations (so the prompt carries it).
/// Returns (incident id, created at, draft JSON) for the store.
pub fn for_decisions(
    decisions: &mut [Decision],
    incidents: &dyn Fn(&str) -> Option<Incident>,
    settings: &DraftSettings,
    tz: chrono_tz::Tz,
    external_url: &str,
    scrubber: &Scrubber,
    now: Ts,
) -> Vec<(String, Ts, String)> {
    if !decisions.iter().any(|d| d.action == Action::SuggestUpdate && d.status == DecisionStatus::Firing && d.incident.is_some()) {
        return Vec::new();
    }
    let drafter = match Drafter::new(settings, tz) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "draft templates do not compile; no drafts");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for d in decisions.iter_mut() {
        let Some(inc) = d.incident.as_ref().and_then(|r| incidents(&r.id)) else { continue };
        let Some(draft) = drafter.draft(d, &inc, now, scrubber) else { continue };
        if let Some(text) = draft.audiences.get("status_page") {
            d.annotations.insert("draft_status_page".into(), text.clone());
            d.annotations.insert("drafts_url".into(), format!("{external_url}/api/v1/incidents/{}/drafts", inc.id));
        }
        match serde_json::to_string(&draft) {
            Ok(json) => out.push((inc.id.clone(), now, json)),
            Err(e) => tracing::error!(error = %e, "cannot serialize a draft"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::engine::{IncidentRef, Subject};
    use crate::notify::ScrubConfig;

    fn decision(values: &[(&str, f64)]) -> Decision {
        Decision {
            at: 0,
            rule: "PreparePublicUpdate".into(),
            action: Action::SuggestUpdate,
            severity: Severity::Warning,
            subject: Subject::new([("service", "checkout")]),
            status: DecisionStatus::Firing,
            starts_at: 0,
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            incident: Some(IncidentRef { id: "INC-7".into(), status: Status::Investigating, opened_at: 0 }),
            notify: vec![],
        }
    }

    fn scrubber() -> Scrubber {
        Scrubber::new(&ScrubConfig::default()).unwrap()
    }

    const T0: Ts = 1_795_770_000_000; // 2026-11-27T09:00:00Z... (a fixed instant)

    #[test]
    fn status_page_draft_is_plain_impact_first_and_says_when_next() {
        let inc = Incident::open("INC-7".into(), Subject::new([("service", "checkout")]), Severity::Critical, T0, Some("ActivateCommsLead".into()));
        let d = decision(&[("affected_ratio", 0.083), ("sli", 0.97), ("burn_rate", 4.25)]);
        let drafter = Drafter::new(&DraftSettings::default(), chrono_tz::UTC).unwrap();
        let now = T0 + 17 * 60_000;
        let draft = drafter.draft(&d, &inc, now, &scrubber()).unwrap();
        let sp = &draft.audiences["status_page"];
        assert!(sp.starts_with("About 8.3% of customers may see errors"), "impact first: {sp}");
        // burn > 3: the next update is due in 15 minutes.
        let next = Utc.timestamp_millis_opt(now + 15 * 60_000).unwrap().format("%H:%M UTC").to_string();
        assert!(sp.contains(&format!("next update here by {next}")), "{sp}");
        assert!(sp.contains("This status page is where we post updates"), "{sp}");
        for internal in ["INC-7", "PreparePublicUpdate", "0.97", "burn", "investigating", "identified", "degraded", "outage", "incident"] {
            assert!(!sp.to_lowercase().contains(&internal.to_lowercase()), "status page draft leaks {internal:?}: {sp}");
        }
        let internal = &draft.audiences["internal"];
        assert!(internal.contains("INC-7") && internal.contains("sli=0.97") && internal.contains("burn_rate=4.25") && internal.contains("PreparePublicUpdate"), "{internal}");
        let exec = &draft.audiences["executive"];
        assert!(exec.contains("17 minutes") && exec.contains("8.3%") && exec.contains("4.2x"), "{exec}");
        assert_eq!(exec.lines().count(), 1, "one paragraph: {exec}");
        assert!(draft.audiences["support"].contains("status page is the source of truth"));
        assert!(!draft.audiences.contains_key("customer_email"), "no customer email while open");
        assert!(!draft.audiences.keys().any(|k| k.contains("social")));
    }

    #[test]
    fn customer_email_only_after_resolution_and_drafts_are_scrubbed() {
        let mut inc = Incident::open("INC-7".into(), Subject::new([("service", "ops@example.com")]), Severity::Critical, T0, None);
        inc.resolve(T0 + 3_600_000);
        let drafter = Drafter::new(&DraftSettings::default(), chrono_tz::UTC).unwrap();
        let draft = drafter.draft(&decision(&[]), &inc, T0 + 4_000_000, &scrubber()).unwrap();
        let email = &draft.audiences["customer_email"];
        assert!(email.starts_with("Subject: "), "{email}");
        assert!(email.contains("review of what happened"), "{email}");
        for text in draft.audiences.values() {
            assert!(!text.contains("ops@example.com"), "the content filter ran: {text}");
        }
        assert!(draft.audiences["status_page"].contains("working normally again"));
    }

    #[test]
    fn a_team_template_overrides_the_builtin_and_bad_templates_are_refused() {
        let settings = DraftSettings { templates_dir: None, templates: BTreeMap::from([("status_page".to_string(), "Hi from {{ service_name }}".to_string())]) };
        let inc = Incident::open("INC-7".into(), Subject::new([("service", "checkout")]), Severity::Critical, T0, None);
        let draft = Drafter::new(&settings, chrono_tz::UTC).unwrap().draft(&decision(&[]), &inc, T0, &scrubber()).unwrap();
        assert_eq!(draft.audiences["status_page"], "Hi from checkout");
        assert!(check_template("{{ nope }}").is_err(), "strict undefined");
        assert!(check_template("{% if %}").is_err());
        for (_, src) in BUILTIN {
            check_template(src).unwrap();
        }
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(human_duration(45 * 60_000), "45 minutes");
        assert_eq!(human_duration(60 * 60_000), "1 hour");
        assert_eq!(human_duration(65 * 60_000), "1 hour 5 minutes");
        assert_eq!(human_duration(26 * 3_600_000), "1 day 2 hours");
    }
}
