use super::*;

fn scope() -> Scope {
    Scope { signals: vec!["sli".into(), "objective".into(), "tickets".into()], subject_labels: vec!["service".into()] }
}

fn eval_with(src: &str, signals: &[Option<f64>], incident: &IncidentView<'_>) -> Truth {
    let e = compile(src, &scope()).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    e.truth(&Ctx { signals, subject: &["checkout"], incident, now: 1000.0 })
}

fn t(src: &str, signals: &[Option<f64>]) -> Truth {
    eval_with(src, signals, &IncidentView::NONE)
}

#[test]
fn comparisons_and_logic() {
    let s = [Some(0.97), Some(0.999), Some(12.0)];
    assert_eq!(t("sli < objective", &s), Truth::True);
    assert_eq!(t("sli >= objective", &s), Truth::False);
    assert_eq!(t("tickets > 3 * 2 and tickets >= 5", &s), Truth::True);
    assert_eq!(t("not (sli < objective)", &s), Truth::False);
    assert_eq!(t("subject.service == 'checkout'", &s), Truth::True);
    assert_eq!(t("subject['service'] in ['a', 'checkout']", &s), Truth::True);
    assert_eq!(t("subject.service not in ['a', 'b']", &s), Truth::True);
    assert_eq!(t("tickets // 5 == 2 and tickets % 5 == 2 and 2 ** 3 == 8", &s), Truth::True);
    assert_eq!(t("(1 if sli < objective else 0) == 1", &s), Truth::True);
    assert_eq!(t("now == 1000 and duration('1h30m') == 5400", &s), Truth::True);
    assert_eq!(t("-sli < 0", &s), Truth::True);
}

#[test]
fn missing_signals_are_unknown_with_kleene_logic() {
    let s = [None, Some(0.999), Some(12.0)];
    assert_eq!(t("sli < objective", &s), Truth::Unknown);
    assert_eq!(t("sli < objective and tickets > 100", &s), Truth::False, "false and unknown = false");
    assert_eq!(t("tickets > 100 and sli < objective", &s), Truth::False, "order does not matter");
    assert_eq!(t("sli < objective or tickets > 1", &s), Truth::True, "unknown or true = true");
    assert_eq!(t("sli < objective or tickets > 100", &s), Truth::Unknown);
    assert_eq!(t("not sli", &s), Truth::Unknown);
    assert_eq!(t("sli is defined", &s), Truth::False);
    assert_eq!(t("sli is not defined", &s), Truth::True);
    assert_eq!(t("sli is undefined", &s), Truth::True);
    assert_eq!(t("sli is defined and sli < objective", &s), Truth::False, "guarded rules decide as written");
    assert_eq!(t("sli in [1, 2]", &s), Truth::Unknown);
    assert_eq!(t("(1 if sli < 1 else 2) == 1", &s), Truth::Unknown);
}

#[test]
fn incident_fields_and_type_errors() {
    let inc = IncidentView { open: true, age: Some(900.0), severity: Some("critical"), public_updates: Some(0.0), ..IncidentView::NONE };
    let s = [Some(1.0), Some(0.999), None];
    assert_eq!(eval_with("incident.open and incident.age >= duration('15m')", &s, &inc), Truth::True);
    assert_eq!(eval_with("incident.age > duration('15m')", &s, &inc), Truth::False);
    assert_eq!(eval_with("incident.severity == 'critical' and incident.public_updates == 0", &s, &inc), Truth::True);
    // No incident: fields are none; a guarded rule is false, an unguarded comparison unknown.
    assert_eq!(t("incident.open and incident.age >= 60", &s), Truth::False);
    assert_eq!(t("incident.age >= 60", &s), Truth::Unknown);
    assert_eq!(t("incident.id is none", &s), Truth::True);
    // Division by zero is unknown, not +Inf.
    assert_eq!(t("sli / 0 > 1", &s), Truth::Unknown);
}

#[test]
fn nan_is_falsy_but_defined() {
    let s = [Some(f64::NAN), Some(0.999), None];
    assert_eq!(t("sli < objective", &s), Truth::False);
    assert_eq!(t("sli is defined", &s), Truth::True);
}

#[test]
fn compile_errors_name_the_problem_and_offset() {
    let err = |src: &str| compile(src, &scope()).unwrap_err();
    let e = err("sli < objectiv");
    assert_eq!(e.offset, 6);
    assert!(e.message.starts_with("unknown signal or variable `objectiv`"), "{}", e.message);
    let e = err("sli < objective and");
    assert_eq!(e.offset, 19);
    assert!(e.message.contains("expected a value"), "{}", e.message);
    assert!(err("incident.sevrity == 'x'").message.contains("unknown incident field `sevrity`"));
    assert!(err("subject.team == 'x'").message.contains("not a subject label"));
    assert!(err("duration('5M') > 1").message.contains("invalid duration"));
    assert!(err("sli && objective").message.contains("use `and`"));
    assert!(err("{{ sli }}").message.contains("without {{ }}"));
    assert!(err("sli | abs > 1").message.contains("filters"));
    assert!(err("sli = 1").message.contains("=="));
    assert!(err("sli is odd").message.contains("unknown test `odd`"));
    assert!(err("max(sli, 1)").message.contains("unknown function `max`"));
    assert!(err("'abc").message.contains("unterminated string"));
    assert!(err("").message.contains("empty"));
    assert!(err("(sli < 1").message.contains("expected `)`"));
}

#[test]
fn signals_lists_the_slots_read() {
    let e = compile("tickets > 3 and sli < objective or sli is defined", &scope()).unwrap();
    assert_eq!(e.signals(), vec![0, 1, 2]);
}

/// Our evaluator must agree with minijinja on every expression where all values are defined:
/// rule authors are promised minijinja's expression language.
#[test]
fn agrees_with_minijinja_when_everything_is_defined() {
    let env = minijinja::Environment::new();
    let exprs = [
        "sli < objective",
        "sli < objective and tickets > 5",
        "sli >= objective or tickets > 3 * 4",
        "not sli < objective",
        "tickets // 5 == 2",
        "tickets % 5 == 2",
        "2 ** 3 == 8",
        "-sli < 0",
        "tickets - 2 * 3 > 5",
        "(tickets - 2) * 3 > 5",
        "1 if sli < objective else 0",
        "subject.service == 'checkout'",
        "subject.service in ['a', 'checkout']",
        "'check' in subject.service",
        "subject.service not in ['checkout']",
        "sli is defined and tickets is not none",
        "tickets / 4 > 2.9",
        "not not tickets",
        "sli < objective < 2",
    ];
    let mj_ctx = minijinja::context! { sli => 0.97, objective => 0.999, tickets => 12.0, subject => minijinja::context!{ service => "checkout" } };
    for src in exprs {
        let mj = env.compile_expression(src).unwrap().eval(&mj_ctx).unwrap().is_true();
        let ours = t(src, &[Some(0.97), Some(0.999), Some(12.0)]);
        assert_eq!(ours, Truth::from(mj), "{src}");
    }
}

/// Regression: 1,000 nested parentheses overflowed the stack of the reload thread and aborted
/// the daemon; 5,000 aborted `herald check`. Every way of nesting deeply is a located error,
/// checked on a thread with half the stack of tokio's blocking threads (2 MiB), in a debug
/// build (whose frames are several times larger than a release build's).
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let parens = "levels of parentheses";
    let deep = "levels deep";
    let inputs: Vec<(String, &str)> = vec![
        (format!("{}sli{}", "(".repeat(1000), ")".repeat(1000)), parens),
        (format!("{}sli{}", "(".repeat(5000), ")".repeat(5000)), "bytes long"),
        (format!("{}sli", "not ".repeat(1000)), parens),
        (format!("{}sli", "-".repeat(1000)), parens),
        (format!("{}sli{}", "[".repeat(1000), "]".repeat(1000)), parens),
        (format!("{}sli{}", "duration(".repeat(300), ")".repeat(300)), parens),
        (format!("{}1", "1 if sli else ".repeat(200)), parens),
        (format!("sli{}", " + sli".repeat(600)), deep),
        (format!("sli{}", " < sli".repeat(600)), deep),
        (format!("sli > 0{}", " and sli > 0".repeat(300)), deep),
        (format!("subject{}", ".service".repeat(300)), deep),
        ("x".repeat(MAX_LEN + 1), "bytes long"),
    ];
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            for (src, want) in inputs {
                let e = compile(&src, &scope()).err().unwrap_or_else(|| panic!("accepted {}…", &src[..40]));
                assert!(e.message.contains(want), "{}…: {e:?}", &src[..40]);
                assert!(e.offset <= src.len());
            }
            // Right at the limits: accepted, and evaluated without trouble.
            let ctx = Ctx { signals: &[Some(0.5), Some(0.9), Some(1.0)], subject: &["checkout"], incident: &IncidentView::NONE, now: 0.0 };
            let src = format!("{}sli{} < objective", "(".repeat(MAX_NESTING - 1), ")".repeat(MAX_NESTING - 1));
            assert_eq!(compile(&src, &scope()).unwrap().truth(&ctx), Truth::True);
            let src = format!("sli{} > 0", " + sli".repeat(MAX_DEPTH - 3));
            assert_eq!(compile(&src, &scope()).unwrap().truth(&ctx), Truth::True);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn requires_open_incident_only_where_no_incident_makes_it_false() {
    let req = |src: &str| compile(src, &scope()).unwrap().requires_open_incident();
    assert!(req("incident.open"));
    assert!(req("incident.open and sli < objective"));
    assert!(req("sli < objective and (tickets > 3 and incident.open)"));
    assert!(!req("incident.open or sli < objective"));
    assert!(!req("not incident.open"));
    assert!(!req("incident.resolved and sli < objective"));
    assert!(!req("(incident.open and sli < 1) or tickets > 3"));
    // The claim the engine relies on: without an open incident such a condition is false,
    // whatever the signals (absent, NaN-free values, division by zero).
    for src in ["incident.open and sli < objective", "sli / 0 > 1 and incident.open", "tickets > 3 and incident.open and sli is defined"] {
        assert!(req(src));
        for s in [[None, None, None], [Some(0.5), Some(0.999), Some(12.0)], [Some(1.0), None, Some(0.0)]] {
            assert_eq!(t(src, &s), Truth::False, "{src} with {s:?}");
        }
    }
    let labels = |src: &str| compile(src, &scope()).unwrap().reads_subject_labels();
    assert!(labels("sli < 1 or subject.service == 'checkout'"));
    assert!(!labels("sli < objective and incident.open"));
}
