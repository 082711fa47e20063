//! The `maas-train` command: `train` and `import keras` (see [`maas_train::Cli`]).
//!
//! Progress and results are plain lines (stdout for the machine-read result, stderr for the
//! rest); a failure is one `error: ...` line on stderr with the whole chain of causes, and exit
//! status 1. No log subscriber is installed: nothing in training logs through `tracing`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match maas_train::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
