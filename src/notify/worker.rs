//! The delivery worker: takes due outbox entries and delivers them.
//!
//! Loop (until shutdown): run the repeat pass every [`DeliveryTuning::repeat_every`]; read the
//! due entries under the `core` lock (briefly, off the async runtime) and lease them
//! ([`Store::claim`](crate::store::Store::claim)) so they are not picked up twice; deliver each
//! job in its own task, at most `concurrency` at a time per receiver (a semaphore per
//! receiver); mark the outcome. No network I/O happens under the lock or in a transaction.
//! Then run the retention pass when due (every [`DeliveryTuning::prune_every`], the first one
//! [`DeliveryTuning::prune_first_after`] after start); then sleep until the next due entry, a wake-up
//! (`outbox_wake`) or shutdown.
//!
//! Guarantees and outcomes:
//! * **At least once**: entries live in SQLite; an entry is marked `sent` only after a 2xx.
//!   A crash between commit and delivery leaves it pending (or leased: due again once the lease
//!   — the receiver timeout plus a margin — runs out), so the next run delivers it. Receivers
//!   deduplicate on the notification id (`webhook-id`) and the dedup key. The window between
//!   a receiver's 2xx and the `sent` mark is not atomic: a crash inside it re-delivers the
//!   entry (same id) on the next run. Exactly once is the receiver's dedup, not Herald's.
//! * **Retries**: exponential backoff with full jitter (base 1s, cap 5min by default), or the
//!   receiver's `Retry-After` when larger (capped at
//!   [`MAX_RETRY_AFTER`](crate::notify::transport::MAX_RETRY_AFTER), 1h); the entry stays `pending` with a new `not_before`
//!   and `attempts + 1`. It becomes `failed` on a permanent answer (`last_error` says why) or
//!   when the next try would be past its `deadline` (`max_retry_duration`, 24h by default).
//! * **Dry-run**: every receiver gets the in-memory [`Recorder`] (entries end `dry_run`),
//!   except `dry_run_target` receivers, which get the real transport and "[DRY RUN]" messages.
//! * **Noise control** (see [`crate::notify::plan`]): due chat prompts of one subject and
//!   receiver go out as one message; `min_interval` deferral is decided here, when the entry
//!   is due (a deferred prompt is sent when it ends if its rule still fires, else recorded
//!   `suppressed`); the repeat pass enqueues `repeat_interval` re-sends through the store.
//!
//! Metrics: `herald_notifications_total{receiver,outcome}` (sent, failed, retried, suppressed,
//! dry_run), `herald_notification_delivery_seconds{receiver}` (created → delivered),
//! `herald_outbox_pending`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::daemon::{Receiver, ReceiverKind};
use crate::shared::{now_ms, Shared};
use crate::engine::Ts;
use crate::notify::plan::{held_by_min_interval, DEFERRED};
use crate::notify::receiver::{
    build_requests, classify, combine_any, is_chat, BuildContext, Outcome,
};
use crate::notify::transport::{HttpTransport, LogTransport, Recorder, Transport, TransportError};
use crate::notify::Notification;
use crate::store::{Commit, OutboxEntry, OutboxState};

/// Timing knobs of the worker (defaults for production; tests shorten them).
#[derive(Clone, Debug)]
pub struct DeliveryTuning {
    /// First backoff step (default 1s).
    pub backoff_base: Duration,
    /// Longest backoff (default 5min).
    pub backoff_cap: Duration,
    /// Entries read per pass (default 256).
    pub batch: usize,
    /// How often the `repeat_interval` pass runs (default 30s).
    pub repeat_every: Duration,
    /// Added to the receiver timeout to lease an entry while it is in flight (default 5s).
    pub lease_margin: Duration,
    /// Longest sleep between passes (default 30s).
    pub max_idle: Duration,
    /// How often the retention pass runs (default 1h).
    pub prune_every: Duration,
    /// When the first retention pass runs after start (default 1min: deliveries a restart
    /// catches up on go first).
    pub prune_first_after: Duration,
    /// Rows removed per retention transaction (default 500), so the core lock is held briefly.
    pub prune_batch: usize,
}

impl Default for DeliveryTuning {
    fn default() -> Self {
        DeliveryTuning {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            batch: 256,
            repeat_every: Duration::from_secs(30),
            lease_margin: Duration::from_secs(5),
            max_idle: Duration::from_secs(30),
            prune_every: Duration::from_secs(3600),
            prune_first_after: Duration::from_secs(60),
            prune_batch: 500,
        }
    }
}

impl DeliveryTuning {
    /// The backoff before try number `attempts + 1`, full jitter: uniform in
    /// `[0, min(cap, base × 2^(attempts-1))]`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .backoff_base
            .as_millis()
            .saturating_mul(1u128 << attempts.saturating_sub(1).min(40));
        let ceiling = exp.min(self.backoff_cap.as_millis()) as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

/// One delivery: one entry, or a group of chat prompts sent as one message.
struct Job {
    receiver: Receiver,
    eval_interval: Duration,
    entries: Vec<(OutboxEntry, Notification)>,
}

/// The delivery worker (see the module doc).
pub struct Worker {
    shared: Arc<Shared>,
    tuning: DeliveryTuning,
    http: Arc<dyn Transport>,
    log: Arc<dyn Transport>,
    recorder: Arc<Recorder>,
    semaphores: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    inflight: Mutex<HashSet<String>>,
}

/// Delivers outbox entries until shutdown, with the default tuning and transports.
pub async fn run(shared: Arc<Shared>) {
    match Worker::new(shared.clone(), DeliveryTuning::default()) {
        Ok(w) => Arc::new(w).run().await,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; notifications stay in the outbox");
            shared.shutdown.cancelled().await;
        }
    }
}

impl Worker {
    /// A worker with the real HTTP transport and a fresh dry-run recorder.
    pub fn new(shared: Arc<Shared>, tuning: DeliveryTuning) -> Result<Worker, TransportError> {
        Ok(Worker::with_transports(
            shared,
            tuning,
            Arc::new(HttpTransport::new()?),
            Arc::new(Recorder::new()),
        ))
    }

    /// A worker with the given HTTP transport and dry-run recorder.
    pub fn with_transports(
        shared: Arc<Shared>,
        tuning: DeliveryTuning,
        http: Arc<dyn Transport>,
        recorder: Arc<Recorder>,
    ) -> Worker {
        Worker {
            shared,
            tuning,
            http,
            log: Arc::new(LogTransport),
            recorder,
            semaphores: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashSet::new()),
        }
    }

    /// What a dry run recorded instead of sending.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Runs until `shared.shutdown` is cancelled. In-flight deliveries get up to 5s to finish;
    /// abandoned ones stay pending and are delivered by the next run.
    pub async fn run(self: Arc<Self>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut next_repeat = tokio::time::Instant::now();
        let mut next_prune = tokio::time::Instant::now() + self.tuning.prune_first_after;
        loop {
            if self.shared.shutdown.is_cancelled() {
                break;
            }
            if tokio::time::Instant::now() >= next_repeat {
                if let Err(e) = self.repeat_pass().await {
                    tracing::error!(error = %e, "repeat pass failed");
                }
                next_repeat = tokio::time::Instant::now() + self.tuning.repeat_every;
            }
            let sleep = match self.dispatch_due(&mut tasks).await {
                Ok(next) => {
                    let until_due = next.map_or(self.tuning.max_idle, |t| {
                        Duration::from_millis((t - now_ms()).max(0) as u64)
                    });
                    until_due.min(self.tuning.max_idle)
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    Duration::from_secs(1)
                }
            };
            // After the due entries went out: retention never delays a delivery.
            if tokio::time::Instant::now() >= next_prune {
                if let Err(e) = self.prune_pass().await {
                    tracing::error!(error = %e, "retention pass failed");
                }
                next_prune = tokio::time::Instant::now() + self.tuning.prune_every;
            }
            let sleep =
                sleep.min(next_repeat.saturating_duration_since(tokio::time::Instant::now()));
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                _ = self.shared.outbox_wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("abandoning in-flight deliveries at shutdown; they stay pending");
        }
    }

    /// One `repeat_interval` pass: enqueues re-sends for still-firing instances (committed
    /// through the store). Returns how many entries were enqueued.
    pub async fn repeat_pass(&self) -> Result<usize, crate::store::StoreError> {
        let shared = self.shared.clone();
        let n = tokio::task::spawn_blocking(move || {
            let config = shared.config();
            let planner = shared.planner.read().expect("planner lock").clone();
            let mut core = shared.core.lock().expect("core lock");
            let core = &mut *core;
            let entries = planner.plan_repeats(
                &config,
                &core.state,
                &core.store,
                now_ms(),
                shared.options.dry_run,
            )?;
            let n = entries.len();
            if n > 0 {
                core.store.commit(
                    &core.state,
                    &Commit {
                        outbox: entries,
                        ..Default::default()
                    },
                )?;
                tracing::info!(count = n, "repeating notifications for still-firing rules");
            }
            Ok::<_, crate::store::StoreError>(n)
        })
        .await
        .expect("repeat pass panicked")?;
        if n > 0 {
            self.shared.outbox_wake.notify_one();
        }
        Ok(n)
    }

    /// One retention pass (`global.retention`): prunes finished outbox entries and resolved
    /// incidents (with their events) older than the retention, in batches that each take the
    /// core lock briefly. Returns what was removed.
    pub async fn prune_pass(&self) -> Result<crate::store::Pruned, crate::store::StoreError> {
        let shared = self.shared.clone();
        let batch = self.tuning.prune_batch.max(1);
        tokio::task::spawn_blocking(move || {
            let retention = shared.config().global.retention;
            let cutoff = now_ms().saturating_sub(Ts::try_from(retention.as_millis()).unwrap_or(Ts::MAX));
            let mut total = crate::store::Pruned::default();
            loop {
                let p = shared.core.lock().expect("core lock").store.prune(cutoff, batch)?;
                total.outbox += p.outbox;
                total.incidents += p.incidents;
                total.events += p.events;
                if p.outbox < batch && p.incidents < batch || shared.shutdown.is_cancelled() {
                    break;
                }
            }
            if total != crate::store::Pruned::default() {
                tracing::info!(outbox = total.outbox, incidents = total.incidents, events = total.events, retention = %crate::config::PromDuration(retention), "pruned state older than the retention");
            }
            Ok(total)
        })
        .await
        .expect("retention pass panicked")
    }

    /// Leases the due entries and spawns their deliveries into `tasks`. Returns the next
    /// time an entry is due.
    async fn dispatch_due(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Option<Ts>, crate::store::StoreError> {
        let this = self.clone();
        let (jobs, next) = tokio::task::spawn_blocking(move || this.take_due())
            .await
            .expect("outbox read panicked")?;
        for job in jobs {
            let this = self.clone();
            tasks.spawn(async move { this.deliver(job).await });
        }
        Ok(next)
    }

    /// Under the core lock: reads due entries, applies `min_interval`, groups chat prompts,
    /// leases what will be delivered.
    fn take_due(&self) -> Result<(Vec<Job>, Option<Ts>), crate::store::StoreError> {
        let config = self.shared.config();
        let dry_run = self.shared.options.dry_run;
        let now = now_ms();
        let mut core = self.shared.core.lock().expect("core lock");
        let core = &mut *core;
        let (store, state) = (&mut core.store, &core.state);
        let inflight = self.inflight.lock().expect("inflight lock").clone();
        let due = store.due(now, self.tuning.batch + inflight.len())?;
        let mut jobs: Vec<Job> = Vec::new();
        let mut chat_groups: HashMap<(String, String), usize> = HashMap::new();
        let mut leases: Vec<(String, Ts)> = Vec::new();
        for e in due {
            if inflight.contains(&e.id) {
                // Still waiting for a permit: extend its lease.
                leases.push((
                    e.id.clone(),
                    now + self.tuning.lease_margin.as_millis() as Ts,
                ));
                continue;
            }
            let Some(receiver) = config.receivers.iter().find(|r| r.name == e.receiver) else {
                fail_entry(store, &e, &format!("receiver {:?} is no longer configured", e.receiver))?;
                continue;
            };
            let n = match crate::notify::receiver::parse_payloads([e.payload.as_str()], dry_run) {
                Ok(mut v) => v.remove(0),
                Err(err) => {
                    fail_entry(store, &e, &err.to_string())?;
                    continue;
                }
            };
            let last = store.last_delivered_for_subject(&e.subject, &e.receiver)?;
            if let Some(until) = held_by_min_interval(&n, last.as_ref(), now, config.notification.min_interval) {
                tracing::info!(receiver = %e.receiver, id = %e.id, until, "deferred by min_interval");
                store.mark(&e.id, OutboxState::Pending, e.attempts, until, Some(DEFERRED), None)?;
                continue;
            }
            if e.last_error.as_deref() == Some(DEFERRED) && !still_firing(state, &e.rule, &e.subject) {
                tracing::info!(receiver = %e.receiver, id = %e.id, "deferred prompt dropped: its rule no longer fires");
                metrics::counter!("herald_notifications_total", "receiver" => e.receiver.clone(), "outcome" => "suppressed").increment(1);
                store.mark(&e.id, OutboxState::Suppressed, e.attempts, e.not_before, Some("min_interval: the rule no longer fires"), None)?;
                continue;
            }
            let lease = now + (receiver.timeout + self.tuning.lease_margin).as_millis() as Ts;
            leases.push((e.id.clone(), lease));
            let prompt = n.status == crate::notify::Status::Firing
                && !crate::notify::plan::is_page_str(&n.action);
            if prompt && is_chat(&receiver.kind) {
                let key = (e.receiver.clone(), e.subject.clone());
                if let Some(&i) = chat_groups.get(&key) {
                    jobs[i].entries.push((e, n));
                    continue;
                }
                chat_groups.insert(key, jobs.len());
            }
            let eval_interval = config
                .rules
                .groups
                .iter()
                .find(|g| g.rules.iter().any(|r| r.name == e.rule))
                .map_or(config.global.evaluation_interval, |g| {
                    g.interval_or(config.global.evaluation_interval)
                });
            jobs.push(Job {
                receiver: receiver.clone(),
                eval_interval,
                entries: vec![(e, n)],
            });
        }
        // Lease in one transaction (grouped by lease time is unnecessary: one UPDATE each).
        for (until, ids) in
            leases
                .iter()
                .fold(HashMap::<Ts, Vec<String>>::new(), |mut m, (id, t)| {
                    m.entry(*t).or_default().push(id.clone());
                    m
                })
        {
            store.claim(&ids, until)?;
        }
        {
            let mut inf = self.inflight.lock().expect("inflight lock");
            for j in &jobs {
                for (e, _) in &j.entries {
                    inf.insert(e.id.clone());
                }
            }
        }
        metrics::gauge!("herald_outbox_pending").set(store.pending_count()? as f64);
        let next = store.next_due()?;
        Ok((jobs, next))
    }

    fn semaphore(&self, r: &Receiver) -> Arc<Semaphore> {
        let mut m = self.semaphores.lock().expect("semaphores lock");
        let slot = m.entry(r.name.clone()).or_insert_with(|| {
            (
                r.concurrency,
                Arc::new(Semaphore::new(r.concurrency.max(1) as usize)),
            )
        });
        if slot.0 != r.concurrency {
            *slot = (
                r.concurrency,
                Arc::new(Semaphore::new(r.concurrency.max(1) as usize)),
            );
        }
        slot.1.clone()
    }

    fn transport(&self, r: &Receiver) -> (&dyn Transport, bool) {
        if self.shared.options.dry_run && !r.dry_run_target {
            (self.recorder.as_ref(), true)
        } else if matches!(r.kind, ReceiverKind::Log) {
            (self.log.as_ref(), false)
        } else {
            (self.http.as_ref(), false)
        }
    }

    async fn deliver(&self, job: Job) {
        let sem = self.semaphore(&job.receiver);
        let permit = sem.acquire_owned().await;
        let now = chrono::Utc::now();
        let planner = self.shared.planner.read().expect("planner lock").clone();
        let ctx = BuildContext {
            now,
            eval_interval: job.eval_interval,
            scrubber: Some(planner.scrubber()),
            dry_run: self.shared.options.dry_run,
        };
        let notifications: Vec<Notification> = job.entries.iter().map(|(_, n)| n.clone()).collect();
        let (transport, recorded) = self.transport(&job.receiver);
        let mut statuses: Vec<Option<u16>> = Vec::new();
        let (outcome, peer_errors) = match build_requests(&job.receiver, &notifications, &ctx) {
            Err(e) => (Outcome::Permanent(e.to_string()), Vec::new()),
            Ok(reqs) => {
                let results =
                    futures_util::future::join_all(reqs.into_iter().map(|r| transport.send(r)))
                        .await;
                statuses = results
                    .iter()
                    .map(|r| r.as_ref().ok().map(|r| r.status))
                    .collect();
                let outcomes: Vec<Outcome> = results.iter().map(classify).collect();
                if matches!(job.receiver.kind, ReceiverKind::Alertmanager { .. }) {
                    combine_any(&outcomes)
                } else {
                    (
                        outcomes
                            .into_iter()
                            .next()
                            .unwrap_or(Outcome::Permanent("no request".into())),
                        Vec::new(),
                    )
                }
            }
        };
        drop(permit);
        let marks = self.outcome_marks(&job, &outcome, &peer_errors, &statuses, recorded);
        let shared = self.shared.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut core = shared.core.lock().expect("core lock");
            for m in &marks {
                core.store.mark(
                    &m.id,
                    m.state,
                    m.attempts,
                    m.not_before,
                    m.error.as_deref(),
                    m.delivered_at,
                )?;
            }
            core.store.pending_count()
        })
        .await
        .expect("mark panicked");
        match res {
            Ok(p) => metrics::gauge!("herald_outbox_pending").set(p as f64),
            Err(e) => {
                tracing::error!(receiver = %job.receiver.name, error = %e, "cannot record a delivery outcome; the entry will be delivered again")
            }
        }
        {
            let mut inf = self.inflight.lock().expect("inflight lock");
            for (e, _) in &job.entries {
                inf.remove(&e.id);
            }
        }
        self.shared.outbox_wake.notify_one();
    }

    fn outcome_marks(
        &self,
        job: &Job,
        outcome: &Outcome,
        peer_errors: &[String],
        statuses: &[Option<u16>],
        recorded: bool,
    ) -> Vec<Mark> {
        let now = now_ms();
        let name = job.receiver.name.clone();
        let status_text = statuses
            .iter()
            .map(|s| s.map_or_else(|| "-".to_string(), |s| s.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        // One delay for the whole job, so a group retries (and goes out) together.
        let first_attempts = job.entries.first().map_or(1, |(e, _)| e.attempts + 1);
        let delay = match outcome {
            Outcome::Retry { retry_after, .. } => self
                .tuning
                .backoff(first_attempts)
                .max(retry_after.unwrap_or_default()),
            _ => Duration::ZERO,
        };
        job.entries
            .iter()
            .map(|(e, _)| {
                let attempts = e.attempts + 1;
                match outcome {
                    Outcome::Delivered => {
                        let outcome = if recorded { "dry_run" } else { "sent" };
                        metrics::counter!("herald_notifications_total", "receiver" => name.clone(), "outcome" => outcome).increment(1);
                        if !recorded {
                            metrics::histogram!("herald_notification_delivery_seconds", "receiver" => name.clone()).record((now - e.created_at).max(0) as f64 / 1000.0);
                        }
                        for err in peer_errors {
                            tracing::warn!(receiver = %name, id = %e.id, error = %err, "an Alertmanager peer did not accept the alert");
                        }
                        let error = (!peer_errors.is_empty()).then(|| peer_errors.join("; "));
                        Mark { id: e.id.clone(), state: if recorded { OutboxState::DryRun } else { OutboxState::Sent }, attempts, not_before: e.not_before, error, delivered_at: Some(now) }
                    }
                    Outcome::Permanent(msg) => {
                        tracing::error!(receiver = %name, id = %e.id, status = %status_text, error = %msg, attempts, "notification failed permanently");
                        metrics::counter!("herald_notifications_total", "receiver" => name.clone(), "outcome" => "failed").increment(1);
                        Mark { id: e.id.clone(), state: OutboxState::Failed, attempts, not_before: e.not_before, error: Some(msg.clone()), delivered_at: None }
                    }
                    Outcome::Retry { error, .. } => {
                        let next = now.saturating_add(Ts::try_from(delay.as_millis()).unwrap_or(Ts::MAX));
                        if next > e.deadline {
                            let msg = format!("gave up after {attempts} attempts (retry deadline passed): {error}");
                            tracing::error!(receiver = %name, id = %e.id, status = %status_text, error = %msg, "notification failed");
                            metrics::counter!("herald_notifications_total", "receiver" => name.clone(), "outcome" => "failed").increment(1);
                            Mark { id: e.id.clone(), state: OutboxState::Failed, attempts, not_before: e.not_before, error: Some(msg), delivered_at: None }
                        } else {
                            tracing::warn!(receiver = %name, id = %e.id, status = %status_text, error = %error, attempts, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                            metrics::counter!("herald_notifications_total", "receiver" => name.clone(), "outcome" => "retried").increment(1);
                            Mark { id: e.id.clone(), state: OutboxState::Pending, attempts, not_before: next, error: Some(error.clone()), delivered_at: None }
                        }
                    }
                }
            })
            .collect()
    }
}

/// One outcome to write.
struct Mark {
    id: String,
    state: OutboxState,
    attempts: u32,
    not_before: Ts,
    error: Option<String>,
    delivered_at: Option<Ts>,
}

/// Gives up on an entry that can never be delivered: logs, counts and marks it `failed`.
/// Whether a rule instance (subject given by its canonical key) is firing now.
fn still_firing(state: &crate::engine::State, rule: &str, subject: &str) -> bool {
    state.instances.get(rule).is_some_and(|m| m.iter().any(|(s, i)| s.key() == subject && i.phase == crate::engine::Phase::Firing))
}

fn fail_entry(store: &mut crate::store::Store, e: &OutboxEntry, msg: &str) -> Result<(), crate::store::StoreError> {
    tracing::error!(receiver = %e.receiver, id = %e.id, error = %msg, "notification failed");
    metrics::counter!("herald_notifications_total", "receiver" => e.receiver.clone(), "outcome" => "failed").increment(1);
    store.mark(&e.id, OutboxState::Failed, e.attempts, e.not_before, Some(msg), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_exponential_and_the_cap() {
        let t = DeliveryTuning {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(1000),
            ..Default::default()
        };
        for _ in 0..200 {
            assert!(t.backoff(1) <= Duration::from_millis(100));
            assert!(t.backoff(3) <= Duration::from_millis(400));
            assert!(t.backoff(30) <= Duration::from_millis(1000));
        }
    }
}

