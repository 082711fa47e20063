//! What a request hands to a model version's worker, a job of validated rows, and what comes
//! back: the output rows with their share of compute time, or why there is none.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::fairness::Fairness;
use super::ForwardError;

/// One request's rows for a forward pass.
#[derive(Debug)]
pub struct InferJob {
    /// The batch dimension: rows in `input`.
    pub rows: i64,
    /// Row-major FP32 input, `rows * in_features` elements, already validated.
    pub input: Vec<f32>,
    /// When the job was queued (the start of its queue time).
    pub enqueued: Instant,
    /// Whose queue it joins in the batcher, and that queue's weight.
    pub fairness: Fairness,
    /// When the job is answered [`WorkerError::QueueTimeout`] if it has not started its
    /// forward pass by then: `enqueued` plus its priority level's queue timeout; `None`: no
    /// timeout.
    pub deadline: Option<Instant>,
    /// Run at once, alone, without waiting for a batch to fill (warmup requests).
    pub alone: bool,
    /// Where the result goes.
    pub reply: oneshot::Sender<Result<ForwardOutput, WorkerError>>,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput {
    /// Row-major FP32 output, `rows * out_features` elements.
    pub data: Vec<f32>,
    /// Rows computed for this job (its batch dimension).
    pub rows: i64,
    /// This job's share of its batch's compute time, by rows: the batch's time (input to the
    /// device, forward, output back to the host) times `rows / batch_rows`. The shares of one
    /// batch add up to its time, so metering never counts a forward pass twice.
    pub compute: Duration,
    /// Time from queueing to the start of the forward pass.
    pub queue: Duration,
    /// Rows in the forward pass this job was part of.
    pub batch_rows: i64,
}

/// Why a job got no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The queue is full: the model version is overloaded.
    #[error("{0}: too many requests waiting; retry later")]
    QueueFull(String),
    /// The job waited in the queue longer than its priority level's queue timeout
    /// (`[dynamic_batching] default_timeout_us` / `priority_timeout_us`) and was taken out
    /// without running.
    #[error("{label}: waited longer than the queue timeout of priority level {priority} ({} ms); retry later", timeout.as_secs_f64() * 1e3)]
    QueueTimeout {
        /// The worker's label (`model/version`).
        label: String,
        /// The job's priority level, 1 to 16.
        priority: u8,
        /// That level's queue timeout.
        timeout: Duration,
    },
    /// The worker threads have stopped (shutdown, or they died).
    #[error("{0}: the worker has stopped")]
    Stopped(String),
    /// The forward pass failed: libtorch failed or panicked, or a part of the model in
    /// another process (a pipeline stage) did not answer ([`ForwardError::is_unavailable`]).
    #[error("{label}: {source}")]
    Forward {
        /// The worker's label (`model/version`).
        label: String,
        /// Why.
        source: ForwardError,
    },
}
