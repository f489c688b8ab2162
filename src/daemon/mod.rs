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
pub mod rehearsal;
mod reload;
mod samples;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use eval::{evaluate_group_once, EvalReport, SignalCache, Tickets};
pub use reload::{reload, ReloadError, ReloadSummary};

use crate::config::Config;
use crate::engine::{Engine, GroupInput, State, Ts};
use crate::notify::plan::Planner;
use crate::source::MetricsSource;
use crate::state_dir::{self, Database, StateDirError};
use crate::store::{SaveHealth, Store, StoreError};

/// Options of a run that are not configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Everything as live, but no receiver transport is called.
    pub dry_run: bool,
    /// Each notification reloads the configuration, as `POST /-/reload` does (the CLI wires
    /// SIGHUP to it).
    pub reload_requests: Option<Arc<tokio::sync::Notify>>,
    /// Move an empty or corrupt state database aside and start with an empty one, instead
    /// of refusing to start (`--fresh-state`).
    pub fresh_state: bool,
}

/// The engine state and its durable copy, locked together so they never drift apart.
///
/// An evaluation writes only the instance rows that changed; the in-memory state is never
/// copied. When a commit fails, [`Core::roll_back`] reloads the state from the database (the
/// last committed truth), so the next evaluation makes the same decisions again.
pub struct Core {
    pub state: State,
    pub store: Store,
    /// Groups whose instances differ from their rows in ways no step reported (timers shifted
    /// over a restart's downtime): their next commit rewrites all their rows.
    pub rewrite_groups: HashSet<String>,
    /// The state could not be reloaded after a failed commit: nothing is decided or applied
    /// until [`Core::ensure_loaded`] succeeds.
    pub stale: bool,
}

impl Core {
    /// A core over a freshly loaded state, whose groups' rows are rewritten at their first
    /// commit.
    pub fn new(state: State, store: Store, config: &Config) -> Core {
        let rewrite_groups = config.rules.groups.iter().map(|g| g.name.clone()).collect();
        Core { state, store, rewrite_groups, stale: false }
    }

    /// Throws away uncommitted changes: reloads the state from the database. If even that
    /// fails, the core is marked stale and refuses work until a reload succeeds.
    pub fn roll_back(&mut self, config: &Config) {
        self.stale = true;
        if let Err(e) = self.ensure_loaded(config) {
            tracing::error!(error = %e, "cannot reload the state after a failed save; evaluations and events wait until it can be read");
        }
    }

    /// Reloads a stale state (see [`Core::roll_back`]); an error while it cannot be read.
    pub fn ensure_loaded(&mut self, config: &Config) -> Result<(), StoreError> {
        if self.stale {
            let (state, _) = load_state(&self.store, config)?;
            self.state = state;
            self.stale = false;
        }
        Ok(())
    }
}

/// Loads the engine state as the last commit left it, with the groups' last evaluation times.
///
/// An instance row is written only when it changes, so its `last_eval` is when it last
/// changed; every evaluation of a group steps all its live instances, so `last_eval` is moved
/// up to the group's last committed evaluation.
pub fn load_state(store: &Store, config: &Config) -> Result<(State, HashMap<String, Ts>), StoreError> {
    let mut state = store.load_state()?;
    let last = store.group_evals()?;
    for g in &config.rules.groups {
        if let Some(&at) = last.get(&g.name) {
            for r in &g.rules {
                if let Some(m) = state.instances.get_mut(&r.name) {
                    m.values_mut().for_each(|i| i.last_eval = i.last_eval.max(at));
                }
            }
        }
    }
    Ok((state, last))
}

/// What every task of the daemon shares.
pub struct Shared {
    /// The running configuration (replaced atomically on reload).
    pub config: RwLock<Arc<Config>>,
    /// The notification planner of the running configuration.
    pub planner: RwLock<Arc<Planner>>,
    pub core: Mutex<Core>,
    pub engine: Engine,
    pub options: RunOptions,
    /// Woken when the outbox has new entries.
    pub outbox_wake: tokio::sync::Notify,
    /// True once every group has been evaluated once (readiness).
    pub ready: AtomicBool,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Bumped after every successful reload; the evaluation loop restarts its group tasks.
    pub reloaded: tokio::sync::watch::Sender<u64>,
    /// Whether the last write to the state database failed (readiness reads it lock-free).
    pub saves: SaveHealth,
    /// Each group's last evaluated tick (from the store at start, then from every evaluation):
    /// a group resumes on its schedule without evaluating the same tick twice, after a restart
    /// and after a reload (so a reload storm never becomes a query storm).
    pub resume: Mutex<HashMap<String, Ts>>,
    /// Each group's last evaluation: its time and input, for `GET /api/v1/rules/{rule}/explain`.
    pub last_inputs: Mutex<HashMap<String, (Ts, Arc<GroupInput>)>>,
    /// (rule, subject) pairs someone asked to explain: each later evaluation of the pair is
    /// recorded (the last [`EXPLAIN_HISTORY`]), so the API shows the last evaluations.
    pub explain_watch: Mutex<HashMap<(String, crate::engine::Subject), std::collections::VecDeque<crate::engine::explain::Explanation>>>,
    /// Missed evaluations to replay before the loop starts: (group index, first missed time).
    pub catch_up: Mutex<Vec<(usize, Ts)>>,
}

/// Evaluations kept per explained (rule, subject).
pub const EXPLAIN_HISTORY: usize = 10;
/// Most (rule, subject) pairs recorded for explain at once (the oldest request is dropped).
pub const EXPLAIN_WATCH_MAX: usize = 64;

impl Shared {
    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }
    /// Whether readiness has been reached.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    /// Whether the last write to the state database failed.
    pub fn saves_failing(&self) -> bool {
        self.saves.failing()
    }
}

impl Shared {
    /// Builds the shared state from a configuration and an opened store: loads the engine
    /// state; downtime older than `global.catch_up` is unknown (it neither advances `for` nor
    /// counts down `keep_firing_for`), and the more recent missed evaluations are planned for
    /// [`catch_up::catch_up`], which `run` does before anything else (if it cannot read the
    /// history, that time is unknown too). Tests use it to drive tasks in-process.
    pub fn new(config: Config, store: Store, options: RunOptions) -> Result<Shared, DaemonError> {
        let (mut state, last) = load_state(&store, &config)?;
        let now = now_ms();
        let bound = config.global.catch_up.as_millis() as Ts;
        let mut catch_up = Vec::new();
        for (gi, g) in config.rules.groups.iter().enumerate() {
            if let Some(&at) = last.get(&g.name) {
                let rules: Vec<&str> = g.rules.iter().map(|r| r.name.as_str()).collect();
                // Downtime beyond `global.catch_up` is unknown; the rest is replayed from
                // history before the loop starts (see `catch_up`).
                let resume = if bound > 0 { at.max(now - bound) } else { now };
                state.hold_timers(&rules, resume);
                let interval = g.interval_or(config.global.evaluation_interval).as_millis() as Ts;
                if now - resume > interval {
                    catch_up.push((gi, resume + interval));
                }
                tracing::info!(group = %g.name, down_for_s = (now - at) / 1000, catch_up_s = (now - resume) / 1000, "resuming group");
            }
        }
        tracing::info!(incidents = state.incidents.len(), next_incident = state.next_incident_seq + 1, "state loaded");
        let planner = Planner::new(&config)?;
        let saves = store.save_health();
        let core = Core::new(state, store, &config);
        Ok(Shared {
            planner: RwLock::new(Arc::new(planner)),
            config: RwLock::new(Arc::new(config)),
            core: Mutex::new(core),
            engine: Engine::new(),
            options,
            outbox_wake: tokio::sync::Notify::new(),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            reloaded: tokio::sync::watch::Sender::new(0),
            saves,
            resume: Mutex::new(last),
            last_inputs: Mutex::new(HashMap::new()),
            explain_watch: Mutex::new(HashMap::new()),
            catch_up: Mutex::new(catch_up),
        })
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateDirError),
    #[error("invalid content filter: {0}")]
    Scrub(#[from] crate::notify::ScrubError),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// Unix milliseconds now: the wall clock, or a game day's accelerated clock ([`rehearsal`]).
pub fn now_ms() -> Ts {
    rehearsal::now_ms()
}

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

