//! `herald check` on broken inputs: the real binary, every message snapshotted.
//!
//! Each `tests/fixtures/check/*.yaml` is checked (as a rule file, or with `--config` for
//! `herald.yaml`); stderr and the exit code must equal `<name>.expected`. After an intended
//! change of messages, regenerate with `HERALD_BLESS=1 cargo test --test cli_check` and review
//! the diff.

use std::path::Path;
use std::process::Command;

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env_remove("HERALD_FIXTURE_UNSET_KEY");
    c
}

fn snapshot(name: &str, args: &[&str]) {
    let out = herald().args(args).output().unwrap();
    let got = format!("{}exit {}\n", String::from_utf8_lossy(&out.stderr), out.status.code().unwrap());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check").join(format!("{name}.expected"));
    if std::env::var_os("HERALD_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run with HERALD_BLESS=1", path.display()));
    assert_eq!(got, want, "\n--- expected ({})\n{want}\n--- got\n{got}", path.display());
}

macro_rules! fixture {
    ($name:ident) => {
        #[test]
        fn $name() {
            let file = format!("tests/fixtures/check/{}.yaml", stringify!($name));
            snapshot(stringify!($name), &["check", &file]);
        }
    };
}

fixture!(malformed);
fixture!(unknown_key);
fixture!(duplicate_key);
fixture!(wrong_type);
fixture!(many_errors);
fixture!(every_mistake);
fixture!(promql_columns);

/// Schema errors (unknown keys, wrong types, missing fields) and semantic errors are reported
/// together, each at its own place: at least seven independent mistakes of different kinds.
#[test]
fn every_mistake_is_reported_in_one_run() {
    let out = herald().args(["check", "tests/fixtures/check/every_mistake.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let at = |loc: &str, text: &str| {
        let line = err.lines().find(|l| l.starts_with(&format!("tests/fixtures/check/every_mistake.yaml:{loc}: ")));
        assert!(line.is_some_and(|l| l.contains(text)), "no {text:?} at {loc} in:\n{err}");
    };
    at("4:15", "invalid duration \"30 seconds\"");
    at("7:39", "unclosed left parenthesis");
    at("8:27", "expected a number, found the string \"high\"");
    at("9:17", "unknown field `qurey`, did you mean `query`?");
    at("12:21", "unknown signal or variable `objectiv`");
    at("14:9", "unknown field `keep_firing_fro`, did you mean `keep_firing_for`?");
    at("15:17", "unknown action \"page_everyone\"");
    at("16:17", "expected a list, found the string \"pager\"");
    at("17:9", "missing field `when`");
    at("22:17", "expected a mapping, found a list");
    at("24:20", "`subjct` is undefined");
    at("26:5", "unknown field `colour`, expected one of name, interval, subject, signals, rules");
    // A pruned value does not also produce "needs exactly one of" for its signal.
    assert!(!err.contains("needs exactly one of"), "{err}");
}

#[test]
fn config_errors_are_all_reported_with_locations() {
    snapshot("herald", &["check", "--config", "tests/fixtures/check/herald.yaml"]);
}

#[test]
fn the_default_pack_is_valid() {
    let out = herald().args(["check", "rules/comms-lead.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "rules/comms-lead.yaml: OK: 1 groups, 12 rules\n");
}

#[test]
fn the_example_config_is_valid() {
    let out = herald().args(["check", "--config", "examples/herald.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_missing_file_is_unreadable_input() {
    let out = herald().args(["check", "no/such/file.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("no/such/file.yaml:1:1: cannot read rule file:"), "{err}");
}

#[test]
fn no_arguments_is_bad_usage() {
    let out = herald().arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn interpolated_variables_are_read_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("r.yaml");
    std::fs::write(&rules, "groups:\n  - name: g\n    rules:\n      - {name: R, when: 'now > 0', action: notify, notify: [hook]}\n").unwrap();
    let cfg = dir.path().join("herald.yaml");
    std::fs::write(&cfg, "receivers:\n  - name: hook\n    type: webhook\n    url: ${HOOK_URL}\n    secret: ${HOOK_SECRET}\nrule_files: [r.yaml]\n").unwrap();
    let run = |envs: &[(&str, &str)]| {
        let mut c = herald();
        c.args(["check", "--config", cfg.to_str().unwrap()]).env_remove("HOOK_URL").env_remove("HOOK_SECRET");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("herald.yaml:4:10: environment variable HOOK_URL is not set"), "{err}");
    assert!(err.contains("herald.yaml:5:13: environment variable HOOK_SECRET is not set"), "{err}");
    let out = run(&[("HOOK_URL", "http://127.0.0.1:1/hook"), ("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_webhook_url_written_in_the_file_is_warned_about_like_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), "groups:\n  - name: g\n    rules:\n      - {name: R, when: 'now > 0', action: notify, notify: [hook, chat]}\n").unwrap();
    std::fs::write(dir.path().join("chat.url"), "https://hooks.slack.example/T000/B000/XXXX\n").unwrap();
    let cfg = dir.path().join("herald.yaml");
    std::fs::write(
        &cfg,
        "receivers:\n  - name: hook\n    type: webhook\n    url: https://hooks.example/abc123\n    secret_file: chat.url\n  - name: chat\n    type: slack\n    url_file: chat.url\nrule_files: [r.yaml]\n",
    )
    .unwrap();
    let out = herald().args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("herald.yaml:4:10: warning: url is written in the file; a webhook URL is a secret"), "{err}");
    assert_eq!(err.matches("warning: url is written").count(), 1, "url_file is not warned about: {err}");
}

#[test]
fn an_empty_or_comment_only_file_is_reported_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.yaml", ""), ("comments.yaml", "# nothing yet\n")] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = herald().arg("check").arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).starts_with(&format!("{}:1:1: file is empty\n", p.display())), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
