//! Issue 12 end to end through the real binary, a REAL Prometheus, a loopback Statuspage that
//! speaks the documented REST API v1 (tests/support/statuspage.rs) and signed PagerDuty v3
//! webhooks built from the documented example (tests/fixtures/integrations/):
//! a breach opens an incident; a status-page update a person posts is picked up at its own
//! time, stops PreparePublicUpdate and shows in herald_first_update_latency_seconds; an edit
//! is a correction; a signed PagerDuty ack stops AckOverdue (bad input of every kind gets a 4xx
//! and changes nothing); an approved draft is published once across a kill -9 in the middle;
//! legal hold refuses publishing.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;
#[path = "support/statuspage.rs"]
mod statuspage;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use herald::{free_port, Daemon, TOKEN};
use prometheus::{Exporter, Prometheus};
use receiver::Receiver;
use serde_json::{json, Value};
use statuspage::Statuspage;

const PD_SECRET: &str = "pd-webhook-s3cret-for-tests";
const COMPONENT: &str = "b13yz5g2cw10";

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
        resolve_after: 1h
        action: activate_comms_lead
        severity: critical
        notify: [pager]
      - name: PreparePublicUpdate
        when: >-
          incident.open and incident.public_updates == 0 and not incident.internal_only
          and not incident.legal_hold and incident.age >= duration("2s")
        action: suggest_update
        severity: warning
        notify: [pager]
      - name: AckOverdue
        when: incident.open and incident.severity == "critical" and not incident.acknowledged and incident.age >= duration("2s")
        action: escalate
        severity: critical
        notify: [pager]
      - name: EngageLegal
        when: incident.security
        action: engage_legal
        severity: critical
"#;

struct Site {
    dir: tempfile::TempDir,
    port: u16,
    runs: usize,
}

impl Site {
    fn new(prometheus: &str, receiver: &str, page: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("sp_key"), statuspage::API_KEY).unwrap();
        std::fs::write(dir.path().join("pd_secret"), PD_SECRET).unwrap();
        let cfg = format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             prometheus: {{url: '{prometheus}', timeout: 2s}}\n\
             api: {{token_file: token}}\n\
             receivers:\n  - {{name: pager, type: webhook, url: '{receiver}', timeout: 2s}}\n\
             notification: {{group_wait: 0s, min_interval: 0s}}\n\
             status_pages:\n  - name: main\n    type: statuspage\n    url: '{page}'\n    page_id: {}\n    api_key_file: sp_key\n    poll_interval: 1s\n    timeout: 10s\n    components: {{{COMPONENT}: {{service: checkout}}}}\n\
             integrations:\n  pagerduty: {{webhook_secret_file: pd_secret}}\n\
             rule_files: [rules.yaml]\n",
            statuspage::PAGE_ID
        );
        std::fs::write(dir.path().join("herald.yaml"), cfg).unwrap();
        Site { dir, port, runs: 0 }
    }

    fn start(&mut self) -> Daemon {
        self.runs += 1;
        Daemon::spawn(&self.dir.path().join("herald.yaml"), self.port, self.dir.path().join(format!("herald-{}.log", self.runs)), &[])
    }
}

fn breaching() -> (Exporter, Prometheus) {
    let exporter = Exporter::start();
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_affected", Duration::from_secs(30));
    (exporter, prom)
}

fn phase(d: &Daemon, rule: &str) -> Option<String> {
    let v = d.get("/api/v1/rules").json();
    for g in v["groups"].as_array()? {
        for r in g["rules"].as_array()? {
            if r["name"] == rule {
                return r["instances"].as_array()?.iter().find(|i| i["subject"]["service"] == "checkout").and_then(|i| i["state"].as_str().map(str::to_string));
            }
        }
    }
    None
}

fn incident(d: &Daemon) -> Value {
    d.get("/api/v1/incidents/INC-1").json()
}

/// A metric's value in the exposition text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// POST with arbitrary headers; returns (status, body).
fn post_raw(port: u16, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body); // a server refusing a huge body may close early
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (h.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), b.to_string())
}

/// The documented PagerDuty v3 example, as an event of `event_type` about `incident_key`.
fn pd_body(event_id: &str, event_type: &str, incident_key: &str, occurred_at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(include_str!("fixtures/integrations/pagerduty_v3_incident_acknowledged.json")).unwrap();
    v["event"]["id"] = json!(event_id);
    v["event"]["event_type"] = json!(event_type);
    v["event"]["occurred_at"] = json!(occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    v["event"]["data"]["incident_key"] = json!(incident_key);
    serde_json::to_vec(&v).unwrap()
}

fn signed(body: &[u8]) -> Vec<(&'static str, String)> {
    vec![("X-PagerDuty-Signature", ::herald::integrations::pagerduty::sign(PD_SECRET, body))]
}

#[test]
fn status_page_pager_and_drafts_close_the_loop_end_to_end() {
    let (_exporter, prom) = breaching();
    let rx = Receiver::start();
    let page = Statuspage::start();
    let mut site = Site::new(&prom.url(), &rx.url(), &page.url());
    let mut d = site.start();

    // A breach opens an incident; the prompts fire.
    d.eventually("INC-1 open", Duration::from_secs(20), || d.get("/api/v1/incidents?open=true").json()["incidents"].as_array().is_some_and(|a| !a.is_empty()));
    d.eventually("PreparePublicUpdate and AckOverdue firing", Duration::from_secs(20), || {
        phase(&d, "PreparePublicUpdate").as_deref() == Some("firing") && phase(&d, "AckOverdue").as_deref() == Some("firing")
    });
    assert_eq!(metric(&d.metrics(), "herald_first_update_latency_seconds_count"), 0.0);

    // The suggest_update decision drafted the update; the prompt carries it.
    let drafts = d.get("/api/v1/incidents/INC-1/drafts").json()["drafts"].as_array().cloned().unwrap();
    assert_eq!(drafts.len(), 1, "{drafts:?}");
    let sp_text = drafts[0]["audiences"]["status_page"].as_str().unwrap().to_string();
    assert!(sp_text.contains("About 20% of customers") && sp_text.contains("next update here by"), "{sp_text}");
    for k in ["support", "internal", "executive"] {
        assert!(drafts[0]["audiences"][k].is_string(), "{k} drafted: {drafts:?}");
    }
    assert!(drafts[0]["audiences"]["customer_email"].is_null(), "no customer email while open");
    let prompt = rx.wait_until(Duration::from_secs(10), |r| r.iter().any(|x| x.json()["rule"] == "PreparePublicUpdate"));
    let prompt = prompt.iter().find(|x| x.json()["rule"] == "PreparePublicUpdate").unwrap().json();
    assert_eq!(prompt["annotations"]["draft_status_page"], sp_text.as_str());
    assert_eq!(d.get("/api/v1/incidents/INC-9/drafts").status, 404);

    // A person posts on the status page: Herald picks it up at the update's own time.
    let sp = page.person_creates("Checkout errors", COMPONENT, "Some customers cannot check out. We are looking into it.");
    d.eventually("the status-page update recorded", Duration::from_secs(15), || incident(&d)["public_updates"] == 1);
    let inc = incident(&d);
    let posted = page.incidents()[0]["incident_updates"][0]["created_at"].as_str().unwrap().to_string();
    let ev = inc["events"].as_array().unwrap().iter().find(|e| e["type"] == "public_update").unwrap().clone();
    assert_eq!(ev["channel"], "status_page");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(ev["at"].as_str().unwrap()).unwrap().timestamp_millis(),
        chrono::DateTime::parse_from_rfc3339(&posted).unwrap().timestamp_millis(),
        "the event carries the update's created_at"
    );
    d.eventually("PreparePublicUpdate stopped", Duration::from_secs(10), || phase(&d, "PreparePublicUpdate").as_deref() != Some("firing"));
    assert_eq!(metric(&d.metrics(), "herald_first_update_latency_seconds_count"), 1.0);
    assert_eq!(metric(&d.metrics(), "herald_public_updates_total{channel=\"status_page\"}"), 1.0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(incident(&d)["public_updates"], 1, "polled again and again, counted once");

    // An edit on the page is a correction.
    let upd = page.incidents()[0]["incident_updates"][0]["id"].as_str().unwrap().to_string();
    page.person_edits(&sp, &upd, "Some customers cannot check out. We have found the cause.");
    d.eventually("a correction", Duration::from_secs(15), || incident(&d)["corrections"] == 1);
    assert_eq!(metric(&d.metrics(), "herald_update_corrections_total"), 1.0);

    // PagerDuty: every bad delivery is refused and changes nothing.
    let dedup = rx.received().iter().map(|r| r.json()).find(|j| j["rule"] == "AckOverdue").map(|j| j["dedup_key"].as_str().unwrap().to_string()).unwrap();
    let now = chrono::Utc::now();
    let good = pd_body("ev-1", "incident.acknowledged", &dedup, now);
    let path = "/api/v1/integrations/pagerduty";
    let (s, b) = post_raw(d.port, path, &[], &good);
    assert_eq!(s, 401, "missing signature: {b}");
    let (s, b) = post_raw(d.port, path, &[("X-PagerDuty-Signature", ::herald::integrations::pagerduty::sign("wrong", &good))], &good);
    assert_eq!(s, 401, "wrong secret: {b}");
    assert!(b.contains("X-PagerDuty-Signature"), "{b}");
    let stale = pd_body("ev-2", "incident.acknowledged", &dedup, now - chrono::Duration::minutes(10));
    let (s, b) = post_raw(d.port, path, &signed(&stale), &stale);
    assert_eq!(s, 401, "replay older than 5 minutes: {b}");
    assert!(b.contains("replay"), "{b}");
    let unknown = pd_body("ev-3", "incident.acknowledged", "not-a-herald-key", now);
    let (s, b) = post_raw(d.port, path, &signed(&unknown), &unknown);
    assert_eq!(s, 404, "unknown incident: {b}");
    let garbage = b"{\"event\": 42}".to_vec();
    let (s, _) = post_raw(d.port, path, &signed(&garbage), &garbage);
    assert_eq!(s, 400, "malformed JSON");
    let huge = vec![b' '; 3 * 1024 * 1024];
    let (s, _) = post_raw(d.port, path, &signed(&huge), &huge);
    assert_eq!(s, 413, "huge body");
    assert!(incident(&d)["acknowledged_at"].is_null(), "nothing changed");
    assert_eq!(phase(&d, "AckOverdue").as_deref(), Some("firing"));

    // A signed ack stops AckOverdue; its replay within 5 minutes changes nothing more.
    let (s, b) = post_raw(d.port, path, &signed(&good), &good);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"ack\""), "{b}");
    d.eventually("AckOverdue stopped", Duration::from_secs(10), || phase(&d, "AckOverdue").as_deref() != Some("firing"));
    assert!(!incident(&d)["acknowledged_at"].is_null());
    let (s, b) = post_raw(d.port, path, &signed(&good), &good);
    assert_eq!(s, 200);
    assert!(b.contains("already applied"), "{b}");
    assert_eq!(incident(&d)["events"].as_array().unwrap().iter().filter(|e| e["type"] == "ack").count(), 1);
    assert_eq!(metric(&d.metrics(), "herald_ack_latency_seconds_count"), 1.0);

    // Publish an approved draft; kill -9 while the page holds its answer; publish once.
    let (s, b) = post_raw(d.port, "/api/v1/incidents/INC-1/drafts/1/publish", &[], b"{}");
    assert_eq!(s, 401, "publishing needs the token: {b}");
    let edited = "Some customers cannot check out. A fix is rolling out. We will post the next update here by 12:00 UTC.";
    let r = d.post("/api/v1/incidents/INC-1/drafts/1/publish", &json!({"text": edited, "status": "identified", "component_status": "partial_outage"}).to_string());
    assert_eq!(r.status, 202, "{}", r.body);
    page.delay_writes(Duration::from_secs(5));
    d.eventually("the PATCH to reach the page", Duration::from_secs(15), || page.log().iter().any(|(m, _, _)| m == "PATCH"));
    d.kill9();
    let before_kill = page.log();
    assert!(before_kill.iter().all(|(_, _, code)| *code != 429), "Herald kept to 1 request/s: {before_kill:?}");
    page.delay_writes(Duration::ZERO);
    let d = site.start();
    d.eventually("the publication done", Duration::from_secs(30), || {
        d.get("/api/v1/incidents/INC-1/drafts").json()["drafts"][0]["publication"]["state"] == "done"
    });
    let on_page: Vec<Value> = page.incidents()[0]["incident_updates"].as_array().unwrap().iter().filter(|u| u["body"] == edited).cloned().collect();
    assert_eq!(on_page.len(), 1, "published exactly once across kill -9: {:?}", page.log());
    assert!(d.log().contains("a previous attempt reached the page"), "the retry adopted the update:\n{}", d.log());
    assert_eq!(page.incidents().len(), 1, "the update went to the linked incident");
    assert_eq!(page.log().iter().filter(|(m, _, _)| m == "PATCH" || m == "POST").count(), 1, "{:?}", page.log());
    std::thread::sleep(Duration::from_secs(2));
    let inc = incident(&d);
    assert_eq!(inc["public_updates"], 2, "the person's update and the published one, each once");
    assert_eq!(inc["status"], "identified");
    let r = d.post("/api/v1/incidents/INC-1/drafts/1/publish", "{}");
    assert_eq!(r.status, 409, "approved once: {}", r.body);
    // The new process may come within a second of the old one's last request: the page's 429
    // is honoured (Retry-After) and the work still completes, as above.

    // Legal hold refuses publishing, with the reason.
    assert_eq!(d.post("/api/v1/incidents/INC-1/events", r#"{"type":"security"}"#).status, 200);
    d.eventually("legal hold", Duration::from_secs(10), || incident(&d)["legal_hold"] == true);
    let r = d.post("/api/v1/incidents/INC-1/drafts/1/publish", "{}");
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["reason"], "legal_hold");
}

#[test]
fn a_published_draft_creates_the_page_incident_once_across_kill_9() {
    let (_exporter, prom) = breaching();
    let rx = Receiver::start();
    let page = Statuspage::start();
    let mut site = Site::new(&prom.url(), &rx.url(), &page.url());
    let mut d = site.start();
    d.eventually("a draft", Duration::from_secs(30), || d.get("/api/v1/incidents/INC-1/drafts").json()["drafts"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(page.incidents().is_empty(), "Herald never posts on its own");

    // Approve the draft as written; the page creates the incident but Herald dies before the answer.
    page.delay_writes(Duration::from_secs(5));
    let r = d.post("/api/v1/incidents/INC-1/drafts/1/publish", r#"{"component_status": "major_outage"}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    d.eventually("the POST to reach the page", Duration::from_secs(15), || page.log().iter().any(|(m, _, _)| m == "POST"));
    d.kill9();
    page.delay_writes(Duration::ZERO);
    assert_eq!(page.incidents().len(), 1, "the create took effect on the page");

    let d = site.start();
    d.eventually("the publication done", Duration::from_secs(30), || {
        d.get("/api/v1/incidents/INC-1/drafts").json()["drafts"][0]["publication"]["state"] == "done"
    });
    let incidents = page.incidents();
    assert_eq!(incidents.len(), 1, "created once across kill -9: {:?}", page.log());
    assert!(d.log().contains("a previous attempt reached the page"), "the retry adopted the incident:\n{}", d.log());
    assert_eq!(page.log().iter().filter(|(m, _, _)| m == "POST").count(), 1, "{:?}", page.log());
    let sp = &incidents[0];
    assert_eq!(sp["components"][0]["id"], COMPONENT);
    assert_eq!(sp["components"][0]["status"], "major_outage");
    let drafted = d.get("/api/v1/incidents/INC-1/drafts").json()["drafts"][0].clone();
    assert_eq!(sp["incident_updates"][0]["body"], drafted["audiences"]["status_page"], "the draft as written");
    assert_eq!(drafted["publication"]["status_page_incident_id"], sp["id"]);
    d.eventually("PreparePublicUpdate stopped", Duration::from_secs(10), || phase(&d, "PreparePublicUpdate").as_deref() != Some("firing"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(incident(&d)["public_updates"], 1, "recorded once, by the publisher or the poller");
    assert_eq!(metric(&d.metrics(), "herald_first_update_latency_seconds_count"), 1.0);
}
