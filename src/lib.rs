//! Herald: turns observability signals into incident-communications decisions.
//!
//! The crate is a library with a thin binary (`src/main.rs`). See `ARCHITECTURE.md` for the
//! bird's-eye view, the code map and the invariants.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod expr;
pub mod gameday;
pub mod http;
pub mod notify;
pub mod replay;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod testing;
