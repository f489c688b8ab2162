//! Engine scenarios over small rule sets. The full default pack is covered by `herald test`
//! files under `tests/rules/`.

use super::*;
use crate::config::{parse_rule_sources, RuleSet};

const MIN: Ts = 60_000;

fn rules(yaml: &str) -> RuleSet {
    parse_rule_sources(&[("t.yaml".into(), yaml.into())]).unwrap_or_else(|d| panic!("{d}")).0
}

const PACK: &str = r#"
groups:
  - name: g
    interval: 1m
    subject: [service]
    signals:
      sli: { query: 'sli' }
      objective: { value: 0.999 }
      affected_ratio: { query: 'affected' }
      security: { query: 'sec' }
    rules:
      - name: Activate
        when: sli < objective and affected_ratio > 0.05
        for: 2m
        resolve_after: 3m
        action: activate_comms_lead
        severity: critical
        annotations:
          summary: "{{ subject.service }}: SLI {{ sli | percent }} below {{ objective | percent }}"
      - name: Update
        when: incident.open and incident.public_updates == 0 and incident.age >= duration("5m")
        action: suggest_update
      - name: Legal
        when: (security is defined and security > 0) or (incident.open and incident.security)
        action: engage_legal
        severity: critical
"#;

fn input(set: &RuleSet, sli: Option<f64>, affected: Option<f64>) -> GroupInput {
    let g = &set.groups[0];
    let mut inp = GroupInput::new(g);
    let subj = Subject::new([("service", "checkout")]);
    let series = |v: Option<f64>| match v {
        Some(v) => SlotValues::Series(HashMap::from([(subj.clone(), v)])),
        None => SlotValues::Unavailable("down".into()),
    };
    inp.slots[g.slot("sli").unwrap()] = series(sli);
    inp.slots[g.slot("affected_ratio").unwrap()] = series(affected);
    inp.slots[g.slot("security").unwrap()] = SlotValues::Series(HashMap::new());
    inp
}

#[test]
fn breach_opens_one_incident_and_resolves_after_clearing() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let subj = Subject::new([("service", "checkout")]);
    let mut opened = Vec::new();
    let mut resolved = Vec::new();
    let mut decisions = Vec::new();
    // t0..t9 breach, t10.. healthy.
    for t in 0..20 {
        let (sli, aff) = if t < 10 { (0.97, 0.08) } else { (0.9995, 0.0) };
        let out = engine.evaluate_group(g, &input(&set, Some(sli), Some(aff)), &mut st, t * MIN);
        for c in out.incidents {
            match c.kind {
                ChangeKind::Opened => opened.push((t, c.incident.id)),
                ChangeKind::Resolved => resolved.push((t, c.incident.id)),
                ChangeKind::Updated => {}
            }
        }
        decisions.extend(out.decisions.into_iter().map(|d| (t, d)));
    }
    assert_eq!(opened, vec![(2, "INC-1".to_string())], "opens once, on the evaluation `for` is met");
    // Activate clears at t10; resolve_after 3m → resolves at t13.
    assert_eq!(resolved, vec![(13, "INC-1".to_string())]);
    let first = &decisions[0].1;
    assert_eq!((decisions[0].0, first.rule.as_str(), first.status), (2, "Activate", DecisionStatus::Firing));
    assert_eq!(first.annotations["summary"], "checkout: SLI 97% below 99.9%");
    assert_eq!(first.incident.as_ref().unwrap().id, "INC-1");
    assert_eq!(first.values["sli"], 0.97);
    // Update fires 5m after opening (t7) because no public update was made.
    assert!(decisions.iter().any(|(t, d)| *t == 7 && d.rule == "Update" && d.status == DecisionStatus::Firing));
    assert!(st.incidents[&subj].resolved_at.is_some());
}

#[test]
fn telemetry_outage_neither_resolves_nor_reopens() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    for t in 0..3 {
        engine.evaluate_group(g, &input(&set, Some(0.97), Some(0.08)), &mut st, t * MIN);
    }
    assert_eq!(st.firing(), vec![("Activate", &Subject::new([("service", "checkout")]))]);
    // Prometheus down for an hour: nothing changes.
    for t in 3..63 {
        let out = engine.evaluate_group(g, &input(&set, None, None), &mut st, t * MIN);
        assert!(out.transitions.iter().all(|tr| tr.rule != "Activate"), "t={t}: {:?}", out.transitions);
        assert!(out.incidents.iter().all(|c| c.kind != ChangeKind::Resolved));
    }
    assert!(st.incidents.values().all(|i| i.is_open()));
    assert_eq!(st.next_incident_seq, 1);
}

#[test]
fn security_signal_engages_legal_and_holds() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let subj = Subject::new([("service", "checkout")]);
    let mut inp = input(&set, Some(1.0), Some(0.0));
    inp.slots[g.slot("security").unwrap()] = SlotValues::Series(HashMap::from([(subj.clone(), 1.0)]));
    let out = engine.evaluate_group(g, &inp, &mut st, 0);
    assert_eq!(out.incidents.len(), 1);
    assert_eq!(out.incidents[0].kind, ChangeKind::Opened);
    let inc = &st.incidents[&subj];
    assert!(inc.security && inc.legal_hold && inc.legal_pending);
    assert_eq!(inc.activating_rule.as_deref(), Some("Legal"));
    // Approval clears the hold but keeps the security flag.
    st.apply_event(&subj, &Event::LegalApproved, MIN).unwrap();
    assert!(!st.incidents[&subj].legal_hold);
}

#[test]
fn declared_incidents_resolve_only_by_hand() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let subj = Subject::new([("service", "checkout")]);
    st.apply_event(&subj, &Event::Declare { severity: Severity::Warning, security: false }, 0).unwrap();
    assert!(matches!(
        st.apply_event(&subj, &Event::Declare { severity: Severity::Warning, security: false }, 1),
        Err(ApplyError::AlreadyOpen { .. })
    ));
    for t in 0..120 {
        engine.evaluate_group(g, &input(&set, Some(1.0), Some(0.0)), &mut st, t * MIN);
    }
    assert!(st.incidents[&subj].is_open());
    // A breach during a declared incident does not open a second one.
    for t in 120..125 {
        engine.evaluate_group(g, &input(&set, Some(0.9), Some(0.5)), &mut st, t * MIN);
    }
    assert_eq!(st.next_incident_seq, 1);
    let (c, _) = st.apply_event(&subj, &Event::Resolve, 125 * MIN).unwrap();
    assert_eq!(c.kind, ChangeKind::Resolved);
}

#[test]
fn evaluation_is_deterministic() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let run = || {
        let mut st = State::default();
        let mut all = Vec::new();
        for t in 0..30 {
            let mut inp = GroupInput::new(g);
            let m: HashMap<Subject, f64> = (0..50).map(|i| (Subject::new([("service", format!("s{i}"))]), if (t + i) % 7 < 4 { 0.9 } else { 1.0 })).collect();
            inp.slots[g.slot("sli").unwrap()] = SlotValues::Series(m.clone());
            inp.slots[g.slot("affected_ratio").unwrap()] = SlotValues::Series(m.into_iter().map(|(k, v)| (k, 1.0 - v)).collect());
            all.push(engine.evaluate_group(g, &inp, &mut st, t * MIN));
        }
        (all, st)
    };
    assert_eq!(run(), run());
}
