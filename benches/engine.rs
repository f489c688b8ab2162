//! One evaluation of the default 12-rule pack over 10,000 subjects (single thread).
//!
//! `cargo bench --bench engine` prints the median and p90 of 50 evaluations in steady state:
//! 5% of services breaching (so ~500 open incidents with comms rules live), the rest healthy.
//! Target (issue 2): under 50 ms on one core of the 2-core CI machine.

use std::time::Instant;

use herald::config::load_rule_files;
use herald::engine::{Engine, GroupInput, SlotValues, State, Subject};

const SUBJECTS: usize = 10_000;

fn main() {
    let pack = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/comms-lead.yaml");
    let (rules, _) = load_rule_files(&[pack]).expect("pack loads");
    let group = &rules.groups[0];
    let subjects: Vec<Subject> = (0..SUBJECTS).map(|i| Subject::new([("service", format!("svc-{i:05}"))])).collect();
    let series = |f: &dyn Fn(usize) -> f64| -> SlotValues { SlotValues::Series(std::sync::Arc::new(subjects.iter().enumerate().map(|(i, s)| (s.clone(), f(i))).collect::<herald::engine::SubjectMap<_>>())) };
    let breaching = |i: usize| i.is_multiple_of(20);
    let mut input = GroupInput::new(group);
    let set = |input: &mut GroupInput, name: &str, v: SlotValues| input.slots[group.slot(name).unwrap()] = v;
    set(&mut input, "sli", series(&|i| if breaching(i) { 0.95 } else { 0.9995 }));
    set(&mut input, "affected_ratio", series(&|i| if breaching(i) { 0.12 } else { 0.001 }));
    set(&mut input, "burn_rate", series(&|i| if breaching(i) { 8.0 } else { 0.4 }));
    set(&mut input, "customer_facing", series(&|i| if i.is_multiple_of(7) { 0.0 } else { 1.0 }));
    set(&mut input, "security", SlotValues::Series(std::sync::Arc::new(Default::default())));
    set(&mut input, "tickets", series(&|i| (i % 13) as f64));
    set(&mut input, "tickets_baseline", series(&|i| (i % 5) as f64));

    let engine = Engine::new();
    let mut state = State::default();
    let step = 30_000;
    let mut now = 0;
    // Warm up past `for: 5m` so incidents are open and comms rules evaluate on them.
    for _ in 0..12 {
        engine.evaluate_group(group, &input, &mut state, now);
        now += step;
    }
    let open = state.incidents.values().filter(|i| i.is_open()).count();
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let out = engine.evaluate_group(group, &input, &mut state, now);
        times.push(t.elapsed());
        assert_eq!(out.subjects, SUBJECTS);
        now += step;
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "engine: 12 rules x {SUBJECTS} subjects ({open} open incidents): median {:.1} ms, p90 {:.1} ms, min {:.1} ms per evaluation",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[0])
    );
}
