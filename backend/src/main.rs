//! The `maas-backend` command: `serve` and `serve-stage` (see
//! [`maas_backend::Cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = maas_backend::Cli::parse();
    maas_backend::init_tracing();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        // One line on stderr, the causes joined by ": ", no backtrace.
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
