//! The command line: `maas-backend serve` and `serve-stage` (training and imports are
//! `maas-train`'s; benchmark models and timings are `maas-bench`'s).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::DeviceSpec;
use crate::engine::WorkerOptions;
use crate::http::{serve_until_signal, GatewaySecret, ServerOptions};
use crate::repository::{load_stage, ModelRepository, RepositoryOptions};

/// Open Inference Protocol v2 inference server for dense models on libtorch.
#[derive(Debug, Parser)]
#[command(name = "maas-backend", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every model in the repository and serve them over HTTP.
    Serve(ServeArgs),
    /// Serve a range of a dense model's layers (one pipeline stage) over HTTP, for a front
    /// `serve` whose config.toml names this address in `[[pipeline.stages]]`.
    ServeStage(ServeStageArgs),
}

/// `maas-backend serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model repository: `<repo>/<model>/config.toml` and `<repo>/<model>/<N>/`.
    #[arg(long, env = "MAAS_BACKEND_REPO")]
    pub repo: PathBuf,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, env = "MAAS_BACKEND_LISTEN", default_value = "127.0.0.1:8001")]
    pub listen: String,
    /// Threads, queues and limits of the server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The settings `serve` and `serve-stage` share.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// libtorch intra-op threads per forward pass (a model's `[instances] intra_op_threads`
    /// overrides it).
    #[arg(long, env = "MAAS_BACKEND_INTRA_OP_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub intra_op_threads: i32,
    /// Requests that may wait per model version before new ones get 503 (a model's
    /// `[dynamic_batching] max_queue_size` overrides it).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,
    /// The most rows one request may send to a model with `max_batch_size = 0` whose
    /// config.toml sets no `max_request_rows` (more is a 400 naming the limit).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_REQUEST_ROWS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_request_rows: u32,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a connection may take to send a complete request header, counted from when it
    /// is accepted or went idle after a response (so also the keep-alive idle timeout); then
    /// it is closed. The gateway's (pingora's) read timeout is the same 60 s.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_s: u64,
    /// Seconds to wait for the next piece of a request body before answering 408.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_idle_timeout_s: u64,
    /// The secret the gateway sends in `x-maas-gateway-secret` (its `[upstream]
    /// gateway_secret`): only requests carrying it have their fairness key and priority
    /// level honoured by the batcher; without it every request shares one default key.
    #[arg(
        long,
        env = "MAAS_GATEWAY_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub gateway_secret: String,
    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM before stopping anyway.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_s: u64,
}

/// `maas-backend serve-stage`.
#[derive(Debug, Args)]
pub struct ServeStageArgs {
    /// The model repository: `<repo>/<model>/config.toml` and `<repo>/<model>/<N>/`.
    #[arg(long, env = "MAAS_BACKEND_REPO")]
    pub repo: PathBuf,
    /// The dense model to serve a part of.
    #[arg(long)]
    pub model: String,
    /// The version (default: the highest version folder); the front must serve the same one.
    #[arg(long)]
    pub version: Option<u64>,
    /// The layers to serve, `FIRST..END` (half-open, 0-based, as `layers = [FIRST, END]` in
    /// `[[pipeline.stages]]`); only their weights are read. Served as the model
    /// `<model>.layers-FIRST-END`.
    #[arg(long, value_parser = parse_layer_range)]
    pub layers: std::ops::Range<usize>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Address to listen on; port 0 picks a free port (the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8011")]
    pub listen: String,
    /// Threads, queues and limits of the server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Parses `FIRST..END` (`4..8`) into a non-empty range.
fn parse_layer_range(text: &str) -> Result<std::ops::Range<usize>, String> {
    let invalid = || format!("expected FIRST..END with FIRST < END (as 4..8), got '{text}'");
    let (first, end) = text.split_once("..").ok_or_else(invalid)?;
    let first: usize = first.trim().parse().map_err(|_| invalid())?;
    let end: usize = end.trim().parse().map_err(|_| invalid())?;
    if first >= end {
        return Err(invalid());
    }
    Ok(first..end)
}

/// Logs to stderr (stdout carries the machine-read lines), filtered by `RUST_LOG`, default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => args.run(),
            Command::ServeStage(args) => args.run(),
        }
    }
}

impl ServeArgs {
    /// Loads the repository, binds, prints `maas-backend listening on <addr>` to stdout, serves
    /// until SIGINT or SIGTERM, then drains in-flight requests and stops the workers.
    pub fn run(self) -> anyhow::Result<()> {
        let options = self.server.options();
        let repository = ModelRepository::load(&self.repo, options)?;
        if !repository.all_ready() {
            tracing::warn!("some models failed to load; serving the others, not ready");
        }
        self.server.serve(repository, &self.listen)
    }
}

impl ServeStageArgs {
    /// Loads the stage's layers, then serves like [`ServeArgs::run`] (same first stdout line).
    pub fn run(self) -> anyhow::Result<()> {
        let repository = load_stage(
            &self.repo,
            &self.model,
            self.version,
            self.layers.clone(),
            self.device,
            self.server.options(),
        )?;
        self.server.serve(repository, &self.listen)
    }
}

impl ServerArgs {
    /// Sets this thread's libtorch threads and returns the repository options.
    fn options(&self) -> RepositoryOptions {
        tch::set_num_threads(self.intra_op_threads);
        RepositoryOptions {
            worker: WorkerOptions {
                intra_op_threads: self.intra_op_threads,
                queue_capacity: self.queue_capacity as usize,
            },
            max_request_rows: self.max_request_rows,
        }
    }

    /// Serves `repository` on `listen` until SIGINT or SIGTERM (see the HTTP server's
    /// `serve_until_signal`).
    fn serve(&self, repository: ModelRepository, listen: &str) -> anyhow::Result<()> {
        serve_until_signal(
            Arc::new(repository),
            listen,
            ServerOptions {
                max_body_bytes: self.max_body_bytes,
                header_read_timeout: Duration::from_secs(self.header_read_timeout_s),
                body_idle_timeout: Duration::from_secs(self.body_idle_timeout_s),
            },
            GatewaySecret::new(&self.gateway_secret),
            Duration::from_secs(self.shutdown_timeout_s),
        )
    }
}
