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
        Some(v) => SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(subj.clone(), v)]))),
        None => SlotValues::Unavailable("down".into()),
    };
    inp.slots[g.slot("sli").unwrap()] = series(sli);
    inp.slots[g.slot("affected_ratio").unwrap()] = series(affected);
    inp.slots[g.slot("security").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::default()));
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
    inp.slots[g.slot("security").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(subj.clone(), 1.0)])));
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
            let m: SubjectMap<f64> = (0..50).map(|i| (Subject::new([("service", format!("s{i}"))]), if (t + i) % 7 < 4 { 0.9 } else { 1.0 })).collect();
            inp.slots[g.slot("sli").unwrap()] = SlotValues::Series(std::sync::Arc::new(m.clone()));
            inp.slots[g.slot("affected_ratio").unwrap()] = SlotValues::Series(std::sync::Arc::new(m.into_iter().map(|(k, v)| (k, 1.0 - v)).collect()));
            all.push(engine.evaluate_group(g, &inp, &mut st, t * MIN));
        }
        (all, st)
    };
    assert_eq!(run(), run());
}

/// Runs `Activate` through a breach (t0..t4 at 1m), then feeds `after[i]` at t5+i:
/// Some(true) healthy, None no data. Returns the minute each status change happened.
fn lifecycle(after: &[Option<bool>]) -> (State, Vec<(Ts, Status)>) {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let mut changes = Vec::new();
    for (t, step) in (0..).zip(std::iter::repeat_n(Some(false), 5).chain(after.iter().copied())) {
        let inp = match step {
            Some(false) => input(&set, Some(0.97), Some(0.08)),
            Some(true) => input(&set, Some(0.9995), Some(0.0)),
            None => input(&set, None, None),
        };
        let out = engine.evaluate_group(g, &inp, &mut st, t * MIN);
        for e in out.timeline {
            if let HeraldEvent::StatusChanged { to, .. } = e.event {
                changes.push((t, to));
            }
        }
    }
    (st, changes)
}

#[test]
fn unknown_never_counts_toward_resolve_after() {
    // Healthy from t5: monitoring at t5, resolved 3m later at t8.
    let (_, changes) = lifecycle(&[Some(true); 10]);
    assert_eq!(changes, vec![(5, Status::Monitoring), (8, Status::Resolved)]);
    // A 10-evaluation telemetry gap after one healthy evaluation: the countdown pauses.
    let mut after = vec![Some(true)];
    after.extend([None; 10]);
    after.extend([Some(true); 5]);
    let (_, changes) = lifecycle(&after);
    assert_eq!(changes, vec![(5, Status::Monitoring), (18, Status::Resolved)], "regression: the gap counted toward resolve_after");
}

#[test]
fn status_follows_the_evidence_and_a_person_wins() {
    // Healthy 2m, breach again (fires at once: the instance was dropped, `for` 2m restarts), healthy.
    let mut after = vec![Some(true), Some(true)];
    after.extend([Some(false); 3]);
    after.extend([Some(true); 5]);
    let (st, changes) = lifecycle(&after);
    assert_eq!(changes, vec![(5, Status::Monitoring), (9, Status::Investigating), (10, Status::Monitoring), (13, Status::Resolved)]);
    assert_eq!(st.next_incident_seq, 1, "the same incident throughout");

    // A person sets `identified`: Herald neither moves the status nor resolves it.
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let subj = Subject::new([("service", "checkout")]);
    for t in 0..5 {
        engine.evaluate_group(g, &input(&set, Some(0.97), Some(0.08)), &mut st, t * MIN);
    }
    st.apply_event(&subj, &Event::Status { value: Status::Identified }, 5 * MIN).unwrap();
    for t in 5..60 {
        let out = engine.evaluate_group(g, &input(&set, Some(0.9995), Some(0.0)), &mut st, t * MIN);
        assert!(out.timeline.iter().all(|e| !matches!(e.event, HeraldEvent::StatusChanged { .. })), "t={t}");
    }
    assert_eq!(st.incidents[&subj].status, Status::Identified);
    assert!(st.incidents[&subj].is_open(), "an incident whose status a person set is not auto-resolved");
    let (c, _) = st.apply_event(&subj, &Event::Resolve, 60 * MIN).unwrap();
    assert_eq!(c.kind, ChangeKind::Resolved);
    // A second resolve is accepted and changes nothing.
    let (c, fx) = st.apply_event_by_id("INC-1", &Event::Resolve, 61 * MIN).unwrap();
    assert_eq!((c.kind, fx.resolved, c.incident.resolved_at), (ChangeKind::Updated, false, Some(60 * MIN)));
}

#[test]
fn the_countdown_survives_a_restart_through_the_store() {
    use crate::store::{Commit, Store};
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let dir = tempfile::tempdir().unwrap();
    let subj = Subject::new([("service", "checkout")]);
    let mut st = State::default();
    let names: Vec<&str> = g.rules.iter().map(|r| r.name.as_str()).collect();
    for t in 0..=7 {
        let (sli, aff) = if t < 5 { (0.97, 0.08) } else { (0.9995, 0.0) };
        let out = engine.evaluate_group(g, &input(&set, Some(sli), Some(aff)), &mut st, t * MIN);
        let mut store = Store::open_dir(dir.path()).unwrap();
        let incidents: Vec<&Incident> = out.incidents.iter().map(|c| &c.incident).collect();
        store.commit(&st, &Commit { rules: names.clone(), incidents, group_evals: vec![("g", t * MIN)], ..Default::default() }).unwrap();
    }
    // Healthy since t5 (2m counted of 3m); down from t7 to t30 (kill -9: nothing else saved).
    let store = Store::open_dir(dir.path()).unwrap();
    let mut st = store.load_state().unwrap();
    assert_eq!(st.incidents[&subj].clear_since, Some(5 * MIN), "the countdown is persisted");
    st.hold_timers(&names, 30 * MIN);
    let out = engine.evaluate_group(g, &input(&set, Some(0.9995), Some(0.0)), &mut st, 30 * MIN);
    assert!(out.incidents.iter().all(|c| c.kind != ChangeKind::Resolved), "downtime does not count");
    let out = engine.evaluate_group(g, &input(&set, Some(0.9995), Some(0.0)), &mut st, 31 * MIN);
    assert!(out.incidents.iter().any(|c| c.kind == ChangeKind::Resolved), "resolves after 3m of known-inactive time: t5..t6, t6..t7 (saved), t30..t31");
}

#[test]
fn every_incident_keeps_its_obligations() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let subj = Subject::new([("service", "checkout")]);
    let (mut st, _) = lifecycle(&[Some(true); 5]);
    assert!(!st.incidents[&subj].is_open());
    assert_eq!(st.view(&subj, 10 * MIN).postmortems_owed, 1.0, "INC-1 is critical, resolved, no postmortem");
    // A second incident on the same subject: INC-1 still owes its postmortem.
    for t in 10..13 {
        engine.evaluate_group(g, &input(&set, Some(0.97), Some(0.08)), &mut st, t * MIN);
    }
    assert_eq!(st.incidents[&subj].id, "INC-2");
    let v = st.view(&subj, 13 * MIN);
    assert!(v.open && v.id == Some("INC-2"), "`incident` is the latest");
    assert_eq!(v.postmortems_owed, 1.0);
    // Events reach the earlier incident by id.
    st.apply_event_by_id("INC-1", &Event::PublicUpdate { channel: Channel::Email }, 13 * MIN).unwrap();
    let (c, _) = st.apply_event_by_id("INC-1", &Event::PostmortemPublished, 14 * MIN).unwrap();
    assert!(c.incident.postmortem_published && c.incident.id == "INC-1");
    assert_eq!(st.view(&subj, 14 * MIN).postmortems_owed, 0.0);
    assert!(st.earlier.is_empty(), "nothing owed: it leaves memory");
    assert!(matches!(st.apply_event_by_id("INC-1", &Event::Resolve, 15 * MIN), Err(ApplyError::UnknownId(_))), "the caller reads it from storage");
}

#[test]
fn legal_hold_outlives_resolution() {
    let subj = Subject::new([("service", "checkout")]);
    let mut after = vec![Some(true); 5];
    after.truncate(5);
    let (mut st, _) = lifecycle(&[]);
    st.incidents.get_mut(&subj).unwrap().engage_legal(4 * MIN);
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    for t in 5..12 {
        engine.evaluate_group(g, &input(&set, Some(0.9995), Some(0.0)), &mut st, t * MIN);
    }
    let inc = &st.incidents[&subj];
    assert!(!inc.is_open() && inc.legal_hold && inc.legal_pending, "resolved while legal review is pending");
    assert_eq!(st.view(&subj, 12 * MIN).postmortems_owed, 0.0, "on legal hold: no all-clear prompt");
    let (_, fx) = st.apply_event(&subj, &Event::LegalApproved, 70 * MIN).unwrap();
    assert_eq!(fx.legal_review, Some(66.0 * 60.0), "the review clock kept running after resolution");
    assert_eq!(st.view(&subj, 70 * MIN).postmortems_owed, 1.0);
}

#[test]
fn unknown_is_counted_by_reason() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let a = Subject::new([("service", "a")]);
    let b = Subject::new([("service", "b")]);
    let c = Subject::new([("service", "c")]);
    let mut inp = GroupInput::new(g);
    inp.slots[g.slot("sli").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(a.clone(), 0.5), (b.clone(), f64::NAN)])));
    inp.slots[g.slot("affected_ratio").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(a.clone(), 0.5), (c.clone(), 0.5)])));
    inp.slots[g.slot("security").unwrap()] = SlotValues::Unavailable("timeout".into());
    let out = engine.evaluate_group(g, &inp, &mut st, 0);
    let activate = g.rules.iter().position(|r| r.name == "Activate").unwrap();
    let legal = g.rules.iter().position(|r| r.name == "Legal").unwrap();
    // Activate: a decided (true); b NaN; c absent sli.
    assert_eq!(out.unknown_by_rule[activate], [1, 0, 1, 0]);
    // Legal guards `security` with `is defined`: it decides as written.
    assert_eq!(out.unknown_by_rule[legal], [0; 4]);
    // A failed query is the reason before any other.
    inp.slots[g.slot("affected_ratio").unwrap()] = SlotValues::Unavailable("timeout".into());
    let out = engine.evaluate_group(g, &inp, &mut st, MIN);
    assert_eq!(out.unknown_by_rule[activate], [0, 2, 0, 0], "c is no longer a subject: only the failed query named it");
}

#[test]
fn the_timeline_tells_what_herald_decided() {
    let (_, _) = lifecycle(&[]);
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let mut all = Vec::new();
    for t in 0..10 {
        let (sli, aff) = if t < 5 { (0.97, 0.08) } else { (0.9995, 0.0) };
        all.extend(engine.evaluate_group(g, &input(&set, Some(sli), Some(aff)), &mut st, t * MIN).timeline);
    }
    let kinds: Vec<(Ts, &str)> = all.iter().map(|e| (e.at / MIN, e.event.kind())).collect();
    assert_eq!(
        kinds,
        vec![(2, "incident_opened"), (2, "rule_firing"), (5, "rule_resolved"), (5, "status_changed"), (7, "rule_firing"), (8, "status_changed"), (9, "rule_resolved")],
        "{all:?}"
    );
}

proptest::proptest! {
    /// The countdown resolves exactly when the known-inactive time (unknown evaluations and
    /// downtime removed) reaches resolve_after, whatever the jitter between evaluations.
    #[test]
    fn resolve_after_counts_only_known_inactive_time(steps in proptest::collection::vec((1i64..90_000, 0u8..3), 1..60), resolve_s in 1i64..300) {
        let subj = Subject::new([("service", "a")]);
        let mut inc = Incident::open("INC-1".into(), subj, Severity::Critical, 0, Some("R".into()));
        let mut st = State::default();
        let mut now = 0;
        let mut counted = 0i64;
        let mut last_known_inactive: Option<Ts> = None;
        for (gap, kind) in steps {
            now += gap;
            if kind == 2 {
                // Downtime: the daemon restarts and holds timers, then evaluates unknown.
                st.incidents.insert(inc.subject.clone(), inc.clone());
                st.hold_timers(&["R"], now);
                inc = st.incidents[&inc.subject].clone();
                last_known_inactive = last_known_inactive.map(|_| now);
                continue;
            }
            let evidence = if kind == 0 { Evidence::Inactive } else { Evidence::Unknown };
            let was_open = inc.is_open();
            inc.follow(evidence, now, resolve_s * 1000);
            if evidence == Evidence::Inactive {
                if let Some(prev) = last_known_inactive {
                    counted += now - prev;
                }
                last_known_inactive = Some(now);
            } else if last_known_inactive.is_some() {
                last_known_inactive = Some(now);
            }
            if was_open && evidence == Evidence::Inactive {
                proptest::prop_assert_eq!(!inc.is_open(), counted >= resolve_s * 1000, "counted {} of {}", counted, resolve_s * 1000);
            }
            if !inc.is_open() { break; }
        }
    }
}

/// A pushed signal (Alertmanager) names only the subjects that have a firing alert; every
/// other subject reads `otherwise` (0), so a quiet subject is known quiet and its incident can
/// resolve, while an unavailable source keeps everyone unknown.
#[test]
fn a_pushed_signal_evaluates_its_subjects_and_reads_otherwise_for_the_rest() {
    let set = rules(
        "groups:\n  - name: g\n    subject: [service]\n    signals:\n      sli: {query: 'sli'}\n      burn_rate: {alertmanager: true}\n    rules:\n      - {name: Burn, when: 'burn_rate > 3', action: escalate}\n",
    );
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let a = Subject::new([("service", "a")]);
    let b = Subject::new([("service", "b")]);
    let mut inp = GroupInput::new(g);
    assert!(matches!(&inp.slots[g.slot("burn_rate").unwrap()], SlotValues::Unavailable(_)), "nothing pushed yet: unknown");
    inp.slots[g.slot("sli").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(b.clone(), 0.99)])));
    let out = engine.evaluate_group(g, &inp, &mut st, 0);
    assert_eq!((out.subjects, out.unknown), (1, 1), "b is unknown while the source is unavailable");
    assert_eq!(out.unknown_by_rule[0][UnknownReason::QueryFailed as usize], 1);

    inp.slots[g.slot("burn_rate").unwrap()] = SlotValues::SeriesOr { values: SubjectMap::from_iter([(a.clone(), 14.4)]), otherwise: 0.0 };
    let out = engine.evaluate_group(g, &inp, &mut st, MIN);
    assert_eq!(out.subjects, 2, "a subject with a firing alert is a subject of the group");
    assert_eq!(out.unknown, 0, "b has no alert: 0, known");
    assert_eq!(st.firing(), vec![("Burn", &a)]);
    assert_eq!(out.decisions[0].values["burn_rate"], 14.4);
    let ex = explain::explain(g, &g.rules[0], &b, &inp, &st, MIN);
    assert_eq!(ex.signals[0].value, Some(0.0));
    assert_eq!(ex.signals[0].why, None);

    inp.slots[g.slot("burn_rate").unwrap()] = SlotValues::SeriesOr { values: SubjectMap::default(), otherwise: 0.0 };
    engine.evaluate_group(g, &inp, &mut st, 2 * MIN);
    assert!(st.firing().is_empty(), "resolved: back to 0");
}

/// Subjects are decided in any order (a map's), but everything that changes state or comes
/// out happens in subject order: incident ids follow the subjects' sort order and the output
/// lists are sorted, whatever the hash order of the run; and subjects with nothing to do
/// leave no trace.
#[test]
fn many_subjects_open_incidents_in_subject_order() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let subjects: Vec<Subject> = (0..300).map(|i| Subject::new([("service", format!("svc-{i:03}"))])).collect();
    // Every third subject breaches; the rest are healthy.
    let breaching = |i: usize| i.is_multiple_of(3);
    let mut inp = GroupInput::new(g);
    inp.slots[g.slot("sli").unwrap()] =
        SlotValues::Series(std::sync::Arc::new(subjects.iter().enumerate().map(|(i, s)| (s.clone(), if breaching(i) { 0.9 } else { 0.9999 })).collect()));
    inp.slots[g.slot("affected_ratio").unwrap()] = SlotValues::Series(std::sync::Arc::new(subjects.iter().map(|s| (s.clone(), 0.2)).collect()));
    inp.slots[g.slot("security").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::default()));
    let mut opened = Vec::new();
    for t in 0..3 {
        let out = engine.evaluate_group(g, &inp, &mut st, t * MIN);
        assert_eq!(out.subjects, 300);
        let order: Vec<&Subject> = out.transitions.iter().map(|x| &x.subject).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "transitions in subject order");
        assert!(out.transitions.iter().all(|x| breaching(subjects.iter().position(|s| *s == x.subject).unwrap())), "healthy subjects leave no trace");
        opened.extend(out.incidents.into_iter().filter(|c| c.kind == ChangeKind::Opened).map(|c| (c.incident.subject.clone(), c.incident.id)));
    }
    let expected: Vec<(Subject, String)> =
        subjects.iter().enumerate().filter(|(i, _)| breaching(*i)).enumerate().map(|(n, (_, s))| (s.clone(), format!("INC-{}", n + 1))).collect();
    assert_eq!(opened, expected, "ids are handed out in subject order, once `for` is met");
}

/// The subjects of a step are the union of every keyed signal's, every live instance's and
/// every incident's with the group's labels, each decided exactly once: the largest signal's
/// are visited first, the others only for what it does not name (including equal subjects
/// built separately, which share no allocation).
#[test]
fn every_subject_is_decided_once_whoever_names_it() {
    let set = rules(PACK);
    let g = &set.groups[0];
    let engine = Engine::new();
    let mut st = State::default();
    let s = |name: &str| Subject::new([("service", name)]);
    let map = |pairs: &[(&str, f64)]| SlotValues::Series(std::sync::Arc::new(pairs.iter().map(|(n, v)| (s(n), *v)).collect()));
    let mut inp = GroupInput::new(g);
    // `a`..`c` healthy in the largest signal; `d` breaching, named only by the smaller ones;
    // `e` named only by `security`.
    inp.slots[g.slot("sli").unwrap()] = map(&[("a", 0.9999), ("b", 0.9999), ("c", 0.9999)]);
    inp.slots[g.slot("affected_ratio").unwrap()] = map(&[("a", 0.0), ("d", 0.5)]);
    inp.slots[g.slot("security").unwrap()] = map(&[("d", 0.0), ("e", 1.0)]);
    let out = engine.evaluate_group(g, &inp, &mut st, 0);
    assert_eq!(out.subjects, 5, "a, b, c, d, e");
    // Activate is unknown for d (no sli) and e (neither); b and c are healthy whatever their
    // affected_ratio (false and unknown is false).
    assert_eq!(out.unknown_by_rule[0][UnknownReason::Absent as usize], 2);
    assert_eq!(st.open_incident(&s("e")).map(|i| i.activating_rule.clone()), Some(Some("Legal".into())), "e's security signal opened an incident");

    // Later, nothing names `e` any more, and a person declares one for `f`: both are still
    // subjects (an open incident), once each.
    st.apply_event(&s("f"), &Event::Declare { severity: Severity::Critical, security: false }, MIN).unwrap();
    inp.slots[g.slot("security").unwrap()] = map(&[]);
    let out = engine.evaluate_group(g, &inp, &mut st, 2 * MIN);
    assert_eq!(out.subjects, 6, "a, b, c, d, e (its incident), f (its incident)");
    // `Update` (needs an open incident, skipped for the others) fires for both after 5m.
    let out = engine.evaluate_group(g, &inp, &mut st, 10 * MIN);
    let fired: Vec<String> = out.decisions.iter().filter(|d| d.rule == "Update").map(|d| d.subject.get("service").unwrap().to_string()).collect();
    assert_eq!(fired, ["e", "f"]);
}
