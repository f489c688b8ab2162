//! One evaluation of one group against live sources, committed atomically.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, SignalSource};
use crate::engine::{ChangeKind, GroupInput, Phase, SlotValues, StepOutput, Ts, UnknownReason};
use crate::source::tickets::TicketSourceClient;
use crate::source::{MetricsSource, SubjectInterner, TicketCounter};
use crate::store::Commit;

use crate::shared::Shared;

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

/// What a group task keeps between evaluations: the values of `every:` signals between
/// refreshes (slot → (fetched at, values)), and the subjects of the last evaluation, reused
/// when its series are keyed again.
#[derive(Debug, Default)]
pub struct SignalCache {
    entries: HashMap<usize, (Ts, Arc<crate::engine::SubjectMap<f64>>)>,
    /// Per rule: evaluations in a row where it was unknown for every subject (warned once at 10).
    unknown_streak: HashMap<String, u32>,
    subjects: SubjectInterner,
    /// The `herald_ticket_ratio` last exported per subject.
    ticket_ratio: crate::engine::SubjectMap<f64>,
    /// Per ticket source, the counts last exported: counts are kept between polls, so the
    /// export walks them only when the source answered anew.
    ticket_counts_exported: HashMap<String, Arc<crate::engine::SubjectMap<f64>>>,
}

/// Evaluations in a row a rule may be unknown for every subject before a warning is logged.
pub const UNKNOWN_WARN_AFTER: u32 = 10;

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
#[allow(clippy::too_many_arguments)]
pub async fn evaluate_group_once<S: MetricsSource>(
    shared: &Arc<Shared>,
    source: &S,
    tickets: &Tickets<S>,
    cache: &mut SignalCache,
    config: &Arc<Config>,
    gi: usize,
    now: Ts,
) -> EvalReport {
    let started = Instant::now();
    let group = &config.rules.groups[gi];
    let mut report = EvalReport::default();
    let mut input = GroupInput::new(group);

    // Query signals due now; `every:` signals still fresh reuse their cached values.
    let mut queries: Vec<(usize, &str, &str, bool)> = Vec::new();
    for s in &group.signals {
        let SignalSource::Query(q) = &s.source else { continue };
        match (s.every, cache.entries.get(&s.slot)) {
            (Some(every), Some((at, values))) if now - at < every.as_millis() as Ts => input.slots[s.slot] = SlotValues::Series(values.clone()),
            (every, _) => queries.push((s.slot, s.name.as_str(), q.as_str(), every.is_some())),
        }
    }
    report.queries = queries.len();
    // One query after another, each result keyed and its raw samples dropped before the next:
    // the parse of a 1,000-series answer is the largest transient allocation Herald makes, and
    // doing them concurrently would multiply the peak (and the allocator's high-water mark)
    // by the number of signals for a few milliseconds saved. Groups still run concurrently.
    let mut all_ok = true;
    cache.subjects.next_generation();
    for (slot, name, q, cached) in &queries {
        let t = Instant::now();
        let result = source.instant_keyed(q, now, &group.subject_labels, &mut cache.subjects).await;
        metrics::histogram!("herald_datasource_query_duration_seconds").record(t.elapsed().as_secs_f64());
        match result {
            Ok(mut m) => {
                metrics::gauge!("herald_signal_series", "group" => group.name.clone(), "signal" => name.to_string()).set(m.len() as f64);
                // Sharding: this replica evaluates only its share of the subjects.
                if config.shard.total > 1 {
                    m.retain(|subject, _| config.shard.owns(subject));
                }
                let m = Arc::new(m);
                if *cached {
                    cache.entries.insert(*slot, (now, m.clone()));
                }
                input.slots[*slot] = SlotValues::Series(m)
            }
            Err(e) => {
                all_ok = false;
                metrics::gauge!("herald_signal_series", "group" => group.name.clone(), "signal" => name.to_string()).set(0.0);
                tracing::warn!(group = %group.name, signal = %name, error = %e, "signal unavailable; rules that use it are unknown");
                report.failed_signals.push((name.to_string(), e.to_string()));
                input.slots[*slot] = SlotValues::Unavailable(e.to_string());
            }
        }
    }
    metrics::gauge!("herald_datasource_up", "group" => group.name.clone()).set(if all_ok { 1.0 } else { 0.0 });
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
        // Only sources asked per subject (the HTTP kinds) need the subjects the group knows.
        let per_subject = ticket_signals.iter().any(|(_, _, name)| tickets.get(*name).is_some_and(|c| c.per_subject()));
        let mut known: Vec<crate::engine::Subject> = Vec::new();
        if per_subject {
            for slot in &input.slots {
                if let SlotValues::Series(m) = slot {
                    known.extend(m.keys().cloned());
                }
            }
            // The core lock is taken off the async workers (a commit may hold it over an fsync).
            let (s, labels) = (shared.clone(), group.subject_labels.clone());
            let incident_subjects = tokio::task::spawn_blocking(move || {
                let core = s.core.lock().expect("core lock");
                core.state.incidents.keys().filter(|x| x.has_label_names(&labels)).cloned().collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            known.extend(incident_subjects);
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
            let result = client.counts(&known, &group.subject_labels, now, &mut cache.subjects).await;
            // Label values leave Herald only as `notification.scrub.labels` allows.
            let scrubber = shared.planner.read().expect("planner lock").clone();
            match result {
                Ok(counts) => {
                    // Counts are cached between polls: only a ratio that moved is exported
                    // again (a subject's labels are scrubbed once per change, not per cycle),
                    // and counts already exported are not walked again.
                    let fresh = cache.ticket_counts_exported.get(name).is_none_or(|last| !Arc::ptr_eq(last, &counts.tickets));
                    if fresh {
                        cache.ticket_counts_exported.insert(name.to_string(), counts.tickets.clone());
                        for (subject, n) in counts.tickets.iter() {
                            if let Some(b) = counts.baseline.get(subject).filter(|b| **b > 0.0) {
                                let ratio = n / b;
                                if cache.ticket_ratio.insert(subject.clone(), ratio) != Some(ratio) {
                                    let labels: Vec<(String, String)> =
                                        scrubber.scrubber().subject(subject).labels().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                                    metrics::gauge!("herald_ticket_ratio", &labels).set(ratio);
                                }
                            }
                        }
                    }
                    input.slots[slot] = SlotValues::Series(counts.tickets);
                    input.slots[baseline_slot] = SlotValues::Series(counts.baseline);
                }
                Err(e) => {
                    let error = scrubber.scrubber().scrub_str(&e.to_string()).into_owned();
                    tracing::warn!(group = %group.name, source = %name, error = %error, "ticket counts unavailable; ticket rules are unknown");
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
        if let Err(e) = core.ensure_loaded(&config2) {
            tracing::error!(group = %group.name, error = %e, "the state cannot be read; skipping this evaluation");
            return (StepOutput::default(), 0, false);
        }
        // Signals Alertmanager pushed: read from the store, where the webhook wrote them.
        let mut input = input;
        for s in group.signals.iter().filter(|s| s.source == SignalSource::Alertmanager) {
            input.slots[s.slot] = match crate::integrations::alertmanager::signal_slot(&core.store, &config2.integrations.alertmanager, &s.name, now) {
                Ok(SlotValues::SeriesOr { mut values, otherwise }) => {
                    if config2.shard.total > 1 {
                        values.retain(|subject, _| config2.shard.owns(subject));
                    }
                    SlotValues::SeriesOr { values, otherwise }
                }
                Ok(other) => other,
                Err(e) => {
                    tracing::warn!(group = %group.name, signal = %s.name, error = %e, "Alertmanager signal unavailable; rules that use it are unknown");
                    SlotValues::Unavailable(e.to_string())
                }
            };
        }
        let input = Arc::new(input);
        let mut out = shared2.engine.evaluate_group(group, &input, &mut core.state, now);
        {
            let mut watch = shared2.explain_watch.lock().expect("explain watch lock");
            for ((rule, subject), log) in watch.iter_mut() {
                if let Some(r) = group.rules.iter().find(|r| &r.name == rule) {
                    if log.len() == crate::shared::EXPLAIN_HISTORY {
                        log.pop_front();
                    }
                    log.push_back(crate::engine::explain::explain(group, r, subject, &input, &core.state, now));
                }
            }
        }
        shared2.last_inputs.lock().expect("last inputs lock").insert(group.name.clone(), (now, input.clone()));
        let planner = shared2.planner.read().expect("planner lock").clone();
        // Drafted updates for suggest_update decisions, stored with the step.
        let extra = crate::store::Extra { drafts: drafts_for(&mut out, &core, &config2, &planner, now), ..Default::default() };
        let entries = planner.plan(&out.decisions, &config2, &core.store, now, shared2.options.dry_run);
        let incidents: Vec<_> = out.incidents.iter().map(|c| &c.incident).collect();
        let core = &mut *core;
        // Only the instance rows that changed, unless the group's rows are to be rewritten.
        let rewrite = core.rewrite_groups.contains(&group.name);
        let commit = Commit {
            rules: if rewrite { group.rules.iter().map(|r| r.name.as_str()).collect() } else { Vec::new() },
            instances: if rewrite { Vec::new() } else { out.changed_instances.iter().map(|(ri, s)| (group.rules[*ri].name.as_str(), s)).collect() },
            incidents,
            events: Vec::new(),
            outbox: entries,
            group_evals: vec![(group.name.as_str(), now)],
            noted_events: Vec::new(),
            timeline: &out.timeline,
            samples: super::samples::collect(group, &input, &core.state, now),
        };
        let enqueued = commit.outbox.len();
        match core.store.commit_extra(&core.state, &commit, &extra) {
            Ok(()) => {
                if rewrite {
                    core.rewrite_groups.remove(&group.name);
                }
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
                core.roll_back(&config2);
                (out, 0, false)
            }
        }
    })
    .await;
    match joined {
        Ok((out, enqueued, committed)) => {
            if committed {
                let planner = shared.planner.read().expect("planner lock").clone();
                log_step(group, &out, planner.scrubber());
                record_unknown(group, &out, &mut cache.unknown_streak);
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

/// The drafts of a step's `suggest_update` decisions (see [`crate::drafts`]).
fn drafts_for(out: &mut StepOutput, core: &crate::shared::Core, config: &Config, planner: &crate::notify::plan::Planner, now: Ts) -> Vec<(String, Ts, String)> {
    let lookup = |id: &str| core.state.incidents.values().find(|i| i.id == id).cloned();
    crate::drafts::for_decisions(&mut out.decisions, &lookup, &config.drafts, config.global.timezone, &config.global.external_url, planner.scrubber(), now)
}

/// One log line per decision and incident change: the daemon's story, readable in a terminal.
/// Subjects and summaries are scrubbed like everything else that leaves Herald.
fn log_step(group: &crate::config::Group, out: &StepOutput, scrubber: &crate::notify::Scrubber) {
    for d in &out.decisions {
        let summary = scrubber.scrub_str(d.annotations.get("summary").map(String::as_str).unwrap_or(""));
        let subject = scrubber.subject(&d.subject);
        let incident = d.incident.as_ref().map(|i| i.id.as_str()).unwrap_or("-");
        match d.status {
            crate::engine::DecisionStatus::Firing => {
                tracing::info!(group = %group.name, rule = %d.rule, action = d.action.as_str(), subject = %subject, incident, "FIRING: {summary}")
            }
            crate::engine::DecisionStatus::Resolved => {
                tracing::info!(group = %group.name, rule = %d.rule, subject = %subject, incident, "resolved")
            }
        }
    }
    for c in &out.incidents {
        let i = &c.incident;
        match c.kind {
            ChangeKind::Opened => tracing::info!(incident = %i.id, subject = %scrubber.subject(&i.subject), severity = i.severity.as_str(), rule = i.activating_rule.as_deref().unwrap_or("-"), "incident opened"),
            ChangeKind::Resolved => tracing::info!(incident = %i.id, subject = %scrubber.subject(&i.subject), "incident resolved"),
            ChangeKind::Updated => tracing::debug!(incident = %i.id, "incident updated"),
        }
    }
}

/// `herald_rule_unknown{rule,reason}` for every rule of the group, and one warning when a
/// rule has been unknown for every subject for [`UNKNOWN_WARN_AFTER`] evaluations in a row.
fn record_unknown(group: &crate::config::Group, out: &StepOutput, streaks: &mut HashMap<String, u32>) {
    for (rule, counts) in group.rules.iter().zip(&out.unknown_by_rule) {
        for reason in UnknownReason::ALL {
            metrics::gauge!("herald_rule_unknown", "rule" => rule.name.clone(), "reason" => reason.as_str()).set(counts[reason as usize] as f64);
        }
        let total: u64 = counts.iter().sum();
        let streak = streaks.entry(rule.name.clone()).or_default();
        if out.subjects > 0 && total == out.subjects as u64 {
            *streak += 1;
            if *streak == UNKNOWN_WARN_AFTER {
                let (reason, n) = UnknownReason::ALL.iter().map(|r| (*r, counts[*r as usize])).max_by_key(|(_, n)| *n).expect("four reasons");
                tracing::warn!(
                    group = %group.name,
                    rule = %rule.name,
                    reason = reason.as_str(),
                    subjects = n,
                    "rule has been unknown for every subject for {UNKNOWN_WARN_AFTER} evaluations: it can neither fire nor resolve (check its signals' queries)"
                );
            }
        } else {
            *streak = 0;
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
            ChangeKind::Resolved => crate::telemetry::record_resolved(&c.incident),
            ChangeKind::Updated => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::RunOptions;
    use crate::source::{RangeSeries, Sample, SourceError};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers every query with `n` series (one per service) and counts queries per PromQL.
    struct Counting {
        n: usize,
        calls: std::sync::Mutex<HashMap<String, usize>>,
        total: AtomicUsize,
    }

    impl MetricsSource for Counting {
        async fn instant(&self, query: &str, _at: Ts) -> Result<Vec<Sample>, SourceError> {
            self.total.fetch_add(1, Ordering::Relaxed);
            *self.calls.lock().unwrap().entry(query.to_string()).or_default() += 1;
            Ok((0..self.n).map(|i| Sample { labels: BTreeMap::from([("service".to_string(), format!("svc-{i}"))]), value: 1.0 }).collect())
        }
        async fn range(&self, _: &str, _: Ts, _: Ts, _: i64) -> Result<Vec<RangeSeries>, SourceError> {
            Ok(Vec::new())
        }
    }

    /// A daemon's shared state over one rule file, its database in a temporary directory.
    fn shared_over(rules: &str) -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
        let herald = format!("prometheus: {{url: 'http://127.0.0.1:9'}}\nglobal: {{state_dir: {:?}}}\nrule_files: [rules.yaml]\n", dir.path().join("state"));
        std::fs::write(dir.path().join("herald.yaml"), herald).unwrap();
        let (config, _) = crate::config::load_config(&dir.path().join("herald.yaml"), &|_| None).unwrap();
        let store = crate::store::Store::open_dir(&config.global.state_dir).unwrap();
        (dir, Arc::new(Shared::new(config, store, RunOptions::default()).unwrap()))
    }

    #[tokio::test]
    async fn one_query_per_signal_per_evaluation_and_every_reuses_values() {
        let (_dir, shared) = shared_over("groups:\n  - name: g\n    subject: [service]\n    signals:\n      a: {query: 'a'}\n      b: {query: 'b'}\n      slow: {query: 'slow', every: 1m}\n      k: {value: 1}\n    rules:\n      - {name: R, when: 'a > 0 and b > 0 and slow > 0', action: notify}\n");
        let config = shared.config();
        let source = Counting { n: 1000, calls: Default::default(), total: AtomicUsize::new(0) };
        let tickets = Tickets::new();
        let mut cache = SignalCache::default();
        let mut reports = Vec::new();
        for i in 0..4 {
            // 30s apart: `slow` (every 1m) is re-queried at 0s and 60s only.
            reports.push(evaluate_group_once(&shared, &source, &tickets, &mut cache, &config, 0, i * 30_000).await);
        }
        let calls = source.calls.lock().unwrap().clone();
        assert_eq!(calls["a"], 4, "one query per signal per evaluation, whatever the number of subjects");
        assert_eq!(calls["b"], 4);
        assert_eq!(calls["slow"], 2, "every: 1m at a 30s interval");
        assert_eq!(source.total.load(Ordering::Relaxed), 10);
        assert_eq!(reports.iter().map(|r| r.queries).collect::<Vec<_>>(), vec![3, 2, 3, 2]);
        // Cached values are still used: the rule reads `slow` and fires for all 1,000 subjects.
        assert!(reports.iter().all(|r| r.committed && r.output.subjects == 1000));
        assert_eq!(reports[1].output.unknown, 0, "the cached signal had values");
        assert_eq!(reports[0].output.decisions.len(), 1000);
    }

    /// Answers `a` with a scripted value per service for the current step (absent = no
    /// series: the rule is unknown for that service).
    struct Scripted {
        step: AtomicUsize,
    }

    impl Scripted {
        fn value(step: usize, svc: usize) -> Option<f64> {
            // A fixed pseudo-random walk over true, false and absent.
            match (step * 7 + svc * 13 + (step * svc) % 5) % 6 {
                0..=2 => Some(1.0),
                3..=4 => Some(0.0),
                _ => None,
            }
        }
    }

    impl MetricsSource for Scripted {
        async fn instant(&self, _query: &str, _at: Ts) -> Result<Vec<Sample>, SourceError> {
            let step = self.step.load(Ordering::Relaxed);
            Ok((0..20)
                .filter_map(|i| Scripted::value(step, i).map(|v| Sample { labels: BTreeMap::from([("service".to_string(), format!("svc-{i}"))]), value: v }))
                .collect())
        }
        async fn range(&self, _: &str, _: Ts, _: Ts, _: i64) -> Result<Vec<RangeSeries>, SourceError> {
            Ok(Vec::new())
        }
    }

    fn live(state: &crate::engine::State) -> BTreeMap<String, crate::engine::SubjectMap<crate::engine::Instance>> {
        state.instances.iter().filter(|(_, m)| !m.is_empty()).map(|(r, m)| (r.clone(), m.clone())).collect()
    }

    /// Only the rows that changed are written, yet the database always holds exactly the
    /// in-memory state: after every evaluation of a scripted walk through pending, firing,
    /// kept firing, unknown (timers shifted) and inactive, loading the state gives it back.
    /// A failed commit rolls back by reloading, and the next evaluation decides again.
    #[tokio::test]
    async fn commits_write_only_changed_rows_and_the_database_matches_memory() {
        let (_dir, shared) = shared_over("groups:\n  - name: g\n    subject: [service]\n    signals:\n      a: {query: 'a'}\n    rules:\n      - {name: R, when: 'a > 0', for: 1m, keep_firing_for: 1m, action: notify}\n      - {name: Fast, when: 'a > 0', action: notify}\n");
        let config = shared.config();
        let source = Scripted { step: AtomicUsize::new(0) };
        let tickets = Tickets::new();
        let mut cache = SignalCache::default();
        let mut rows_written = Vec::new();
        let mut fired = 0;
        for step in 0..40 {
            source.step.store(step, Ordering::Relaxed);
            let r = evaluate_group_once(&shared, &source, &tickets, &mut cache, &config, 0, step as Ts * 30_000).await;
            assert!(r.committed, "step {step}");
            fired += r.output.decisions.len();
            rows_written.push(r.output.changed_instances.len());
            let core = shared.core.lock().unwrap();
            let (loaded, _) = crate::shared::load_state(&core.store, &config).unwrap();
            assert_eq!(live(&loaded), live(&core.state), "step {step}: the database holds what memory holds");
            assert!(core.rewrite_groups.is_empty(), "the first commit rewrote the group");
        }
        assert!(fired > 10, "the walk fires and resolves: {fired} decisions");
        let live_rows: usize = live(&shared.core.lock().unwrap().state).values().map(HashMap::len).sum();
        assert!(live_rows > 0);
        assert!(rows_written.iter().any(|&n| n < live_rows), "fewer rows than live instances are written: {rows_written:?}");

        // A failing commit (another connection holds the write lock): the evaluation is rolled
        // back by reloading the state, and the same decisions are made once the lock is gone.
        let db = shared.core.lock().unwrap().store.path().unwrap();
        let blocker = rusqlite::Connection::open(&db).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let before = live(&shared.core.lock().unwrap().state);
        source.step.store(40, Ordering::Relaxed);
        let failed = evaluate_group_once(&shared, &source, &tickets, &mut cache, &config, 0, 40 * 30_000).await;
        assert!(!failed.committed);
        assert_eq!(live(&shared.core.lock().unwrap().state), before, "rolled back to the last commit");
        blocker.execute_batch("ROLLBACK").unwrap();
        let again = evaluate_group_once(&shared, &source, &tickets, &mut cache, &config, 0, 40 * 30_000).await;
        assert!(again.committed);
        assert_eq!(again.output.decisions, failed.output.decisions, "the same decisions, made again");
        let core = shared.core.lock().unwrap();
        assert_eq!(live(&crate::shared::load_state(&core.store, &config).unwrap().0), live(&core.state));
    }
}
