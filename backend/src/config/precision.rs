//! `precision` in `config.toml`: the floating-point format a model's weights are kept and its
//! forward pass computes in, and whether a device can run it.
//!
//! Requests and responses stay in their declared datatypes: inputs arrive on the host as FP32
//! (any numeric request datatype is converted by validation), move to the device and are cast
//! there; outputs are cast back to FP32 on the device before the copy to the host, then written
//! in the output's declared datatype (FP32, or the precision's own BF16/FP16).

use std::fmt;

use maas_protocol::Datatype;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// `precision` in `config.toml`. Default `"fp32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE 754 binary32 weights and arithmetic (libtorch's `Float`).
    #[default]
    Fp32,
    /// FP32 weights; matrix products on CUDA tensor cores in TensorFloat-32 (10-bit mantissa,
    /// NVIDIA A100 whitepaper, 2020). CUDA only. libtorch's switch for it is process-wide
    /// (`torch.backends.cuda.matmul.allow_tf32`; tch 0.24 exposes no setter), so it is read
    /// from the environment variable [`TF32_OVERRIDE_ENV`] when libtorch starts.
    Tf32,
    /// bfloat16 weights and arithmetic (8-bit exponent, 7-bit mantissa; libtorch's `BFloat16`).
    /// Runs on CPU and on CUDA devices of compute capability 8.0 and above.
    Bf16,
    /// IEEE 754 binary16 weights and arithmetic (libtorch's `Half`).
    Fp16,
}

/// The environment variable libtorch reads once, when its global context is created, to let
/// cuBLAS run FP32 matrix products in TF32 (`aten/src/ATen/Context.h`,
/// `TORCH_ALLOW_TF32_CUBLAS_OVERRIDE`). It must be `1` in the backend's environment before it
/// starts for a `precision = "tf32"` model to load, and then applies to every FP32 model of the
/// process on CUDA.
pub const TF32_OVERRIDE_ENV: &str = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE";

/// Why a model's precision cannot run on its device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecisionUnavailable {
    /// TF32 is a CUDA tensor-core mode.
    #[error("precision \"tf32\" is a CUDA tensor-core mode and {0:?} has none; use precision = \"fp32\" on cpu")]
    Tf32NotCuda(Device),
    /// TF32 was asked for but libtorch was not started with it allowed.
    #[error("precision \"tf32\" needs {TF32_OVERRIDE_ENV}=1 in the backend's environment (libtorch reads it once at start; it then applies to every FP32 model of the process)")]
    Tf32NotAllowed,
    /// libtorch failed a matrix product in this format on this device.
    #[error("precision \"{precision}\" cannot run on {device:?}: libtorch failed a matrix product in it ({reason}); use precision = \"fp32\" or \"bf16\"")]
    NotOnDevice {
        /// The precision asked for.
        precision: Precision,
        /// The device.
        device: Device,
        /// libtorch's message, first line.
        reason: String,
    },
}

impl Precision {
    /// The libtorch element type of the weights and the forward pass (TF32 keeps `Float`).
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 | Precision::Tf32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    /// The name in `config.toml` (`"bf16"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// The Open Inference Protocol datatypes a model's input and output may declare under this
    /// precision: FP32 always; BF16 or FP16 besides for `bf16` or `fp16`.
    pub fn datatypes(self) -> &'static [Datatype] {
        match self {
            Precision::Fp32 | Precision::Tf32 => &[Datatype::Fp32],
            Precision::Bf16 => &[Datatype::Fp32, Datatype::Bf16],
            Precision::Fp16 => &[Datatype::Fp32, Datatype::Fp16],
        }
    }

    pub(super) fn is_default(&self) -> bool {
        *self == Precision::Fp32
    }

    /// Whether `device` can run this precision here: TF32 only on CUDA with
    /// [`TF32_OVERRIDE_ENV`] set; BF16 and FP16 when libtorch runs a small matrix product in
    /// them on the device (libtorch builds differ in the half-precision CPU kernels they have,
    /// so it is tried, not assumed).
    pub fn check(self, device: Device) -> Result<(), PrecisionUnavailable> {
        match self {
            Precision::Fp32 => Ok(()),
            Precision::Tf32 if !device.is_cuda() => Err(PrecisionUnavailable::Tf32NotCuda(device)),
            Precision::Tf32 => match std::env::var(TF32_OVERRIDE_ENV).as_deref() {
                Ok("1") => Ok(()),
                _ => Err(PrecisionUnavailable::Tf32NotAllowed),
            },
            Precision::Bf16 | Precision::Fp16 => {
                let probe = || -> Result<Tensor, tch::TchError> {
                    let x = Tensor::f_ones([2, 3], (self.kind(), device))?;
                    let w = Tensor::f_ones([4, 3], (self.kind(), device))?;
                    let b = Tensor::f_zeros([4], (self.kind(), device))?;
                    tch::no_grad(|| x.f_linear(&w, Some(&b))?.f_relu()?.f_to_kind(Kind::Float))
                };
                probe()
                    .map(drop)
                    .map_err(|e| PrecisionUnavailable::NotOnDevice {
                        precision: self,
                        device,
                        reason: e.to_string().lines().next().unwrap_or_default().to_string(),
                    })
            }
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_runs_bf16_and_refuses_tf32() {
        assert_eq!(Precision::Fp32.check(Device::Cpu), Ok(()));
        assert_eq!(Precision::Bf16.check(Device::Cpu), Ok(()));
        let e = Precision::Tf32.check(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("CUDA tensor-core mode"), "{e}");
        assert_eq!(Precision::Bf16.kind(), Kind::BFloat16);
        assert_eq!(Precision::Tf32.kind(), Kind::Float);
    }
}
