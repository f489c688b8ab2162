//! `herald replay` through the real binary against a REAL Prometheus backfilled with
//! `promtool tsdb create-blocks-from openmetrics`: the timeline, the per-incident figures, the
//! JSON of the contract, `--events`, `--diff`, a failing Prometheus reported with its time
//! ranges (exit 1), and that replay sends nothing and writes no state database.

#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prometheus::{OpenMetrics, Prometheus};
use receiver::Receiver;
use serde_json::Value;

/// Minutes after `T0` as unix seconds.
fn min(t0: i64, m: i64) -> i64 {
    t0 + m * 60
}

/// 4h of 1-minute samples, each 30s before an evaluation (so the 5m lookback never sits on a
/// sample boundary): checkout breaches from minute 60 to 120; search is healthy, with a gap.
fn data(t0: i64) -> String {
    let mut sli_c = Vec::new();
    let mut aff_c = Vec::new();
    let mut sli_s = Vec::new();
    for i in 0..240 {
        let t = min(t0, i) + 30;
        let breach = (60..120).contains(&i);
        sli_c.push((t, if breach { 0.97 } else { 0.9995 }));
        aff_c.push((t, if breach { 0.08 } else { 0.0 }));
        if !(150..170).contains(&i) {
            sli_s.push((t, 0.9999));
        }
    }
    OpenMetrics::new()
        .series("test_sli", &[("service", "checkout")], &sli_c)
        .series("test_affected", &[("service", "checkout")], &aff_c)
        .series("test_sli", &[("service", "search")], &sli_s)
        .series("test_affected", &[("service", "search")], &sli_s.iter().map(|(t, _)| (*t, 0.0)).collect::<Vec<_>>())
        .render()
}

fn rules(for_: &str) -> String {
    format!(
        r#"groups:
  - name: comms
    interval: 1m
    subject: [service]
    signals:
      sli: {{ query: 'min by (service) (test_sli)' }}
      objective: {{ value: 0.999 }}
      affected_ratio: {{ query: 'max by (service) (test_affected)' }}
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        for: {for_}
        keep_firing_for: 10m
        resolve_after: 30m
        action: activate_comms_lead
        severity: critical
        notify: [pager]
        annotations:
          summary: "{{{{ subject.service }}}} is failing"
      - name: PreparePublicUpdate
        when: incident.open and incident.public_updates == 0 and incident.age >= duration("15m")
        action: suggest_update
        severity: warning
        notify: [chat]
      - name: AckOverdue
        when: incident.open and not incident.acknowledged and incident.age >= duration("30m")
        action: escalate
        severity: critical
        notify: [pager]
"#
    )
}

struct Site {
    dir: tempfile::TempDir,
    t0: i64,
    _prom: Prometheus,
    pager: Receiver,
}

impl Site {
    fn new() -> Site {
        // Two days ago, on a whole hour: history, not the head block.
        let now = prometheus::now_unix() as i64;
        let t0 = (now - 2 * 86_400) / 3600 * 3600;
        let prom = Prometheus::builder().backfill(data(t0)).start();
        let pager = Receiver::start();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules("5m")).unwrap();
        std::fs::write(dir.path().join("rules-slower.yaml"), rules("10m")).unwrap();
        std::fs::write(
            dir.path().join("herald.yaml"),
            format!(
                "global: {{state_dir: state}}\nprometheus: {{url: '{}'}}\nreceivers:\n  - {{name: pager, type: webhook, url: '{}'}}\n  - {{name: chat, type: slack, url: '{}'}}\nrule_files: [rules.yaml]\n",
                prom.url(),
                pager.url(),
                pager.url()
            ),
        )
        .unwrap();
        Site { dir, t0, _prom: prom, pager }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn at(&self, m: i64) -> String {
        rfc3339(min(self.t0, m))
    }

    fn replay(&self, extra: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
        c.current_dir(self.dir.path()).args(["replay", "--config", "herald.yaml", "--from", &self.at(0), "--to", &self.at(239)]).args(extra);
        c.output().unwrap()
    }
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).expect("a valid time").format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn show(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), stdout(o), String::from_utf8_lossy(&o.stderr))
}

fn no_state_db(dir: &Path) {
    assert!(!dir.join("state").exists(), "replay must not create or touch the state directory");
}

#[test]
fn replay_prints_the_timeline_the_figures_and_the_contract_json_and_sends_nothing() {
    let site = Site::new();
    let events = site.path("events.jsonl");
    std::fs::write(
        &events,
        format!(
            "{{\"at\": \"{}\", \"incident\": \"INC-1\", \"type\": \"public_update\", \"channel\": \"status_page\"}}\n{{\"at\": \"{}\", \"subject\": {{\"service\": \"checkout\"}}, \"type\": \"ack\"}}\n",
            site.at(90),
            site.at(100)
        ),
    )
    .unwrap();

    // JSON: exactly the contract's three lists.
    let out = site.replay(&["--events", "events.jsonl", "--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}\n{}", show(&out)));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["incidents", "notifications", "transitions"]);
    let checkout = serde_json::json!({"service": "checkout"});
    let tr = |m: i64, rule: &str, state: &str| serde_json::json!({"at": site.at(m), "rule": rule, "subject": checkout, "state": state});
    assert_eq!(
        v["transitions"],
        serde_json::json!([
            // Breach seen at minute 61 (the sample 30s before); `for: 5m` fires at 66.
            tr(61, "ActivateCommsLead", "pending"),
            tr(66, "ActivateCommsLead", "firing"),
            // 15m after opening, no public update yet.
            tr(81, "PreparePublicUpdate", "firing"),
            // The status-page update of the events file, applied before the evaluation at 90.
            tr(90, "PreparePublicUpdate", "inactive"),
            tr(96, "AckOverdue", "firing"),
            tr(100, "AckOverdue", "inactive"),
            // Condition false from 121; keep_firing_for 10m.
            tr(131, "ActivateCommsLead", "inactive"),
        ]),
        "{}",
        show(&out)
    );
    assert_eq!(
        v["incidents"],
        serde_json::json!([{"id": "INC-1", "subject": checkout, "opened_at": site.at(66), "resolved_at": site.at(161)}]),
        "resolve_after 30m of known-inactive time after the rule stopped firing at 131"
    );
    let n = |m: i64, s: i64, rule: &str, receiver: &str, status: &str| {
        let mut at = site.at(m);
        if s > 0 {
            at = rfc3339(min(site.t0, m) + s);
        }
        serde_json::json!({"at": at, "rule": rule, "subject": checkout, "receiver": receiver, "status": status})
    };
    assert_eq!(
        v["notifications"],
        serde_json::json!([
            n(66, 0, "ActivateCommsLead", "pager", "firing"),
            // A prompt to a chat receiver waits group_wait (10s).
            n(81, 10, "PreparePublicUpdate", "chat", "firing"),
            n(90, 0, "PreparePublicUpdate", "chat", "resolved"),
            n(96, 0, "AckOverdue", "pager", "firing"),
            n(100, 0, "AckOverdue", "pager", "resolved"),
            n(131, 0, "ActivateCommsLead", "pager", "resolved"),
        ])
    );

    // Text: a timeline a person reads, then the figures against the targets.
    let out = site.replay(&["--events", "events.jsonl"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}")).to_string();
    let fired = line("pending → firing");
    assert!(fired.starts_with(&site.at(66)) && fired.contains(r#"{service="checkout"}"#) && fired.contains("ActivateCommsLead") && fired.contains("page → pager"), "{fired}");
    assert!(line("PreparePublicUpdate  inactive → firing").contains(&format!("prompt → chat at {}", rfc3339(min(site.t0, 81) + 10))), "{text}");
    assert!(line("event ack").starts_with(&site.at(100)), "{text}");
    let opened = line("incident INC-1");
    assert!(opened.starts_with(&site.at(66)) && opened.ends_with("opened"), "{text}");
    assert!(line("  time to activation").contains("5m"), "{text}");
    assert!(line("  first public update").contains("24m") && line("  first public update").contains("MISSED (target 15m)"), "{text}");
    assert!(line("  ack  ").contains("34m") && line("  ack  ").contains("MISSED (target 30m)"), "{text}");
    // Last update at 90, resolved at 161: 71 minutes without an update while open.
    assert!(line("  largest update gap").contains("1h11m") && line("  largest update gap").contains("MISSED (target 30m)"), "{text}");
    assert!(line("  legal review").contains("not requested"), "{text}");

    // The receivers got nothing, and no state database was written.
    assert!(site.pager.received().is_empty(), "replay sent {:?}", site.pager.received());
    no_state_db(site.dir.path());
}

#[test]
fn diff_prints_only_what_the_other_rules_change() {
    let site = Site::new();
    let out = site.replay(&["--diff", "rules-slower.yaml"]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    let changed: Vec<&str> = text.lines().filter(|l| l.starts_with("- ") || l.starts_with("+ ")).collect();
    // Same pending at 61 (not shown); firing and the page move from 66 to 71; the incident
    // opens later; the prompts and AckOverdue move with it.
    assert!(changed.iter().any(|l| l.starts_with("- ") && l.contains(&site.at(66)) && l.contains("ActivateCommsLead") && l.contains("→ firing")), "{text}");
    assert!(changed.iter().any(|l| l.starts_with("+ ") && l.contains(&site.at(71)) && l.contains("ActivateCommsLead") && l.contains("→ firing")), "{text}");
    assert!(changed.iter().any(|l| l.starts_with("+ ") && l.contains("firing notification → pager")), "{text}");
    assert!(!changed.iter().any(|l| l.contains(&site.at(61))), "the pending transition is the same in both: {text}");
    assert!(!changed.iter().any(|l| l.contains(&site.at(131))), "the rule stops firing at 131 in both: {text}");

    let out = site.replay(&["--diff", "rules-slower.yaml", "--format", "json"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["removed"]["incidents"][0]["opened_at"], site.at(66));
    assert_eq!(v["added"]["incidents"][0]["opened_at"], site.at(71));

    // The same rules twice: no difference.
    let out = site.replay(&["--diff", "rules.yaml"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(stdout(&out).contains("No difference"), "{}", show(&out));
    no_state_db(site.dir.path());
}

#[test]
fn a_failing_prometheus_is_reported_with_every_time_range_and_exit_1() {
    let site = Site::new();
    // Point the config at a port that refuses connections.
    let closed = prometheus::free_port();
    let cfg = std::fs::read_to_string(site.path("herald.yaml")).unwrap();
    let cfg = cfg.replace(&site._prom.url(), &format!("http://127.0.0.1:{closed}"));
    std::fs::write(site.path("herald.yaml"), cfg).unwrap();
    let out = site.replay(&["--max-points", "100"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    // 240 evaluations in chunks of 100: three ranges per signal, each reported.
    for (a, b) in [(0, 99), (100, 199), (200, 239)] {
        for signal in ["sli", "affected_ratio"] {
            let want = format!("{signal} of group \"comms\" from {} to {} failed after 3 attempts", site.at(a), site.at(b));
            assert!(err.contains(&want), "missing {want:?} in\n{err}");
        }
    }
    assert!(stdout(&out).contains("Nothing happened"), "unknown never decides: {}", show(&out));
}

#[test]
fn bad_input_is_refused_with_a_location_and_exit_2() {
    let site = Site::new();
    std::fs::write(site.path("events.yaml"), "- {at: '2026-11-20T10:00:00Z', subject: {service: checkout}, type: ack}\n- {at: soon, subject: {service: checkout}, type: ack}\n").unwrap();
    let out = site.replay(&["--events", "events.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events.yaml:2:8: invalid time \"soon\""), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(site.dir.path())
        .args(["replay", "--config", "herald.yaml", "--from", "-1h", "--to", "-2h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is before --from"), "{}", show(&out));
    let out = site.replay(&["--events", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"), "{}", show(&out));
}
