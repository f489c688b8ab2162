//! `herald check`: validate a configuration or rule files, reporting every problem.

use std::process::ExitCode;

use super::{CheckArgs, EXIT_FAILED, EXIT_USAGE};
use crate::config::{self, daemon::process_env, Diagnostics};

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let result = match (&args.config, args.files.is_empty()) {
        (Some(path), _) => config::load_config(path, &process_env).map(|(cfg, warnings)| {
            let rules: usize = cfg.rules.groups.iter().map(|g| g.rules.len()).sum();
            let summary = format!(
                "{}: OK: {} rule files, {} groups, {} rules, {} receivers",
                path.display(),
                cfg.rule_files.len(),
                cfg.rules.groups.len(),
                rules,
                cfg.receivers.len()
            );
            (summary, warnings)
        }),
        (None, false) => config::load_rule_files(&args.files).map(|(set, warnings)| {
            let rules: usize = set.groups.iter().map(|g| g.rules.len()).sum();
            let names: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
            (format!("{}: OK: {} groups, {} rules", names.join(", "), set.groups.len(), rules), warnings)
        }),
        (None, true) => {
            eprintln!("herald check: give --config FILE or one or more rule files");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    match result {
        Ok((summary, warnings)) => {
            print_all(&warnings);
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            print_all(&diags);
            let n = diags.errors().count();
            eprintln!("{n} error{} found", if n == 1 { "" } else { "s" });
            Ok(ExitCode::from(exit_code(&diags)))
        }
    }
}

fn print_all(diags: &Diagnostics) {
    let mut diags = diags.clone();
    diags.sort();
    for d in &diags.0 {
        eprintln!("{d}");
    }
}

/// 2 when the only problem is a file that could not be read; 1 otherwise.
pub(super) fn exit_code(diags: &Diagnostics) -> u8 {
    if diags.errors().all(|d| d.line == 0 && d.message.starts_with("cannot read")) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}
