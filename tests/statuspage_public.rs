//! `type: statuspage_public` through the real binary: a loopback hosted status page serves its
//! public JSON (`/api/v2/summary.json`, `/api/v2/incidents.json`), built from the documented
//! example bodies (tests/fixtures/integrations/README.md). A declared incident is open; a
//! person posts on the page; Herald records the update as a `public_update` (channel
//! `status_page`) at the update's own `created_at`, PreparePublicUpdate stops and
//! `herald_first_update_latency_seconds` has its sample; an edited update is a `correction`;
//! after `kill -9` and a restart the same update is not applied again, and a new one still is.

#[path = "support/herald.rs"]
mod herald;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use herald::{free_port, Daemon, TOKEN};
use serde_json::{json, Value};

/// The component the documented example incident affects.
const COMPONENT: &str = "b13yz5g2cw10";

const RULES: &str = r#"
groups:
  - name: comms
    interval: 1s
    subject: [service]
    signals:
      k: { value: 1 }
    rules:
      - name: PreparePublicUpdate
        when: >-
          incident.open and incident.public_updates == 0 and not incident.internal_only
          and not incident.legal_hold and incident.age >= duration("2s")
        action: suggest_update
        severity: warning
"#;

#[derive(Default)]
struct Page {
    /// `page.updated_at` of summary.json: moves with every change, as on a hosted page.
    updated_at: String,
    incidents: Vec<Value>,
    /// Paths requested, in order.
    hits: Vec<&'static str>,
}

type Shared = Arc<Mutex<Page>>;

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The documented summary.json with this page's `updated_at` and unresolved incidents.
async fn summary(State(p): State<Shared>) -> Json<Value> {
    let mut g = p.lock().unwrap();
    g.hits.push("summary");
    let mut v: Value = serde_json::from_str(include_str!("fixtures/integrations/statuspage_public_summary.json")).unwrap();
    v["page"]["updated_at"] = json!(g.updated_at);
    v["incidents"] = json!(g.incidents.iter().filter(|i| i["resolved_at"].is_null()).cloned().collect::<Vec<_>>());
    Json(v)
}

/// The documented incidents.json with this page's incidents.
async fn incidents(State(p): State<Shared>) -> Json<Value> {
    let mut g = p.lock().unwrap();
    g.hits.push("incidents");
    let mut v: Value = serde_json::from_str(include_str!("fixtures/integrations/statuspage_public_incidents.json")).unwrap();
    v["page"]["updated_at"] = json!(g.updated_at);
    v["incidents"] = json!(g.incidents);
    Json(v)
}

struct PublicPage {
    addr: SocketAddr,
    page: Shared,
}

impl PublicPage {
    fn start() -> PublicPage {
        let page: Shared = Arc::new(Mutex::new(Page { updated_at: rfc3339(chrono::Utc::now()), ..Default::default() }));
        let app = Router::new().route("/api/v2/summary.json", get(summary)).route("/api/v2/incidents.json", get(incidents)).with_state(page.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move { axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap() });
        });
        PublicPage { addr, page }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn changed(g: &mut Page) {
        g.updated_at = rfc3339(chrono::Utc::now());
    }

    /// A person opens the documented example incident ("Unplanned Database Outage", component
    /// `b13yz5g2cw10`, first update `jdy3tw5mt5r5`), created at `at`.
    fn person_posts(&self, at: chrono::DateTime<chrono::Utc>) -> Value {
        let fixture: Value = serde_json::from_str(include_str!("fixtures/integrations/statuspage_public_incidents.json")).unwrap();
        let mut inc = fixture["incidents"][0].clone();
        let t = json!(rfc3339(at));
        for k in ["created_at", "updated_at"] {
            inc[k] = t.clone();
        }
        for k in ["created_at", "display_at", "updated_at"] {
            inc["incident_updates"][0][k] = t.clone();
        }
        let mut g = self.page.lock().unwrap();
        g.incidents.push(inc.clone());
        Self::changed(&mut g);
        inc
    }

    /// A person edits the text of update `upd`.
    fn person_edits(&self, upd: &str, body: &str) {
        let mut g = self.page.lock().unwrap();
        let now = json!(rfc3339(chrono::Utc::now()));
        for u in g.incidents[0]["incident_updates"].as_array_mut().unwrap() {
            if u["id"] == upd {
                u["body"] = json!(body);
                u["updated_at"] = now.clone();
            }
        }
        Self::changed(&mut g);
    }

    /// A person posts a further update (newest first, as the page lists them).
    fn person_updates(&self, id: &str, status: &str, body: &str) {
        let mut g = self.page.lock().unwrap();
        let now = json!(rfc3339(chrono::Utc::now()));
        let inc_id = g.incidents[0]["id"].clone();
        let u = json!({"id": id, "incident_id": inc_id, "status": status, "body": body, "created_at": now, "display_at": now, "updated_at": now});
        g.incidents[0]["incident_updates"].as_array_mut().unwrap().insert(0, u);
        g.incidents[0]["status"] = json!(status);
        Self::changed(&mut g);
    }

    fn hits(&self) -> Vec<&'static str> {
        self.page.lock().unwrap().hits.clone()
    }

    /// Waits until a poll that began after now has read incidents.json and finished its sync:
    /// the poller reads summary.json again only after the previous pass was saved.
    fn wait_for_a_full_pass(&self, d: &Daemon) {
        let from = self.hits().len();
        d.eventually("a poll that reads incidents.json and syncs it", Duration::from_secs(20), || {
            let hits = self.hits();
            hits[from..].iter().position(|h| *h == "incidents").is_some_and(|i| hits[from + i..].contains(&"summary"))
        });
    }
}

/// A metric's value in the exposition text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn incident(d: &Daemon) -> Value {
    d.get("/api/v1/incidents/INC-1").json()
}

fn firing(d: &Daemon, rule: &str) -> bool {
    let v = d.get("/api/v1/rules").json();
    v["groups"][0]["rules"].as_array().unwrap().iter().filter(|r| r["name"] == rule).any(|r| {
        r["instances"].as_array().is_some_and(|a| a.iter().any(|i| i["subject"]["service"] == "checkout" && i["state"] == "firing"))
    })
}

fn events(d: &Daemon, kind: &str) -> Vec<Value> {
    incident(d)["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind).cloned().collect()
}

fn millis(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()
}

#[test]
fn a_public_status_page_update_counts_once_across_kill_9() {
    let page = PublicPage::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             api: {{token_file: token}}\n\
             status_pages:\n  - name: public\n    type: statuspage_public\n    url: '{}'\n    poll_interval: 1s\n    components: {{{COMPONENT}: {{service: checkout}}}}\n\
             rule_files: [rules.yaml]\n",
            page.url()
        ),
    )
    .unwrap();
    let log = |n: u32| dir.path().join(format!("herald-{n}.log"));
    let mut d = Daemon::spawn(&dir.path().join("herald.yaml"), port, log(1), &[]);

    // A declared incident; the prompt to post publicly fires.
    let r = d.post("/api/v1/incidents", r#"{"subject":{"service":"checkout"},"severity":"critical"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let opened = millis(r.json()["opened_at"].as_str().unwrap());
    d.eventually("PreparePublicUpdate firing", Duration::from_secs(20), || firing(&d, "PreparePublicUpdate"));
    assert_eq!(metric(&d.metrics(), "herald_first_update_latency_seconds_count"), 0.0);

    // A person posts on the page; the update was written 700ms after the incident opened,
    // well before Herald reads it.
    let written = chrono::DateTime::from_timestamp_millis(opened + 700).unwrap();
    let sp = page.person_posts(written);
    d.eventually("the update recorded", Duration::from_secs(15), || incident(&d)["public_updates"] == 1);
    let ev = events(&d, "public_update");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["channel"], "status_page");
    assert_eq!(millis(ev[0]["at"].as_str().unwrap()), written.timestamp_millis(), "the event carries the update's created_at");
    let status = events(&d, "status");
    assert_eq!(status.len(), 1, "the page's status `identified` is recorded too: {status:?}");
    assert_eq!(incident(&d)["status"], "identified");
    d.eventually("PreparePublicUpdate stopped", Duration::from_secs(10), || !firing(&d, "PreparePublicUpdate"));
    let m = d.metrics();
    assert_eq!(metric(&m, "herald_first_update_latency_seconds_count"), 1.0);
    assert!((metric(&m, "herald_first_update_latency_seconds_sum") - 0.7).abs() < 0.01, "open → the update's created_at:\n{m}");
    assert_eq!(metric(&m, "herald_public_updates_total{channel=\"status_page\"}"), 1.0);

    // The page is read again; the update counts once.
    PublicPage::changed(&mut page.page.lock().unwrap()); // summary moved: incidents.json is read again
    page.wait_for_a_full_pass(&d);
    assert_eq!(incident(&d)["public_updates"], 1, "polled again, counted once");

    // An edit of the update's text is a correction.
    let upd = sp["incident_updates"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(upd, "jdy3tw5mt5r5");
    page.person_edits(&upd, "Our master database is back. We are watching it closely.");
    d.eventually("a correction", Duration::from_secs(15), || incident(&d)["corrections"] == 1);
    assert_eq!(metric(&d.metrics(), "herald_update_corrections_total"), 1.0);

    // kill -9 and restart: the new process reads the whole page again and applies nothing twice.
    d.kill9();
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, log(2), &[]);
    page.wait_for_a_full_pass(&d);
    let inc = incident(&d);
    assert_eq!((inc["public_updates"].as_u64(), inc["corrections"].as_u64()), (Some(1), Some(1)), "{inc}");
    assert_eq!(events(&d, "public_update").len(), 1);
    assert_eq!(events(&d, "correction").len(), 1);
    let m = d.metrics();
    assert_eq!(metric(&m, "herald_first_update_latency_seconds_count"), 0.0, "nothing applied again in this process:\n{m}");
    assert_eq!(metric(&m, "herald_public_updates_total{channel=\"status_page\"}"), 0.0);
    assert!(!firing(&d, "PreparePublicUpdate"));

    // A new update after the restart is still picked up, once.
    page.person_updates("upd-2", "monitoring", "A fix has been applied; we are monitoring.");
    d.eventually("the second update recorded", Duration::from_secs(15), || incident(&d)["public_updates"] == 2);
    PublicPage::changed(&mut page.page.lock().unwrap());
    page.wait_for_a_full_pass(&d);
    assert_eq!(incident(&d)["public_updates"], 2);
    assert_eq!(incident(&d)["status"], "monitoring");
    assert_eq!(metric(&d.metrics(), "herald_update_interval_seconds_count"), 1.0);
}
