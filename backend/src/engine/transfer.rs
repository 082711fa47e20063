//! Moving a batch between the host and a model's device, and between FP32 and the model's
//! precision.
//!
//! For a CUDA device the host rows are copied once into page-locked (pinned) memory from
//! libtorch's caching host allocator, and the host-to-device copy is issued `non_blocking`, so
//! it is queued on the device's current stream without waiting for it; the casts and the
//! forward pass that follow are queued behind it. The only wait is the copy of the result back
//! to the host, which must finish before the host can read it (CUDA C Programming Guide,
//! "Asynchronous Concurrent Execution": pinned memory is what lets a copy be asynchronous).
//!
//! Streams: tch 0.24 exposes no CUDA stream API (no `getStreamFromPool` nor stream guard), so
//! every instance queues on its device's default stream; instances on one device are ordered by
//! the device, not run concurrently. One stream per instance would need a C++ shim to
//! libtorch's `c10::cuda::CUDAStreamGuard`.

use tch::{Device, Kind, Tensor};

/// `data` (row-major FP32) as a tensor of `shape` on `device`, cast there to `kind`. On CUDA
/// through pinned host memory with a non-blocking copy (see the module's comment); on the CPU
/// one copy of the rows.
///
/// Errors: libtorch's, when the shape does not fit `data` or the device cannot take it.
pub fn host_to_device(
    data: &[f32],
    shape: &[i64],
    device: Device,
    kind: Kind,
) -> Result<Tensor, tch::TchError> {
    let host = Tensor::f_from_slice(data)?.f_view(shape)?;
    let on_device = if device.is_cuda() {
        host.f_pin_memory(device)?
            .f_to_device_(device, Kind::Float, true, false)?
    } else {
        host
    };
    on_device.f_to_kind(kind)
}

/// A forward pass's output `y` (any floating kind, on any device) as row-major FP32 on the
/// host: cast to FP32 on its device first, then one copy back (the one wait for the device).
pub fn device_to_host(y: &Tensor) -> Result<Vec<f32>, tch::TchError> {
    let y = y
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?;
    Vec::<f32>::try_from(&y.f_view([-1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_bf16_rounds_to_bf16() {
        let data = [1.0f32, 1.0 + 1.0 / 256.0, -3.5, 1000.25];
        let x = host_to_device(&data, &[2, 2], Device::Cpu, Kind::BFloat16).unwrap();
        assert_eq!(x.kind(), Kind::BFloat16);
        assert_eq!(x.size(), [2, 2]);
        let back = device_to_host(&x).unwrap();
        // bfloat16 keeps 8 significant bits: 1 + 2^-8 rounds to 1 (ties to even), 1000.25
        // to 1000.
        assert_eq!(back, vec![1.0, 1.0, -3.5, 1000.0]);
        let same = host_to_device(&data, &[4], Device::Cpu, Kind::Float).unwrap();
        assert_eq!(device_to_host(&same).unwrap(), data.to_vec());
    }

    /// GPU half: rows reach cuda:0 (through pinned memory) cast there, and come back equal.
    #[test]
    fn rows_reach_cuda_and_come_back() {
        let test = "engine::transfer::tests::rows_reach_cuda_and_come_back";
        let Some(cuda) = crate::testutil::cuda_or_skip(test) else {
            return;
        };
        let data: Vec<f32> = (0..4096).map(|i| i as f32 / 8.0).collect();
        let x = host_to_device(&data, &[64, 64], cuda, Kind::BFloat16).unwrap();
        assert_eq!((x.device(), x.kind()), (cuda, Kind::BFloat16));
        let back = device_to_host(&x).unwrap();
        let rounded: Vec<f32> = data
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(back, rounded);
        let x = host_to_device(&data, &[4096], cuda, Kind::Float).unwrap();
        assert_eq!(device_to_host(&x).unwrap(), data);
    }
}
