//! Checkpoints: the state of a training run at the end of an epoch, enough to continue it
//! exactly (`maas-train train --resume <checkpoint>`).
//!
//! A checkpoint is a folder `epoch-<NNNN>` in the checkpoint folder (by default
//! `<repo>/<model>/.checkpoints/run-<unix seconds>-<pid>/`, hidden from the repository loader)
//! with two files:
//! - `state.safetensors`: the parameters as trained (on standardized inputs, before the
//!   standardization is folded into the first layer), named `param.<i>` in [`crate::net::Net`]'s
//!   order, and the optimizer's state (see [`crate::optim::Optimizer::state_tensors`]);
//! - `checkpoint.json`: a [`CheckpointInfo`]: the epoch, the optimizer's step count, the
//!   [`RunSettings`] a resumed run must share, and the per-epoch history so far.
//!
//! The folder is written under a temporary name and renamed when complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use maas_backend::LayerConfig;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::dataset::Dataset;
use crate::loss::LossKind;
use crate::metrics::EpochMetrics;
use crate::optim::OptimizerKind;

/// The name of a checkpoint's tensors file.
pub const STATE_FILE: &str = "state.safetensors";
/// The name of a checkpoint's description.
pub const INFO_FILE: &str = "checkpoint.json";

/// What must be the same for a resumed run to continue the one that wrote the checkpoint:
/// together with the epoch they determine every later step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The layers trained.
    pub layers: Vec<LayerConfig>,
    /// `--optimizer`.
    pub optimizer: OptimizerKind,
    /// `--lr`.
    pub lr: f64,
    /// `--momentum` (SGD).
    pub momentum: f64,
    /// `--loss`.
    pub loss: LossKind,
    /// `--batch-size`.
    pub batch_size: usize,
    /// `--seed`.
    pub seed: u64,
    /// `--test-fraction`.
    pub test_fraction: f64,
    /// The data: [`data_fingerprint`] (rows, features and a hash of the values).
    pub data: String,
}

impl RunSettings {
    /// The settings that differ, each as `what: checkpoint X, now Y`.
    pub fn differences(&self, now: &RunSettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str, then: String, now: String| {
            if then != now {
                out.push(format!("{what}: checkpoint {then}, now {now}"));
            }
        };
        let layers = |s: &RunSettings| {
            s.layers
                .iter()
                .map(|l| format!("{}->{} {}", l.in_features, l.out_features, l.activation))
                .collect::<Vec<_>>()
                .join(", ")
        };
        check("layers", layers(self), layers(now));
        check(
            "--optimizer",
            self.optimizer.name().into(),
            now.optimizer.name().into(),
        );
        check("--lr", self.lr.to_string(), now.lr.to_string());
        check(
            "--momentum",
            self.momentum.to_string(),
            now.momentum.to_string(),
        );
        check("--loss", self.loss.name().into(), now.loss.name().into());
        check(
            "--batch-size",
            self.batch_size.to_string(),
            now.batch_size.to_string(),
        );
        check("--seed", self.seed.to_string(), now.seed.to_string());
        check(
            "--test-fraction",
            self.test_fraction.to_string(),
            now.test_fraction.to_string(),
        );
        check("--data", self.data.clone(), now.data.clone());
        if out.is_empty() && self != now {
            out.push("the layers' bias flags".into());
        }
        out
    }
}

/// `<rows>x<features>:<FNV-1a 64 of the features' bits and the labels, hex>`: the same data
/// gives the same string wherever the file lies (FNV-1a: Fowler, Noll and Vo, as specified in
/// the IETF draft `draft-eastlake-fnv`, 64-bit offset basis and prime).
pub fn data_fingerprint(data: &Dataset) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for v in &data.features {
        feed(&v.to_bits().to_le_bytes());
    }
    for l in &data.labels {
        feed(&l.to_le_bytes());
    }
    format!("{}x{}:{hash:016x}", data.rows(), data.feature_count)
}

/// `checkpoint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken (Adam's `t`).
    pub optimizer_steps: i64,
    /// What a resumed run must share.
    pub settings: RunSettings,
    /// One entry per completed epoch.
    pub history: Vec<EpochMetrics>,
}

/// A checkpoint read back: its description, the parameters in order, and the optimizer's
/// state tensors (by name).
pub struct Checkpoint {
    /// `checkpoint.json`.
    pub info: CheckpointInfo,
    /// The parameters, `param.0`, `param.1`, ... (CPU).
    pub params: Vec<Tensor>,
    /// The other tensors: the optimizer's state.
    pub optimizer_state: HashMap<String, Tensor>,
}

/// Writes `<dir>/epoch-<NNNN>` (replacing one of the same name) and returns its path.
pub fn save(
    dir: &Path,
    info: &CheckpointInfo,
    params: &[Tensor],
    optimizer_state: Vec<(String, Tensor)>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = folder_name(info.epoch);
    let temp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let target = dir.join(&name);
    let result = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&temp)?;
        let named = params
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("param.{i}"), p.shallow_clone()))
            .chain(optimizer_state)
            .map(|(name, t)| Ok((name, t.f_to_device(Device::Cpu)?)))
            .collect::<Result<Vec<(String, Tensor)>, tch::TchError>>()?;
        Tensor::write_safetensors(&named, temp.join(STATE_FILE))?;
        std::fs::write(temp.join(INFO_FILE), serde_json::to_vec_pretty(info)?)?;
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&temp, &target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.with_context(|| format!("cannot write the checkpoint {}", target.display()))?;
    Ok(target)
}

/// `epoch-<NNNN>`: the folder of epoch `epoch`'s checkpoint.
fn folder_name(epoch: usize) -> String {
    format!("epoch-{epoch:04}")
}

/// Removes epoch `epoch`'s checkpoint from `dir`, if there is one.
pub fn remove(dir: &Path, epoch: usize) -> anyhow::Result<()> {
    let path = dir.join(folder_name(epoch));
    match std::fs::remove_dir_all(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove the old checkpoint {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Reads a checkpoint folder written by [`save`]; `param_count` is how many parameters the
/// model has. Errors name the file and what is wrong with it.
pub fn load(path: &Path, param_count: usize) -> anyhow::Result<Checkpoint> {
    let info_path = path.join(INFO_FILE);
    let text = std::fs::read(&info_path).with_context(|| {
        format!(
            "cannot read {} (--resume takes a checkpoint folder, e.g. .checkpoints/run-.../epoch-0003)",
            info_path.display()
        )
    })?;
    let info: CheckpointInfo = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a checkpoint description", info_path.display()))?;
    let state_path = path.join(STATE_FILE);
    let mut tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?
        .into_iter()
        .collect();
    let mut params = Vec::with_capacity(param_count);
    for i in 0..param_count {
        let tensor = tensors.remove(&format!("param.{i}"));
        ensure!(
            tensor.is_some(),
            "{} has no tensor param.{i}",
            state_path.display()
        );
        params.extend(tensor);
    }
    Ok(Checkpoint {
        info,
        params,
        optimizer_state: tensors,
    })
}
