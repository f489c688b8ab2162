//! `herald check` on receivers and retention, through the real binary: message templates are
//! rendered against sample decisions (with the same filters as rule annotations), webhook
//! secrets are decoded, and `global.retention` is bounded, each problem reported at its
//! location.

use std::path::Path;
use std::process::{Command, Output};

const RULES: &str = "\
groups:
  - name: g
    subject: [service]
    signals:
      sli: { value: 0.97 }
    rules:
      - name: R
        when: sli < 0.99
        action: activate_comms_lead
        severity: critical
        notify: [chat]
        annotations:
          summary: '{{ subject.service }} is down'
";

fn check(dir: &Path, receivers: &str) -> Output {
    std::fs::write(dir.join("r.yaml"), RULES).unwrap();
    let cfg = dir.join("herald.yaml");
    std::fs::write(&cfg, format!("receivers:\n{receivers}rule_files: [r.yaml]\n")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald")).args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn receiver_templates_use_the_annotation_filters() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(
        dir.path(),
        "  - name: chat\n    type: log\n    title: \"{{ subject.service }} SLI {{ values.sli | percent }} for {{ 90 | duration }}\"\n    text: \"{{ impact }} {{ subject.service | urlencode }}\"\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_receiver_template_that_cannot_render_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(
        dir.path(),
        "  - name: chat\n    type: log\n    title: \"{{ subject.sevice }}\"\n    text: \"{{ incident.id }} {{ values.sli | percent }}\"\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let cfg = dir.path().join("herald.yaml").display().to_string();
    assert!(
        err.contains(&format!("{cfg}:4:12: receiver \"chat\": title template fails to render for rule \"R\" (firing, with an incident): ")),
        "{err}"
    );
    assert!(err.contains("undefined"), "{err}");
    // `incident.id` breaks on decisions without an incident: check says which variant.
    assert!(
        err.contains(&format!("{cfg}:5:11: receiver \"chat\": text template fails to render for rule \"R\" (firing, without an incident): ")),
        "{err}"
    );
}

#[test]
fn a_template_syntax_error_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), "  - name: chat\n    type: log\n    title: \"{{ rule \"\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("title template").count(), 1, "{err}");
    assert!(err.contains("herald.yaml:4:12: title template: syntax error"), "{err}");
}

#[test]
fn whsec_secrets_decode_with_or_without_padding_and_bad_ones_are_located() {
    let dir = tempfile::tempdir().unwrap();
    // 32 bytes: "...=" padded, and the same without the padding.
    let padded = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    for secret in [padded, padded.trim_end_matches('=')] {
        std::fs::write(dir.path().join("s.txt"), secret).unwrap();
        let out = check(dir.path(), "  - name: chat\n    type: webhook\n    url: http://127.0.0.1:1/hook\n    secret_file: s.txt\n");
        assert!(out.status.success(), "{secret}: {}", stderr(&out));
    }
    std::fs::write(dir.path().join("s.txt"), "whsec_not*base64!").unwrap();
    let out = check(dir.path(), "  - name: chat\n    type: webhook\n    url: http://127.0.0.1:1/hook\n    secret_file: s.txt\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("herald.yaml:5:18: unusable webhook secret: webhook secret starts with \"whsec_\" but the rest is not valid base64"), "{err}");
    assert!(!err.contains("not*base64"), "the secret is never echoed: {err}");
}

fn check_config(dir: &Path, yaml: &str) -> Output {
    std::fs::write(dir.join("r.yaml"), RULES).unwrap();
    let cfg = dir.join("herald.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald")).args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap()
}

#[test]
fn retention_is_bounded_by_the_repeat_interval() {
    let dir = tempfile::tempdir().unwrap();
    let base = "receivers:\n  - name: chat\n    type: log\nrule_files: [r.yaml]\n";
    let out = check_config(dir.path(), &format!("global:\n  retention: 90d\n{base}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = check_config(dir.path(), &format!("global:\n  retention: 2h\n{base}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("herald.yaml:2:14: retention (2h) must be at least notification.repeat_interval (4h)"), "{}", stderr(&out));
    let out = check_config(dir.path(), &format!("global:\n  retention: 10m\n{base}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("herald.yaml:2:14: retention must be at least 1h"), "{}", stderr(&out));
}
