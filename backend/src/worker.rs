//! The worker of one model version: a dedicated OS thread that owns the model and runs its
//! forward passes, fed by a bounded channel of [`InferJob`]s, answering each through a tokio
//! oneshot.
//!
//! Forward passes are CPU- (or device-) bound and block for their whole duration, so they run
//! here rather than on tokio's workers, which keep serving HTTP meanwhile. The thread is the
//! actor that owns the model (as text-generation-inference's queue owns its state); a dynamic
//! batcher extends it by draining several jobs from the channel into one forward pass.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::dense::DenseModel;

/// Settings of a worker thread.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// libtorch intra-op threads for this worker's forward passes (`tch::set_num_threads`,
    /// which is per OS thread under OpenMP, so the worker sets it itself). At least 1.
    pub intra_op_threads: i32,
    /// Jobs that may wait in the channel; one more is refused with [`WorkerError::QueueFull`].
    pub queue_capacity: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            intra_op_threads: 1,
            queue_capacity: 1024,
        }
    }
}

/// One request's rows for a forward pass.
#[derive(Debug)]
pub struct InferJob {
    /// The batch dimension: rows in `input`.
    pub rows: i64,
    /// Row-major FP32 input, `rows * in_features` elements, already validated.
    pub input: Vec<f32>,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<ForwardOutput, WorkerError>>,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput {
    /// Row-major FP32 output, `rows * out_features` elements.
    pub data: Vec<f32>,
    /// Rows computed (the job's batch dimension).
    pub rows: i64,
    /// Compute time: from building the input tensor to the output copied back to the host
    /// (what Triton splits into compute input, infer and output).
    pub compute: Duration,
}

/// Why a job got no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The channel is full: the model version is overloaded.
    #[error("{0}: too many requests waiting; retry later")]
    QueueFull(String),
    /// The worker thread has stopped (shutdown, or it died).
    #[error("{0}: the worker has stopped")]
    Stopped(String),
    /// libtorch failed or panicked during the forward pass.
    #[error("{label}: {message}")]
    Forward {
        /// The worker's label (`model/version`).
        label: String,
        /// libtorch's message.
        message: String,
    },
}

/// The handle to a running worker thread. Dropping it closes the channel and joins the thread
/// after the jobs already queued are done.
#[derive(Debug)]
pub struct Worker {
    label: String,
    sender: Option<SyncSender<InferJob>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread for `model`; `label` (such as `digits/1`) names the thread and
    /// appears in errors and logs.
    pub fn spawn(
        label: String,
        model: DenseModel,
        options: WorkerOptions,
    ) -> std::io::Result<Worker> {
        let (sender, receiver) = mpsc::sync_channel(options.queue_capacity.max(1));
        let thread_label = label.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker {label}"))
            .spawn(move || run(thread_label, model, receiver, options))?;
        Ok(Worker {
            label,
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// The label given at spawn (`model/version`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Queues `rows` rows of validated input and waits for the forward pass.
    pub async fn infer(&self, rows: i64, input: Vec<f32>) -> Result<ForwardOutput, WorkerError> {
        let (reply, result) = oneshot::channel();
        let Some(sender) = &self.sender else {
            return Err(WorkerError::Stopped(self.label.clone()));
        };
        sender
            .try_send(InferJob { rows, input, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => WorkerError::QueueFull(self.label.clone()),
                TrySendError::Disconnected(_) => WorkerError::Stopped(self.label.clone()),
            })?;
        result
            .await
            .map_err(|_| WorkerError::Stopped(self.label.clone()))?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(worker = %self.label, "worker thread panicked");
            }
        }
    }
}

/// The worker loop: one job, one forward pass, until every sender is gone.
fn run(label: String, model: DenseModel, jobs: Receiver<InferJob>, options: WorkerOptions) {
    tch::set_num_threads(options.intra_op_threads.max(1));
    tracing::debug!(worker = %label, "worker started");
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            // The client went away while the job waited; skip the work.
            continue;
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            model.forward_rows(&job.input, job.rows)
        }));
        let compute = started.elapsed();
        let result = match result {
            Ok(Ok(data)) => Ok(ForwardOutput {
                data,
                rows: job.rows,
                compute,
            }),
            Ok(Err(e)) => Err(WorkerError::Forward {
                label: label.clone(),
                message: e.to_string(),
            }),
            Err(_) => Err(WorkerError::Forward {
                label: label.clone(),
                message: "forward pass panicked".into(),
            }),
        };
        // The receiver may be gone (client disconnected); nothing to do then.
        let _ = job.reply.send(result);
    }
    tracing::debug!(worker = %label, "worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dense_classifier;
    use crate::dense::{bias_name, weight_name};
    use std::collections::HashMap;
    use tch::{Device, Kind, Tensor};

    #[tokio::test]
    async fn runs_jobs_on_its_thread() {
        let config = dense_classifier(2, 3, 2);
        let mut tensors = HashMap::new();
        for (i, l) in config.layers.iter().enumerate() {
            tensors.insert(
                weight_name(i),
                Tensor::zeros([l.out_features, l.in_features], (Kind::Float, Device::Cpu)),
            );
            tensors.insert(
                bias_name(i),
                Tensor::zeros([l.out_features], (Kind::Float, Device::Cpu)),
            );
        }
        let model = DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap();
        let worker = Worker::spawn("test/1".into(), model, WorkerOptions::default()).unwrap();
        let out = worker.infer(3, vec![1.0; 6]).await.unwrap();
        assert_eq!(out.rows, 3);
        assert_eq!(out.data, vec![0.5; 6]);
        drop(worker);
    }
}
