//! The `maas-backend` command: `serve` and `train` (see [`maas_backend::cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = maas_backend::cli::Cli::parse();
    maas_backend::cli::init_tracing();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
