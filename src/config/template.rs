//! Annotation and message templates: the ONE minijinja environment of Herald, used by rule
//! annotations, ticket-source templates and receiver/default message templates
//! (`notify::template`). Strict undefined, so a typo such as `{{ subject.sevice }}` is an error
//! at `check` time instead of an empty string in a page; `trim_blocks` and `lstrip_blocks`, so
//! a `{% if %}` on its own line leaves no blank line. Adds filters for plain-English messages:
//! `percent` (0.973 → `97.3%`), `duration` (seconds → `1h5m`) and `urlencode`.
//!
//! Bounds, so a template can neither hang nor exhaust the daemon: a source is at most
//! [`MAX_TEMPLATE_BYTES`], one render may spend at most [`FUEL`] (minijinja's budget of
//! instructions and allocated data: loops such as `{% for i in range(100000) %}` run out), and
//! macros recurse at most [`MAX_RECURSION`] levels. `check` renders once, so a template that
//! exceeds a bound is refused at load time.

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::expr::{IncidentField, Scope};

/// The longest template source accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// The work one render may do: about one unit per instruction and per 64 bytes of data.
/// Real messages need a few hundred.
pub const FUEL: u64 = 100_000;

/// How deep macros may recurse while rendering.
pub const MAX_RECURSION: usize = 32;

/// The shared template environment.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    match minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build() {
        Ok(syntax) => env.set_syntax(syntax),
        // The default delimiters cannot conflict; the unit tests exercise this path.
        Err(e) => unreachable!("default template syntax: {e}"),
    }
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(MAX_RECURSION);
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
    env.add_filter("urlencode", |v: String| -> String { urlencode(&v) });
    env.add_filter("duration", |v: f64| -> String {
        crate::config::PromDuration(std::time::Duration::from_secs(v.max(0.0) as u64)).to_string()
    });
    env
}

/// Percent-encodes everything but unreserved characters (RFC 3986): the `urlencode` filter.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn trim_float(v: f64, digits: usize) -> String {
    let s = format!("{v:.digits$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Compiles `src` and renders it once against a sample context holding every name a rule's
/// template may use; returns a readable message on failure.
pub fn check(src: &str, scope: &Scope) -> Result<(), String> {
    if src.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("template is {} bytes long; the limit is {MAX_TEMPLATE_BYTES}", src.len()));
    }
    let env = environment();
    let tmpl = env.template_from_str(src).map_err(|e| describe(&e))?;
    tmpl.render(sample_context(scope)).map(|_| ()).map_err(|e| describe(&e))
}

/// Renders a template source against a context.
pub fn render(env: &Environment<'_>, src: &str, ctx: &Value) -> Result<String, String> {
    env.render_str(src, ctx).map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return "template does too much work (a loop or a large value?): rendering ran out of its budget".into();
    }
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

    /// Templates that loop or recurse without bound, or are huge, are refused by `check` —
    /// on a thread with a small stack, as on the daemon's reload thread.
    #[test]
    fn runaway_templates_are_refused() {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(|| {
                let e = check("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", &scope()).unwrap_err();
                assert!(e.contains("too much work"), "{e}");
                let e = check("{{ 'x' * 100000000 }}", &scope()).unwrap_err();
                assert!(e.contains("too much work"), "{e}");
                let e = check("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", &scope()).unwrap_err();
                assert!(e.contains("recursion"), "{e}");
                let e = check(&format!("{}1{}", "{{ ".to_string() + &"(".repeat(5000), ")".repeat(5000) + " }}"), &scope()).unwrap_err();
                assert!(e.contains("recursion"), "{e}");
                let e = check(&"x".repeat(MAX_TEMPLATE_BYTES + 1), &scope()).unwrap_err();
                assert!(e.contains("limit is"), "{e}");
                assert!(check("{% for l in ['a', 'b'] %}{{ l }}{% endfor %}", &scope()).is_ok(), "small loops are fine");
            })
            .unwrap()
            .join()
            .unwrap();
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
