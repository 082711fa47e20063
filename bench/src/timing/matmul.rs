//! Raw libtorch matrix products: the device's ceiling.

use std::time::Duration;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::repeat_for;

/// The element type of a [`matmul`] timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MatmulKind {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// IEEE single precision.
    Fp32,
}

impl MatmulKind {
    fn kind(self) -> Kind {
        match self {
            MatmulKind::Bf16 => Kind::BFloat16,
            MatmulKind::Fp16 => Kind::Half,
            MatmulKind::Fp32 => Kind::Float,
        }
    }
}

/// What [`matmul`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct MatmulTiming {
    /// The device (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// Rows and columns of each square operand.
    pub n: i64,
    /// The element type.
    pub kind: MatmulKind,
    /// Timed products.
    pub products: u64,
    /// Timed seconds.
    pub seconds: f64,
    /// `2 n^3` floating-point operations per product, per second, in units of 10^12.
    pub tflops: f64,
}

/// Times `[n, n] x [n, n]` products of random `kind` matrices on `device` for `duration`, in
/// groups of 10 each ended by a device synchronisation, after 3 untimed products (cuBLAS picks
/// its kernel and the allocator its blocks). Errors when the device cannot hold or run them.
pub fn matmul(
    device: Device,
    n: i64,
    kind: MatmulKind,
    duration: Duration,
) -> anyhow::Result<MatmulTiming> {
    let _no_grad = tch::no_grad_guard();
    let a = Tensor::f_randn([n, n], (kind.kind(), device))?;
    let b = Tensor::f_randn([n, n], (kind.kind(), device))?;
    for _ in 0..3 {
        let _ = a.f_matmul(&b)?;
    }
    sync(device);
    let (products, seconds) = repeat_for(duration, 0, 10, || {
        for _ in 0..10 {
            let _ = a.f_matmul(&b)?;
        }
        sync(device);
        Ok(())
    })?;
    Ok(MatmulTiming {
        device: format!("{device:?}"),
        n,
        kind,
        products,
        seconds,
        tflops: 2.0 * (n as f64).powi(3) * products as f64 / seconds / 1e12,
    })
}

/// Waits for the queued work of a CUDA device; nothing to wait for on the CPU.
fn sync(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_products_on_the_cpu() {
        let t = matmul(Device::Cpu, 16, MatmulKind::Fp32, Duration::ZERO).unwrap();
        assert_eq!(
            (t.device.as_str(), t.n, t.kind),
            ("Cpu", 16, MatmulKind::Fp32)
        );
        assert_eq!(t.products, 10);
        let flops = 2.0 * 16f64.powi(3) * 10.0 / t.seconds;
        assert!((t.tflops * 1e12 - flops).abs() < 1e-6 * flops, "{t:?}");
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(json["kind"], "fp32");
    }
}
