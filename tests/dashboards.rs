//! The Grafana dashboards in `grafana/dashboards/` work: each is well-formed, uses only the
//! contract's metrics (`herald_*` and `up`), every panel query parses with Prometheus's own
//! parser (`promtool check rules` on a rule file with one recording rule per query), and every
//! query returns data from a REAL Prometheus that scraped a running Herald through a scripted
//! incident (breach → page → ack, updates, correction, legal review, postmortem, false
//! positive, resolve; plus a receiver that fails).
//!
//! `scripts/dashboard-check` runs this file and shows the per-panel series counts it prints.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herald::{free_port, Daemon, TOKEN};
use prometheus::{Exporter, Prometheus};
use promql_parser::parser::Expr;
use receiver::Receiver;
use serde_json::Value;

/// The metric names of the contract, without histogram suffixes.
const CONTRACT: [&str; 27] = [
    "herald_incidents_open",
    "herald_comms_lead_activations_total",
    "herald_decisions_total",
    "herald_rule_firing",
    "herald_first_update_latency_seconds",
    "herald_update_interval_seconds",
    "herald_public_updates_total",
    "herald_update_corrections_total",
    "herald_ack_latency_seconds",
    "herald_ticket_ratio",
    "herald_notifications_total",
    "herald_false_notifications_total",
    "herald_legal_review_seconds",
    "herald_incidents_resolved_total",
    "herald_rule_group_last_duration_seconds",
    "herald_rule_evaluations_total",
    "herald_rule_evaluation_failures_total",
    "herald_datasource_up",
    "herald_datasource_query_duration_seconds",
    "herald_outbox_pending",
    "herald_notification_delivery_seconds",
    "herald_config_last_reload_successful",
    "herald_build_info",
    "herald_rule_unknown",
    "herald_signal_series",
    "herald_state_write_failures_total",
    "up",
];

const HISTOGRAMS: [&str; 6] = [
    "herald_first_update_latency_seconds",
    "herald_update_interval_seconds",
    "herald_ack_latency_seconds",
    "herald_legal_review_seconds",
    "herald_datasource_query_duration_seconds",
    "herald_notification_delivery_seconds",
];

/// Grafana's variables and the values the test gives them ("All" for the template variables).
const VARIABLES: [(&str, &str); 5] = [("$job", ".*"), ("$service", ".*"), ("$severity", ".*"), ("$__range", "1h"), ("$__rate_interval", "30s")];

/// The executive targets, drawn as thresholds: (panel title contains, threshold value).
const EXECUTIVE_TARGETS: [(&str, f64); 8] = [
    ("First public update latency", 900.0),
    ("Update cadence", 1800.0),
    ("Acknowledgement time", 1800.0),
    ("Legal review time", 3600.0),
    ("tickets vs baseline", 3.0),
    ("False-notification rate", 0.02),
    ("Correction rate", 0.05),
    ("Postmortem inclusion", 1.0),
];

/// One panel query.
#[derive(Debug)]
struct Query {
    dashboard: String,
    panel_id: u64,
    panel: String,
    ref_id: String,
    /// As written in the dashboard.
    expr: String,
    /// With Grafana's variables replaced.
    promql: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in VARIABLES {
        out = out.replace(var, value);
    }
    out
}

/// Checks one dashboard's structure and returns its queries; every problem is collected.
fn check_dashboard(path: &Path, d: &Value, problems: &mut Vec<String>) -> Vec<Query> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut bad = |m: String| problems.push(format!("{name}: {m}"));
    for key in ["uid", "title", "description"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            bad(format!("no {key}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none() {
        bad("no schemaVersion".into());
    }
    let vars: BTreeMap<&str, &Value> = d["templating"]["list"].as_array().into_iter().flatten().filter_map(|v| Some((v["name"].as_str()?, v))).collect();
    for v in ["datasource", "job", "service", "severity"] {
        match vars.get(v) {
            None => bad(format!("no template variable {v:?}")),
            Some(t) if v != "datasource" && (t["includeAll"] != true || t["allValue"] != ".*") => bad(format!("template variable {v:?} must offer All as .*")),
            Some(_) => {}
        }
    }
    if vars.get("datasource").is_some_and(|t| t["type"] != "datasource" || t["query"] != "prometheus") {
        bad("the datasource variable must select a Prometheus datasource".into());
    }
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    if panels.is_empty() {
        bad("no panels".into());
    }
    for p in &panels {
        let id = p["id"].as_u64().unwrap_or(0);
        let title = p["title"].as_str().unwrap_or("").to_string();
        if !ids.insert(id) || id == 0 {
            bad(format!("panel {title:?}: missing or duplicate id {id}"));
        }
        if title.is_empty() || p["description"].as_str().is_none_or(str::is_empty) {
            bad(format!("panel {id}: needs a title and a description"));
        }
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(0));
        if w == 0 || x + w > 24 || g["h"].as_u64().unwrap_or(0) == 0 || g["y"].as_u64().is_none() {
            bad(format!("panel {title:?}: bad gridPos {g}"));
        }
        let ty = p["type"].as_str().unwrap_or("");
        if !["timeseries", "stat", "bargauge", "table", "text"].contains(&ty) {
            bad(format!("panel {title:?}: unexpected type {ty:?}"));
        }
        if ty == "text" {
            continue;
        }
        if p["datasource"]["uid"] != "${datasource}" {
            bad(format!("panel {title:?}: datasource must be the ${{datasource}} variable"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            bad(format!("panel {title:?}: no query"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            let ref_id = t["refId"].as_str().unwrap_or("").to_string();
            if !refs.insert(ref_id.clone()) {
                bad(format!("panel {title:?}: duplicate refId {ref_id:?}"));
            }
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                bad(format!("panel {title:?} {ref_id}: no expr"));
                continue;
            };
            queries.push(Query {
                dashboard: d["uid"].as_str().unwrap_or("").to_string(),
                panel_id: id,
                panel: title.clone(),
                ref_id,
                expr: expr.to_string(),
                promql: substitute(expr),
            });
        }
    }
    if d["uid"] == "herald-executive" {
        for (needle, value) in EXECUTIVE_TARGETS {
            let found = panels.iter().filter(|p| p["title"].as_str().unwrap_or("").contains(needle)).any(|p| {
                p["fieldConfig"]["defaults"]["thresholds"]["steps"].as_array().into_iter().flatten().any(|s| s["value"].as_f64() == Some(value))
            });
            if !found {
                bad(format!("no panel {needle:?} with its target {value} as a threshold"));
            }
        }
    }
    queries
}

/// Metric names a PromQL expression selects (vector and matrix selectors, subqueries included).
fn metric_names(promql: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl promql_parser::util::ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            match e {
                Expr::VectorSelector(vs) => self.0.insert(vs.name.clone().ok_or("a selector without a metric name")?),
                Expr::MatrixSelector(ms) => self.0.insert(ms.vs.name.clone().ok_or("a selector without a metric name")?),
                _ => true,
            };
            Ok(true)
        }
    }
    let expr = promql_parser::parser::parse(promql)?;
    let mut v = Names(BTreeSet::new());
    promql_parser::util::walk_expr(&mut v, &expr)?;
    Ok(v.0)
}

fn is_contract(name: &str) -> bool {
    CONTRACT.contains(&name) || HISTOGRAMS.iter().any(|h| ["_bucket", "_count", "_sum"].iter().any(|s| name == format!("{h}{s}")))
}

/// Writes one recording rule per query and runs `promtool check rules` on it.
fn promtool_check(queries: &[Query], dir: &Path) -> Result<String, String> {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for q in queries {
        let record = format!("dashboard:{}:panel{}_{}", q.dashboard.replace('-', "_"), q.panel_id, q.ref_id);
        rules += &format!("      - record: {record}\n        expr: {}\n", serde_json::to_string(&q.promql).unwrap());
    }
    let file = dir.join("dashboard-queries.rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(prometheus::promtool_bin()).args(["check", "rules"]).arg(&file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn dashboards_are_well_formed_use_contract_metrics_and_parse_with_promtool() {
    let mut problems = Vec::new();
    let mut all = Vec::new();
    let mut uids = BTreeSet::new();
    let found = dashboards();
    assert_eq!(found.len(), 3, "executive, on-call and debug");
    for (path, d) in &found {
        assert!(uids.insert(d["uid"].as_str().unwrap_or("").to_string()), "duplicate uid in {}", path.display());
        all.extend(check_dashboard(path, d, &mut problems));
        for v in d["templating"]["list"].as_array().unwrap() {
            if let Some(q) = v["definition"].as_str() {
                let metric = q.trim_start_matches("label_values(").split([',', ')']).next().unwrap().trim();
                if !is_contract(metric) {
                    problems.push(format!("{}: variable {} reads {metric:?}, not a contract metric", path.display(), v["name"]));
                }
            }
        }
    }
    for q in &all {
        match metric_names(&q.promql) {
            Ok(names) => {
                for n in names.iter().filter(|n| !is_contract(n)) {
                    problems.push(format!("{} panel {:?}: {n:?} is not a contract metric", q.dashboard, q.panel));
                }
                if names.is_empty() {
                    problems.push(format!("{} panel {:?}: selects no metric", q.dashboard, q.panel));
                }
            }
            Err(e) => problems.push(format!("{} panel {:?}: {e}", q.dashboard, q.panel)),
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n{}", problems.join("\n"));
    assert!(all.len() >= 30, "{} queries", all.len());

    let dir = tempfile::tempdir().unwrap();
    let ok = promtool_check(&all, dir.path()).unwrap_or_else(|e| panic!("promtool rejected a dashboard query:\n{e}"));
    assert!(ok.contains(&format!("SUCCESS: {} rules found", all.len())), "{ok}");
    // The check can fail: a query Grafana would show as an error is refused.
    let mut broken = Query { dashboard: "x".into(), panel_id: 1, panel: "broken".into(), ref_id: "A".into(), expr: String::new(), promql: "sum by (le (rate(herald_outbox_pending[5m]))".into() };
    broken.expr = broken.promql.clone();
    assert!(promtool_check(&[broken], dir.path()).is_err());
}

const RULES: &str = r#"
groups:
  - name: live
    interval: 1s
    subject: [service]
    signals:
      sli: { query: 'min by (service) (test_sli)' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'max by (service) (test_affected)' }
      tickets: { ticket_source: support }
      burn_rate: { query: 'max by (service) (test_burn)' }
      security: { query: 'max by (service) (test_security)' }
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        resolve_after: 1h
        action: activate_comms_lead
        severity: critical
        notify: [pager, broken]
      - name: SupportTicketSpike
        when: tickets > 3 * tickets_baseline and tickets >= 5
        action: suggest_update
        severity: warning
        notify: [pager]
      - name: EscalateCadence
        when: burn_rate > 3
        action: escalate
        severity: critical
      - name: EngageLegal
        when: security > 0
        action: engage_legal
        severity: critical
      - name: LegalReviewOverdue
        when: incident.legal_pending and incident.since_legal_requested > duration("60m")
        action: escalate
        severity: critical
"#;

#[test]
fn every_panel_returns_data_from_prometheus_scraping_herald_through_an_incident() {
    let mut queries = Vec::new();
    let mut problems = Vec::new();
    for (path, d) in dashboards() {
        queries.extend(check_dashboard(&path, &d, &mut problems));
    }
    assert!(problems.is_empty(), "{problems:?}");

    // The service breaches: 20% of checkout's customers see errors.
    let exporter = Exporter::start();
    for svc in ["checkout", "search"] {
        exporter.set("test_sli", &[("service", svc)], 1.0);
        exporter.set("test_affected", &[("service", svc)], 0.0);
        exporter.set("test_burn", &[("service", svc)], 0.5);
        exporter.set("test_security", &[("service", svc)], 0.0);
    }
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    let port = free_port();
    let prom = Prometheus::builder()
        .target(exporter.addr())
        .target_str(&format!("127.0.0.1:{port}"))
        .job_name("herald")
        .scrape_interval(Duration::from_secs(1))
        .start();
    prom.wait_for("test_affected", Duration::from_secs(30));

    let rx = Receiver::start();
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let cfg = format!(
        "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
         prometheus: {{url: '{prom}', timeout: 2s}}\n\
         ticket_sources:\n  - name: support\n    type: prometheus\n    query: 'sum by (service) (label_replace(vector(6), \"service\", \"checkout\", \"\", \"\"))'\n    poll_interval: 1s\n\
         receivers:\n  - {{name: pager, type: webhook, url: '{rx}', timeout: 2s}}\n  - {{name: broken, type: webhook, url: 'http://127.0.0.1:{closed}/', timeout: 1s, max_retry_duration: 1s}}\n\
         notification: {{group_wait: 0s}}\n\
         api: {{token_file: token}}\n\
         rule_files: [rules.yaml]\n",
        prom = prom.url(),
        rx = rx.url()
    );
    std::fs::write(dir.path().join("herald.yaml"), cfg).unwrap();
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald.log"), &[]);

    // The scripted incident, through the API as people would drive it.
    d.eventually("an open incident", Duration::from_secs(20), || {
        d.get("/api/v1/incidents?open=true").json()["incidents"].as_array().is_some_and(|a| !a.is_empty())
    });
    let id = d.get("/api/v1/incidents?open=true").json()["incidents"][0]["id"].as_str().unwrap().to_string();
    rx.wait_until(Duration::from_secs(10), |r| !r.is_empty());
    // Prometheus has seen the counters at zero before the first update, as it would for a
    // Herald that ran before the incident (`increase()` does not count a series' first sample).
    prom.wait_for(r#"herald_public_updates_total{channel="status_page"} == 0"#, Duration::from_secs(30));
    let events = [
        r#"{"type": "ack"}"#,
        r#"{"type": "public_update", "channel": "status_page"}"#,
        r#"{"type": "public_update", "channel": "email"}"#,
        r#"{"type": "correction"}"#,
        r#"{"type": "public_update", "channel": "internal"}"#,
        r#"{"type": "legal_requested"}"#,
        r#"{"type": "legal_approved"}"#,
        r#"{"type": "postmortem_published"}"#,
        r#"{"type": "false_positive"}"#,
        r#"{"type": "resolve"}"#,
    ];
    for e in events {
        let r = d.post(&format!("/api/v1/incidents/{id}/events"), e);
        assert!(r.status / 100 == 2, "{e}: {} {}", r.status, r.body);
    }
    d.eventually("a failed delivery to the broken receiver", Duration::from_secs(30), || {
        d.metrics().lines().any(|l| l.starts_with("herald_notifications_total{") && l.contains("receiver=\"broken\"") && l.contains("outcome=\"failed\"") && !l.ends_with(" 0"))
    });
    let m = d.metrics();
    for needle in ["herald_ack_latency_seconds_count 1", "herald_legal_review_seconds_count 1", "herald_update_corrections_total 1", "herald_false_notifications_total 1"] {
        assert!(m.contains(needle), "{needle} missing from /metrics:\n{m}");
    }

    // Every panel query returns data once Prometheus has scraped the story.
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let counts: Vec<Result<usize, String>> = queries.iter().map(|q| prometheus::try_query_instant(&prom.url(), &q.promql, None).map(|rows| rows.len())).collect();
        let done = counts.iter().all(|c| matches!(c, Ok(n) if *n > 0));
        if done || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    println!("\n{:<18} {:>5}  {:<60} {:>3}  series", "dashboard", "panel", "title", "ref");
    let mut empty = Vec::new();
    for (q, c) in queries.iter().zip(&counts) {
        let shown = match c {
            Ok(n) => n.to_string(),
            Err(e) => format!("ERROR {e}"),
        };
        println!("{:<18} {:>5}  {:<60} {:>3}  {shown}", q.dashboard, q.panel_id, q.panel, q.ref_id);
        if !matches!(c, Ok(n) if *n > 0) {
            empty.push(format!("{} / {} ({}): {}\n    {}", q.dashboard, q.panel, q.ref_id, shown, q.expr));
        }
    }
    println!("{} queries, {} with data", queries.len(), queries.len() - empty.len());
    assert!(empty.is_empty(), "panels without data:\n{}\nherald log:\n{}", empty.join("\n"), d.log());
}
