//! Catch-up after downtime: when the daemon starts after being down (crash, deploy, node
//! drain), it first replays the evaluations it missed from Prometheus's history, with the same
//! engine and the replay's chunked range queries, up to `global.catch_up` back (default 1h).
//! `for` timers, `keep_firing_for`, incidents and `resolve_after` end up exactly as if it had
//! never stopped. Downtime beyond the bound is unknown, as it always was (timers held).
//!
//! Only the decisions whose notifications are still relevant are sent, once, marked late:
//! - a rule that started firing during the downtime and still fires: its firing message (a page
//!   for an activation goes out once, with a `late` annotation saying when it was decided);
//! - a rule that was firing before the downtime (people were told) and stopped during it: its
//!   resolved message.
//!
//! Everything else the downtime decided (a rule that fired and stopped while Herald was down)
//! is recorded in the state, not sent. If the history cannot be read, the whole downtime
//! counts as unknown. It runs before the evaluation loop, the API and the delivery worker start.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{Decision, DecisionStatus, Incident, Phase, State, StepOutput, Subject, Ts};
use crate::replay::report::rfc3339;
use crate::source::MetricsSource;
use crate::store::Commit;

use crate::shared::{now_ms, Shared};

/// Replays the missed evaluations planned by [`Shared::new`] and commits the result.
pub async fn catch_up<S: MetricsSource>(shared: &Arc<Shared>, source: &S) {
    let plan = std::mem::take(&mut *shared.catch_up.lock().expect("catch-up lock"));
    if plan.is_empty() {
        return;
    }
    let config = shared.config();
    let now = now_ms();
    let before = shared.core.lock().expect("core lock").state.clone();
    // Evaluations strictly before now: the live loop evaluates at now.
    let result = crate::replay::catch_up(&config, source, before.clone(), &plan, now - 1).await;
    // The commit (SQLite, under the core lock) runs off the async workers.
    let shared = shared.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || commit(&shared, &config, &plan, before, result, now)).await {
        tracing::error!(error = %e, "catch-up task panicked");
    }
}

/// Commits what the catch-up decided (or, if the history could not be read, holds the timers).
fn commit(shared: &Shared, config: &crate::config::Config, plan: &[(usize, Ts)], before: State, result: crate::replay::CatchUp, now: Ts) {
    let rules_of = |gi: usize| config.rules.groups[gi].rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>();
    if !result.failures.is_empty() {
        for f in &result.failures {
            tracing::warn!(group = %f.group, signal = %f.signal, error = %f.error, "cannot read history to catch up; the downtime counts as unknown");
        }
        let mut core = shared.core.lock().expect("core lock");
        for (gi, _) in plan {
            core.state.hold_timers(&rules_of(*gi), now);
        }
        return;
    }
    let decisions = relevant(&before, &result.steps, &result.state);
    let mut incidents: HashMap<String, Incident> = HashMap::new();
    let mut last_eval: HashMap<usize, Ts> = HashMap::new();
    for (gi, t, out) in &result.steps {
        for c in &out.incidents {
            incidents.insert(c.incident.id.clone(), c.incident.clone());
        }
        last_eval.insert(*gi, *t);
    }
    let planner = shared.planner.read().expect("planner lock").clone();
    let mut core = shared.core.lock().expect("core lock");
    let entries = planner.plan(&decisions, config, &core.store, now, shared.options.dry_run);
    let late = entries.len();
    let commit = Commit {
        rules: plan.iter().flat_map(|(gi, _)| rules_of(*gi)).collect(),
        incidents: incidents.values().collect(),
        events: Vec::new(),
        outbox: entries,
        group_evals: last_eval.iter().map(|(gi, t)| (config.rules.groups[*gi].name.as_str(), *t)).collect(),
        ..Default::default()
    };
    let core = &mut *core;
    let saved = std::mem::replace(&mut core.state, result.state);
    match core.store.commit(&core.state, &commit) {
        Ok(()) => {
            for (gi, _) in plan {
                let n = result.steps.iter().filter(|s| s.0 == *gi).count();
                tracing::info!(group = %config.rules.groups[*gi].name, evaluations = n, "caught up on the evaluations missed while down");
            }
            tracing::info!(late_notifications = late, incidents_changed = incidents.len(), "catch-up committed");
            shared.outbox_wake.notify_one();
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot commit the catch-up; the downtime counts as unknown");
            core.state = saved;
            for (gi, _) in plan {
                core.state.hold_timers(&rules_of(*gi), now);
            }
        }
    }
}


fn firing(state: &State, rule: &str, subject: &Subject) -> bool {
    state.instances.get(rule).and_then(|m| m.get(subject)).is_some_and(|i| i.phase == Phase::Firing)
}

/// The decisions of the catch-up still worth sending (see the module doc), marked late.
pub fn relevant(before: &State, steps: &[(usize, Ts, StepOutput)], after: &State) -> Vec<Decision> {
    // The last decision per instance.
    let mut last: HashMap<(String, Subject), &Decision> = HashMap::new();
    let mut order: Vec<(String, Subject)> = Vec::new();
    for (_, _, out) in steps {
        for d in &out.decisions {
            let key = (d.rule.clone(), d.subject.clone());
            if last.insert(key.clone(), d).is_none() {
                order.push(key);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|key| {
            let d = last[&key];
            let keep = match d.status {
                DecisionStatus::Firing => firing(after, &d.rule, &d.subject),
                DecisionStatus::Resolved => firing(before, &d.rule, &d.subject) && !firing(after, &d.rule, &d.subject),
            };
            keep.then(|| {
                let mut d = d.clone();
                d.annotations.insert("late".into(), format!("decided at {} while Herald was down; sent when it restarted", rfc3339(d.at)));
                d
            })
        })
        .collect()
}
