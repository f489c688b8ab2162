//! The command line: raw arguments (clap) → validated inputs → one library call per command.
//! Exit codes: 0 success, 1 a check or test failed, 2 bad usage or unreadable input.
//! This is the only layer that prints for the user and the only one using `anyhow`.

mod check;
mod gameday;
mod live_source;
mod logging;
mod replay;
mod run;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Herald: incident-communications decisions from SLIs and ticket counts.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: evaluate rules, record decisions and incidents, serve the API.
    Run(RunArgs),
    /// Validate a configuration (with its rule files) or rule files alone; reports every problem.
    Check(CheckArgs),
    /// Run rule unit tests on synthetic signals.
    Test(TestArgs),
    /// Evaluate the rules over a past time range from Prometheus's history; never sends.
    Replay(replay::ReplayArgs),
    /// Rehearse a scripted incident with the live rules; always dry-run ("[GAME DAY]").
    Gameday(gameday::GamedayArgs),
}

/// `herald run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Evaluate and record everything as live, but call no receiver. A dry run keeps its own
    /// state in `state_dir/dry-run.db`, so it never marks the live state as already paged.
    #[arg(long)]
    pub dry_run: bool,
    /// If the state database is empty or corrupt, move it aside (renamed, never deleted) and
    /// start with an empty state instead of refusing to start. A healthy database is kept.
    #[arg(long)]
    pub fresh_state: bool,
    /// Log line format: logfmt (`ts=… level=info msg="…"`) or json; one line per event.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: logging::LogFormat,
    /// Lowest level logged. RUST_LOG, when set, overrides it with a per-module filter.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    pub log_level: logging::LogLevel,
}

/// `herald check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file to validate, with every rule file it names.
    #[arg(long, short = 'c', conflicts_with = "files")]
    pub config: Option<PathBuf>,
    /// Rule files to validate on their own.
    pub files: Vec<PathBuf>,
}

/// `herald test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test files: each names rule files and lists tests (synthetic series, incident events, expected firing rules).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Only run tests whose name matches this regex.
    #[arg(long)]
    pub run: Option<String>,
    /// Explain every evaluation of this rule: each signal's value (or why it has none), each
    /// clause of `when` (true / false / unknown), `for` / `keep_firing_for` progress, state.
    #[arg(long, value_name = "RULE")]
    pub explain: Option<String>,
}

/// Exit code for a failed check or test.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for bad usage or unreadable input.
pub const EXIT_USAGE: u8 = 2;

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::run(a),
        Command::Test(a) => test::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Gameday(a) => gameday::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
