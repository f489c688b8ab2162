//! `herald test`: the shipped rule tests pass, and a wrong expectation fails readably.

use std::process::Command;

fn herald() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn the_rule_pack_tests_pass() {
    let files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rules"))
        .unwrap()
        .map(|e| format!("tests/rules/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert!(files.len() >= 8, "rule test files: {files:?}");
    let out = herald().arg("test").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.trim_end().ends_with(" passed, 0 failed"), "{stdout}");
    // Every rule of the pack is exercised by at least one expectation.
    let all: String = files.iter().map(|f| std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + f).unwrap()).collect();
    for rule in [
        "ActivateCommsLead", "PreparePublicUpdate", "EngageLegal", "InternalUpdatesOnly", "EscalateCadence", "UpdateDue",
        "StatusPageStale", "SupportTicketSpike", "AckOverdue", "LegalReviewOverdue", "PostResolutionComms", "TelemetryGap",
    ] {
        assert!(all.contains(&format!("rule: {rule}")), "no test expects {rule}");
    }
}

fn write_test(dir: &std::path::Path, expect: &str) -> std::path::PathBuf {
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/comms-lead.yaml");
    let body = format!(
        "rule_files: [{rules}]\nevaluation_interval: 1m\ntests:\n  - name: breach\n    input:\n      - subject: {{service: checkout}}\n        signals:\n          sli: \"0.97x20\"\n          affected_ratio: \"0.08x20\"\n    expect:\n{expect}"
    );
    let p = dir.join("t.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_test(dir.path(), "      - at: 4m\n        firing: [{rule: ActivateCommsLead}]\n      - at: 6m\n        firing: []\n");
    let out = herald().arg("test").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = r#"  FAIL  breach
        at 4m:
            expected firing:
              ActivateCommsLead{service="checkout"}
            got firing:
              (none)
            missing (expected to fire, did not):
              ActivateCommsLead{service="checkout"}
            rule states:
              ActivateCommsLead{service="checkout"}: pending since 0s (`for: 5m` needs it true until 5m, 1m more)
        at 6m:
            expected firing:
              (none)
            got firing:
              ActivateCommsLead{service="checkout"}
            unexpected (fired, should not):
              ActivateCommsLead{service="checkout"}
            rule states:
              ActivateCommsLead{service="checkout"}: firing since 5m (pending since 0s)
0 passed, 1 failed
"#;
    assert!(stdout.ends_with(expected), "{stdout}");
}

#[test]
fn invalid_test_files_get_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_test(dir.path(), "      - at: 4x\n        firing: [{rule: NoSuchRule}]\n");
    let out = herald().arg("test").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("t.yaml:11:13: invalid duration \"4x\""), "{stderr}");
    assert!(stderr.contains("t.yaml:12:25: unknown rule \"NoSuchRule\""), "{stderr}");
}

#[test]
fn a_missing_test_file_is_unreadable_input() {
    let out = herald().args(["test", "no/such/test.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_filters_tests_by_name() {
    let out = herald().args(["test", "--run", "spec example", "tests/rules/activate.yaml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.ends_with("1 passed, 0 failed\n"), "{stdout}");
}

/// Regression fixtures: `evaluation_interval: 0s` panicked, `at: 292y` allocated gigabytes.
/// Both are refused with located errors, as are intervals under 1s and bad events.
#[test]
fn out_of_bounds_test_files_are_refused_with_located_errors() {
    let run = |f: &str| {
        let out = herald().args(["test", f]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run("tests/fixtures/test-files/zero-interval.yaml");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("zero-interval.yaml:3:22: evaluation_interval must be at least 1s, not \"0s\""), "{err}");
    assert!(err.contains("zero-interval.yaml:6:15: interval must be at least 1s, not \"500ms\""), "{err}");
    let (code, err) = run("tests/fixtures/test-files/far-at.yaml");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("far-at.yaml:10:18: at 200y is beyond the end of the input series (10m plus one interval)"), "{err}");
    assert!(err.contains("far-at.yaml:12:13: at 292y is beyond the end"), "{err}");
    assert!(!err.contains("11m"), "11m is within the series plus one interval: {err}");
    let (code, err) = run("tests/fixtures/test-files/bad-events.yaml");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad-events.yaml:10:42: ack takes no `channel`"), "{err}");
    assert!(err.contains("bad-events.yaml:11:52: unknown channel \"fax\""), "{err}");
    assert!(err.contains("bad-events.yaml:12:28: status needs `value`"), "{err}");
    assert!(err.contains("bad-events.yaml:16:54: `annotations` can only be expected of instances that fire"), "{err}");
}

#[test]
fn annotations_are_matched_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let good = "checkout is failing for 8% of customers: appoint a communications lead now";
    let p = write_test(dir.path(), &format!("      - at: 6m\n        includes:\n          - rule: ActivateCommsLead\n            annotations:\n              summary: \"{good}\"\n              description: \"SLI 97% is below its 99.9% objective and 8% of active customers are affected (threshold: 5%). Incident INC-1 is open.\"\n"));
    let out = herald().arg("test").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A missing key fails: the match is exact, as promtool's exp_annotations.
    let p = write_test(dir.path(), &format!("      - at: 6m\n        includes:\n          - rule: ActivateCommsLead\n            annotations:\n              summary: \"{good}\"\n"));
    let out = herald().arg("test").arg(&p).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("annotations of ActivateCommsLead{service=\"checkout\"}:") && stdout.contains("\"description\": \"SLI 97%"), "{stdout}");
}

#[test]
fn explain_shows_signals_clauses_and_for_progress() {
    let out = herald().args(["test", "--run", "spec example", "--explain", "ActivateCommsLead", "tests/rules/activate.yaml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let at = |t: &str| {
        let start = stdout.find(&format!("ActivateCommsLead {{service=\"checkout\"}} at {t}:")).unwrap_or_else(|| panic!("no evaluation at {t}: {stdout}"));
        let rest = &stdout[start..];
        rest[..rest[1..].find("ActivateCommsLead {").map_or(rest.len(), |i| i + 1)].to_string()
    };
    let pending = at("7m");
    assert!(pending.contains("at 7m: pending"), "{pending}");
    assert!(pending.contains("signal sli = 0.97"), "{pending}");
    assert!(pending.contains("when true    sli < objective and affected_ratio > 0.05"), "{pending}");
    assert!(pending.contains("- true    affected_ratio > 0.05"), "{pending}");
    assert!(pending.contains("for: 2m of 5m: fires at the first evaluation at or after 10m"), "{pending}");
    assert!(at("9m30s").contains("at 9m30s: pending"), "{stdout}");
    assert!(at("10m").contains("at 10m: firing"), "{stdout}");
    // An unknown rule is refused.
    let out = herald().args(["test", "--explain", "NoSuchRule", "tests/rules/activate.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--explain: no rule named \"NoSuchRule\""));
}

#[test]
fn a_run_filter_that_matches_no_test_fails() {
    let out = herald().args(["test", "--run", "no such test", "tests/rules/activate.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--run \"no such test\" matches no test"), "{err}");
}

#[test]
fn schema_errors_in_a_test_file_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.yaml");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/comms-lead.yaml");
    std::fs::write(
        &p,
        format!(
            "rule_files: [{}]\nevaluation_intervl: 1m\ntests:\n  - name: a\n    interval: [1m]\n    expect:\n      - at: 1m\n        firing: [{{rule: X, subjet: {{}}}}]\n",
            rules.display()
        ),
    )
    .unwrap();
    let out = herald().arg("test").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = p.display().to_string();
    assert!(err.contains(&format!("{shown}:2:1: unknown field `evaluation_intervl`, did you mean `evaluation_interval`?")), "{err}");
    assert!(err.contains(&format!("{shown}:5:15: expected a string, found a list")), "{err}");
    assert!(err.contains(&format!("{shown}:8:28: unknown field `subjet`, did you mean `subject`?")), "{err}");
    assert!(err.contains(&format!("{shown}:8:25: unknown rule \"X\"")), "{err}");
}
