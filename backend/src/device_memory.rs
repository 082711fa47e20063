//! GPU memory this process holds, per device, for `GET /metrics`: the gauge
//! `maas_gpu_memory_used_bytes{gpu="N"}`, read at scrape time from NVIDIA's management library
//! (NVML, `nvmlDeviceGetComputeRunningProcesses`: the memory the driver accounts to this
//! process's CUDA context, libtorch's caching allocator included).
//!
//! NVML is opened at run time (`libnvidia-ml.so`, part of the NVIDIA driver): on a machine
//! without the driver, or where this process has no CUDA context yet, no series is written (a
//! CPU-only backend reports none). `gpu` is NVML's device index, the order `nvidia-smi` lists;
//! it equals `cuda:N` when `CUDA_DEVICE_ORDER=PCI_BUS_ID` and `CUDA_VISIBLE_DEVICES` is unset.

use std::sync::OnceLock;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// NVML, opened once per process; `None` where there is no NVIDIA driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| Nvml::init().ok()).as_ref()
}

/// Bytes of GPU memory this process uses on each GPU it has a context on, `(NVML index,
/// bytes)`, ascending by index; empty without NVML.
pub fn used_by_this_process() -> Vec<(u32, u64)> {
    let Some(nvml) = nvml() else {
        return Vec::new();
    };
    let pid = std::process::id();
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            let processes = device.running_compute_processes().ok()?;
            let bytes = processes
                .iter()
                .filter(|p| p.pid == pid)
                .map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                })
                .sum::<u64>();
            processes
                .iter()
                .any(|p| p.pid == pid)
                .then_some((index, bytes))
        })
        .collect()
}

/// A scrape-time snapshot of [`used_by_this_process`], as a `prometheus-client` collector.
#[derive(Debug)]
pub struct DeviceMemory(Vec<(u32, u64)>);

impl DeviceMemory {
    /// Reads the current use.
    pub fn now() -> DeviceMemory {
        DeviceMemory(used_by_this_process())
    }
}

impl Collector for DeviceMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "maas_gpu_memory_used_bytes",
            "GPU memory this backend process uses on the GPU (NVML), bytes.",
            None,
            MetricType::Gauge,
        )?;
        for (index, bytes) in &self.0 {
            let labels = [("gpu", index.to_string())];
            ConstGauge::new(i64::try_from(*bytes).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a CUDA context (this test never makes one) no GPU is reported, whether or not
    /// the machine has NVML; the collector then writes nothing.
    #[test]
    fn no_series_without_a_cuda_context() {
        if tch::Cuda::is_available() {
            return;
        }
        assert!(used_by_this_process().is_empty());
        let text = crate::metrics::render(Vec::new(), vec![Box::new(DeviceMemory::now())]);
        assert!(!text.contains("maas_gpu_memory_used_bytes"), "{text}");
    }

    /// GPU half: after 256 MiB are allocated on cuda:0, the gauge reports at least that much
    /// on some GPU.
    #[test]
    fn a_cuda_allocation_is_reported() {
        let test = "device_memory::tests::a_cuda_allocation_is_reported";
        let Some(cuda) = crate::testutil::cuda_or_skip(test) else {
            return;
        };
        let block = tch::Tensor::zeros([64, 1024, 1024], (tch::Kind::Float, cuda));
        tch::Cuda::synchronize(0);
        let used: u64 = used_by_this_process().iter().map(|(_, b)| b).sum();
        assert!(used >= 256 << 20, "{used} bytes");
        let text = crate::metrics::render(Vec::new(), vec![Box::new(DeviceMemory::now())]);
        assert!(text.contains("maas_gpu_memory_used_bytes{gpu="), "{text}");
        drop(block);
    }
}
