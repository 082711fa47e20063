//! A dense model with random weights, written as a model repository entry that `maas-backend
//! serve` loads (`config.toml` and `1/model.safetensors`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use maas_backend::{
    bias_name, dense_classifier, weight_name, Activation, Datatype, LayerConfig, ModelConfig,
    TensorConfig, CONFIG_FILE, WEIGHTS_FILE,
};
use tch::{Device, Kind, Tensor};

/// Writes `<repo>/<model>/config.toml` (FP32 `input` → relu layers → `output`, no activation
/// on the last layer) and version 1 with weights drawn from N(0, 1/in) with `seed`, biases 0.
///
/// `dims` are the feature counts, input first: `[1024, 4096, 4096, 1024]` is three layers.
/// `extra_config` (TOML text) overrides or adds top-level keys and tables (batching, instances,
/// precision). Returns the model's folder. Errors when the model folder exists, `dims` has
/// fewer than two entries or a count below 1, or `extra_config` is not TOML that makes a valid
/// model configuration.
pub fn init_dense(
    repo: &Path,
    model: &str,
    dims: &[i64],
    seed: i64,
    extra_config: &str,
) -> anyhow::Result<PathBuf> {
    if dims.len() < 2 || dims.iter().any(|&d| d < 1) {
        bail!("--dims needs at least two positive feature counts, got {dims:?}");
    }
    let dir = repo.join(model);
    if dir.exists() {
        bail!("{} exists; choose another model name", dir.display());
    }
    let last = dims.len() - 2;
    let config = ModelConfig {
        inputs: vec![TensorConfig {
            name: "input".into(),
            datatype: Datatype::Fp32,
            dims: vec![dims[0]],
        }],
        outputs: vec![TensorConfig {
            name: "output".into(),
            datatype: Datatype::Fp32,
            dims: vec![dims[dims.len() - 1]],
        }],
        layers: dims
            .windows(2)
            .enumerate()
            .map(|(i, pair)| LayerConfig {
                in_features: pair[0],
                out_features: pair[1],
                activation: if i == last {
                    Activation::None
                } else {
                    Activation::Relu
                },
                bias: true,
            })
            .collect(),
        ..dense_classifier(1, 1, 1)
    };
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut table: toml::Table = toml::from_str(&config.to_toml())?;
    let extra: toml::Table =
        toml::from_str(extra_config).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
    table.extend(extra);
    let text = toml::to_string(&table)?;
    ModelConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("--config: {e}"))?;
    tch::manual_seed(seed);
    let mut tensors = Vec::new();
    for (i, layer) in config.layers.iter().enumerate() {
        let scale = 1.0 / (layer.in_features as f64).sqrt();
        tensors.push((
            weight_name(i),
            Tensor::randn(
                [layer.out_features, layer.in_features],
                (Kind::Float, Device::Cpu),
            ) * scale,
        ));
        tensors.push((
            bias_name(i),
            Tensor::zeros([layer.out_features], (Kind::Float, Device::Cpu)),
        ));
    }
    std::fs::create_dir_all(dir.join("1")).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join(CONFIG_FILE), text)?;
    Tensor::write_safetensors(&tensors, dir.join("1").join(WEIGHTS_FILE))
        .context("write model.safetensors")?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempRepo;

    #[test]
    fn writes_a_model_the_server_configuration_reads() {
        let repo = TempRepo::new("init-dense");
        let extra = "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 100";
        let dir = init_dense(repo.path(), "tiny", &[4, 8, 2], 1, extra).unwrap();
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.layers.len(), 2);
        assert_eq!(
            (config.layers[0].in_features, config.layers[0].out_features),
            (4, 8)
        );
        assert_eq!(config.layers[0].activation, Activation::Relu);
        assert_eq!(config.layers[1].activation, Activation::None);
        assert!(dir.join("1").join(WEIGHTS_FILE).is_file());
        // The folder exists now; too few dims; a bad extra config.
        let err = init_dense(repo.path(), "tiny", &[4, 2], 1, "").unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        let err = init_dense(repo.path(), "other", &[4], 1, "").unwrap_err();
        assert!(err.to_string().contains("--dims"), "{err}");
        let err = init_dense(repo.path(), "third", &[4, 2], 1, "[dynamic_batching").unwrap_err();
        assert!(err.to_string().contains("--config"), "{err}");
    }
}
