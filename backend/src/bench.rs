//! Helpers for benchmarks: a dense model with random weights (`maas-backend init-dense`) and
//! the raw in-process forward pass of a served version (`maas-backend forward-bench`), the
//! baseline that HTTP throughput is compared against (see BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use maas_protocol::Datatype;

use crate::config::{
    dense_classifier, Activation, LayerConfig, ModelConfig, TensorConfig, CONFIG_FILE,
};
use crate::engine::{bias_name, weight_name, DenseModel, WEIGHTS_FILE};

/// Writes `<repo>/<model>/config.toml` (FP32 `input` → relu layers → `output`, no activation
/// on the last layer) and version 1 with weights drawn from N(0, 1/in) with `seed`, biases 0.
///
/// `dims` are the feature counts, input first: `[1024, 4096, 4096, 1024]` is three layers.
/// `extra_config` (TOML text) overrides or adds top-level keys and tables (batching, instances). Errors when
/// the model folder exists or `dims` has fewer than two entries.
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

/// What [`forward_bench`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardBench {
    /// Rows per forward pass.
    pub batch: i64,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// Timed forward passes.
    pub passes: u64,
    /// Timed seconds.
    pub seconds: f64,
    /// Mean milliseconds per pass (input to the model, forward, output to the host).
    pub ms_per_pass: f64,
    /// Rows per second: the in-process ceiling for HTTP throughput at this batch size.
    pub rows_per_s: f64,
}

/// Loads `<repo>/<model>/<version>/model.safetensors` as the server does and runs
/// `forward_rows` on random rows of `batch` for `duration` after one untimed pass, on this
/// thread with `threads` intra-op threads and no autograd.
pub fn forward_bench(
    repo: &Path,
    model: &str,
    version: u64,
    batch: i64,
    threads: i32,
    duration: Duration,
) -> anyhow::Result<ForwardBench> {
    let dir = repo.join(model);
    let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(CONFIG_FILE).display()))?;
    let weights = dir.join(version.to_string()).join(WEIGHTS_FILE);
    let dense = DenseModel::load(&config, &weights, Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e}", weights.display()))?;
    tch::set_num_threads(threads.max(1));
    let _no_grad = tch::no_grad_guard();
    let input: Vec<f32> = Vec::try_from(Tensor::rand(
        [batch * dense.in_features()],
        (Kind::Float, Device::Cpu),
    ))?;
    dense.forward_rows(&input, batch)?;
    let started = Instant::now();
    let mut passes = 0u64;
    while passes == 0 || started.elapsed() < duration {
        dense.forward_rows(&input, batch)?;
        passes += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ForwardBench {
        batch,
        threads,
        passes,
        seconds,
        ms_per_pass: seconds * 1e3 / passes as f64,
        rows_per_s: (passes as f64) * (batch as f64) / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn init_then_measure_a_tiny_model() {
        let repo = TempDir::new("bench");
        let extra = "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 100";
        let dir = init_dense(repo.path(), "tiny", &[4, 8, 2], 1, extra).unwrap();
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE)).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.layers.len(), 2);
        assert_eq!(config.layers[1].activation, Activation::None);
        let result =
            forward_bench(repo.path(), "tiny", 1, 8, 1, Duration::from_millis(20)).unwrap();
        assert!(result.passes >= 1 && result.rows_per_s > 0.0, "{result:?}");
        assert!(init_dense(repo.path(), "tiny", &[4, 2], 1, "").is_err());
        assert!(init_dense(repo.path(), "other", &[4], 1, "").is_err());
    }
}
