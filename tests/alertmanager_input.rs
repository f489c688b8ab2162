//! A REAL Alertmanager (Debian's prometheus-alertmanager) sends its webhook (version 4, bearer
//! token) to `herald run`: a firing security alert declares a security incident for its
//! subject, and flags the subject's open incident when there is one; a re-sent notification
//! changes nothing more. Bad input on the endpoint (no or wrong token, malformed JSON, another
//! version, a huge body) gets a 4xx and changes nothing.
//!
//! An SLO alert mapped to a signal (`signal: burn_rate`, `value_from: annotation:value`) sets
//! that signal for its subject: a rule reading it fires, a `kill -9` and restart keep it, and
//! the alert's resolution in Alertmanager takes it back to 0 and stops the rule.
//!
//! The binary is `/usr/bin/prometheus-alertmanager` (or `$HERALD_ALERTMANAGER_BIN`); the test
//! FAILS when it is missing (`.ci/run` installs it).

#[path = "support/herald.rs"]
mod herald;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald::{free_port, try_request, Daemon, TOKEN};
use serde_json::Value;

fn alertmanager_bin() -> PathBuf {
    let p = std::env::var_os("HERALD_ALERTMANAGER_BIN").map_or_else(|| PathBuf::from("/usr/bin/prometheus-alertmanager"), PathBuf::from);
    assert!(p.exists(), "{} is missing: install Debian's prometheus-alertmanager (apt-get install -y prometheus-alertmanager) or set HERALD_ALERTMANAGER_BIN", p.display());
    p
}

struct Alertmanager {
    child: Child,
    port: u16,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    fn start(dir: &std::path::Path, herald_port: u16) -> Alertmanager {
        let port = free_port();
        std::fs::write(
            dir.join("am.yml"),
            format!(
                "route:\n  receiver: herald\n  group_by: [alertname, service]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 2s\n\
                 receivers:\n  - name: herald\n    webhook_configs:\n      - url: 'http://127.0.0.1:{herald_port}/api/v1/alertmanager'\n        send_resolved: true\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: '{}'\n",
                dir.join("token").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
        let child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", dir.join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let am = Alertmanager { child, port };
        for _ in 0..100 {
            if try_request(port, "GET", "/-/ready", None, None).is_ok_and(|r| r.status == 200) {
                return am;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("alertmanager not ready:\n{}", std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default());
    }

    fn post_alerts(&self, body: &str) {
        let r = try_request(self.port, "POST", "/api/v2/alerts", None, Some(body)).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }

    fn fire(&self, alertname: &str, service: &str) {
        let body = format!(r#"[{{"labels":{{"alertname":"{alertname}","service":"{service}","severity":"critical"}},"annotations":{{"summary":"admin logins from an unknown network"}}}}]"#);
        let r = try_request(self.port, "POST", "/api/v2/alerts", None, Some(&body)).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn post_raw(port: u16, path: &str, auth: Option<&str>, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn incidents(d: &Daemon) -> Vec<Value> {
    d.get("/api/v1/incidents").json()["incidents"].as_array().cloned().unwrap()
}

#[test]
fn a_real_alertmanager_feeds_security_alerts_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), "groups:\n  - name: g\n    subject: [service]\n    signals:\n      k: {value: 1}\n    rules:\n      - {name: Noop, when: 'k > 1', action: notify}\n").unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             api: {{token_file: token}}\n\
             integrations:\n  alertmanager:\n    - matchers: ['alertname=\"SecurityBreach\"']\n      subject: [service]\n      event: security\n\
             rule_files: [rules.yaml]\n"
        ),
    )
    .unwrap();
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald.log"), &[]);

    // Bad input first: nothing changes.
    let fixture = include_bytes!("fixtures/integrations/alertmanager_webhook_v4.json");
    let path = "/api/v1/alertmanager";
    assert_eq!(post_raw(port, path, None, fixture), 401, "no token");
    assert_eq!(post_raw(port, path, Some("wrong"), fixture), 401, "wrong token");
    assert_eq!(post_raw(port, path, Some(TOKEN), b"{\"version\":"), 400, "malformed JSON");
    assert_eq!(post_raw(port, path, Some(TOKEN), br#"{"version":"3","alerts":[]}"#), 400, "another version");
    assert_eq!(post_raw(port, path, Some(TOKEN), &vec![b' '; 3 * 1024 * 1024]), 413, "huge body");
    assert!(incidents(&d).is_empty());

    // An existing incident on `search` gets flagged; `checkout` has none, so one is declared.
    let r = d.post("/api/v1/incidents", r#"{"subject":{"service":"search"},"severity":"warning"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let am = Alertmanager::start(dir.path(), port);
    am.fire("SecurityBreach", "checkout");
    am.fire("SecurityBreach", "search");
    am.fire("DiskFull", "checkout");
    d.eventually("both alerts applied", Duration::from_secs(20), || {
        let all = incidents(&d);
        all.iter().any(|i| i["subject"]["service"] == "checkout" && i["security"] == true) && all.iter().any(|i| i["subject"]["service"] == "search" && i["security"] == true)
    });
    // Alertmanager re-sends every repeat_interval (2s): nothing more happens.
    std::thread::sleep(Duration::from_secs(5));
    let all = incidents(&d);
    assert_eq!(all.len(), 2, "one declared, one flagged, nothing for the unmatched alert: {all:?}");
    let checkout = all.iter().find(|i| i["subject"]["service"] == "checkout").unwrap();
    assert_eq!(checkout["severity"], "critical");
    let events = d.get(&format!("/api/v1/incidents/{}", checkout["id"].as_str().unwrap())).json()["events"].as_array().cloned().unwrap();
    assert_eq!(events.len(), 1, "declared once: {events:?}");
    let search = all.iter().find(|i| i["subject"]["service"] == "search").unwrap();
    let events = d.get(&format!("/api/v1/incidents/{}", search["id"].as_str().unwrap())).json()["events"].as_array().cloned().unwrap();
    assert_eq!(events.iter().filter(|e| e["type"] == "security").count(), 1, "{events:?}");
    assert!(d.log().contains("Alertmanager alert"), "the webhook came from Alertmanager");
}

const SLO_RULES: &str = "groups:\n  - name: slo\n    interval: 1s\n    subject: [service]\n    signals:\n      burn_rate: {alertmanager: true}\n    rules:\n      - {name: EscalateCadence, when: 'burn_rate > 3', action: escalate, severity: critical}\n";

fn slo_config(dir: &std::path::Path, port: u16) {
    std::fs::write(
        dir.join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             api: {{token_file: token}}\n\
             integrations:\n  alertmanager:\n    - matchers: ['alertname=\"SLOBurnFast\"']\n      subject: [service]\n      signal: burn_rate\n      value_from: 'annotation:value'\n\
             rule_files: [rules.yaml]\n"
        ),
    )
    .unwrap();
}

/// The last explained evaluation of EscalateCadence for a service: (burn_rate, why absent).
fn burn_rate(d: &Daemon, service: &str) -> (Option<f64>, Option<String>) {
    let v = d.get(&format!("/api/v1/rules/EscalateCadence/explain?subject=service={service}")).json();
    let last = v["evaluations"].as_array().and_then(|a| a.last().cloned()).unwrap_or_default();
    let s = &last["signals"][0];
    (s["value"].as_f64(), s["why"].as_str().map(str::to_string))
}

fn escalating(d: &Daemon, service: &str) -> bool {
    let v = d.get("/api/v1/rules").json();
    v["groups"][0]["rules"][0]["instances"].as_array().is_some_and(|a| a.iter().any(|i| i["subject"]["service"] == service && i["state"] == "firing"))
}

#[test]
fn a_real_alertmanager_sets_a_signal_that_a_rule_reads_until_the_alert_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), SLO_RULES).unwrap();
    slo_config(dir.path(), port);
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald-1.log"), &[]);

    // Before Alertmanager has said anything, the signal is unknown, not an all clear.
    d.eventually("a first evaluation", Duration::from_secs(10), || burn_rate(&d, "checkout").1.is_some());
    let (value, why) = burn_rate(&d, "checkout");
    assert_eq!(value, None);
    assert!(why.as_deref().is_some_and(|w| w.contains("no Alertmanager notification received yet")), "{why:?}");

    // An SLO alert posted to Alertmanager reaches Herald through the webhook: the rule fires.
    let am = Alertmanager::start(dir.path(), port);
    let fire = r#"[{"labels":{"alertname":"SLOBurnFast","service":"checkout","severity":"page"},"annotations":{"summary":"checkout burns its error budget 14.4x","value":"14.4"}}]"#;
    am.post_alerts(fire);
    d.eventually("EscalateCadence firing for checkout", Duration::from_secs(20), || escalating(&d, "checkout"));
    assert_eq!(burn_rate(&d, "checkout"), (Some(14.4), None), "the value of the alert's annotation");
    assert_eq!(burn_rate(&d, "search"), (Some(0.0), None), "no alert for search: 0, known");
    assert!(d.log().contains("Alertmanager alert"), "the webhook came from Alertmanager");

    // Bad input: a value that is not a number is reported and changes nothing.
    let bad = r#"{"version":"4","groupKey":"{}:{alertname=\"SLOBurnFast\"}/manual","status":"firing","alerts":[
        {"status":"firing","labels":{"alertname":"SLOBurnFast","service":"search"},"annotations":{"value":"very fast"},"startsAt":"2026-11-27T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"0000000000000bad"}]}"#;
    let r = d.post("/api/v1/alertmanager", bad);
    assert_eq!(r.status, 200, "{}", r.body);
    let out = &r.json()["alerts"][0];
    assert_eq!(out["result"], "bad_value", "{out}");
    assert!(out["reason"].as_str().unwrap().contains("annotation \"value\" is \"very fast\", not a finite number"), "{out}");
    assert_eq!(post_raw(port, "/api/v1/alertmanager", Some("wrong"), bad.as_bytes()), 401, "wrong token");
    assert_eq!(post_raw(port, "/api/v1/alertmanager", Some(TOKEN), b"{\"version\":\"4\",\"alerts\":{}}"), 400, "alerts not a list");
    d.eventually("an evaluation after the bad input", Duration::from_secs(10), || {
        d.get("/api/v1/rules/EscalateCadence/explain?subject=service=search").json()["evaluations"].as_array().is_some_and(|a| a.len() >= 2)
    });
    assert_eq!(burn_rate(&d, "search"), (Some(0.0), None), "the bad value set nothing");
    assert!(!escalating(&d, "search"));
    assert_eq!(burn_rate(&d, "checkout"), (Some(14.4), None));

    // kill -9 and restart where Alertmanager cannot reach it: the firing alert is remembered.
    let mut d = d;
    d.kill9();
    let port2 = free_port();
    slo_config(dir.path(), port2);
    let d2 = Daemon::spawn(&dir.path().join("herald.yaml"), port2, dir.path().join("herald-2.log"), &[]);
    d2.eventually("EscalateCadence firing again from the stored value", Duration::from_secs(20), || escalating(&d2, "checkout"));
    assert_eq!(burn_rate(&d2, "checkout"), (Some(14.4), None));
    assert!(!d2.log().contains("Alertmanager alert"), "nothing reached this process from Alertmanager");
    drop(d2);

    // Back where Alertmanager sends; the alert resolves in Alertmanager: back to 0, the rule
    // stops. Posted with a bare `endsAt` a few seconds back (maybe before the alert started),
    // as a script would: Alertmanager then reports the resolved alert with that `startsAt`.
    slo_config(dir.path(), port);
    let d = Daemon::spawn(&dir.path().join("herald.yaml"), port, dir.path().join("herald-3.log"), &[]);
    d.eventually("EscalateCadence firing", Duration::from_secs(20), || escalating(&d, "checkout"));
    let ended = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    am.post_alerts(&format!(r#"[{{"labels":{{"alertname":"SLOBurnFast","service":"checkout","severity":"page"}},"annotations":{{"summary":"checkout burns its error budget 14.4x","value":"14.4"}},"endsAt":"{ended}"}}]"#));
    d.eventually("EscalateCadence stopped", Duration::from_secs(20), || !escalating(&d, "checkout"));
    assert_eq!(burn_rate(&d, "checkout"), (Some(0.0), None), "resolved: 0");
    assert!(d.log().contains("signal_cleared"), "the resolution came through the webhook:\n{}", d.log());
}
