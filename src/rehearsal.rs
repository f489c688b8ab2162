//! Rehearsal mode for `herald gameday`: an accelerated clock and the "[GAME DAY]" marker.
//!
//! A game day runs the real daemon (rules, incidents, API, delivery worker) in its own process.
//! With `--speed N`, the daemon's clock ([`now_ms`]) runs N times faster than the wall
//! clock from the moment the game day starts, and group intervals are divided by N in real
//! time, so `for`, incident ages and targets play out in minutes of scenario time while the
//! participants' API events are stamped on the same clock. Set once per process, before the
//! daemon starts; the live daemon never sets it (real time, "[DRY RUN]" marker).

use std::sync::OnceLock;
use std::time::Duration;

use crate::engine::Ts;

/// The rehearsal settings of this process.
#[derive(Clone, Debug)]
pub struct Rehearsal {
    /// Wall-clock ms when the game day started (the clocks agree at that instant).
    pub origin: Ts,
    /// Scenario time per real time.
    pub speed: f64,
    /// What messages are prefixed with instead of "[DRY RUN]".
    pub prefix: &'static str,
}

static REHEARSAL: OnceLock<Rehearsal> = OnceLock::new();

/// Enters rehearsal mode (once per process; later calls are ignored).
pub fn start(speed: f64, prefix: &'static str) -> &'static Rehearsal {
    REHEARSAL.get_or_init(|| Rehearsal { origin: wall_ms(), speed: speed.max(1.0), prefix })
}

/// The rehearsal settings, when in rehearsal mode.
pub fn current() -> Option<&'static Rehearsal> {
    REHEARSAL.get()
}

/// Wall-clock unix ms.
pub fn wall_ms() -> Ts {
    chrono::Utc::now().timestamp_millis()
}

/// The daemon's clock: the wall clock, or the accelerated one in rehearsal mode.
pub fn now_ms() -> Ts {
    let wall = wall_ms();
    match REHEARSAL.get() {
        Some(r) => r.origin + ((wall - r.origin) as f64 * r.speed) as Ts,
        None => wall,
    }
}

/// How long a span of the daemon's time lasts in real time.
pub fn real(d: Duration) -> Duration {
    match REHEARSAL.get() {
        Some(r) => Duration::from_secs_f64(d.as_secs_f64() / r.speed).max(Duration::from_millis(1)),
        None => d,
    }
}

/// The marker of rehearsal messages: "[GAME DAY]" in a game day, else "[DRY RUN]".
pub fn prefix() -> &'static str {
    REHEARSAL.get().map_or(crate::notify::receiver::DRY_RUN_PREFIX, |r| r.prefix)
}
