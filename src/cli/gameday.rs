//! `herald gameday SCENARIO.yaml --config herald.yaml [--speed N]`: run the live rules against a
//! scripted incident, always dry-run — messages only to `dry_run_target` receivers, marked
//! "[GAME DAY]"; state in `state_dir/gameday/` (started afresh). Participants ack and post
//! updates through the normal API while it runs. At the end: a report of the comms figures
//! against their targets, printed and written as JSON next to the scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::EXIT_USAGE;
use crate::config::{self, daemon::process_env};
use crate::daemon::{self, RunOptions};
use crate::rehearsal;
use crate::engine::Ts;
use crate::gameday::{self, ScenarioSource};
use crate::replay::report::{rfc3339, show_duration, IncidentSummary};
use crate::replay::summarize;

/// `herald gameday`.
#[derive(Debug, clap::Args)]
pub struct GamedayArgs {
    /// The scenario: signal overrides in the `herald test` input format.
    pub scenario: PathBuf,
    /// The configuration whose rules and receivers are rehearsed.
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Run scenario time N times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Serve the API here instead of `global.listen` (e.g. while the live daemon runs).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}


#[derive(Serialize)]
struct Report<'a> {
    scenario: &'a str,
    speed: f64,
    started_at: String,
    ended_at: String,
    incidents: Vec<ReportIncident<'a>>,
}

#[derive(Serialize)]
struct ReportIncident<'a> {
    subject: Option<&'a crate::engine::Subject>,
    severity: Option<&'static str>,
    opened_at: String,
    resolved_at: Option<String>,
    #[serde(flatten)]
    summary: &'a IncidentSummary,
}

pub fn run(args: GamedayArgs) -> anyhow::Result<ExitCode> {
    if !(args.speed >= 1.0 && args.speed.is_finite()) {
        eprintln!("herald gameday: --speed must be at least 1");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let mut config = match config::load_config(&args.config, &process_env) {
        Ok((cfg, _)) => cfg,
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(super::check::exit_code(&diags)));
        }
    };
    let scenario = match gameday::load_scenario(&args.scenario, &config.rules) {
        Ok(s) => s,
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(super::check::exit_code(&diags)));
        }
    };
    // Its own database, started afresh; the live one is never opened.
    let state_dir = config.global.state_dir.join("gameday");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir).with_context(|| format!("cannot clear {}", state_dir.display()))?;
    }
    config.global.state_dir = state_dir.clone();
    config.global.catch_up = Duration::ZERO;
    if let Some(l) = args.listen {
        config.global.listen = l;
    }
    let targets: Vec<&str> = config.receivers.iter().filter(|r| r.dry_run_target).map(|r| r.name.as_str()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("cannot start the async runtime")?;
    let listen = config.global.listen;
    let listener = match runtime.block_on(tokio::net::TcpListener::bind(listen)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald gameday: cannot listen on {listen}: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let live = match super::live_source::LiveSource::new(config.prometheus.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald gameday: cannot set up the prometheus client: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    crate::telemetry::install();
    let r = rehearsal::start(args.speed, "[GAME DAY]");
    let start = crate::shared::now_ms();
    let source = Arc::new(ScenarioSource::new(live, &scenario, &config.rules, start));
    let real = rehearsal::real(Duration::from_millis(scenario.duration as u64));
    println!(
        "[GAME DAY] {}: {} of scenario time at speed {} ({} real), {} live data; API on http://{}; messages only to {}; state in {}",
        scenario.name,
        show_duration(scenario.duration),
        r.speed,
        show_duration(real.as_millis() as Ts),
        if scenario.replace { "instead of" } else { "over" },
        listener.local_addr().unwrap_or(listen),
        if targets.is_empty() { "no receiver (none is marked dry_run_target)".to_string() } else { targets.join(", ") },
        state_dir.display()
    );
    let shutdown = async move {
        tokio::select! {
            _ = tokio::time::sleep(real) => {}
            _ = tokio::signal::ctrl_c() => eprintln!("herald gameday: interrupted; reporting what happened so far"),
        }
    };
    let options = RunOptions { dry_run: true, reload_requests: None, fresh_state: false };
    if let Err(e) = runtime.block_on(daemon::run(config, listener, source, options, shutdown)) {
        eprintln!("herald gameday: {e}");
        return Ok(ExitCode::from(super::EXIT_FAILED));
    }
    let end = crate::shared::now_ms();

    // The game day runs dry, so the daemon kept its state in the directory's dry-run database.
    let db = state_dir.join(crate::state_dir::Database::DryRun.file_name());
    let store = crate::store::Store::open(&db).context("cannot read the game day's state")?;
    let records = gameday::records(&store, start).context("cannot read the game day's incidents")?;
    let summaries: Vec<IncidentSummary> = records.iter().map(|r| summarize(r, end)).collect();
    let mut text = format!("\n[GAME DAY] {} report, {} → {} (scenario time)\n", scenario.name, rfc3339(start), rfc3339(end));
    if records.is_empty() {
        text.push_str("No incident was opened.\n");
    }
    for (r, s) in records.iter().zip(&summaries) {
        let subject = r.subject.as_ref().map(|s| s.to_string()).unwrap_or_default();
        text.push_str(&format!(
            "\n{} {subject} {}: opened {}{}\n",
            r.id,
            r.severity.map_or("", |s| s.as_str()),
            rfc3339(r.opened_at),
            r.resolved_at.map_or_else(|| ", still open at the end".to_string(), |t| format!(", resolved {}", rfc3339(t)))
        ));
        let intervals: Vec<String> = s.update_intervals.iter().map(|x| show_duration((x * 1000.0) as Ts)).collect();
        for (label, m) in [
            ("time to activation (from the start)", &s.time_to_activation),
            ("ack", &s.ack),
            ("first public update", &s.first_public_update),
            ("largest update gap", &s.largest_update_gap),
            ("legal review", &s.legal_review),
        ] {
            text.push_str(&format!("  {label:<36} {:<8} {}\n", m.value_text(), m.verdict_text()));
        }
        text.push_str(&format!("  {:<36} {}\n", "update intervals", if intervals.is_empty() { "none".into() } else { intervals.join(", ") }));
    }
    let report = Report {
        scenario: &scenario.name,
        speed: args.speed,
        started_at: rfc3339(start),
        ended_at: rfc3339(end),
        incidents: records
            .iter()
            .zip(&summaries)
            .map(|(r, s)| ReportIncident {
                subject: r.subject.as_ref(),
                severity: r.severity.map(|s| s.as_str()),
                opened_at: rfc3339(r.opened_at),
                resolved_at: r.resolved_at.map(rfc3339),
                summary: s,
            })
            .collect(),
    };
    let json_path = report_path(&args.scenario);
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).expect("serializes") + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    text.push_str(&format!("\nReport written to {}\n", json_path.display()));
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `drill.yaml` → `drill.report.json`, next to it.
fn report_path(scenario: &Path) -> PathBuf {
    let stem = scenario.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "gameday".into());
    scenario.with_file_name(format!("{stem}.report.json"))
}
