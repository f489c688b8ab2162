//! Configuration reload (`POST /-/reload`, SIGHUP): read the file the running configuration
//! came from, validate it completely, and swap it in only when it is valid. The evaluation
//! loop restarts its group tasks on the new configuration; rule instances and incidents stay
//! (instances are keyed by rule name, so a rule that keeps its name keeps its state).

use std::sync::Arc;

use crate::config::daemon::process_env;
use crate::config::{load_config, Diagnostics};
use crate::notify::plan::Planner;
use crate::notify::ScrubError;

use super::Shared;

/// Why a reload was refused. The running configuration is kept in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has errors; every diagnostic is included (`path:line:col: message`).
    #[error("invalid configuration:\n{0}")]
    Invalid(Diagnostics),
    /// The content filter does not compile.
    #[error("invalid content filter: {0}")]
    Scrub(#[from] ScrubError),
    /// Loading the configuration failed unexpectedly (a bug; the message says where).
    #[error("internal error while loading the configuration: {0}")]
    Internal(String),
}

/// What a successful reload loaded.
#[derive(Clone, Debug)]
pub struct ReloadSummary {
    /// Rule groups now running.
    pub groups: usize,
    /// Rules now running.
    pub rules: usize,
    /// Warnings about the new file, as `path:line:col: message`.
    pub warnings: Vec<String>,
    /// Settings that changed but only take effect after a restart (listen, state_dir).
    pub needs_restart: Vec<String>,
}

/// Reloads the configuration from `shared.config().path`. Blocking (reads files): call it
/// from `spawn_blocking` in async code. Sets `herald_config_last_reload_successful`.
pub fn reload(shared: &Shared) -> Result<ReloadSummary, ReloadError> {
    let old = shared.config();
    // Whatever goes wrong while loading — even a bug that panics — the running configuration
    // stays: nothing is swapped until the new one is complete.
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_config(&old.path, &process_env)
            .map_err(ReloadError::Invalid)
            .and_then(|(cfg, warnings)| Ok((Planner::new(&cfg)?, cfg, warnings)))
    }));
    let result = loaded.unwrap_or_else(|panic| {
        let msg = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(ReloadError::Internal(msg.unwrap_or_else(|| "panic".into())))
    });
    let (planner, cfg, warnings) = match result {
        Ok(r) => r,
        Err(e) => {
            crate::telemetry::set_reload_successful(false);
            tracing::error!(path = %old.path.display(), error = %e, "reload refused; keeping the running configuration");
            return Err(e);
        }
    };
    let mut needs_restart = Vec::new();
    if cfg.global.listen != old.global.listen {
        needs_restart.push(format!("global.listen ({} → {})", old.global.listen, cfg.global.listen));
    }
    if cfg.global.state_dir != old.global.state_dir {
        needs_restart.push(format!("global.state_dir ({} → {})", old.global.state_dir.display(), cfg.global.state_dir.display()));
    }
    for n in &needs_restart {
        tracing::warn!(setting = %n, "changed setting takes effect only after a restart");
    }
    let summary = ReloadSummary {
        groups: cfg.rules.groups.len(),
        rules: cfg.rules.groups.iter().map(|g| g.rules.len()).sum(),
        warnings: warnings.0.iter().map(|d| d.to_string()).collect(),
        needs_restart,
    };
    crate::telemetry::register_config_series(&cfg);
    // Rules may have moved between groups: each group's next commit rewrites all its rows.
    let groups: Vec<String> = cfg.rules.groups.iter().map(|g| g.name.clone()).collect();
    {
        // Both under their write locks at once, so no reader sees a config with another planner.
        let mut c = shared.config.write().expect("config lock");
        let mut p = shared.planner.write().expect("planner lock");
        *c = Arc::new(cfg);
        *p = Arc::new(planner);
    }
    shared.core.lock().expect("core lock").rewrite_groups.extend(groups);
    shared.reloaded.send_modify(|generation| *generation += 1);
    crate::telemetry::set_reload_successful(true);
    tracing::info!(groups = summary.groups, rules = summary.rules, "configuration reloaded");
    Ok(summary)
}
