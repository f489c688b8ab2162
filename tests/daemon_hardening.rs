//! Hardening of `herald run` and `herald check` (issue 8), end to end: the real binary, real
//! HTTP on 127.0.0.1, real SQLite files in a temporary directory.
//!
//! * Hostile rule files (the crash inputs kept in `tests/fixtures/crash/`) are located errors
//!   for `check` and refused reloads that keep the running configuration.
//! * `/-/reload` needs the token when one is configured and is rate-limited.
//! * `api.read_requires_token` protects the reading API.
//! * An empty or corrupt `state.db` is refused unless `--fresh-state`; one daemon per state.
//! * A failing save makes `/-/ready` answer 503 and counts
//!   `herald_state_write_failures_total`, until a save succeeds again.
//! * `--dry-run` keeps its own `dry-run.db`: the first live run after a rehearsal still pages
//!   (against a real Prometheus and a real webhook receiver).

#[path = "support/herald.rs"]
mod herald;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/receiver.rs"]
mod receiver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use herald::{free_port, Daemon, TOKEN};

const RULES: &str = r#"groups:
  - name: comms
    subject: [service]
    signals:
      objective: { value: 0.999 }
    rules:
      - name: AckOverdue
        when: incident.open and not incident.acknowledged and incident.age >= duration("1s")
        action: escalate
        severity: critical
        notify: [log]
"#;

/// A temporary directory with a config, its rule file, optionally the token, and the state.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    runs: usize,
}

impl Setup {
    fn new(api: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        let s = Setup { dir, port: free_port(), runs: 0 };
        s.write_config(s.port, api);
        s
    }

    fn write_config(&self, port: u16, api: &str) {
        let config = format!(
            "global:\n  evaluation_interval: 1s\n  listen: 127.0.0.1:{port}\n  state_dir: state\n{api}receivers:\n  - name: log\n    type: log\nrule_files: [rules.yaml]\n"
        );
        std::fs::write(self.path("herald.yaml"), config).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self, extra: &[&str]) -> Daemon {
        self.runs += 1;
        Daemon::spawn(&self.path("herald.yaml"), self.port, self.path(&format!("herald-{}.log", self.runs)), extra)
    }

    /// `herald run` that is expected to refuse to start: its output, bounded in time.
    fn run_refused(&self, extra: &[&str]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["run", "--config"])
            .arg(self.path("herald.yaml"))
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("herald run did not refuse to start within 20s: {:?}", child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }
}

const WITH_TOKEN: &str = "api:\n  token_file: token\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crash").join(name)
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

const CRASH_FIXTURES: [(&str, &str); 7] = [
    ("when_1000_parens.yaml", "levels of parentheses"),
    ("when_5000_parens.yaml", "bytes long"),
    ("when_1000_nots.yaml", "levels of parentheses"),
    ("when_long_chain.yaml", "levels deep"),
    ("template_loops.yaml", "too much work"),
    ("template_recursion.yaml", "recursion limit"),
    ("interval_1ms.yaml", "interval 1ms is too short: the minimum is 1s"),
];

#[test]
fn check_reports_hostile_rule_files_as_located_errors() {
    for (name, want) in CRASH_FIXTURES {
        let file = fixture(name);
        let out = Command::new(env!("CARGO_BIN_EXE_herald")).arg("check").arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: exit {:?} (a signal means a crash)\n{err}", out.status);
        let located = regex::Regex::new(&format!(r"{}:\d+:\d+: .*{}", regex::escape(&file.display().to_string()), regex::escape(want))).unwrap();
        assert!(located.is_match(&err), "{name}: expected a located {want:?}:\n{err}");
    }
}

/// Regression: `POST /-/reload` with a 1,000-parenthesis `when` aborted the daemon. Every
/// crash input is now a refused reload: 400, the error located, the old rules still running,
/// the daemon alive; a good file afterwards reloads.
#[test]
fn hostile_reloads_are_refused_and_the_running_config_stays() {
    let mut setup = Setup::new(WITH_TOKEN);
    let d = setup.start(&[]);
    for (name, want) in CRASH_FIXTURES {
        std::fs::copy(fixture(name), setup.path("rules.yaml")).unwrap();
        let r = reload(&d, Some(TOKEN));
        assert_eq!(r.status, 400, "{name}: {r:?}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains("rules.yaml:") && msg.contains(want), "{name}: {msg}");
        assert_eq!(d.get("/-/healthy").status, 200, "{name}: the daemon survived");
        assert_eq!(d.rule_names(), ["AckOverdue"], "{name}: the running rules are kept");
        assert!(has_line(&d.metrics(), "herald_config_last_reload_successful 0"));
    }
    std::fs::write(setup.path("rules.yaml"), RULES.replace("AckOverdue", "AckLate")).unwrap();
    let r = reload(&d, Some(TOKEN));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.rule_names(), ["AckLate"]);
}

/// POSTs `/-/reload`, waiting out the rate limit (`Retry-After`) when it answers 429.
fn reload(d: &Daemon, token: Option<&str>) -> herald::Resp {
    loop {
        let r = d.req("POST", "/-/reload", token, None);
        if r.status != 429 {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn reload_needs_the_token_when_one_is_configured_and_is_rate_limited() {
    let mut setup = Setup::new(WITH_TOKEN);
    let mut d = setup.start(&[]);
    let r = d.req("POST", "/-/reload", None, None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.headers.to_ascii_lowercase().contains("www-authenticate: bearer"), "{r:?}");
    assert_eq!(d.req("POST", "/-/reload", Some("wrong"), None).status, 401);
    std::fs::write(setup.path("rules.yaml"), RULES.replace("AckOverdue", "Unauthorized")).unwrap();
    assert_eq!(d.rule_names(), ["AckOverdue"], "refused reloads changed nothing");

    // A burst: one reload per second gets through, the rest are 429 with Retry-After.
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = d.req("POST", "/-/reload", Some(TOKEN), None);
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry = r.headers.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(str::to_string));
                assert_eq!(retry.as_deref(), Some("1"), "{r:?}");
                assert!(r.json()["error"].as_str().unwrap().contains("one per 1s"), "{r:?}");
            }
            s => panic!("unexpected status {s}: {r:?}"),
        }
    }
    assert!((1..=2).contains(&ok), "{ok} reloads in 1.5s");
    assert!(limited > 10, "only {limited} reloads were limited");
    let reloads = d.log().matches("configuration reloaded").count();
    assert_eq!(reloads, ok, "only admitted reloads re-read the files:\n{}", d.log());
    assert_eq!(d.rule_names(), ["Unauthorized"]);

    // SIGHUP needs no token.
    std::fs::write(setup.path("rules.yaml"), RULES.replace("AckOverdue", "ViaSighup")).unwrap();
    d.signal("-HUP");
    d.eventually("the SIGHUP reload", Duration::from_secs(10), || d.rule_names() == ["ViaSighup"]);
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));

    // Without a configured token, reload stays open (as in Prometheus).
    setup.write_config(setup.port, "");
    let d = setup.start(&[]);
    assert_eq!(reload(&d, None).status, 200);
}

#[test]
fn read_requires_token_protects_the_reading_api() {
    let mut setup = Setup::new("api:\n  token_file: token\n  read_requires_token: true\n");
    let d = setup.start(&[]);
    for path in ["/api/v1/incidents", "/api/v1/rules", "/api/v1/notifications", "/api/v1/incidents/INC-1"] {
        let r = d.get(path);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(r.headers.to_ascii_lowercase().contains("www-authenticate: bearer"), "{r:?}");
        assert_eq!(d.req("GET", path, Some("wrong"), None).status, 401, "{path}");
    }
    assert_eq!(d.req("GET", "/api/v1/incidents", Some(TOKEN), None).status, 200);
    assert_eq!(d.req("GET", "/api/v1/rules", Some(TOKEN), None).json()["groups"][0]["rules"][0]["name"], "AckOverdue");
    // Probes and scrapes stay open.
    assert_eq!(d.get("/-/ready").status, 200);
    assert_eq!(d.get("/-/healthy").status, 200);
    assert!(d.get("/metrics").body.contains("herald_build_info"));
    drop(d);

    // read_requires_token without a token to present is a located configuration error.
    std::fs::write(
        setup.path("herald.yaml"),
        format!("global: {{listen: '127.0.0.1:{}', state_dir: state}}\napi:\n  read_requires_token: true\nrule_files: [rules.yaml]\n", setup.port),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).args(["check", "--config"]).arg(setup.path("herald.yaml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(regex::Regex::new(r"herald\.yaml:3:\d+: read_requires_token needs api\.token_file").unwrap().is_match(&err), "{err}");
}

/// Regression: an emptied `state.db` re-opened incidents and paged again. Now an empty or
/// corrupt database is refused with a message naming it, until the operator restores it or
/// starts with `--fresh-state`, which moves it aside (never deletes it).
#[test]
fn an_empty_or_corrupt_state_db_is_refused_unless_fresh_state() {
    let mut setup = Setup::new(WITH_TOKEN);
    let mut d = setup.start(&[]);
    assert_eq!(d.post("/api/v1/incidents", r#"{"subject": {"service": "checkout"}, "severity": "critical"}"#).status, 201);
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));

    let db = setup.path("state/state.db");
    let saved = std::fs::read(&db).unwrap();
    assert!(!saved.is_empty());
    std::fs::write(&db, "").unwrap();
    let out = setup.run_refused(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("state database {} is empty (0 bytes)", db.display())), "{err}");
    assert!(err.contains("--fresh-state"), "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "the refused file is left as it was");

    // Corrupt: the pages of the saved file overwritten in the middle.
    let mut corrupt = saved.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..].iter_mut().for_each(|b| *b = 0x5a);
    std::fs::write(&db, &corrupt).unwrap();
    let out = setup.run_refused(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("state database {}", db.display())) && (err.contains("corrupt") || err.contains("not a readable")), "{err}");

    // Restored from the "backup": the incident is still there.
    std::fs::write(&db, &saved).unwrap();
    let mut d = setup.start(&[]);
    assert_eq!(d.get("/api/v1/incidents/INC-1").json()["open"], true);
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));

    // --fresh-state on a corrupt file: moved aside, an empty state.
    std::fs::write(&db, &corrupt).unwrap();
    let d = setup.start(&["--fresh-state"]);
    assert_eq!(d.get("/api/v1/incidents").json()["incidents"].as_array().unwrap().len(), 0);
    let aside: Vec<_> = std::fs::read_dir(setup.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("state.db.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(setup.path("state").join(&aside[0])).unwrap(), corrupt, "kept byte for byte");
    assert!(d.log().contains("--fresh-state"), "{}", d.log());
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused_naming_the_first() {
    let mut setup = Setup::new(WITH_TOKEN);
    let mut first = setup.start(&[]);
    let other_port = free_port();
    setup.write_config(other_port, WITH_TOKEN);
    let out = setup.run_refused(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("in use by another herald (pid {}", first.pid())), "{err}");
    assert!(err.contains("state.lock"), "{err}");

    // The lock dies with its holder, even on kill -9.
    first.kill9();
    setup.port = other_port;
    let second = setup.start(&[]);
    assert_eq!(second.get("/-/ready").status, 200);
    let lock = std::fs::read_to_string(setup.path("state/state.lock")).unwrap();
    assert_eq!(lock.trim(), second.pid().to_string());
}

/// A real failing save: the test holds SQLite's write lock on `state.db` (as a backup tool or
/// a stray `sqlite3` session would), so the daemon's commits fail with "database is locked"
/// after their busy timeout. Readiness drops and the failures are counted; once the lock is
/// released the next save succeeds and the daemon is ready again.
#[test]
fn failing_saves_make_the_daemon_unready_until_a_save_succeeds() {
    let mut setup = Setup::new(WITH_TOKEN);
    let d = setup.start(&[]);
    assert_eq!(metric(&d.metrics(), "herald_state_write_failures_total"), 0.0);
    assert!(d.metrics().contains("# HELP herald_state_write_failures_total "));

    let conn = rusqlite::Connection::open(setup.path("state/state.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    d.eventually("readiness to drop", Duration::from_secs(30), || d.get("/-/ready").status == 503);
    let r = d.get("/-/ready");
    assert!(r.body.contains("cannot save its state"), "{r:?}");
    assert!(metric(&d.metrics(), "herald_state_write_failures_total") >= 1.0);
    assert!(d.log().contains("database is locked"), "{}", d.log());

    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    d.eventually("readiness to come back", Duration::from_secs(30), || d.get("/-/ready").status == 200);
}

/// Regression: a dry run wrote the live `state.db`, so after a game day the real breach was
/// "already firing" and the first live run paged nobody. Now the dry run records into
/// `dry-run.db` and the live run pages.
#[test]
fn a_dry_run_keeps_its_own_state_so_the_first_live_run_still_pages() {
    let exporter = prometheus::Exporter::start();
    exporter.set("test_sli", &[("service", "checkout")], 0.9);
    exporter.set("test_affected", &[("service", "checkout")], 0.2);
    let prom = prometheus::Prometheus::start(&[exporter.addr()], Duration::from_secs(1));
    prom.wait_for("test_affected", Duration::from_secs(30));
    let rx = receiver::Receiver::start();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("rules.yaml"),
        r#"groups:
  - name: live
    subject: [service]
    signals:
      sli: { query: 'min by (service) (test_sli)' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'max by (service) (test_affected)' }
    rules:
      - name: ActivateCommsLead
        when: sli < objective and affected_ratio > 0.05
        action: activate_comms_lead
        severity: critical
        notify: [pager]
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "global: {{listen: '127.0.0.1:{port}', state_dir: state, evaluation_interval: 1s}}\n\
             prometheus: {{url: '{}', timeout: 2s}}\n\
             receivers:\n  - {{name: pager, type: webhook, url: '{}', timeout: 2s}}\n\
             notification: {{group_wait: 0s}}\n\
             rule_files: [rules.yaml]\n",
            prom.url(),
            rx.url()
        ),
    )
    .unwrap();
    let config = dir.path().join("herald.yaml");
    let recorded = |d: &Daemon, state: &str| d.get(&format!("/api/v1/notifications?state={state}")).json()["notifications"].as_array().unwrap().len();

    // The rehearsal: the page is decided and recorded as dry_run, nothing is sent.
    let mut d = Daemon::spawn(&config, port, dir.path().join("dry.log"), &["--dry-run"]);
    d.eventually("the dry-run page to be recorded", Duration::from_secs(20), || recorded(&d, "dry_run") == 1);
    assert_eq!(d.get("/api/v1/incidents?open=true").json()["incidents"][0]["id"], "INC-1");
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert!(rx.received().is_empty(), "a dry run sends nothing");
    assert!(dir.path().join("state/dry-run.db").exists());
    assert!(!dir.path().join("state/state.db").exists(), "a dry run never writes the live state");

    // The first live run pages.
    let d = Daemon::spawn(&config, port, dir.path().join("live.log"), &[]);
    let got = rx.wait_until(Duration::from_secs(20), |r| r.iter().any(|x| x.json()["rule"] == "ActivateCommsLead"));
    assert_eq!(got[0].json()["incident"]["id"], "INC-1");
    d.eventually("the page marked sent", Duration::from_secs(10), || recorded(&d, "sent") == 1);
    assert_eq!(recorded(&d, "dry_run"), 0, "the live state holds no dry-run entries");
}

/// Regression: every reload restarted the rule groups with an immediate evaluation, so 5,000
/// reloads in 10s multiplied Prometheus queries 150×. Restarted groups keep their schedule.
#[test]
fn reloads_keep_the_evaluation_schedule() {
    let mut setup = Setup::new(WITH_TOKEN);
    std::fs::write(setup.path("rules.yaml"), RULES.replace("    subject: [service]\n", "    interval: 8s\n    subject: [service]\n")).unwrap();
    let d = setup.start(&[]);
    let evaluations = || metric(&d.metrics(), r#"herald_rule_evaluations_total{group="comms"}"#);
    d.eventually("the first evaluation", Duration::from_secs(10), || evaluations() == 1.0);
    let first = Instant::now();
    for _ in 0..3 {
        assert_eq!(reload(&d, Some(TOKEN)).status, 200);
    }
    assert!(d.log().matches("restarting rule groups").count() >= 2, "{}", d.log());
    // Groups evaluate at aligned ticks 8s apart (the first tick at or before the start), so in
    // less than 8s at most one more tick can pass; the old bug evaluated once per reload.
    if first.elapsed() < Duration::from_secs(7) {
        assert!(evaluations() <= 2.0, "reloads evaluated the group again:\n{}", d.log());
    }
    // The schedule goes on: the next evaluations come one interval apart, whatever the reloads.
    d.eventually("the second evaluation", Duration::from_secs(15), || evaluations() >= 2.0);
    let second = Instant::now();
    d.eventually("the third evaluation", Duration::from_secs(15), || evaluations() >= 3.0);
    let gap = second.elapsed();
    assert!(gap > Duration::from_secs(5), "third evaluation {gap:?} after the second");
}
