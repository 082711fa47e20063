//! The `maas-bench` command: the benchmark suite's own tools (see the crate's documentation).
//!
//! - `maas-bench init-dense --repo R --model M --dims 1024,4096,1024 [--seed S] [--config TOML]`
//!   writes a dense model with random weights (version 1) into the model repository R.
//! - `maas-bench forward --repo R --model M [--version V] [--batch B] [--threads T] [--seconds S]`
//!   times the in-process forward pass of a version, as the server loads it; one JSON line.
//! - `maas-bench matmul [--device D] [--n N] [--kind bf16|fp16|fp32] [--seconds S]` times raw
//!   `[N, N] x [N, N]` products on D; one JSON line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};
use maas_backend::DeviceSpec;
use maas_bench::model::init_dense;
use maas_bench::timing::{forward, matmul, MatmulKind};

/// The benchmark suite's own tools: benchmark models and in-process ceilings.
#[derive(Debug, Parser)]
#[command(name = "maas-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a dense model with random weights (version 1) into a model repository.
    InitDense(InitDenseArgs),
    /// Time the raw in-process forward pass of a model version (no HTTP, no batcher); prints
    /// one JSON line.
    Forward(ForwardArgs),
    /// Time raw matrix products on a device (the ceiling); prints one JSON line.
    Matmul(MatmulArgs),
}

#[derive(Debug, Args)]
struct InitDenseArgs {
    /// The model repository.
    #[arg(long)]
    repo: PathBuf,
    /// The new model's name (its folder must not exist).
    #[arg(long)]
    model: String,
    /// Feature counts, input first, comma-separated: 1024,4096,4096,1024 is three layers.
    #[arg(long, value_delimiter = ',', required = true)]
    dims: Vec<i64>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 42)]
    seed: i64,
    /// Extra config.toml text whose keys and tables override the generated ones, e.g.
    /// "max_batch_size = 64\n[dynamic_batching]\nmax_queue_delay_us = 500" (a literal `\n`
    /// is a line break).
    #[arg(long, default_value = "")]
    config: String,
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// The model repository.
    #[arg(long)]
    repo: PathBuf,
    /// The dense model to time.
    #[arg(long)]
    model: String,
    /// The version to time.
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(i64).range(1..))]
    batch: i64,
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    threads: i32,
    /// Timed seconds (positive).
    #[arg(long, default_value = "5", value_parser = positive_seconds)]
    seconds: Duration,
}

#[derive(Debug, Args)]
struct MatmulArgs {
    /// The device: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Rows and columns of each square operand.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(i64).range(1..))]
    n: i64,
    /// The element type.
    #[arg(long, value_enum, default_value = "bf16")]
    kind: MatmulKind,
    /// Timed seconds (positive).
    #[arg(long, default_value = "3", value_parser = positive_seconds)]
    seconds: Duration,
}

/// A positive, finite number of seconds.
fn positive_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected a positive number of seconds, got `{text}`"
        )),
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("maas-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::InitDense(a) => {
            let config = a.config.replace("\\n", "\n");
            let dir = init_dense(&a.repo, &a.model, &a.dims, a.seed, &config)?;
            println!("wrote {}", dir.display());
        }
        Command::Forward(a) => {
            let t = forward(&a.repo, &a.model, a.version, a.batch, a.threads, a.seconds)?;
            println!("{}", serde_json::to_string(&t)?);
        }
        Command::Matmul(a) => {
            let device: DeviceSpec = a.device.parse().map_err(|e| anyhow!("--device: {e}"))?;
            let t = matmul(device.resolve()?, a.n, a.kind, a.seconds)?;
            println!("{}", serde_json::to_string(&t)?);
        }
    }
    Ok(())
}
