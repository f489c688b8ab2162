//! Configuration: raw YAML → validated model, with located errors.
//!
//! Loading happens in two stages (as in ripgrep's low/high args): [`yaml`] mirrors the files
//! exactly (serde-saphyr, unknown keys refused, spans kept), then [`rules`] and [`daemon`]
//! validate everything and build the model the engine runs, collecting *every* problem as a
//! [`Diagnostic`] before refusing. Nothing here does network I/O.

pub mod daemon;
mod diag;
mod duration;
pub mod rules;
pub mod template;
pub mod yaml;

pub use diag::{Diagnostic, Diagnostics, Level};
pub use duration::{DurationError, PromDuration};
pub use rules::{load_rule_files, parse_rule_sources, Action, Group, Location, Rule, RuleSet, Severity, Signal, SignalSource};
pub use daemon::{load_config, Config};
