//! What a training run measured: each epoch ([`EpochMetrics`], also recorded in every
//! checkpoint) and the run as a whole ([`Metrics`], written to the version's
//! `metrics.json`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::loss::LossKind;
use crate::optim::OptimizerKind;

/// The file name of a version's training metrics.
pub const METRICS_FILE: &str = "metrics.json";

/// One epoch of a run, as `metrics.json` and the checkpoints record it. Accuracies are shares
/// of rows in `[0, 1]`, of the model being trained (standardized inputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean loss over the epoch's batches (weighted by rows), as the weights moved.
    pub loss: f64,
    /// Accuracy on the training rows at the end of the epoch.
    pub train_accuracy: f64,
    /// Accuracy on the held-out rows at the end of the epoch.
    pub test_accuracy: f64,
    /// Wall time of the epoch, in seconds.
    pub seconds: f64,
}

/// What a training run measured; written to `<N>/metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy of the written (served) model on the held-out rows, raw inputs.
    pub test_accuracy: f64,
    /// Accuracy of the written model on the training rows.
    pub train_accuracy: f64,
    /// Passes over the training rows, in all (including a resumed checkpoint's).
    pub epochs: usize,
    /// The seed of the run.
    pub seed: u64,
    /// Rows trained on.
    pub rows_train: usize,
    /// Rows held out.
    pub rows_test: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// The optimizer: `adam` or `sgd`.
    pub optimizer: OptimizerKind,
    /// The learning rate.
    pub lr: f64,
    /// SGD's momentum (0 for Adam).
    pub momentum: f64,
    /// The loss: `categorical-crossentropy`, `binary-crossentropy` or `mse`.
    pub loss: LossKind,
    /// The devices trained on (`cpu`, `cuda:N`), the first holding the master weights.
    pub devices: Vec<String>,
    /// The checkpoint the run continued from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Where this run wrote its checkpoints.
    pub checkpoint_dir: PathBuf,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Wall time of loading, training and writing in this process, in seconds.
    pub train_seconds: f64,
    /// Every epoch, the resumed checkpoint's included.
    pub history: Vec<EpochMetrics>,
}
