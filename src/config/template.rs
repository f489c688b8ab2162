//! Annotation and message templates: the ONE minijinja environment of Herald, used by rule
//! annotations, ticket-source templates and receiver/default message templates
//! (`notify::template`). Strict undefined, so a typo such as `{{ subject.sevice }}` is an error
//! at `check` time instead of an empty string in a page; `trim_blocks` and `lstrip_blocks`, so
//! a `{% if %}` on its own line leaves no blank line. Adds filters for plain-English messages:
//! `percent` (0.973 → `97.3%`), `duration` (seconds → `1h5m`) and `urlencode`.

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::expr::{IncidentField, Scope};

/// The shared template environment.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    match minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build() {
        Ok(syntax) => env.set_syntax(syntax),
        // The default delimiters cannot conflict; the unit tests exercise this path.
        Err(e) => unreachable!("default template syntax: {e}"),
    }
    env.add_filter("percent", |v: f64| -> String {
        let p = v * 100.0;
        if (p - p.round()).abs() < 1e-9 {
            format!("{p:.0}%")
        } else if p >= 99.0 {
            // SLIs live near 100%: keep enough digits to see the difference from the objective.
            format!("{}%", trim_float(p, 3))
        } else {
            format!("{}%", trim_float(p, 1))
        }
    });
    env.add_filter("urlencode", |v: String| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    });
    env.add_filter("duration", |v: f64| -> String {
        crate::config::PromDuration(std::time::Duration::from_secs(v.max(0.0) as u64)).to_string()
    });
    env
}

fn trim_float(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Compiles `src` and renders it once against a sample context holding every name a rule's
/// template may use; returns a readable message on failure.
pub fn check(src: &str, scope: &Scope) -> Result<(), String> {
    let env = environment();
    let tmpl = env.template_from_str(src).map_err(|e| describe(&e))?;
    tmpl.render(sample_context(scope)).map(|_| ()).map_err(|e| describe(&e))
}

/// Renders a template source against a context.
pub fn render(env: &Environment<'_>, src: &str, ctx: &Value) -> Result<String, String> {
    env.render_str(src, ctx).map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string().replace(" (in <string>:1)", "");
    if let Some(d) = e.detail() {
        if !msg.contains(d) {
            msg = format!("{msg}: {d}");
        }
    }
    msg
}

/// A context with every variable a template may use, for `check`.
fn sample_context(scope: &Scope) -> Value {
    let mut map: std::collections::BTreeMap<String, Value> =
        scope.signals.iter().map(|s| (s.clone(), Value::from(0.5))).collect();
    let subject: std::collections::BTreeMap<String, Value> =
        scope.subject_labels.iter().map(|l| (l.clone(), Value::from("example"))).collect();
    map.insert("subject".into(), Value::from(subject));
    let incident: std::collections::BTreeMap<&str, Value> =
        IncidentField::ALL.iter().map(|(n, _)| (*n, Value::from(1))).collect();
    map.insert("incident".into(), Value::from(incident));
    for k in ["rule", "severity", "action"] {
        map.insert(k.into(), Value::from("example"));
    }
    map.insert("now".into(), Value::from(0));
    Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope { signals: vec!["sli".into()], subject_labels: vec!["service".into()] }
    }

    #[test]
    fn strict_undefined_catches_typos() {
        assert!(check("{{ subject.service }}: SLI {{ sli | percent }}", &scope()).is_ok());
        let e = check("{{ subject.sevice }}", &scope()).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
        let e = check("{{ slo }}", &scope()).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
        let e = check("{% if %}", &scope()).unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
    }

    #[test]
    fn filters_speak_plain_english() {
        let env = environment();
        let r = |src: &str| render(&env, src, &Value::from(())).unwrap();
        assert_eq!(r("{{ 0.97 | percent }}"), "97%");
        assert_eq!(r("{{ 0.9731 | percent }}"), "97.3%");
        assert_eq!(r("{{ 0.99951 | percent }}"), "99.951%");
        assert_eq!(r("{{ 0.08 | percent }}"), "8%");
        assert_eq!(r("{{ 3900 | duration }}"), "1h5m");
        assert_eq!(r("{{ 'a b/ü' | urlencode }}"), "a%20b%2F%C3%BC");
    }
}
