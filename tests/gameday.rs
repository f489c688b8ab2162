//! `herald gameday` end to end: the real binary, a REAL Prometheus with live data for two
//! services, a scenario that scripts an outage of one of them over the live data at 300× speed,
//! a participant who acks and posts a public update through the normal API while it runs, and
//! real receivers: only the `dry_run_target` one gets messages, marked "[GAME DAY]"; the live
//! state database is never created; the report (text and JSON next to the scenario) has the
//! figures against their targets.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald::{free_port, try_request, TOKEN};
use prometheus::{Exporter, Prometheus};
use receiver::Receiver;

const RULES: &str = r#"
groups:
  - name: comms
    interval: 30s
    subject: [service]
    signals:
      sli: { query: 'min by (service) (test_sli)' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'max by (service) (test_affected)' }
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        for: 2m
        action: activate_comms_lead
        severity: critical
        notify: [drill-chat, pager]
"#;

const SCENARIO: &str = r#"
name: checkout outage drill
interval: 1m
input:
  - subject: {service: checkout}
    signals:
      sli: "0.9995x2 0.97x40"
      affected_ratio: "0x2 0.2x40"
"#;

#[test]
fn a_scripted_outage_is_rehearsed_with_participants_and_reported() {
    let exporter = Exporter::start();
    for svc in ["checkout", "search"] {
        exporter.set("test_sli", &[("service", svc)], 1.0);
        exporter.set("test_affected", &[("service", svc)], 0.0);
    }
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_sli", Duration::from_secs(30));
    let chat = Receiver::start();
    let pager = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("drill.yaml"), SCENARIO).unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{}', state_dir: state}}\n\
             prometheus: {{url: '{}', timeout: 2s}}\n\
             api: {{token_file: token}}\n\
             receivers:\n  - {{name: drill-chat, type: slack, url: '{}', dry_run_target: true}}\n  - {{name: pager, type: webhook, url: '{}'}}\n\
             notification: {{group_wait: 0s}}\n\
             rule_files: [rules.yaml]\n",
            free_port(),
            prom.url(),
            chat.url(),
            pager.url()
        ),
    )
    .unwrap();

    // 42 minutes of scenario time at 300×: about 8.4 seconds.
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(dir.path())
        .args(["gameday", "drill.yaml", "--config", "herald.yaml", "--speed", "300", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A participant: waits for the incident, then acks and posts a status-page update.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        assert!(Instant::now() < deadline, "no incident opened during the game day");
        if let Ok(r) = try_request(port, "GET", "/api/v1/incidents", None, None) {
            if let Some(i) = r.json()["incidents"].as_array().and_then(|a| a.first().cloned()) {
                break i["id"].as_str().unwrap().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for body in [r#"{"type": "ack"}"#, r#"{"type": "public_update", "channel": "status_page"}"#] {
        let r = try_request(port, "POST", &format!("/api/v1/incidents/{id}/events"), Some(TOKEN), Some(body)).unwrap();
        assert!(r.status < 300, "{}: {}", r.status, r.body);
    }

    let status = child.wait().unwrap();
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");

    // Only the dry-run target got the page, marked as a game day; the pager got nothing.
    let got = chat.wait_until(Duration::from_secs(5), |r| !r.is_empty());
    assert!(got[0].body.contains("[GAME DAY]"), "{}", got[0].body);
    assert!(got[0].body.contains("checkout"), "{}", got[0].body);
    assert!(pager.received().is_empty(), "a receiver that is not a dry_run_target got {:?}", pager.received());
    // The live database was never created; the game day has its own.
    assert!(!dir.path().join("state/state.db").exists(), "the live state database was created");
    assert!(dir.path().join("state/gameday/dry-run.db").exists(), "{stdout}");

    // The report: the participant acked and updated within minutes of scenario time.
    let line = |needle: &str| stdout.lines().find(|l| l.trim_start().starts_with(needle)).unwrap_or_else(|| panic!("no {needle:?} line in\n{stdout}")).to_string();
    assert!(stdout.contains(&format!("{id} {{service=\"checkout\"}} critical")), "{stdout}");
    assert!(line("ack").contains("met (target 30m)"), "{stdout}");
    assert!(line("first public update").contains("met (target 15m)"), "{stdout}");
    // One update, then silence until the end of the game day (more than 30 minutes).
    assert!(line("largest update gap").contains("MISSED (target 30m)"), "{stdout}");
    assert!(line("legal review").contains("n/a"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("drill.report.json")).unwrap()).unwrap();
    assert_eq!(report["scenario"], "checkout outage drill");
    let inc = &report["incidents"][0];
    assert_eq!(inc["id"], id);
    assert_eq!(inc["ack"]["verdict"], "met");
    assert_eq!(inc["first_public_update"]["verdict"], "met");
    assert_eq!(inc["largest_update_gap"]["verdict"], "missed");
    assert!(inc["ack"]["seconds"].as_f64().unwrap() < 30.0 * 60.0, "{inc}");
    // Only the scripted subject had an incident: the live `search` stayed healthy.
    assert_eq!(report["incidents"].as_array().unwrap().len(), 1, "{report}");
}
