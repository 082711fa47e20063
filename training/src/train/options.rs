//! The settings of a training run ([`TrainOptions`], with the defaults of `maas-train train`)
//! and the checks they must pass before any data is read.

use std::path::PathBuf;

use anyhow::ensure;

use crate::loss::LossKind;
use crate::optim::OptimizerKind;

/// Settings of one training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The CSV table (gzip when the name ends in `.gz`).
    pub data: PathBuf,
    /// The model repository to write into.
    pub repo: PathBuf,
    /// The model's name: its folder in the repository.
    pub model: String,
    /// Hidden layer width, when a new config is written.
    pub hidden: i64,
    /// Passes over the training rows, in all (a resumed run counts the checkpoint's epochs).
    pub epochs: usize,
    /// Rows per optimizer step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// The update rule.
    pub optimizer: OptimizerKind,
    /// The learning rate.
    pub lr: f64,
    /// SGD's momentum, in `[0, 1)`; must be 0 for Adam.
    pub momentum: f64,
    /// The loss minimized.
    pub loss: LossKind,
    /// Seed of the split, the initialization and the shuffles; at most `i64::MAX`.
    pub seed: u64,
    /// Share of rows held out for the test accuracy, in (0, 1).
    pub test_fraction: f64,
    /// Devices to train on, data-parallel: `cpu` (repeat it for several CPU workers), `cuda`
    /// or `cuda:N`. The first holds the master weights and the optimizer state.
    pub devices: Vec<String>,
    /// Where each epoch's checkpoint goes; `None`:
    /// `<repo>/<model>/.checkpoints/run-<unix seconds>-<pid>`.
    pub checkpoint_dir: Option<PathBuf>,
    /// A checkpoint folder (`.../epoch-NNNN`) to continue from.
    pub resume: Option<PathBuf>,
    /// How many of this run's latest checkpoints to keep (older ones are removed as new ones
    /// are written); 0 keeps every one.
    pub keep_checkpoints: usize,
}

impl TrainOptions {
    /// The defaults of `maas-train train`: hidden 128, 30 epochs, batches of 32, Adam with
    /// learning rate 0.001, categorical cross-entropy, seed 42, 20 % held out, one CPU device,
    /// checkpoints in the model folder (the latest 3 kept), no resume.
    pub fn new(data: PathBuf, repo: PathBuf, model: String) -> TrainOptions {
        TrainOptions {
            data,
            repo,
            model,
            hidden: 128,
            epochs: 30,
            batch_size: 32,
            optimizer: OptimizerKind::Adam,
            lr: 0.001,
            momentum: 0.0,
            loss: LossKind::CategoricalCrossentropy,
            seed: 42,
            test_fraction: 0.2,
            devices: vec!["cpu".into()],
            checkpoint_dir: None,
            resume: None,
            keep_checkpoints: 3,
        }
    }
}

/// Refuses options no run can use: a model name that is not a plain folder name, counts below
/// 1, a learning rate that is not positive, a momentum outside `[0, 1)` or given to Adam, a
/// test fraction outside `(0, 1)`, a seed above `i64::MAX`. Errors name the flag.
pub(super) fn check_options(options: &TrainOptions) -> anyhow::Result<()> {
    let name = &options.model;
    ensure!(
        !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
        "model name '{name}' must be letters, digits, '_', '-' or '.', not starting with '.'"
    );
    ensure!(
        options.hidden >= 1,
        "--hidden must be at least 1, got {}",
        options.hidden
    );
    ensure!(
        options.epochs >= 1,
        "--epochs must be at least 1, got {}",
        options.epochs
    );
    ensure!(
        options.batch_size >= 1,
        "--batch-size must be at least 1, got {}",
        options.batch_size
    );
    ensure!(
        options.lr > 0.0 && options.lr.is_finite(),
        "--lr must be positive, got {}",
        options.lr
    );
    ensure!(
        (0.0..1.0).contains(&options.momentum),
        "--momentum must be in [0, 1), got {}",
        options.momentum
    );
    ensure!(
        options.momentum == 0.0 || options.optimizer == OptimizerKind::Sgd,
        "--momentum is for --optimizer sgd"
    );
    ensure!(
        options.test_fraction > 0.0 && options.test_fraction < 1.0,
        "--test-fraction must be between 0 and 1 (exclusive), got {}",
        options.test_fraction
    );
    ensure!(
        options.seed <= i64::MAX as u64,
        "--seed must be at most {}",
        i64::MAX
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let options = TrainOptions::new("x.csv".into(), "repo".into(), "../escape".into());
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("model name"));
        let options = TrainOptions {
            model: "ok".into(),
            test_fraction: 1.0,
            ..options
        };
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("--test-fraction"));
        let options = TrainOptions {
            test_fraction: 0.2,
            momentum: 0.9,
            ..options
        };
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("--momentum is for --optimizer sgd"));
    }
}
