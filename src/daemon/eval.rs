//! One evaluation of one group against live sources, committed atomically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, SignalSource};
use crate::engine::{ChangeKind, GroupInput, Phase, SlotValues, StepOutput, Ts};
use crate::source::{key_by_subject, MetricsSource};
use crate::store::Commit;

use super::Shared;

/// What one evaluation did, for logs, tests and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct EvalReport {
    /// Queries sent (one per query signal).
    pub queries: usize,
    /// Signals that could not be read.
    pub failed_signals: Vec<(String, String)>,
    pub output: StepOutput,
    /// Notifications enqueued.
    pub enqueued: usize,
    /// False when the commit failed and the step was rolled back.
    pub committed: bool,
}

/// Queries the group's signals (one query each, concurrently), evaluates, plans notifications
/// and commits everything in one transaction. On a failed commit the in-memory state is
/// restored, so the decision will be made again at the next evaluation.
pub async fn evaluate_group_once<S: MetricsSource>(shared: &Arc<Shared>, source: &S, config: &Arc<Config>, gi: usize, now: Ts) -> EvalReport {
    let started = Instant::now();
    let group = &config.rules.groups[gi];
    let mut report = EvalReport::default();
    let mut input = GroupInput::new(group);

    let queries: Vec<(usize, &str, &str)> = group
        .signals
        .iter()
        .filter_map(|s| match &s.source {
            SignalSource::Query(q) => Some((s.slot, s.name.as_str(), q.as_str())),
            _ => None,
        })
        .collect();
    report.queries = queries.len();
    let results = futures_util::future::join_all(queries.iter().map(|(_, _, q)| async move {
        let t = Instant::now();
        let r = source.instant(q, now).await;
        metrics::histogram!("herald_datasource_query_duration_seconds").record(t.elapsed().as_secs_f64());
        r
    }))
    .await;
    let mut all_ok = true;
    for ((slot, name, _), result) in queries.iter().zip(results) {
        match result.and_then(|samples| key_by_subject(&samples, &group.subject_labels)) {
            Ok(m) => input.slots[*slot] = SlotValues::Series(m),
            Err(e) => {
                all_ok = false;
                tracing::warn!(group = %group.name, signal = %name, error = %e, "signal unavailable; rules that use it are unknown");
                report.failed_signals.push((name.to_string(), e.to_string()));
                input.slots[*slot] = SlotValues::Unavailable(e.to_string());
            }
        }
    }
    if !queries.is_empty() {
        metrics::gauge!("herald_datasource_up").set(if all_ok { 1.0 } else { 0.0 });
    }
    if !all_ok {
        metrics::counter!("herald_rule_evaluation_failures_total", "group" => group.name.clone()).increment(1);
    }
    for s in &group.signals {
        if let SignalSource::Tickets { source, baseline_slot } = &s.source {
            let msg = format!("ticket source {source:?} is not available");
            input.slots[s.slot] = SlotValues::Unavailable(msg.clone());
            input.slots[*baseline_slot] = SlotValues::Unavailable(msg);
        }
    }

    // Decide and commit under the core lock, off the async runtime (SQLite fsyncs).
    let shared2 = shared.clone();
    let config2 = config.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let group = &config2.rules.groups[gi];
        let mut core = shared2.core.lock().expect("core lock");
        let snapshot = core.state.clone();
        let out = shared2.engine.evaluate_group(group, &input, &mut core.state, now);
        let planner = shared2.planner.read().expect("planner lock").clone();
        let entries = planner.plan(&out.decisions, &config2, &core.store, now, shared2.options.dry_run);
        let incidents: Vec<_> = out.incidents.iter().map(|c| &c.incident).collect();
        let commit = Commit {
            rules: group.rules.iter().map(|r| r.name.as_str()).collect(),
            incidents,
            events: Vec::new(),
            outbox: entries,
            group_evals: vec![(group.name.as_str(), now)],
        };
        let enqueued = commit.outbox.len();
        let core = &mut *core;
        match core.store.commit(&core.state, &commit) {
            Ok(()) => {
                let open = core.state.incidents.values().filter(|i| i.is_open()).count();
                let firing: HashMap<&str, usize> = group
                    .rules
                    .iter()
                    .map(|r| (r.name.as_str(), core.state.instances.get(&r.name).map_or(0, |m| m.values().filter(|i| i.phase == Phase::Firing).count())))
                    .collect();
                record_metrics(group, &out, open, &firing);
                (out, enqueued, true)
            }
            Err(e) => {
                tracing::error!(group = %group.name, error = %e, "commit failed; rolling back this evaluation");
                core.state = snapshot;
                (out, 0, false)
            }
        }
    })
    .await;
    match joined {
        Ok((out, enqueued, committed)) => {
            report.output = out;
            report.enqueued = enqueued;
            report.committed = committed;
        }
        Err(e) => tracing::error!(error = %e, "evaluation task panicked"),
    }
    if report.enqueued > 0 {
        shared.outbox_wake.notify_one();
    }
    metrics::counter!("herald_rule_evaluations_total", "group" => group.name.clone()).increment(1);
    metrics::gauge!("herald_rule_group_last_duration_seconds", "group" => group.name.clone()).set(started.elapsed().as_secs_f64());
    report
}

fn record_metrics(group: &crate::config::Group, out: &StepOutput, open: usize, firing: &HashMap<&str, usize>) {
    metrics::gauge!("herald_incidents_open").set(open as f64);
    for r in &group.rules {
        metrics::gauge!("herald_rule_firing", "rule" => r.name.clone(), "action" => r.action.as_str()).set(firing.get(r.name.as_str()).copied().unwrap_or(0) as f64);
    }
    for d in out.decisions.iter().filter(|d| d.status == crate::engine::DecisionStatus::Firing) {
        metrics::counter!("herald_decisions_total", "rule" => d.rule.clone(), "action" => d.action.as_str(), "severity" => d.severity.as_str()).increment(1);
    }
    for c in &out.incidents {
        match c.kind {
            ChangeKind::Opened => {
                metrics::counter!("herald_comms_lead_activations_total", "severity" => c.incident.severity.as_str()).increment(1);
            }
            ChangeKind::Resolved => {
                let pm = if c.incident.postmortem_published { "true" } else { "false" };
                metrics::counter!("herald_incidents_resolved_total", "severity" => c.incident.severity.as_str(), "postmortem" => pm).increment(1);
            }
            ChangeKind::Updated => {}
        }
    }
}
