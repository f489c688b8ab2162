//! The core: the engine state and its durable copy, locked together.

use std::collections::{HashMap, HashSet};

use crate::config::Config;
use crate::engine::{State, Ts};
use crate::store::{Store, StoreError};

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
