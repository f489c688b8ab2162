//! The comms console in a REAL browser: Debian's headless chromium, driven through
//! chromedriver (W3C WebDriver), against the real `herald run` binary reading a real
//! Prometheus. A breach appears on the incidents page without a reload, the update countdown
//! turns red when overdue, the ack button is refused without the API token and works with it,
//! forged and cross-origin form posts are refused, and every page reads with JavaScript off.
//! Screenshots land in `target/console-screenshots/`.

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use herald::{free_port, Daemon, TOKEN};
use prometheus::{Exporter, Prometheus};
use webdriver::Driver;

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
        annotations:
          summary: "{{ subject.service }} is failing for {{ affected_ratio | percent }} of customers"
"#;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// A raw form POST with chosen cookie and Origin headers: (status, Location header).
fn post_form(port: u16, path: &str, cookie: Option<&str>, origin: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut extra = String::new();
    if let Some(c) = cookie {
        extra.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(o) = origin {
        extra.push_str(&format!("Origin: {o}\r\n"));
    }
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let location = raw.lines().find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: "))).unwrap_or_default().to_string();
    (status, location)
}

fn incident(d: &Daemon, id: &str) -> serde_json::Value {
    d.get(&format!("/api/v1/incidents/{id}")).json()
}

#[test]
fn a_breach_shows_up_counts_down_and_is_acknowledged_from_the_console() {
    let exporter = Exporter::start();
    exporter.set("test_sli", &[("service", "checkout")], 1.0);
    exporter.set("test_affected", &[("service", "checkout")], 0.0);
    let prom = Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_affected", Duration::from_secs(30));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             prometheus: {{url: '{}', timeout: 2s}}\n\
             api: {{token_file: token}}\n\
             console: {{first_update_due: 25s}}\n\
             rule_files: [rules.yaml]\n",
            prom.url()
        ),
    )
    .unwrap();
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald.log"), &[]);
    let base = format!("http://127.0.0.1:{port}");

    let driver = Driver::start();
    let b = driver.session(true, 1100, 1000);
    b.goto(&format!("{base}/"));
    b.wait_for("#no-open", Duration::from_secs(10));
    // A marker that a full page load would erase: the list must refresh in place.
    b.exec("window.heraldMarker = 42;");

    // The breach appears on the open page, without a reload.
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    let card = b.wait_for(r#"article[data-incident="INC-1"]"#, Duration::from_secs(40));
    assert_eq!(b.exec("return window.heraldMarker;"), 42, "the incidents list refreshed without a full reload");
    let text = b.text(&card);
    assert!(text.contains("service=checkout") && text.contains("critical") && text.contains("not acknowledged"), "{text}");
    let due = b.wait_for(r#"article[data-incident="INC-1"] .due"#, Duration::from_secs(5));
    let before = b.text(&due);
    assert!(before.starts_with("due in"), "the first update is not due yet: {before}");

    // The countdown turns red, in words too, once the first update is overdue.
    let overdue = b.wait_for(r#"article[data-incident="INC-1"] .due.overdue"#, Duration::from_secs(40));
    assert!(b.text(&overdue).starts_with("⚠") || b.text(&overdue).contains("overdue by"), "{}", b.text(&overdue));
    let colour = b.css(&overdue, "color");
    assert!(colour.contains("176, 0, 32") || colour.contains("255, 107, 107"), "overdue is drawn in the alert red, got {colour}");
    b.screenshot(&screenshots().join("incidents.png"));

    // The incident page: the ack button without a token leads to sign-in and changes nothing.
    b.goto(&format!("{base}/incidents/INC-1"));
    let ack = b.wait_for("#act-ack", Duration::from_secs(10));
    b.click(&ack);
    let reason = b.wait_for("#login-reason", Duration::from_secs(10));
    assert!(b.text(&reason).contains("API token"), "{}", b.text(&reason));
    assert!(incident(&d, "INC-1")["acknowledged_at"].is_null(), "refused without a token");

    // A wrong token is refused; the right one signs in and the ack is recorded.
    let field = b.wait_for("#token", Duration::from_secs(5));
    b.type_into(&field, "not-the-token");
    b.click(&b.wait_for("#sign-in", Duration::from_secs(5)));
    b.wait_for(".error", Duration::from_secs(10));
    assert!(b.source().contains("not the API token"));
    let field = b.wait_for("#token", Duration::from_secs(5));
    b.type_into(&field, TOKEN);
    b.click(&b.wait_for("#sign-in", Duration::from_secs(5)));
    let ack = b.wait_for("#act-ack", Duration::from_secs(10));
    assert!(b.url().ends_with("/incidents/INC-1"), "back on the incident after sign-in: {}", b.url());
    b.click(&ack);
    let flash = b.wait_for(".flash", Duration::from_secs(10));
    assert_eq!(b.text(&flash), "Recorded: ack.");
    assert!(!incident(&d, "INC-1")["acknowledged_at"].is_null(), "acknowledged through the API");
    b.wait_for(".tag.ack", Duration::from_secs(5));
    // The chart of recorded values and the timeline are on the page.
    b.wait_for("svg.chart polyline", Duration::from_secs(10));
    let timeline = b.text(&b.wait_for("ol.timeline", Duration::from_secs(5)));
    assert!(timeline.contains("Acknowledged"), "{timeline}");

    // Posting a public update from the console resets the countdown.
    b.click(&b.wait_for("#act-public_update", Duration::from_secs(5)));
    b.wait_for(".flash", Duration::from_secs(10));
    assert_eq!(incident(&d, "INC-1")["public_updates"], 1);
    let due = b.text(&b.wait_for(".due", Duration::from_secs(5)));
    assert!(due.starts_with("due in 29m") || due.starts_with("due in 30m"), "next update in 30m: {due}");
    b.screenshot(&screenshots().join("incident.png"));

    // Forged posts: a session cookie without the CSRF token, or from another origin, change nothing.
    let cookie = format!("herald_token={}", TOKEN.bytes().map(|x| format!("{x:02x}")).collect::<String>());
    let (status, _) = post_form(port, "/incidents/INC-1/act", Some(&cookie), None, "type=resolve");
    assert_eq!(status, 403, "no CSRF token");
    let csrf = ::herald::console::csrf_for(TOKEN);
    let (status, _) = post_form(port, "/incidents/INC-1/act", Some(&cookie), Some("https://evil.example"), &format!("type=resolve&csrf={csrf}"));
    assert_eq!(status, 403, "cross-origin");
    let (status, location) = post_form(port, "/incidents/INC-1/act", None, None, "type=resolve");
    assert_eq!((status, location.starts_with("/login")), (303, true), "no session: to the login page");
    assert_eq!(incident(&d, "INC-1")["open"], true, "none of the forged posts resolved it");

    // Reading works with JavaScript off: the list, the countdown text and the chart are server-rendered.
    let nojs = driver.session(false, 420, 900);
    nojs.goto(&format!("{base}/"));
    let card = nojs.wait_for(r#"article[data-incident="INC-1"]"#, Duration::from_secs(10));
    assert!(nojs.text(&card).contains("due in"), "{}", nojs.text(&card));
    nojs.goto(&format!("{base}/incidents/INC-1"));
    nojs.wait_for("svg.chart", Duration::from_secs(10));
    nojs.screenshot(&screenshots().join("incident-phone-nojs.png"));
    nojs.goto(&format!("{base}/rules"));
    let row = nojs.wait_for("#rule-ActivateCommsLead", Duration::from_secs(10));
    assert!(nojs.text(&row).contains("service=checkout: firing"), "{}", nojs.text(&row));

    // Page weight (stated in the README): the incidents page and its one script.
    let page = d.get("/").body.len();
    let script = d.get("/console.js").body.len();
    eprintln!("page weight: incidents page {page} bytes + console.js {script} bytes (uncompressed)");
    assert!(page + script < 64 * 1024, "the console stays light: {page} + {script} bytes");
}
