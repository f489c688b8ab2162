//! One evaluation of one group against live sources, committed atomically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, SignalSource};
use crate::engine::{ChangeKind, GroupInput, Phase, SlotValues, StepOutput, Ts};
use crate::source::tickets::TicketSourceClient;
use crate::source::{key_by_subject, MetricsSource, TicketCounter};
use crate::store::Commit;

use super::Shared;

/// The ticket clients of a configuration, by source name.
pub type Tickets<S> = HashMap<String, TicketSourceClient<S>>;

/// Builds the ticket clients of a configuration; a source that cannot be built is logged and
/// left out (its rules stay unknown).
pub fn ticket_clients<S: MetricsSource>(config: &Config, source: &Arc<S>) -> Tickets<S> {
    let mut out = HashMap::new();
    for t in &config.ticket_sources {
        match TicketSourceClient::new(t, Some(source.clone())) {
            Ok(c) => {
                out.insert(t.name.clone(), c);
            }
            Err(e) => tracing::error!(source = %t.name, error = %e, "ticket source unavailable"),
        }
    }
    out
}

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
pub async fn evaluate_group_once<S: MetricsSource>(
    shared: &Arc<Shared>,
    source: &S,
    tickets: &Tickets<S>,
    config: &Arc<Config>,
    gi: usize,
    now: Ts,
) -> EvalReport {
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
    // Tickets are counted for the subjects the group knows: its series and its incidents.
    let ticket_signals: Vec<_> = group
        .signals
        .iter()
        .filter_map(|s| match &s.source {
            SignalSource::Tickets { source, baseline_slot } => Some((s.slot, *baseline_slot, source.as_str())),
            _ => None,
        })
        .collect();
    if !ticket_signals.is_empty() {
        let mut known: Vec<crate::engine::Subject> = Vec::new();
        for slot in &input.slots {
            if let SlotValues::Series(m) = slot {
                known.extend(m.keys().cloned());
            }
        }
        {
            let core = shared.core.lock().expect("core lock");
            known.extend(core.state.incidents.keys().filter(|s| s.has_label_names(&group.subject_labels)).cloned());
        }
        known.sort_unstable();
        known.dedup();
        for (slot, baseline_slot, name) in ticket_signals {
            let Some(client) = tickets.get(name) else {
                // Not configured: `check` and start-up warned once; its rules stay unknown.
                let msg = format!("ticket source {name:?} is not configured");
                input.slots[slot] = SlotValues::Unavailable(msg.clone());
                input.slots[baseline_slot] = SlotValues::Unavailable(msg);
                continue;
            };
            let result = client.counts(&known, &group.subject_labels, now).await;
            match result {
                Ok(counts) => {
                    for (subject, n) in &counts.tickets {
                        if let Some(b) = counts.baseline.get(subject).filter(|b| **b > 0.0) {
                            let labels: Vec<(String, String)> = subject.labels().to_vec();
                            metrics::gauge!("herald_ticket_ratio", &labels).set(n / b);
                        }
                    }
                    input.slots[slot] = SlotValues::Series(counts.tickets);
                    input.slots[baseline_slot] = SlotValues::Series(counts.baseline);
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, source = %name, error = %e, "ticket counts unavailable; ticket rules are unknown");
                    input.slots[slot] = SlotValues::Unavailable(e.to_string());
                    input.slots[baseline_slot] = SlotValues::Unavailable(e.to_string());
                }
            }
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
            if committed {
                log_step(group, &out);
            }
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

/// One log line per decision and incident change: the daemon's story, readable in a terminal.
fn log_step(group: &crate::config::Group, out: &StepOutput) {
    for d in &out.decisions {
        let summary = d.annotations.get("summary").map(String::as_str).unwrap_or("");
        let incident = d.incident.as_ref().map(|i| i.id.as_str()).unwrap_or("-");
        match d.status {
            crate::engine::DecisionStatus::Firing => {
                tracing::info!(group = %group.name, rule = %d.rule, action = d.action.as_str(), subject = %d.subject, incident, "FIRING: {summary}")
            }
            crate::engine::DecisionStatus::Resolved => {
                tracing::info!(group = %group.name, rule = %d.rule, subject = %d.subject, incident, "resolved")
            }
        }
    }
    for c in &out.incidents {
        let i = &c.incident;
        match c.kind {
            ChangeKind::Opened => tracing::info!(incident = %i.id, subject = %i.subject, severity = i.severity.as_str(), rule = i.activating_rule.as_deref().unwrap_or("-"), "incident opened"),
            ChangeKind::Resolved => tracing::info!(incident = %i.id, subject = %i.subject, "incident resolved"),
            ChangeKind::Updated => tracing::debug!(incident = %i.id, "incident updated"),
        }
    }
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
