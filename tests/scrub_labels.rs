//! `notification.scrub.labels` through the real binary: a subject label value that the content
//! filter matches (an e-mail address here) never leaves Herald — not in the API, the log,
//! `/metrics` or the outbox — unless the operator turns the setting off.

#[path = "support/herald.rs"]
mod herald;

use std::path::Path;
use std::time::Duration;

use herald::{free_port, Daemon, TOKEN};

const VALUE: &str = "ops-alice@example.com";

const RULES: &str = r#"groups:
  - name: comms
    subject: [service]
    signals:
      objective: { value: 0.999 }
    rules:
      - name: AckOverdue
        when: incident.open and not incident.acknowledged and incident.age >= duration("1s")
        action: escalate
        severity: critical
        notify: [log]
        annotations:
          summary: "{{ subject.service }} is not acknowledged"
"#;

fn start(dir: &Path, scrub_labels: Option<bool>) -> Daemon {
    let port = free_port();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let scrub = scrub_labels.map_or(String::new(), |b| format!("notification:\n  scrub:\n    labels: {b}\n"));
    std::fs::write(
        dir.join("herald.yaml"),
        format!(
            "global:\n  evaluation_interval: 1s\n  listen: 127.0.0.1:{port}\n  state_dir: state\napi:\n  token_file: token\nreceivers:\n  - name: log\n    type: log\n{scrub}rule_files: [rules.yaml]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    Daemon::spawn(&dir.join("herald.yaml"), port, dir.join("herald.log"), &[])
}

/// Declares an incident for the subject, waits until its escalation was delivered to the log
/// receiver, and returns everything that left Herald: API answers, log, metrics, outbox rows.
fn exposed(d: &Daemon, dir: &Path) -> String {
    let declare = format!(r#"{{"subject": {{"service": "{VALUE}"}}, "severity": "critical", "security": false}}"#);
    let r = d.req("POST", "/api/v1/incidents", Some(TOKEN), Some(&declare));
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    d.eventually("the escalation to be delivered", Duration::from_secs(20), || {
        let n = d.get("/api/v1/notifications?state=sent").json();
        !n["notifications"].as_array().unwrap().is_empty()
    });
    let mut out = vec![r.body.clone()];
    for path in ["/api/v1/incidents".to_string(), format!("/api/v1/incidents/{id}"), "/api/v1/rules".into(), "/api/v1/notifications".into()] {
        let r = d.get(&path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        out.push(r.body);
    }
    out.push(d.metrics());
    out.push(d.log());
    let db = rusqlite::Connection::open(dir.join("state/state.db")).unwrap();
    let mut stmt = db.prepare("SELECT subject, payload FROM outbox").unwrap();
    let rows: Vec<String> = stmt.query_map([], |r| Ok(format!("{} {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?))).unwrap().map(Result::unwrap).collect();
    assert!(!rows.is_empty(), "the outbox has the escalation");
    out.extend(rows);
    out.join("\n")
}

#[test]
fn subject_label_values_are_scrubbed_everywhere_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), None);
    let all = exposed(&d, dir.path());
    assert!(!all.contains(VALUE), "the label value leaked:\n{all}");
    assert!(all.contains("[redacted:email]"), "{all}");
    // The API shows the scrubbed subject where the subject is shown.
    let incidents = d.get("/api/v1/incidents").json();
    assert_eq!(incidents["incidents"][0]["subject"]["service"], "[redacted:email]");
    let n = d.get("/api/v1/notifications").json();
    let subject = n["notifications"][0]["subject"].as_str().unwrap().to_string();
    assert!(subject.starts_with(r#"{service="[redacted:email]"}#"#), "{subject}");
}

#[test]
fn scrub_labels_false_leaves_label_values_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), Some(false));
    let all = exposed(&d, dir.path());
    assert!(all.contains(VALUE), "{all}");
    let incidents = d.get("/api/v1/incidents").json();
    assert_eq!(incidents["incidents"][0]["subject"]["service"], VALUE);
}
