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
