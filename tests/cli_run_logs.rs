//! `herald run` logging through the real binary: `--log.format=logfmt|json`, `--log.level`,
//! `RUST_LOG` overriding the level, and one line per event even for a multi-line error (a
//! refused reload's diagnostics).

#[path = "support/herald.rs"]
mod herald;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::{free_port, try_request, TOKEN};

struct Run {
    port: u16,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(what) {
            assert!(Instant::now() < deadline, "no {what:?} in the log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const RULES: &str = "groups:\n  - name: comms\n    subject: [service]\n    signals:\n      objective: { value: 0.999 }\n    rules:\n      - {name: R, when: 'objective < 0', action: notify, notify: [log]}\n";

/// Starts herald with `args`, waits until ready, then breaks the rule file (two errors) and
/// sends SIGHUP, and waits until the refused reload is logged.
fn run_and_refuse_a_reload(dir: &Path, args: &[&str], rust_log: Option<&str>) -> Run {
    let run = start(dir, RULES, args, rust_log);
    std::fs::write(dir.join("rules.yaml"), RULES.replace("action: notify", "action: page").replace("objective < 0", "objectiv < 0")).unwrap();
    assert!(Command::new("kill").args(["-HUP", &run.child.id().to_string()]).status().unwrap().success());
    run.wait_for("reload refused");
    run
}

/// Starts herald on `rules` with `args` and waits until it is ready.
fn start(dir: &Path, rules: &str, args: &[&str], rust_log: Option<&str>) -> Run {
    let port = free_port();
    std::fs::write(
        dir.join("herald.yaml"),
        format!("global:\n  evaluation_interval: 1s\n  listen: 127.0.0.1:{port}\n  state_dir: state\napi:\n  token_file: token\nreceivers:\n  - {{name: log, type: log}}\nrule_files: [rules.yaml]\n"),
    )
    .unwrap();
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let log = dir.join(format!("herald-{}.log", args.join("_").replace(['/', '='], "-")));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["run", "--config"]).arg(dir.join("herald.yaml")).args(args).env_remove("RUST_LOG");
    if let Some(v) = rust_log {
        cmd.env("RUST_LOG", v);
    }
    let child = cmd.stdout(Stdio::from(out.try_clone().unwrap())).stderr(Stdio::from(out)).spawn().unwrap();
    let run = Run { port, child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_request(port, "GET", "/-/ready", None, None).map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "not ready:\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    run
}

/// The log lines of events (stdout's one start-up banner aside).
fn event_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| !l.starts_with("herald ") || l.starts_with("herald {")).collect()
}

#[test]
fn logfmt_is_the_default_and_every_event_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_and_refuse_a_reload(dir.path(), &[], None);
    let log = run.log();
    let lines = event_lines(&log);
    assert!(lines.len() >= 3, "{log}");
    for l in &lines {
        assert!(l.starts_with("ts=") && l.contains(" level=") && l.contains(" msg="), "not a logfmt line: {l:?}\n{log}");
    }
    let refused = lines.iter().find(|l| l.contains("reload refused")).unwrap();
    assert!(refused.starts_with("ts=") && refused.contains(" level=error "), "{refused}");
    // Both errors of the refused file are on the one line, the line break escaped.
    assert!(refused.contains("unknown signal or variable `objectiv`") && refused.contains("unknown action \\\"page\\\""), "{refused}");
    assert!(refused.contains("\\n"), "{refused}");
    assert!(lines.iter().any(|l| l.contains("level=info") && l.contains("msg=\"state loaded\"")), "{log}");
}

#[test]
fn json_lines_and_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_and_refuse_a_reload(dir.path(), &["--log.format=json", "--log.level=warn"], None);
    let log = run.log();
    let lines = event_lines(&log);
    assert!(!lines.is_empty(), "{log}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{log}"));
        let level = v["level"].as_str().unwrap_or_default();
        assert!(level == "WARN" || level == "ERROR", "--log.level=warn let through {l}");
    }
    let refused = lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["message"] == "reload refused; keeping the running configuration");
    let refused = refused.unwrap_or_else(|| panic!("{log}"));
    assert!(refused["error"].as_str().unwrap().contains("unknown action \"page\""), "{refused}");
}

#[test]
fn rust_log_overrides_the_level() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_and_refuse_a_reload(dir.path(), &["--log.level=error"], Some("info"));
    assert!(run.log().contains("msg=\"state loaded\""), "{}", run.log());
}

#[test]
fn a_dry_run_logs_the_rendered_title_and_text_of_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RULES.replace(
        "{name: R, when: 'objective < 0', action: notify, notify: [log]}",
        "{name: IncidentOpen, when: 'incident.open', action: notify, notify: [log], annotations: {summary: 'objective is {{ objective | percent }}'}}",
    );
    let run = start(dir.path(), &rules, &["--dry-run"], None);
    let declare = r#"{"subject": {"service": "checkout"}, "severity": "critical"}"#;
    assert_eq!(try_request(run.port, "POST", "/api/v1/incidents", Some(TOKEN), Some(declare)).unwrap().status, 201);
    run.wait_for("dry run: recorded instead of sending");
    let log = run.log();
    let line = log.lines().find(|l| l.contains("dry run: recorded")).unwrap();
    assert!(line.contains("receiver=log") && line.contains("title=") && line.contains("IncidentOpen"), "{line}");
    assert!(line.contains("objective is 99.9%"), "the rendered text is logged: {line}");
}
