//! A REAL Alertmanager (Debian's prometheus-alertmanager) sends its webhook (version 4, bearer
//! token) to `herald run`: a firing security alert declares a security incident for its
//! subject, and flags the subject's open incident when there is one; a re-sent notification
//! changes nothing more. Bad input on the endpoint (no or wrong token, malformed JSON, another
//! version, a huge body) gets a 4xx and changes nothing.
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
