//! In-process timings, with no HTTP and no batcher: the ceilings that the served figures are
//! compared against. Each result is one JSON object (serde), printed by the `maas-bench` binary.
//!
//! CUDA work is queued asynchronously; every timed step ends by reading a result back to the
//! host (the forward pass) or by `tch::Cuda::synchronize` (matrix products), so the time
//! measured is the device's.

mod forward;
mod matmul;

use std::time::{Duration, Instant};

pub use forward::{forward, ForwardTiming};
pub use matmul::{matmul, MatmulKind, MatmulTiming};

/// Runs `step` (which does `work` units, e.g. passes or products) until `duration` has passed,
/// at least once, after `warmup` untimed calls; returns the units done and the seconds taken.
fn repeat_for(
    duration: Duration,
    warmup: u32,
    work: u64,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(u64, f64)> {
    for _ in 0..warmup {
        step()?;
    }
    let started = Instant::now();
    let mut done = 0u64;
    while done == 0 || started.elapsed() < duration {
        step()?;
        done += work;
    }
    Ok((done, started.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_at_least_once_after_the_warmup() {
        let mut calls = 0;
        let (done, seconds) = repeat_for(Duration::ZERO, 2, 10, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((calls, done), (3, 10));
        assert!(seconds >= 0.0);
        let failed = repeat_for(Duration::ZERO, 0, 1, || anyhow::bail!("no device"));
        assert_eq!(failed.unwrap_err().to_string(), "no device");
    }
}
