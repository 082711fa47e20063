//! Data-parallel gradients: one replica of the model per device, each on its own thread.
//!
//! For every mini-batch, the rows are cut into one contiguous shard per device (sizes differ by
//! at most one row; a device whose shard would be empty sits the step out). Each replica
//! computes the mean loss of its shard and its gradients; the gradients are summed onto the
//! first device weighted by `rows of the shard / rows of the batch`, which is exactly the
//! gradient of the batch's mean loss (every loss is a mean over rows, see [`crate::loss`]).
//! The caller then takes one optimizer step on the master parameters, which every replica copies
//! before its next shard. With one device this is plain single-device training.
//!
//! The first device's replica runs on the caller's thread; each other one is owned by a thread
//! that lives as long as the [`DataParallel`] (tch's `Tensor` is `Send` but not `Sync`: a
//! worker owns its replica, and tensors cross only by being sent over a channel).

use std::sync::mpsc;

use anyhow::{bail, ensure, Context};
use maas_backend::DeviceSpec;
use tch::{Device, Tensor};

use crate::net::Net;

/// Parses one `--devices` entry (`cpu`, `cuda` or `cuda:N`, as `[instances] device` in a model
/// config: [`DeviceSpec`]) and resolves it. Errors name the accepted forms and, for a CUDA
/// device, say when it is not present.
pub fn parse_device(text: &str) -> anyhow::Result<Device> {
    let spec: DeviceSpec = text.trim().parse()?;
    spec.resolve().map_err(anyhow::Error::msg)
}

/// The name `--devices` and `metrics.json` use: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    }
}

/// One model copy on one device, its parameters autograd leaves.
struct Replica {
    device: Device,
    params: Vec<Tensor>,
}

impl Replica {
    /// A copy of `master` on `device`.
    fn new(master: &[Tensor], device: Device) -> anyhow::Result<Replica> {
        let params = master
            .iter()
            .map(|p| {
                p.f_to_device(device)?
                    .f_detach_copy()?
                    .f_set_requires_grad(true)
            })
            .collect::<Result<Vec<_>, tch::TchError>>()
            .with_context(|| format!("cannot copy the model to {}", device_name(device)))?;
        Ok(Replica { device, params })
    }

    /// Copies the job's master parameters into this replica, then returns the mean loss of the
    /// job's rows (already on this device) and its gradients, one per parameter (new tensors,
    /// owned by the caller).
    fn step(&mut self, net: &Net, job: &Job) -> anyhow::Result<(Vec<Tensor>, f64)> {
        let Job { master, x, y } = job;
        tch::no_grad(|| -> Result<(), tch::TchError> {
            for (p, m) in self.params.iter_mut().zip(master) {
                p.f_copy_(m)?;
                p.zero_grad();
            }
            Ok(())
        })?;
        let loss = net.objective.loss(&net.logits(&self.params, x)?, y)?;
        loss.f_backward()?;
        let grads = self
            .params
            .iter()
            .map(|p| p.grad().f_detach_copy())
            .collect::<Result<_, _>>()?;
        Ok((grads, loss.f_double_value(&[])?))
    }
}

/// A shard for a worker thread: the master parameters to start from (shallow copies: the
/// caller does not change them until every worker has answered) and the rows.
struct Job {
    master: Vec<Tensor>,
    x: Tensor,
    y: Tensor,
}

/// A replica that lives on its own thread for the whole run (a thread per batch would pay
/// libtorch's per-thread start-up at every step).
struct Worker {
    device: Device,
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<anyhow::Result<(Vec<Tensor>, f64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(mut replica: Replica, net: Net) -> anyhow::Result<Worker> {
        let device = replica.device;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("train-{}", device_name(device)))
            .spawn(move || {
                while let Ok(job) = inbox.recv() {
                    let result = replica.step(&net, &job);
                    if outbox.send(result).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start a training worker thread")?;
        Ok(Worker {
            device,
            jobs: Some(jobs),
            results,
            thread: Some(thread),
        })
    }

    fn stopped(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "the training worker on {} stopped",
            device_name(self.device)
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Replicas of the model on the devices given, and the step that averages their gradients.
/// The first replica runs on the calling thread, the others each on a thread of their own.
pub(crate) struct DataParallel {
    first: Replica,
    workers: Vec<Worker>,
}

impl DataParallel {
    /// One replica per device, each a copy of `master` (at least one device).
    pub fn new(master: &[Tensor], devices: &[Device], net: &Net) -> anyhow::Result<DataParallel> {
        let Some((&first, rest)) = devices.split_first() else {
            bail!("--devices names no device")
        };
        let workers = rest
            .iter()
            .map(|&device| Worker::spawn(Replica::new(master, device)?, net.clone()))
            .collect::<anyhow::Result<_>>()?;
        Ok(DataParallel {
            first: Replica::new(master, first)?,
            workers,
        })
    }

    /// The gradient of the mean loss of the batch `(x [rows, features], y [rows])` at the
    /// parameters `master`, on `master`'s device, and that mean loss. Every replica first takes
    /// `master`'s values, then computes its shard's gradient.
    pub fn gradients(
        &mut self,
        master: &[Tensor],
        net: &Net,
        x: &Tensor,
        y: &Tensor,
    ) -> anyhow::Result<(Vec<Tensor>, f64)> {
        let rows = x.size().first().copied().unwrap_or(0);
        ensure!(rows > 0, "an empty batch");
        let master_device = master.first().map_or(Device::Cpu, Tensor::device);
        let n = self.workers.len() as i64 + 1;
        // Contiguous shards, the first `rows % n` one row longer; shard 0 is the caller's.
        let sizes: Vec<i64> = (0..n).map(|i| rows / n + i64::from(i < rows % n)).collect();
        let job = |start: i64, size: i64, device: Device| -> Result<Job, tch::TchError> {
            Ok(Job {
                master: master.iter().map(Tensor::shallow_clone).collect(),
                x: x.f_narrow(0, start, size)?.f_to_device(device)?,
                y: y.f_narrow(0, start, size)?.f_to_device(device)?,
            })
        };
        let mut start = sizes[0];
        let mut sent = Vec::new();
        for (worker, &size) in self.workers.iter().zip(&sizes[1..]) {
            if size == 0 {
                continue;
            }
            let job = job(start, size, worker.device)?;
            let jobs = worker.jobs.as_ref().ok_or_else(|| worker.stopped())?;
            jobs.send(job).map_err(|_| worker.stopped())?;
            sent.push((worker, size));
            start += size;
        }
        let first = self.first.step(net, &job(0, sizes[0], self.first.device)?);
        // Collect every answer before looking at errors, so no worker is left mid-job.
        let mut results = vec![first.map(|r| (r, sizes[0]))];
        for (worker, size) in sent {
            let answer = worker.results.recv().map_err(|_| worker.stopped());
            results.push(answer.and_then(|r| r).map(|r| (r, size)));
        }
        let mut total: Option<Vec<Tensor>> = None;
        let mut loss = 0.0;
        for result in results {
            let ((grads, shard_loss), size) = result?;
            let weight = size as f64 / rows as f64;
            loss += shard_loss * weight;
            let weighted = grads
                .iter()
                .map(|g| g.f_to_device(master_device)?.f_mul_scalar(weight))
                .collect::<Result<Vec<_>, _>>()?;
            total = Some(match total {
                None => weighted,
                Some(sum) => sum
                    .iter()
                    .zip(&weighted)
                    .map(|(a, b)| a.f_add(b))
                    .collect::<Result<Vec<_>, _>>()?,
            });
        }
        let Some(total) = total else {
            bail!("no replica computed a gradient")
        };
        Ok((total, loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_with_clear_errors() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(device_name(Device::Cuda(3)), "cuda:3");
        let e = parse_device("gpu0").unwrap_err().to_string();
        assert!(e.contains("invalid device 'gpu0'"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("invalid device 'cuda:x'"), "{e}");
        let absent = tch::Cuda::device_count();
        let e = parse_device(&format!("cuda:{absent}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("device cuda:{absent} requested but")),
            "{e}"
        );
    }
}
