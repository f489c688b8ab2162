//! Catch-up after downtime, end to end: the real binary, a REAL Prometheus scraping a scripted
//! exporter, a real webhook receiver. While Herald is stopped, a breach starts and lasts longer
//! than the rule's `for`. On restart, Herald replays the missed evaluations from Prometheus's
//! history: the incident opened during the downtime (not after the restart) and the page goes
//! out once, marked late. With `global.catch_up: 0s` the downtime is unknown, as before: the
//! `for` timer starts again after the restart.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::time::Duration;

use herald::{free_port, Daemon};
use prometheus::{Exporter, Prometheus};
use receiver::Receiver;

const RULES: &str = r#"
groups:
  - name: live
    interval: 1s
    subject: [service]
    signals:
      sli: { query: 'min by (service) (test_sli)' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'max by (service) (test_affected)' }
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        for: 3s
        resolve_after: 1h
        action: activate_comms_lead
        severity: critical
        notify: [pager]
"#;

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}")).timestamp_millis()
}

fn now_ms() -> i64 {
    (prometheus::now_unix() * 1000.0) as i64
}

/// Runs the scenario with the given `global.catch_up`; returns (restart time, the page, the
/// incident's opened_at, all in unix ms, and the restarted daemon's log), after checking that
/// exactly one page went out.
fn downtime_breach(catch_up: &str) -> (i64, serde_json::Value, i64, String) {
    let exporter = Exporter::start();
    exporter.set("test_sli", &[("service", "checkout")], 1.0);
    exporter.set("test_affected", &[("service", "checkout")], 0.0);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_sli", Duration::from_secs(30));
    let pager = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s, catch_up: {catch_up}}}\n\
             prometheus: {{url: '{}', timeout: 2s}}\n\
             receivers:\n  - {{name: pager, type: webhook, url: '{}', timeout: 2s}}\n\
             notification: {{group_wait: 0s}}\n\
             rule_files: [rules.yaml]\n",
            prom.url(),
            pager.url()
        ),
    )
    .unwrap();
    let config = dir.path().join("herald.yaml");
    let mut first = Daemon::spawn(&config, port, dir.path().join("herald-1.log"), &[]);
    std::thread::sleep(Duration::from_secs(2));
    first.signal("-TERM");
    first.wait_exit(Duration::from_secs(15));

    // The breach, while Herald is down, for longer than `for`.
    exporter.set("test_sli", &[("service", "checkout")], 0.97);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    prometheus::wait_for_value(&prom.url(), "max(test_affected)", 0.2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(6));

    let restart = now_ms();
    let second = Daemon::spawn(&config, port, dir.path().join("herald-2.log"), &[]);
    let got = pager.wait_until(Duration::from_secs(20), |r| !r.is_empty());
    // A few more evaluations: still exactly one page.
    std::thread::sleep(Duration::from_secs(3));
    let all = pager.received();
    assert_eq!(all.len(), 1, "exactly one page: {:?}\n{}", all.iter().map(|r| r.body.clone()).collect::<Vec<_>>(), second.log());
    let page = got[0].json();
    assert_eq!(page["rule"], "ActivateCommsLead");
    assert_eq!(page["status"], "firing");
    let incidents = second.get("/api/v1/incidents").json();
    let list = incidents["incidents"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{incidents}");
    let opened = ms(list[0]["opened_at"].as_str().unwrap());
    let log = second.log();
    (restart, page, opened, log)
}

#[test]
fn missed_evaluations_are_replayed_and_the_page_goes_out_once_marked_late() {
    let (restart, page, opened, log) = downtime_breach("1h");
    assert!(opened < restart, "the incident opened during the downtime ({opened}), before the restart ({restart})\n{}", log);
    assert!(ms(page["starts_at"].as_str().unwrap()) < restart, "the page says when it really started firing: {page}");
    let late = page["annotations"]["late"].as_str().unwrap_or_else(|| panic!("no late annotation: {page}"));
    assert!(late.contains("while Herald was down"), "{late}");
    assert!(log.contains("caught up on the evaluations missed while down"), "{log}");
}

#[test]
fn beyond_the_bound_the_downtime_is_unknown() {
    let (restart, page, opened, log) = downtime_breach("0s");
    // `for: 3s` starts again after the restart.
    assert!(opened >= restart + 2_000, "opened {opened} should be at least 2s after the restart {restart}\n{}", log);
    assert!(page["annotations"].get("late").is_none(), "{page}");
}
