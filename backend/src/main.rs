//! The `maas-backend` command: `serve`, `serve-stage`, `init-dense`, `forward-bench` (see
//! [`maas_backend::Cli`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = maas_backend::Cli::parse();
    maas_backend::init_tracing();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
