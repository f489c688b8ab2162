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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use eval::{evaluate_group_once, EvalReport, SignalCache, Tickets};
pub use reload::{reload, ReloadError, ReloadSummary};

use crate::config::Config;
use crate::engine::{Engine, State, Ts};
use crate::notify::plan::Planner;
use crate::source::MetricsSource;
use crate::store::{Store, StoreError};

/// Options of a run that are not configuration.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Everything as live, but no receiver transport is called.
    pub dry_run: bool,
    /// Each notification reloads the configuration, as `POST /-/reload` does (the CLI wires
    /// SIGHUP to it).
    pub reload_requests: Option<Arc<tokio::sync::Notify>>,
}

/// The engine state and its durable copy, locked together so they never drift apart.
pub struct Core {
    pub state: State,
    pub store: Store,
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
    /// Missed evaluations to replay before the loop starts: (group index, first missed time).
    pub catch_up: Mutex<Vec<(usize, Ts)>>,
}

impl Shared {
    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }
    /// Whether readiness has been reached.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Builds the shared state from a configuration and an opened store: loads the engine
    /// state; downtime older than `global.catch_up` is unknown (it neither advances `for` nor
    /// counts down `keep_firing_for`), and the more recent missed evaluations are planned for
    /// [`catch_up::catch_up`], which `run` does before anything else (if it cannot read the
    /// history, that time is unknown too). Tests use it to drive tasks in-process.
    pub fn new(config: Config, store: Store, options: RunOptions) -> Result<Shared, DaemonError> {
        let mut state = store.load_state()?;
        let last = store.group_evals()?;
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
        Ok(Shared {
            planner: RwLock::new(Arc::new(planner)),
            config: RwLock::new(Arc::new(config)),
            core: Mutex::new(Core { state, store }),
            engine: Engine::new(),
            options,
            outbox_wake: tokio::sync::Notify::new(),
            ready: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            reloaded: tokio::sync::watch::Sender::new(0),
            catch_up: Mutex::new(catch_up),
        })
    }
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
pub async fn run<S: MetricsSource + 'static>(
    config: Config,
    listener: TcpListener,
    source: Arc<S>,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let store = Store::open_dir(&config.global.state_dir)?;
    let shared = Arc::new(Shared::new(config, store, options)?);
    let token = shared.shutdown.clone();
    catch_up::catch_up(&shared, source.as_ref()).await;

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(evaluation_loop(shared.clone(), source.clone()));
    tasks.spawn(crate::notify::worker::run(shared.clone()));
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
    loop {
        reloads.mark_unchanged();
        let config = shared.config();
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
    let mut tick = tokio::time::interval(rehearsal::real(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut cache = SignalCache::default();
    let mut first_done = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                evaluate_group_once(&shared, source.as_ref(), &tickets, &mut cache, &config, gi, now_ms()).await;
                if !first_done {
                    first_done = true;
                    if first_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                        shared.ready.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
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
