//! The end of a run: the version folder it writes (`model.safetensors` and `metrics.json`)
//! and the [`TrainReport`] it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use maas_backend::WEIGHTS_FILE;
use tch::Tensor;

use crate::metrics::{Metrics, METRICS_FILE};
use crate::version_writer::write_version_folder;

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The version written.
    pub version: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// What the run measured (as in the version's `metrics.json`).
    pub metrics: Metrics,
}

/// Writes `tensors` (by their `model.safetensors` names, sorted) and `metrics` (with
/// `train_seconds` measured from `started`) as the next version of `model_dir`
/// ([`write_version_folder`]).
pub(super) fn write_version(
    model_dir: &Path,
    tensors: &HashMap<String, Tensor>,
    mut metrics: Metrics,
    started: Instant,
) -> anyhow::Result<TrainReport> {
    let (version, dir) = write_version_folder(model_dir, "train", |temp| {
        let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        Tensor::write_safetensors(&named, temp.join(WEIGHTS_FILE))
            .with_context(|| format!("cannot write {}", temp.join(WEIGHTS_FILE).display()))?;
        metrics.train_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        std::fs::write(
            temp.join(METRICS_FILE),
            serde_json::to_vec_pretty(&metrics)?,
        )?;
        Ok(())
    })?;
    Ok(TrainReport {
        version,
        dir,
        metrics,
    })
}
