//! `herald test`: run rule unit-test files and print a readable report.

use std::process::ExitCode;

use super::{TestArgs, EXIT_FAILED, EXIT_USAGE};
use crate::testing::{run_file_with, FileError, RunOptions};

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let filter = match &args.run {
        Some(r) => Some(regex::Regex::new(r).map_err(|e| anyhow::anyhow!("invalid --run regex: {e}"))?),
        None => None,
    };
    let (mut passed, mut failed, mut worst, mut ran_files) = (0usize, 0usize, 0u8, 0usize);
    let options = RunOptions { explain: args.explain.clone() };
    for path in &args.files {
        match run_file_with(path, &options) {
            Ok(outcomes) => {
                ran_files += 1;
                println!("{}:", path.display());
                for o in outcomes.iter().filter(|o| filter.as_ref().is_none_or(|f| f.is_match(&o.name))) {
                    if !o.explanations.is_empty() {
                        println!("  EXPLAIN  {}", o.name);
                        for e in &o.explanations {
                            for line in e.lines() {
                                println!("        {line}");
                            }
                        }
                    }
                    if o.failures.is_empty() {
                        passed += 1;
                        println!("  PASS  {}", o.name);
                    } else {
                        failed += 1;
                        worst = worst.max(EXIT_FAILED);
                        println!("  FAIL  {}", o.name);
                        for f in &o.failures {
                            for line in f.lines() {
                                println!("        {line}");
                            }
                        }
                    }
                }
            }
            Err(FileError::Unreadable(d)) => {
                eprint!("{d}");
                worst = EXIT_USAGE;
            }
            Err(FileError::Invalid(d)) => {
                eprint!("{d}");
                failed += 1;
                worst = worst.max(EXIT_FAILED);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    // A typo in --run must not pass CI by running nothing.
    if let (Some(r), true) = (&args.run, ran_files > 0 && passed + failed == 0) {
        eprintln!("herald test: --run {r:?} matches no test");
        worst = worst.max(EXIT_FAILED);
    }
    Ok(ExitCode::from(worst))
}
