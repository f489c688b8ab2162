//! `herald run`: load and validate the configuration (refusing before binding anything), set
//! up logging, bind the listener, and run the daemon on a multi-thread runtime until SIGTERM
//! or Ctrl-C. SIGHUP reloads the configuration like `POST /-/reload`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::live_source::LiveSource;
use super::{RunArgs, EXIT_FAILED, EXIT_USAGE};
use crate::config::{self, daemon::process_env};
use crate::daemon::{self, RunOptions};

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load_config(&args.config, &process_env) {
        Ok((cfg, warnings)) => {
            for w in &warnings.0 {
                eprintln!("{w}");
            }
            cfg
        }
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            let n = diags.errors().count();
            eprintln!("herald run: {n} error{} in the configuration; not starting", if n == 1 { "" } else { "s" });
            return Ok(ExitCode::from(super::check::exit_code(&diags)));
        }
    };
    super::logging::init(args.log_format, args.log_level);
    // One async worker is plenty: evaluation is a handful of queries per interval and the
    // engine step runs on the blocking pool. Fewer threads also means fewer malloc arenas
    // holding on to freed memory (see README § Performance).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(config, args.dry_run, args.fresh_state))
}

async fn run_async(config: config::Config, dry_run: bool, fresh_state: bool) -> anyhow::Result<ExitCode> {
    let listen = config.global.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herald run: cannot listen on {listen}: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let source = match LiveSource::new(config.prometheus.as_ref()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("herald run: cannot set up the prometheus client: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    // Install the recorder before anything records a metric.
    crate::telemetry::install();
    crate::telemetry::register_config_series(&config);

    let reload = Arc::new(tokio::sync::Notify::new());
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    {
        let reload = reload.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                reload.notify_one();
            }
        });
    }
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
    };

    println!(
        "herald {} listening on {}, state in {}, {}",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr().unwrap_or(listen),
        config.global.state_dir.join(crate::state_dir::Database::for_run(dry_run).file_name()).display(),
        if dry_run { "dry run: no notification will be sent" } else { "live: notifications will be sent" }
    );
    let options = RunOptions { dry_run, reload_requests: Some(reload), fresh_state };
    match daemon::run(config, listener, source, options, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("herald run: {e}");
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}
