//! What the daemon's tasks share: the running configuration, the core (engine state and its
//! database, under one lock), readiness, shutdown, and the clock. The evaluation loop
//! ([`crate::daemon`]), the HTTP API ([`crate::http`]), the delivery worker
//! ([`crate::notify::worker`]) and the integrations each get an `Arc<Shared>` from
//! [`crate::daemon::run`]; none of them reaches into another.
//!
//! It owns the state's lifecycle in memory (load, roll back after a failed save, reload of the
//! configuration) but not the evaluation schedule or any I/O besides the state database.

mod core;
mod reload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;

pub use self::core::{load_state, Core};
pub use reload::{reload, ReloadError, ReloadSummary};

use crate::config::Config;
use crate::engine::{Engine, GroupInput, Ts};
use crate::notify::plan::Planner;
use crate::state_dir::StateDirError;
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

/// What every task of the daemon shares.
pub struct Shared {
    /// The running configuration (replaced atomically on reload).
    pub config: RwLock<Arc<Config>>,
    /// The notification planner of the running configuration.
    pub planner: RwLock<Arc<Planner>>,
    /// The engine state and its database. Taken only off the async workers
    /// (`spawn_blocking`), never across network I/O.
    pub core: Mutex<Core>,
    /// The engine (its template environment; the state is in `core`).
    pub engine: Engine,
    /// How this run was started (dry run, fresh state, reload requests).
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
    /// `daemon::catch_up`, which `run` does before anything else (if it cannot read the
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

/// The daemon's clock (one clock: [`crate::rehearsal`] owns it), here beside what it times.
pub use crate::rehearsal::now_ms;
