//! Import of a Keras model saved as HDF5 (`model.save("model.h5")`, Keras 2 or 3) as a dense
//! model version (`maas-train import keras`).
//!
//! What is read, as Keras's legacy H5 format writes it
//! (`keras/src/legacy/saving/legacy_h5_format.py`):
//! - the root attribute `model_config`: the architecture as JSON,
//!   `{"class_name": "Functional" | "Sequential" | "Model", "config": {"layers": [...]}}`;
//! - the group `model_weights/<layer name>/`: each layer's weights as datasets at any depth
//!   (`<layer>/kernel`, Keras 3; `<layer>/kernel:0`, Keras 2), the kernel `[in, out]` and the
//!   bias `[out]`.
//!
//! Accepted: a chain of `Dense` layers (after an optional `InputLayer` with shape
//! `[batch, features]`), each with the activation `relu`, `tanh`, `sigmoid`, `softmax` or
//! `linear` and with or without bias; a functional model must be that same chain (one input,
//! one output, every layer fed by the one before). Anything else is refused with an error that
//! names the layer (and its class or activation): the served model must compute exactly what
//! Keras computes, so nothing is skipped or approximated.
//!
//! What is written: `<repo>/<model>/config.toml` (when the model has none yet; an existing one
//! must have the same layers) and a new version folder `<N>/` with `model.safetensors`
//! (`layers.{i}.weight` = the kernel transposed to `[out, in]`, `layers.{i}.bias`, FP32, the
//! layout of `maas_backend::DenseModel`) and `keras.json` (where it came from).
//!
//! Reading is two steps: [`architecture`] turns `model_config` into the chain of layers and
//! each Dense layer's settings; [`mod@file`] opens the HDF5 file, reads that attribute and each
//! layer's weights into a [`KerasModel`] ([`model`]), which converts to a dense model. This
//! module writes the result into the repository.

mod architecture;
mod file;
mod model;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context};
use maas_backend::{LayerConfig, ModelConfig, CONFIG_FILE, WEIGHTS_FILE};
use serde::Serialize;
use tch::Tensor;

use crate::version_writer::{write_atomically, write_version_folder};

pub use file::read_keras_h5;
pub use model::{KerasDense, KerasModel};

/// The provenance file written into each imported version folder.
pub const SOURCE_FILE: &str = "keras.json";

/// Where an import went.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The version number written.
    pub version: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// The model's configuration (as in `config.toml`).
    pub config: ModelConfig,
}

/// `maas-train import keras`: reads `file` ([`read_keras_h5`]) and writes it as the next
/// version of `<repo>/<model>`. Writes `config.toml` when the model has none; errors when an
/// existing `config.toml` has other inputs, outputs or layers than the file (a new version
/// must fit the model it joins).
pub fn import_keras(file: &Path, repo: &Path, model: &str) -> anyhow::Result<ImportReport> {
    ensure!(
        !model.is_empty()
            && !model.starts_with('.')
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "model name '{model}': use letters, digits, '-', '_' and '.', not starting with '.'"
    );
    let keras = read_keras_h5(file)?;
    let imported = keras.config()?;
    // The weights must load as the server will load them.
    keras
        .dense_model()
        .with_context(|| format!("{}: the weights do not load", file.display()))?;

    let model_dir = repo.join(model);
    let config_path = model_dir.join(CONFIG_FILE);
    let config = if config_path.exists() {
        let existing = ModelConfig::from_file(&config_path)
            .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
        let dims = |c: &ModelConfig| {
            (
                c.inputs.iter().map(|t| t.dims.clone()).collect::<Vec<_>>(),
                c.outputs.iter().map(|t| t.dims.clone()).collect::<Vec<_>>(),
            )
        };
        ensure!(
            existing.platform == imported.platform
                && existing.layers == imported.layers
                && dims(&existing) == dims(&imported),
            "{} exists and describes another model than {} ([{}] layers; the file has [{}]): choose another --name",
            config_path.display(),
            file.display(),
            describe_layers(&existing.layers),
            describe_layers(&imported.layers)
        );
        existing
    } else {
        std::fs::create_dir_all(&model_dir)
            .with_context(|| format!("cannot create {}", model_dir.display()))?;
        write_atomically(&config_path, imported.to_toml().as_bytes())?;
        imported
    };

    let tensors = keras.tensors()?;
    let source = Source {
        source_file: file.display().to_string(),
        keras_version: keras.keras_version.clone(),
        backend: keras.backend.clone(),
        class_name: keras.class_name.clone(),
        layers: keras.layers.iter().map(|l| l.name.clone()).collect(),
    };
    let (version, dir) = write_version_folder(&model_dir, "import", |dir| {
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, dir.join(WEIGHTS_FILE))
            .context("cannot write model.safetensors")?;
        std::fs::write(dir.join(SOURCE_FILE), serde_json::to_vec_pretty(&source)?)
            .with_context(|| format!("cannot write {SOURCE_FILE}"))?;
        Ok(())
    })?;
    Ok(ImportReport {
        version,
        dir,
        config,
    })
}

/// `keras.json` in an imported version folder.
#[derive(Debug, Serialize)]
struct Source {
    source_file: String,
    keras_version: Option<String>,
    backend: Option<String>,
    class_name: String,
    /// The Keras names of the dense layers, in order (`layers.{i}` is the i-th).
    layers: Vec<String>,
}

/// `in -> out activation` for each layer, comma-separated (`100 -> 128 relu, 128 -> 10
/// softmax`), for messages.
pub(crate) fn describe_layers(layers: &[LayerConfig]) -> String {
    let parts: Vec<String> = layers
        .iter()
        .map(|l| format!("{} -> {} {}", l.in_features, l.out_features, l.activation))
        .collect();
    parts.join(", ")
}
