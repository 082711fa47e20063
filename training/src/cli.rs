//! The command line: `maas-train train` and `maas-train import keras`.
//!
//! `--repo` also reads `MAAS_BACKEND_REPO`, the variable `maas-backend serve` reads, so one
//! environment names the repository for both commands.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::keras::{describe_layers, import_keras};
use crate::loss::LossKind;
use crate::optim::OptimizerKind;
use crate::train::{train, TrainOptions};

/// Training of dense models and import of Keras models into a maas-backend model repository.
#[derive(Debug, Parser)]
#[command(name = "maas-train", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a dense classifier on a CSV table into a new version of a model.
    Train(TrainArgs),
    /// Import a model from another framework's file as a new version.
    #[command(subcommand)]
    Import(ImportCommand),
}

/// `maas-train import <format>`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A Keras model saved as HDF5 (`model.save("model.h5")`) made of Dense layers, written as
    /// a dense model version (see the `keras` module for what is accepted).
    Keras(ImportKerasArgs),
}

/// `maas-train import keras`.
#[derive(Debug, Args)]
pub struct ImportKerasArgs {
    /// The Keras HDF5 file.
    pub file: PathBuf,
    /// The model repository to write the new version into.
    #[arg(long, env = "MAAS_BACKEND_REPO")]
    pub repo: PathBuf,
    /// The model's name (its folder in the repository); an existing model must have the same
    /// layers.
    #[arg(long)]
    pub name: String,
}

/// `maas-train train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// CSV table without header: feature columns, then an integer label; gzip if it ends in .gz.
    #[arg(long)]
    pub data: PathBuf,
    /// The model repository to write the new version into.
    #[arg(long, env = "MAAS_BACKEND_REPO")]
    pub repo: PathBuf,
    /// The model's name (its folder in the repository).
    #[arg(long)]
    pub model: String,
    /// Hidden layer width (used when the model has no config.toml yet).
    #[arg(long, default_value_t = 128)]
    pub hidden: i64,
    /// Passes over the training rows.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Rows per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// The update rule: adam (beta1 0.9, beta2 0.999, eps 1e-8) or sgd (with --momentum).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 0.001)]
    pub lr: f64,
    /// SGD momentum, in [0, 1); 0 is plain SGD.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// The loss: categorical-crossentropy (labels as class indices, softmax last layer),
    /// binary-crossentropy (one-hot targets, sigmoid last layer; one output: the 0/1 label) or
    /// mse (one-hot targets against the model's output).
    #[arg(long, value_enum, default_value_t = LossKind::CategoricalCrossentropy)]
    pub loss: LossKind,
    /// Seed of the split, the initial weights and the shuffles.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of rows held out to measure the test accuracy.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Devices to train on, data-parallel, comma-separated: cpu,cpu is two CPU workers;
    /// cuda:0,cuda:1 two GPUs. Each computes the gradient of its shard of every batch.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub devices: Vec<String>,
    /// Folder for the checkpoint written after every epoch (default:
    /// <repo>/<model>/.checkpoints/run-<unix seconds>-<pid>).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from a checkpoint folder (.../epoch-NNNN); the settings must match the run that
    /// wrote it, and --epochs counts its epochs too.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// How many of the run's latest checkpoints to keep; 0 keeps all.
    #[arg(long, default_value_t = 3)]
    pub keep_checkpoints: usize,
    /// libtorch intra-op threads for training. The default 1 is the fastest for small models:
    /// more threads mostly synchronize, and on a busy machine OpenMP's spinning makes them slower.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub threads: i32,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Train(args) => args.run(),
            Command::Import(ImportCommand::Keras(args)) => args.run(),
        }
    }
}

impl ImportKerasArgs {
    /// Imports, and prints `imported <file> as <model>/<version> (<layers>)` to stdout.
    pub fn run(self) -> anyhow::Result<()> {
        let report = import_keras(&self.file, &self.repo, &self.name)?;
        println!(
            "imported {} as {}/{} ({})",
            self.file.display(),
            self.name,
            report.version,
            describe_layers(&report.config.layers)
        );
        Ok(())
    }
}

impl TrainArgs {
    /// Trains, writes the version, and prints `test accuracy: 0.xxxx (version N)` to stdout.
    pub fn run(self) -> anyhow::Result<()> {
        tch::set_num_threads(self.threads);
        let report = train(&TrainOptions {
            hidden: self.hidden,
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: self.optimizer,
            lr: self.lr,
            momentum: self.momentum,
            loss: self.loss,
            seed: self.seed,
            test_fraction: self.test_fraction,
            devices: self.devices,
            checkpoint_dir: self.checkpoint_dir,
            resume: self.resume,
            keep_checkpoints: self.keep_checkpoints,
            ..TrainOptions::new(self.data, self.repo, self.model)
        })?;
        eprintln!(
            "wrote {} (train accuracy {:.4}, {:.1} s)",
            report.dir.display(),
            report.metrics.train_accuracy,
            report.metrics.train_seconds
        );
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "test accuracy: {:.4} (version {})",
            report.metrics.test_accuracy, report.version
        )?;
        stdout.flush()?;
        Ok(())
    }
}
