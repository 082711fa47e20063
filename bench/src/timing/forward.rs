//! The forward pass of a served dense model version, in process.

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use maas_backend::{DenseModel, ModelConfig, Precision, CONFIG_FILE, WEIGHTS_FILE};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::repeat_for;

/// What [`forward`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardTiming {
    /// The model's name.
    pub model: String,
    /// The device of the model's `[instances]` (`cpu`, `cuda:0`).
    pub device: String,
    /// The model's compute precision.
    pub precision: Precision,
    /// Dense layers.
    pub layers: usize,
    /// Rows per forward pass.
    pub batch: i64,
    /// libtorch intra-op threads (CPU work).
    pub threads: i32,
    /// Timed forward passes.
    pub passes: u64,
    /// Timed seconds.
    pub seconds: f64,
    /// Mean milliseconds per pass (host rows to the device, the layers, the output back).
    pub ms_per_pass: f64,
    /// Rows per second: the in-process ceiling for HTTP throughput at this batch size.
    pub rows_per_s: f64,
    /// Floating-point operations per second, in units of 10^12: `2 x batch x sum(in x out)`
    /// per pass.
    pub tflops: f64,
}

/// Loads `<repo>/<model>/<version>/model.safetensors` as the server does (the config's device
/// and precision) and runs `forward_rows` on `batch` random rows for `duration`, after two
/// untimed passes, on this thread with `threads` intra-op threads and no autograd.
///
/// Errors when the configuration or weights cannot be read, the device is not available, or a
/// pass fails.
pub fn forward(
    repo: &Path,
    model: &str,
    version: u64,
    batch: i64,
    threads: i32,
    duration: Duration,
) -> anyhow::Result<ForwardTiming> {
    let dir = repo.join(model);
    let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))
        .map_err(|e| anyhow!("{}: {e}", dir.join(CONFIG_FILE).display()))?;
    let device = config.instances.device.resolve()?;
    let weights = dir.join(version.to_string()).join(WEIGHTS_FILE);
    let dense = DenseModel::load(&config, &weights, device)
        .map_err(|e| anyhow!("{}: {e}", weights.display()))?;
    tch::set_num_threads(threads.max(1));
    let _no_grad = tch::no_grad_guard();
    let input: Vec<f32> = Vec::try_from(Tensor::f_rand(
        [batch * dense.in_features()],
        (Kind::Float, Device::Cpu),
    )?)?;
    let (passes, seconds) = repeat_for(duration, 2, 1, || {
        dense.forward_rows(&input, batch)?;
        Ok(())
    })?;
    let macs: f64 = config
        .layers
        .iter()
        .map(|l| (l.in_features * l.out_features) as f64)
        .sum();
    let rows_per_s = passes as f64 * batch as f64 / seconds;
    Ok(ForwardTiming {
        model: model.to_string(),
        device: config.instances.device.to_string(),
        precision: config.precision,
        layers: config.layers.len(),
        batch,
        threads,
        passes,
        seconds,
        ms_per_pass: seconds * 1e3 / passes as f64,
        rows_per_s,
        tflops: 2.0 * macs * rows_per_s / 1e12,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init_dense;
    use crate::testutil::TempRepo;

    #[test]
    fn times_a_tiny_model_on_the_cpu() {
        let repo = TempRepo::new("forward");
        init_dense(repo.path(), "tiny", &[4, 8, 2], 1, "max_batch_size = 8").unwrap();
        let t = forward(repo.path(), "tiny", 1, 8, 1, Duration::from_millis(20)).unwrap();
        assert_eq!((t.model.as_str(), t.device.as_str()), ("tiny", "cpu"));
        assert_eq!((t.layers, t.batch, t.threads), (2, 8, 1));
        assert!(t.passes >= 1 && t.seconds >= 0.02, "{t:?}");
        let rows = t.passes as f64 * 8.0 / t.seconds;
        assert!((t.rows_per_s - rows).abs() < 1e-6 * rows, "{t:?}");
        // 2 x 8 rows x (4x8 + 8x2) multiply-adds per pass.
        let flops = t.passes as f64 * 2.0 * 8.0 * 48.0 / t.seconds;
        assert!((t.tflops * 1e12 - flops).abs() < 1e-6 * flops, "{t:?}");
        let missing = forward(repo.path(), "absent", 1, 8, 1, Duration::ZERO).unwrap_err();
        assert!(missing.to_string().contains("config.toml"), "{missing}");
    }
}
