//! `herald run` end to end against a REAL Prometheus (Debian's package, see
//! `scripts/fetch-prometheus`), a scripted exporter, a real webhook receiver on 127.0.0.1 and
//! the state file on disk: an SLO breach becomes one incident and one page within two
//! evaluation intervals; restarts and `kill -9` neither reopen it nor page again; a `for`
//! timer survives a restart; Prometheus going down mid-incident resolves nothing and raises
//! TelemetryGap; a page committed while the receiver was down is delivered once after a
//! `kill -9` and restart.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::time::{Duration, Instant};

use herald::{free_port, Daemon};
use prometheus::{Exporter, Prometheus};
use receiver::{Received, Receiver};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const INTERVAL: Duration = Duration::from_secs(1);

const RULES: &str = r#"
groups:
  - name: live
    interval: 1s
    subject: [service]
    signals:
      sli: { query: 'min by (service) (test_sli)' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'max by (service) (test_affected)' }
      burn_rate: { query: 'max by (service) (test_burn)' }
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        resolve_after: 1h
        action: activate_comms_lead
        severity: critical
        notify: [pager]
        annotations:
          summary: "{{ subject.service }} is failing for {{ affected_ratio | percent }} of customers"
      - name: EscalateCadence
        when: burn_rate > 3
        for: 8s
        action: escalate
        severity: critical
      - name: TelemetryGap
        when: sli is not defined and (incident.open or affected_ratio is defined)
        for: 1s
        action: notify
"#;

/// A temp dir with config, rules and secret for one herald.
struct Site {
    dir: tempfile::TempDir,
    port: u16,
    runs: usize,
}

impl Site {
    fn new(prometheus: &str, receiver_url: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        let cfg = format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             prometheus: {{url: '{prometheus}', timeout: 2s}}\n\
             receivers:\n  - {{name: pager, type: webhook, url: '{receiver_url}', secret_file: secret, timeout: 2s}}\n\
             notification: {{group_wait: 0s}}\n\
             rule_files: [rules.yaml]\n"
        );
        std::fs::write(dir.path().join("herald.yaml"), cfg).unwrap();
        Site { dir, port, runs: 0 }
    }

    fn start(&mut self) -> Daemon {
        self.runs += 1;
        Daemon::spawn(&self.dir.path().join("herald.yaml"), self.port, self.dir.path().join(format!("herald-{}.log", self.runs)), &[])
    }

    fn state_db(&self) -> std::path::PathBuf {
        self.dir.path().join("state/state.db")
    }
}

fn incidents(d: &Daemon, query: &str) -> Vec<serde_json::Value> {
    d.get(&format!("/api/v1/incidents{query}")).json()["incidents"].as_array().cloned().expect("an incidents array")
}

fn open_incidents(d: &Daemon) -> Vec<serde_json::Value> {
    incidents(d, "?open=true")
}

fn all_incidents(d: &Daemon) -> Vec<serde_json::Value> {
    incidents(d, "")
}

/// The phase of a rule instance in `/api/v1/rules`, if live.
fn phase(d: &Daemon, rule: &str, service: &str) -> Option<String> {
    let v = d.get("/api/v1/rules").json();
    for g in v["groups"].as_array()? {
        for r in g["rules"].as_array()? {
            if r["name"] == rule {
                for i in r["instances"].as_array().into_iter().flatten() {
                    if i["subject"]["service"] == service {
                        return i["state"].as_str().map(str::to_string);
                    }
                }
            }
        }
    }
    None
}

fn pages(r: &[Received]) -> Vec<&Received> {
    r.iter().filter(|x| x.json()["rule"] == "ActivateCommsLead").collect()
}

fn verify(r: &Received) {
    let secret = ::herald::notify::WebhookSecret::new(SECRET).unwrap();
    let ts: i64 = r.headers["webhook-timestamp"].parse().unwrap();
    ::herald::notify::verify(&secret, &r.headers["webhook-id"], ts, r.body.as_bytes(), &r.headers["webhook-signature"], ts, 300)
        .unwrap_or_else(|e| panic!("signature does not verify: {e:?}"));
}

fn healthy(e: &Exporter) {
    for svc in ["checkout", "search"] {
        e.set("test_sli", &[("service", svc)], 1.0);
        e.set("test_affected", &[("service", svc)], 0.0);
        e.set("test_burn", &[("service", svc)], 0.5);
    }
}

/// An exporter where `checkout` breaches (20% affected), scraped by a real Prometheus that
/// already has the data.
fn breaching() -> (Exporter, Prometheus) {
    let exporter = Exporter::start();
    healthy(&exporter);
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_affected", Duration::from_secs(30));
    (exporter, prom)
}

#[test]
fn slo_breach_pages_once_within_two_intervals_and_survives_restarts_and_prometheus_outages() {
    let exporter = Exporter::start();
    healthy(&exporter);
    let mut prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_sli", Duration::from_secs(30));
    let rx = Receiver::start();
    let mut site = Site::new(&prom.url(), &rx.url());
    let mut d = site.start();
    std::thread::sleep(3 * INTERVAL);
    assert!(all_incidents(&d).is_empty(), "healthy services open nothing");

    // The breach: as soon as Prometheus answers with it, Herald has two intervals.
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    prometheus::wait_for_value(&prom.url(), "min by (service) (test_affected{service=\"checkout\"})", 0.2, Duration::from_secs(30));
    let seen = Instant::now();
    d.eventually("an open incident", 2 * INTERVAL + Duration::from_secs(1), || !open_incidents(&d).is_empty());
    let opened_after = seen.elapsed();
    let incidents = open_incidents(&d);
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["id"], "INC-1");
    let got = rx.wait_until(Duration::from_secs(10), |r| !pages(r).is_empty());
    let page = pages(&got)[0].clone();
    verify(&page);
    let body = page.json();
    assert_eq!(body["status"], "firing");
    assert_eq!(body["subject"]["service"], "checkout");
    assert_eq!(body["incident"]["id"], "INC-1");
    assert_eq!(body["annotations"]["summary"], "checkout is failing for 20% of customers");
    eprintln!("incident opened {opened_after:?} after Prometheus saw the breach");

    // A graceful restart, then kill -9: no second incident, no second page.
    d.signal("-TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    let d2 = site.start();
    std::thread::sleep(4 * INTERVAL);
    assert_eq!(all_incidents(&d2).len(), 1);
    drop(d2); // kill -9 (SIGKILL on drop)
    let d = site.start();
    std::thread::sleep(4 * INTERVAL);
    let all = all_incidents(&d);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0]["resolved_at"].is_null());
    assert_eq!(pages(&rx.received()).len(), 1, "the activation page is sent exactly once across restarts");

    // Prometheus goes down mid-incident: nothing resolves, TelemetryGap fires.
    prom.stop();
    d.eventually("TelemetryGap firing", Duration::from_secs(15), || phase(&d, "TelemetryGap", "checkout").as_deref() == Some("firing"));
    std::thread::sleep(3 * INTERVAL);
    assert_eq!(phase(&d, "ActivateCommsLead", "checkout").as_deref(), Some("firing"), "unknown keeps the activation firing");
    assert_eq!(open_incidents(&d).len(), 1, "unknown never resolves");
    assert!(d.metrics().lines().any(|l| l == r#"herald_datasource_up{group="live"} 0"#), "datasource marked down");
    prom.restart();
    d.eventually("TelemetryGap cleared", Duration::from_secs(30), || phase(&d, "TelemetryGap", "checkout").is_none());
    assert_eq!(pages(&rx.received()).len(), 1);
}

#[test]
fn a_for_timer_is_not_restarted_by_a_restart() {
    let exporter = Exporter::start();
    healthy(&exporter);
    exporter.set("test_burn", &[("service", "checkout")], 5.0);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_burn", Duration::from_secs(30));
    let rx = Receiver::start();
    let mut site = Site::new(&prom.url(), &rx.url());
    let mut d = site.start();
    d.eventually("EscalateCadence pending", Duration::from_secs(10), || phase(&d, "EscalateCadence", "checkout").as_deref() == Some("pending"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(phase(&d, "EscalateCadence", "checkout").as_deref(), Some("pending"));
    d.signal("-TERM");
    assert!(d.wait_exit(Duration::from_secs(15)).success());
    let d = site.start();
    let restarted = Instant::now();
    // ~5s of the 8s were served before the restart: it fires in ~3s, not 8s.
    d.eventually("EscalateCadence firing", Duration::from_secs(15), || phase(&d, "EscalateCadence", "checkout").as_deref() == Some("firing"));
    let after = restarted.elapsed();
    assert!(after < Duration::from_secs(7), "for restarted: fired {after:?} after the restart");
}

#[test]
fn a_page_committed_while_the_receiver_is_down_is_delivered_once_after_kill_9() {
    let (_exporter, prom) = breaching();
    let down = receiver::reserve_port();
    let mut site = Site::new(&prom.url(), &format!("http://{down}/hook"));
    let mut d = site.start();
    d.eventually("an open incident", Duration::from_secs(10), || !open_incidents(&d).is_empty());
    std::thread::sleep(3 * INTERVAL); // a few failed delivery attempts
    let api = d.get("/api/v1/notifications?state=pending").json();
    let retrying = &api["notifications"][0];
    assert_eq!(retrying["receiver"], "pager");
    assert!(retrying["attempts"].as_u64().unwrap() >= 1 && retrying["last_error"].is_string(), "{api}");
    d.kill9();

    // Exactly one page is waiting in the outbox, with failed attempts behind it.
    let pending = {
        let store = ::herald::store::Store::open(&site.state_db()).unwrap();
        store.outbox(Some(::herald::store::OutboxState::Pending), 10).unwrap()
    };
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].attempts >= 1 && pending[0].last_error.is_some(), "{:?}", pending[0]);

    let rx = Receiver::start_on(down);
    let d = site.start();
    let got = rx.wait_until(Duration::from_secs(40), |r| !r.is_empty());
    assert_eq!(got[0].headers["webhook-id"], pending[0].id, "the same notification id as committed");
    verify(&got[0]);
    std::thread::sleep(3 * INTERVAL);
    assert_eq!(rx.received().len(), 1, "delivered exactly once");
    assert_eq!(all_incidents(&d).len(), 1);
}

#[test]
fn a_permanent_failure_stops_retrying_and_is_visible_in_the_api_and_metrics() {
    let (_exporter, prom) = breaching();
    // Prometheus itself answers 404 on this path: a wrong webhook URL, a permanent failure.
    let mut site = Site::new(&prom.url(), &format!("{}/no-such-hook", prom.url()));
    let d = site.start();
    d.eventually("a failed notification", Duration::from_secs(15), || {
        !d.get("/api/v1/notifications?state=failed").json()["notifications"].as_array().unwrap().is_empty()
    });
    let failed = d.get("/api/v1/notifications?state=failed").json();
    let entry = &failed["notifications"][0];
    assert_eq!(entry["rule"], "ActivateCommsLead");
    assert_eq!(entry["attempts"], 1, "a permanent answer is not retried: {failed}");
    assert!(entry["last_error"].as_str().unwrap().contains("404"), "{failed}");
    assert!(d.metrics().lines().any(|l| l == r#"herald_notifications_total{receiver="pager",outcome="failed"} 1"#), "{}", d.metrics());
    assert_eq!(d.get("/api/v1/notifications?state=bogus").status, 400);
}

#[test]
fn readiness_waits_until_every_group_has_been_evaluated_once() {
    // A "Prometheus" that accepts connections and never answers: the first evaluation waits
    // for the 2s query timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let site = Site::new(&url, "http://127.0.0.1:9/hook");
    let d = Daemon::spawn_unready(&site.dir.path().join("herald.yaml"), site.port, site.dir.path().join("herald.log"));
    assert_eq!(d.get("/-/ready").status, 503, "not ready before the first evaluation finished");
    // Every group's health series exist from start.
    let m = d.metrics();
    for line in [r#"herald_datasource_up{group="live"} 0"#, r#"herald_rule_evaluation_failures_total{group="live"} 0"#, r#"herald_rule_unknown{rule="TelemetryGap",reason="absent"} 0"#] {
        assert!(m.lines().any(|l| l == line), "{line} missing before the first evaluation:\n{m}");
    }
    d.eventually("ready after the first evaluation", Duration::from_secs(20), || d.get("/-/ready").status == 200);
    drop(silent);
}

#[test]
fn unknown_is_visible_and_a_rule_explains_itself() {
    let (_exporter, prom) = breaching();
    let rx = Receiver::start();
    let mut site = Site::new(&prom.url(), &rx.url());
    // A signal whose query has a typo: it returns no series, which must not read as "all is well".
    let rules = RULES.replace("    rules:\n", "      typo: { query: 'max by (service) (test_afected)' }\n    rules:\n")
        + "      - name: TypoRule\n        when: typo > 0.05\n        action: notify\n";
    std::fs::write(site.dir.path().join("rules.yaml"), rules).unwrap();
    let d = site.start();
    d.eventually("an open incident", Duration::from_secs(10), || !open_incidents(&d).is_empty());
    let m = d.metrics();
    for line in [
        r#"herald_signal_series{group="live",signal="sli"} 2"#,
        r#"herald_signal_series{group="live",signal="typo"} 0"#,
        r#"herald_rule_unknown{rule="TypoRule",reason="absent"} 2"#,
        r#"herald_rule_unknown{rule="ActivateCommsLead",reason="absent"} 0"#,
        r#"herald_datasource_up{group="live"} 1"#,
        r#"herald_rule_evaluation_failures_total{group="live"} 0"#,
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing:\n{m}");
    }

    // Explain: the activation fires, and why.
    let v = d.get("/api/v1/rules/ActivateCommsLead/explain?subject=service=checkout").json();
    let e = &v["evaluations"][0];
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!((e["state"].as_str(), e["when"]["truth"].as_str()), (Some("firing"), Some("true")), "{v}");
    assert_eq!(e["when"]["clauses"][1]["text"], "affected_ratio > 0.05");
    assert_eq!(e["incident"]["id"], "INC-1");
    let sli = e["signals"].as_array().unwrap().iter().find(|s| s["name"] == "sli").unwrap();
    assert_eq!(sli["value"], 0.9);
    assert!(e["text"].as_str().unwrap().contains("when true"), "{v}");
    // The evaluation time is the group's aligned tick, not a clock read.
    let at = chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap().timestamp_millis();
    assert_eq!(::herald::daemon::Schedule::new("live", INTERVAL).floor(at), at, "evaluated at an aligned tick");
    // Asked once, the pair is recorded: the next answer shows the last evaluations, one
    // interval apart exactly.
    std::thread::sleep(3 * INTERVAL);
    let v = d.get("/api/v1/rules/ActivateCommsLead/explain?subject=service=checkout").json();
    let times: Vec<i64> = v["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap().timestamp_millis())
        .collect();
    assert!(times.len() >= 3, "{v}");
    assert!(times.windows(2).all(|w| w[1] - w[0] == 1000), "{times:?}");
    // The typo: unknown, because the query returned no series.
    let v = d.get("/api/v1/rules/TypoRule/explain?subject=service=checkout").json();
    let e = &v["evaluations"][0];
    assert_eq!((e["when"]["truth"].as_str(), e["unknown_reason"].as_str()), (Some("unknown"), Some("absent")), "{v}");
    assert!(e["signals"][0]["why"].as_str().unwrap().starts_with("absent: the query returned 0 series"), "{v}");
    assert_eq!(d.get("/api/v1/rules/NoSuchRule/explain?subject=service=checkout").status, 404);
    assert_eq!(d.get("/api/v1/rules/TypoRule/explain?subject=region=eu").status, 400);

    // Unknown for every subject for 10 evaluations: one warning, with the reason.
    d.eventually("the warning", Duration::from_secs(20), || d.log().contains("rule has been unknown for every subject"));
    std::thread::sleep(3 * INTERVAL);
    let log = d.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("rule has been unknown for every subject")).collect();
    assert_eq!(warnings.len(), 1, "logged once: {warnings:?}");
    assert!(warnings[0].contains("TypoRule") && warnings[0].contains("absent"), "{}", warnings[0]);
}

/// `herald_ticket_ratio` follows every poll of a ticket source, and only polls: between them
/// the counts are the ones already exported and are not walked again (regression: the walk
/// ran every evaluation over every subject).
#[test]
fn the_ticket_ratio_follows_each_poll() {
    let exporter = Exporter::start();
    exporter.set("test_tickets", &[("service", "checkout")], 12.0);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_tickets", Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The week before has no `test_tickets`: the baseline is the constant 6.
    std::fs::write(
        dir.path().join("rules.yaml"),
        "groups:\n  - name: t\n    interval: 1s\n    subject: [service]\n    signals:\n      tickets: { ticket_source: support }\n    rules:\n      - name: Spike\n        when: tickets > 3 * tickets_baseline\n        action: suggest_update\n",
    )
    .unwrap();
    let cfg = format!(
        "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
         prometheus: {{url: '{prom}', timeout: 2s}}\n\
         ticket_sources:\n  - name: support\n    type: prometheus\n    query: 'sum by (service) (test_tickets) or label_replace(vector(6), \"service\", \"checkout\", \"\", \"\")'\n    poll_interval: 2s\n\
         receivers:\n  - {{name: log, type: log}}\n\
         rule_files: [rules.yaml]\n",
        prom = prom.url()
    );
    std::fs::write(dir.path().join("herald.yaml"), cfg).unwrap();
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald.log"), &[]);
    let ratio = |d: &Daemon| d.metrics().lines().find_map(|l| l.strip_prefix(r#"herald_ticket_ratio{service="checkout"} "#).map(str::to_string));
    d.eventually("the first ratio, 12 / 6", Duration::from_secs(20), || ratio(&d).as_deref() == Some("2"));
    exporter.set("test_tickets", &[("service", "checkout")], 18.0);
    d.eventually("the ratio after a later poll, 18 / 6", Duration::from_secs(20), || ratio(&d).as_deref() == Some("3"));
}
