//! The live daemon (`herald run`): evaluates every group on its interval against live sources,
//! commits state and notifications together, and runs the HTTP API and the delivery worker.
//!
//! Shape (mini-redis style): [`run`] takes its I/O already built — the config, a bound
//! listener, a metrics source — and a shutdown future, so tests drive it in-process.
//! Every group runs in its own task: query each signal once → [`Engine::evaluate_group`] →
//! plan notifications → one SQLite transaction ([`Store::commit`]) → wake the delivery worker.
//! If the commit fails, the in-memory state is rolled back, so the next evaluation makes the
//! same decision again: nothing is lost and nothing is announced that is not recorded.

mod catch_up;
mod eval;
mod samples;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use eval::{evaluate_group_once, EvalReport, SignalCache, Tickets};
pub use crate::shared::{DaemonError, RunOptions};

use crate::config::Config;
use crate::engine::Ts;
use crate::rehearsal;
use crate::shared::{now_ms, reload, Shared};
use crate::source::MetricsSource;
use crate::state_dir::{self, Database};

/// Opens the state, resumes where the last run stopped, and runs until `shutdown` resolves.
///
/// The state is `state_dir/state.db`, or `state_dir/dry-run.db` for a dry run, locked for
/// this process and checked first (see [`crate::state_dir`]): an empty or corrupt database, or
/// one another daemon holds, stops the start with an error naming the file.
pub async fn run<S: MetricsSource + 'static>(
    config: Config,
    listener: TcpListener,
    source: Arc<S>,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let dir = config.global.state_dir.clone();
    let db = Database::for_run(options.dry_run);
    let fresh = options.fresh_state;
    let opened = tokio::task::spawn_blocking(move || state_dir::open(&dir, db, fresh))
        .await
        .map_err(|e| DaemonError::Http(std::io::Error::other(e)))??;
    tracing::info!(path = %opened.path.display(), lock = %opened.lock.path().display(), "state database opened");
    // Held until `run` returns; the OS releases it if the process dies.
    let _lock = opened.lock;
    let shared = Arc::new(Shared::new(config, opened.store, options)?);
    let token = shared.shutdown.clone();
    catch_up::catch_up(&shared, source.as_ref()).await;

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(evaluation_loop(shared.clone(), source.clone()));
    tasks.spawn(crate::notify::worker::run(shared.clone()));
    tasks.spawn(crate::integrations::run(shared.clone()));
    if let Some(requests) = shared.options.reload_requests.clone() {
        tasks.spawn(reload_on_request(shared.clone(), requests));
    }
    let http = tokio::spawn(crate::http::serve(shared.clone(), listener));

    shutdown.await;
    tracing::info!("shutting down");
    token.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.is_err() {
        tracing::warn!("some tasks did not stop within 10s");
    }
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DaemonError::Http(e)),
        Err(e) => Err(DaemonError::Http(std::io::Error::other(e))),
    }
}

/// Runs every group on its interval until shutdown. Restarts the per-group tasks when the
/// configuration is reloaded: a group task finishes the evaluation it is in, then stops.
async fn evaluation_loop<S: MetricsSource + 'static>(shared: Arc<Shared>, source: Arc<S>) {
    let mut reloads = shared.reloaded.subscribe();
    // Every group's health series exist from start (and from the reload that adds the group).
    crate::telemetry::install();
    let mut registered: HashSet<String> = HashSet::new();
    loop {
        reloads.mark_unchanged();
        let config = shared.config();
        for g in config.rules.groups.iter().filter(|g| registered.insert(g.name.clone())) {
            crate::telemetry::register_group(g);
        }
        let tickets = Arc::new(eval::ticket_clients(&config, &source));
        let stop = shared.shutdown.child_token();
        let mut set = tokio::task::JoinSet::new();
        // Ready once every group has been evaluated once (stays ready across reloads).
        let first_pending = Arc::new(AtomicUsize::new(config.rules.groups.len()));
        if config.rules.groups.is_empty() {
            shared.ready.store(true, Ordering::Relaxed);
        }
        for gi in 0..config.rules.groups.len() {
            let first = first_pending.clone();
            set.spawn(group_task(shared.clone(), source.clone(), tickets.clone(), config.clone(), gi, stop.clone(), first));
        }
        let reloaded = tokio::select! {
            _ = shared.shutdown.cancelled() => false,
            r = reloads.changed() => r.is_ok(),
        };
        stop.cancel();
        while set.join_next().await.is_some() {}
        if !reloaded || shared.shutdown.is_cancelled() {
            break;
        }
        tracing::info!("restarting rule groups on the reloaded configuration");
    }
}

/// Evaluates one group on its interval until `stop` is cancelled.
async fn group_task<S: MetricsSource + 'static>(
    shared: Arc<Shared>,
    source: Arc<S>,
    tickets: Arc<Tickets<S>>,
    config: Arc<Config>,
    gi: usize,
    stop: CancellationToken,
    first_pending: Arc<AtomicUsize>,
) {
    let group = &config.rules.groups[gi];
    let interval = group.interval_or(config.global.evaluation_interval);
    let schedule = Schedule::new(&group.name, interval);
    // The first tick: the latest one at or before now (so a fresh start evaluates at once),
    // unless the previous run — or this one, before a reload — already evaluated it.
    let mut tick = schedule.floor(now_ms());
    if shared.resume.lock().expect("resume lock").get(&group.name).is_some_and(|last| *last >= tick) {
        tick += schedule.every;
    }
    let mut cache = SignalCache::default();
    let mut first_done = false;
    loop {
        let wait = tick - now_ms();
        if wait > 0 {
            tokio::select! {
                _ = stop.cancelled() => break,
                // A game day's clock runs faster: its ticks are that much closer in real time.
                _ = tokio::time::sleep(rehearsal::real(Duration::from_millis(wait as u64))) => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
        // The engine sees the tick's time, not the clock read: jitter never costs a `for`
        // an extra evaluation.
        evaluate_group_once(&shared, source.as_ref(), &tickets, &mut cache, &config, gi, tick).await;
        shared.resume.lock().expect("resume lock").insert(group.name.clone(), tick);
        if !first_done {
            first_done = true;
            if first_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.ready.store(true, Ordering::Relaxed);
            }
        }
        // The next tick; when an evaluation overran, missed ticks are skipped.
        tick = (tick + schedule.every).max(schedule.floor(now_ms()));
    }
}

/// A group's evaluation schedule: ticks at `offset + k × every` (unix ms), as Prometheus
/// aligns rule groups. The offset is a stable hash of the group name, so groups with the
/// same interval do not all query at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub every: Ts,
    pub offset: Ts,
}

impl Schedule {
    /// The schedule of a group.
    pub fn new(group: &str, interval: Duration) -> Schedule {
        use sha2::{Digest, Sha256};
        let every = (interval.as_millis() as Ts).max(1);
        let h = Sha256::digest(group.as_bytes());
        let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        Schedule { every, offset: (n % every as u64) as Ts }
    }

    /// The latest tick at or before `t`.
    pub fn floor(&self, t: Ts) -> Ts {
        (t - self.offset).div_euclid(self.every) * self.every + self.offset
    }
}

/// Reloads the configuration on every request until shutdown.
async fn reload_on_request(shared: Arc<Shared>, requests: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = requests.notified() => {
                let s = shared.clone();
                // Errors are logged (and counted) by `reload`.
                let _ = tokio::task::spawn_blocking(move || reload(&s)).await;
            }
        }
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Ticks are aligned and `floor` is the latest one at or before t.
        #[test]
        fn floor_is_the_latest_aligned_tick(t in 0i64..4_000_000_000_000, every_s in 1u64..3600, name in "[a-z]{1,8}") {
            let s = Schedule::new(&name, Duration::from_secs(every_s));
            let f = s.floor(t);
            prop_assert!(f <= t && t - f < s.every);
            prop_assert_eq!((f - s.offset).rem_euclid(s.every), 0);
            prop_assert_eq!(s, Schedule::new(&name, Duration::from_secs(every_s)), "stable across runs");
        }

        /// Whatever the jitter of the wake-ups (up to half an interval late), the evaluation
        /// times are exactly one interval apart, so `for: 30s` at 15s fires on the third
        /// true evaluation, never the fourth (regression: 29.997s < 30s).
        #[test]
        fn jitter_never_costs_an_evaluation(jitters in proptest::collection::vec(0i64..7_500, 3..10)) {
            let s = Schedule::new("comms-lead", Duration::from_secs(15));
            let mut tick = s.floor(1_700_000_000_000);
            let mut times = Vec::new();
            for j in jitters {
                let woke = tick + j; // the clock read when the task wakes
                times.push(tick);
                tick = (tick + s.every).max(s.floor(woke));
            }
            for w in times.windows(2) {
                prop_assert_eq!(w[1] - w[0], 15_000);
            }
            let mut state = None;
            let mut fired_at = None;
            for (i, t) in times.iter().enumerate() {
                let (next, change) = crate::engine::instance::step(state.take(), crate::expr::Truth::True, *t, 30_000, 0);
                state = next;
                if change.is_some_and(|c| c.1 == crate::engine::Phase::Firing) && fired_at.is_none() {
                    fired_at = Some(i);
                }
            }
            prop_assert_eq!(fired_at, Some(2));
        }
    }
}

