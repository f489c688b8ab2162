//! The `herald` binary: everything lives in the library; see `herald::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    herald::cli::main()
}
