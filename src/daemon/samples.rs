//! Signal values recorded around incidents, for the console's chart.
//!
//! Owns the choice of *what* is recorded: after each committed evaluation, every signal value of
//! each subject that has an open incident (or one resolved less than [`AFTER_RESOLUTION`] ago).
//! Rows are proportional to open incidents, never to subjects. Must not decide anything: the
//! engine never reads these values back.

use crate::config::Group;
use crate::engine::{GroupInput, State, Ts};

/// How long after resolution values are still recorded, so the chart shows the recovery.
pub const AFTER_RESOLUTION: Ts = 30 * 60 * 1000;

/// The `(incident id, time, signal, value)` rows one evaluation of `group` records.
pub fn collect<'a>(group: &'a Group, input: &GroupInput, state: &'a State, now: Ts) -> Vec<(&'a str, Ts, &'a str, f64)> {
    let mut rows = Vec::new();
    for inc in state.incidents.values() {
        let recent = inc.resolved_at.is_none_or(|r| now - r <= AFTER_RESOLUTION);
        if !recent || !inc.subject.has_label_names(&group.subject_labels) {
            continue;
        }
        for s in &group.signals {
            let value = input.slots.get(s.slot).and_then(|v| v.get(&inc.subject));
            if let Some(v) = value.filter(|v| v.is_finite()) {
                rows.push((inc.id.as_str(), now, s.name.as_str(), v));
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::engine::{Incident, SlotValues, Subject};
    use crate::engine::SubjectMap;

    #[test]
    fn records_open_and_recently_resolved_incidents_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.yaml"),
            "groups:\n  - name: g\n    subject: [service]\n    signals:\n      sli: {query: 'x'}\n      objective: {value: 0.99}\n    rules:\n      - {name: R, when: 'sli < objective', action: notify}\n",
        )
        .unwrap();
        let (rules, _) = crate::config::load_rule_files(&[dir.path().join("r.yaml")]).unwrap();
        let group = &rules.groups[0];
        let a = Subject::new([("service", "a")]);
        let b = Subject::new([("service", "b")]);
        let c = Subject::new([("service", "c")]);
        let mut input = GroupInput::new(group);
        input.slots[group.slot("sli").unwrap()] = SlotValues::Series(std::sync::Arc::new(SubjectMap::from_iter([(a.clone(), 0.9), (b.clone(), 0.8), (c.clone(), f64::NAN)])));
        let mut state = State::default();
        let now = 10 * 3_600_000;
        state.incidents.insert(a.clone(), Incident::open("INC-1".into(), a, Severity::Critical, 0, None));
        let mut old = Incident::open("INC-2".into(), b, Severity::Critical, 0, None);
        old.resolve(now - AFTER_RESOLUTION - 1);
        state.incidents.insert(old.subject.clone(), old);
        state.incidents.insert(c.clone(), Incident::open("INC-3".into(), c, Severity::Critical, 0, None));
        let mut rows = collect(group, &input, &state, now);
        rows.sort_by(|x, y| (x.0, x.2).cmp(&(y.0, y.2)));
        assert_eq!(rows, vec![("INC-1", now, "objective", 0.99), ("INC-1", now, "sli", 0.9), ("INC-3", now, "objective", 0.99)]);
    }
}
