//! Herald: turns observability signals into incident-communications decisions.
//!
//! The crate is a library with a thin binary (`src/main.rs`). See `ARCHITECTURE.md` for the
//! bird's-eye view, the code map and the invariants.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod drafts;
pub mod engine;
pub mod expr;
pub mod gameday;
pub mod http;
pub mod integrations;
pub mod notify;
pub mod rehearsal;
pub mod replay;
pub mod source;
pub mod state_dir;
pub mod store;
pub mod shard;
pub mod shared;
pub mod telemetry;
pub mod testing;
