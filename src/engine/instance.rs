//! One rule instance (rule × subject) and its Prometheus alerting-rule state machine.
//!
//! Inactive instances are not stored. Semantics, as in Prometheus's `rules/alerting.go`:
//! - a true condition makes an instance pending at `active_at = now`; it fires once
//!   `now - active_at >= for` (so `for: 15m` at 1m fires on the 16th consecutive true evaluation);
//! - a pending instance whose condition turns false is dropped;
//! - a firing instance whose condition turns false keeps firing while
//!   `now - keep_firing_since < keep_firing_for`, then resolves;
//! - **unknown** (a signal without a value) keeps the state and does not advance time: the
//!   timers are shifted by the time since the last evaluation, like Prometheus shifts
//!   `ActiveAt` across a restart. Unknown never resolves and never advances `for`.

use serde::{Deserialize, Serialize};

use crate::expr::Truth;

/// Unix milliseconds.
pub type Ts = i64;

/// The three visible states of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }
}

/// A pending or firing instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Pending or Firing (inactive instances are dropped).
    pub phase: Phase,
    /// When the condition became true (shifted forward across unknown evaluations).
    pub active_at: Ts,
    /// When it started firing.
    pub fired_at: Option<Ts>,
    /// When the condition turned false while firing (shifted across unknown evaluations).
    pub keep_firing_since: Option<Ts>,
    /// The time of the last evaluation that saw this instance.
    pub last_eval: Ts,
}

impl Instance {
    /// Whether two instances are stored alike: everything but `last_eval`, which every
    /// evaluation moves and which loading restores from the group's last evaluation time.
    pub fn same_stored(&self, other: &Instance) -> bool {
        self.phase == other.phase && self.active_at == other.active_at && self.fired_at == other.fired_at && self.keep_firing_since == other.keep_firing_since
    }
}

/// Advances one instance by one evaluation. Returns the new state (None = inactive) and the
/// phase change, if any.
pub fn step(prev: Option<Instance>, truth: Truth, now: Ts, for_ms: i64, keep_ms: i64) -> (Option<Instance>, Option<(Phase, Phase)>) {
    match (prev, truth) {
        (None, Truth::Unknown | Truth::False) => (None, None),
        (Some(mut i), Truth::Unknown) => {
            let delta = (now - i.last_eval).max(0);
            match i.phase {
                Phase::Pending => i.active_at += delta,
                _ => {
                    if let Some(k) = i.keep_firing_since.as_mut() {
                        *k += delta;
                    }
                }
            }
            i.last_eval = now;
            (Some(i), None)
        }
        (None, Truth::True) => {
            if for_ms <= 0 {
                let i = Instance { phase: Phase::Firing, active_at: now, fired_at: Some(now), keep_firing_since: None, last_eval: now };
                (Some(i), Some((Phase::Inactive, Phase::Firing)))
            } else {
                let i = Instance { phase: Phase::Pending, active_at: now, fired_at: None, keep_firing_since: None, last_eval: now };
                (Some(i), Some((Phase::Inactive, Phase::Pending)))
            }
        }
        (Some(mut i), Truth::True) => {
            i.last_eval = now;
            i.keep_firing_since = None;
            if i.phase == Phase::Pending && now - i.active_at >= for_ms {
                i.phase = Phase::Firing;
                i.fired_at = Some(now);
                return (Some(i), Some((Phase::Pending, Phase::Firing)));
            }
            (Some(i), None)
        }
        (Some(mut i), Truth::False) => match i.phase {
            Phase::Firing if keep_ms > 0 => {
                let since = *i.keep_firing_since.get_or_insert(now);
                i.last_eval = now;
                if now - since >= keep_ms {
                    (None, Some((Phase::Firing, Phase::Inactive)))
                } else {
                    (Some(i), None)
                }
            }
            phase => (None, Some((phase, Phase::Inactive))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    /// Runs a sequence of truths at 1m steps; returns the phase after each.
    fn run(truths: &[Truth], for_m: i64, keep_m: i64) -> Vec<Phase> {
        let mut state = None;
        truths
            .iter()
            .enumerate()
            .map(|(t, truth)| {
                state = step(state.take(), *truth, t as i64 * MIN, for_m * MIN, keep_m * MIN).0;
                state.as_ref().map_or(Phase::Inactive, |i| i.phase)
            })
            .collect()
    }

    use Truth::{False as F, True as T, Unknown as U};

    #[test]
    fn for_fires_on_the_n_plus_first_true_evaluation() {
        let p = run(&[T; 17], 15, 0);
        assert_eq!(p[14], Phase::Pending);
        assert_eq!(p[15], Phase::Firing, "for: 15m at 1m fires on the 16th consecutive true evaluation");
    }

    #[test]
    fn keep_firing_for_resolves_that_many_evaluations_after_clearing() {
        let mut truths = vec![T; 7];
        truths.extend([F; 8]);
        let p = run(&truths, 0, 5);
        assert_eq!(p[6], Phase::Firing);
        assert_eq!(p[11], Phase::Firing, "still firing 4 evaluations after clearing");
        assert_eq!(p[12], Phase::Inactive, "resolved 5 evaluations after clearing");
    }

    #[test]
    fn unknown_holds_state_and_time() {
        // Pending through an outage: unknown evaluations do not count towards `for`.
        let p = run(&[T, T, T, U, U, T, T, T], 5, 0);
        assert_eq!(p, vec![Phase::Pending, Phase::Pending, Phase::Pending, Phase::Pending, Phase::Pending, Phase::Pending, Phase::Pending, Phase::Firing]);
        // Firing through an outage never resolves.
        let p = run(&[T, U, U, U, U, U], 0, 0);
        assert!(p.iter().all(|p| *p == Phase::Firing));
        // An outage inside keep_firing_for pauses the countdown.
        let p = run(&[T, F, U, U, F, F], 0, 3);
        assert_eq!(p, vec![Phase::Firing, Phase::Firing, Phase::Firing, Phase::Firing, Phase::Firing, Phase::Firing]);
    }

    #[test]
    fn pending_that_clears_is_dropped() {
        assert_eq!(run(&[T, T, F, T], 5, 0), vec![Phase::Pending, Phase::Pending, Phase::Inactive, Phase::Pending]);
    }

    fn truth() -> impl Strategy<Value = Truth> {
        prop_oneof![Just(T), Just(F), Just(U)]
    }

    proptest! {
        /// An instance fires exactly when the last `for` known evaluations were true
        /// (unknowns removed), with at least `for`+1 of them.
        #[test]
        fn fires_iff_enough_known_trues(truths in proptest::collection::vec(truth(), 1..40), for_m in 0i64..6) {
            let phases = run(&truths, for_m, 0);
            let mut run_len = 0i64;
            let mut firing = false;
            for (t, p) in truths.iter().zip(&phases) {
                match t {
                    T => { run_len += 1; if run_len > for_m { firing = true; } }
                    F => { run_len = 0; firing = false; }
                    U => {}
                }
                let expected = if firing { Phase::Firing } else if run_len > 0 { Phase::Pending } else { Phase::Inactive };
                prop_assert_eq!(*p, expected);
            }
        }

        /// Unknown never changes the phase.
        #[test]
        fn unknown_never_changes_phase(truths in proptest::collection::vec(truth(), 1..40), for_m in 0i64..4, keep_m in 0i64..4) {
            let phases = run(&truths, for_m, keep_m);
            for i in 1..truths.len() {
                if truths[i] == U {
                    prop_assert_eq!(phases[i], phases[i - 1]);
                }
            }
            if truths[0] == U { prop_assert_eq!(phases[0], Phase::Inactive); }
        }

        /// With keep_firing_for, a firing instance resolves after exactly `keep` known-false
        /// evaluations in a row, and never earlier.
        #[test]
        fn keep_firing_counts_known_falses(truths in proptest::collection::vec(truth(), 1..40), keep_m in 1i64..5) {
            let phases = run(&truths, 0, keep_m);
            let mut firing = false;
            let mut falses = 0i64;
            for (t, p) in truths.iter().zip(&phases) {
                match t {
                    T => { firing = true; falses = 0; }
                    F if firing => { falses += 1; if falses > keep_m { firing = false; falses = 0; } }
                    _ => {}
                }
                // The first false sets keep_firing_since; it resolves when now - since >= keep,
                // i.e. on the (keep+1)-th consecutive known false.
                prop_assert_eq!(*p == Phase::Firing, firing);
            }
        }
    }
}
