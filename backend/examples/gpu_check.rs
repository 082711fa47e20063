//! The in-process measurements of `scripts/gpu-check.sh` (not part of the `maas-backend`
//! command): one JSON object on stdout per call.
//!
//! - `gpu_check matmul --device D --n N --kind bf16|fp16|fp32 --seconds S`: the raw libtorch
//!   matrix product `[N, N] x [N, N]` on D, repeated for S seconds: the ceiling, TFLOP/s
//!   (`2 N^3` floating-point operations per product).
//! - `gpu_check forward --repo R --model M --batch B --seconds S`: version 1 of the dense model M
//!   loaded as the server loads it (its config's device and precision), `forward_rows` on B
//!   random rows (host rows to the device, the layers, the output back to the host), repeated
//!   for S seconds: rows/s and TFLOP/s (`2 B sum(in * out)` per pass).
//!
//! CUDA work is queued asynchronously; each timed span ends by reading a result back to the
//! host (`forward`) or by `tch::Cuda::synchronize` (`matmul`), so the time is the device's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use maas_backend::{DenseModel, DeviceSpec, ModelConfig, CONFIG_FILE, WEIGHTS_FILE};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .context("usage: gpu_check matmul|forward --key value ...")?;
    let mut options = std::collections::HashMap::new();
    while let Some(key) = args.next() {
        let key = key
            .strip_prefix("--")
            .ok_or_else(|| anyhow!("expected --key, got {key}"))?
            .to_string();
        let value = args
            .next()
            .ok_or_else(|| anyhow!("--{key} needs a value"))?;
        options.insert(key, value);
    }
    let get = |key: &str, default: &str| options.get(key).cloned().unwrap_or(default.to_string());
    let seconds: f64 = get("seconds", "3").parse().context("--seconds")?;
    let duration = Duration::from_secs_f64(seconds);
    let _no_grad = tch::no_grad_guard();
    let result = match mode.as_str() {
        "matmul" => {
            let device: DeviceSpec = get("device", "cpu").parse().map_err(|e| anyhow!("{e}"))?;
            let device = device.resolve()?;
            let n: i64 = get("n", "1024").parse().context("--n")?;
            let kind = match get("kind", "bf16").as_str() {
                "bf16" => Kind::BFloat16,
                "fp16" => Kind::Half,
                "fp32" => Kind::Float,
                other => bail!("--kind {other}: expected bf16, fp16 or fp32"),
            };
            matmul(device, n, kind, duration)?
        }
        "forward" => {
            let repo = PathBuf::from(get("repo", "."));
            let model = get("model", "dense");
            let batch: i64 = get("batch", "64").parse().context("--batch")?;
            forward(&repo, &model, batch, duration)?
        }
        other => bail!("unknown mode {other}: expected matmul or forward"),
    };
    println!("{result}");
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

fn matmul(device: Device, n: i64, kind: Kind, duration: Duration) -> anyhow::Result<String> {
    let a = Tensor::f_randn([n, n], (kind, device))?;
    let b = Tensor::f_randn([n, n], (kind, device))?;
    // Untimed: cuBLAS picks its kernel and the allocator its blocks.
    for _ in 0..3 {
        let _ = a.f_matmul(&b)?;
    }
    sync(device);
    let started = Instant::now();
    let mut products = 0u64;
    while products == 0 || started.elapsed() < duration {
        for _ in 0..10 {
            let _ = a.f_matmul(&b)?;
        }
        sync(device);
        products += 10;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tflops = 2.0 * (n as f64).powi(3) * products as f64 / seconds / 1e12;
    Ok(serde_json::json!({
        "mode": "matmul", "device": format!("{device:?}"), "n": n, "kind": format!("{kind:?}"),
        "products": products, "seconds": seconds, "tflops": tflops,
    })
    .to_string())
}

fn forward(
    repo: &std::path::Path,
    model: &str,
    batch: i64,
    duration: Duration,
) -> anyhow::Result<String> {
    let dir = repo.join(model);
    let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))
        .map_err(|e| anyhow!("{}: {e}", dir.join(CONFIG_FILE).display()))?;
    let device = config.instances.device.resolve()?;
    let dense = DenseModel::load(&config, &dir.join("1").join(WEIGHTS_FILE), device)
        .map_err(|e| anyhow!("{model}: {e}"))?;
    let input: Vec<f32> = Vec::try_from(Tensor::f_rand(
        [batch * dense.in_features()],
        (Kind::Float, Device::Cpu),
    )?)?;
    for _ in 0..2 {
        dense.forward_rows(&input, batch)?;
    }
    let started = Instant::now();
    let mut passes = 0u64;
    while passes == 0 || started.elapsed() < duration {
        dense.forward_rows(&input, batch)?;
        passes += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let macs: f64 = config
        .layers
        .iter()
        .map(|l| (l.in_features * l.out_features) as f64)
        .sum();
    let rows_per_s = passes as f64 * batch as f64 / seconds;
    Ok(serde_json::json!({
        "mode": "forward", "model": model, "device": config.instances.device.to_string(),
        "layers": config.layers.len(),
        "precision": serde_json::to_value(config.precision)?, "batch": batch, "passes": passes,
        "seconds": seconds, "ms_per_pass": seconds * 1e3 / passes as f64,
        "rows_per_s": rows_per_s, "tflops": 2.0 * macs * rows_per_s / 1e12,
    })
    .to_string())
}
