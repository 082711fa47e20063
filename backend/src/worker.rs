//! The runner of one model version: a dynamic batcher thread and one thread per model
//! instance, fed by a channel of [`InferJob`]s, answering each job through a tokio oneshot.
//!
//! ```text
//! HTTP handlers ──InferJob──▶ batcher thread (owns the queue) ──batch──▶ instance 0 thread
//!   (try: 503 when            waits for an idle instance, then        ──batch──▶ instance 1 thread
//!    max_queue_size jobs      gathers jobs up to max_batch_size rows,     ...
//!    are pending)             at most max_queue_delay_us after the    each: concatenate along
//!                             first one arrived, or until a           dim 0, forward (no grad),
//!                             preferred batch size is reached         split rows back to jobs
//! ```
//!
//! The batcher is the actor that owns the queue (as text-generation-inference's
//! `backends/v3/src/queue.rs` does), woken by a timed `recv`. Forward passes are CPU- (or
//! device-) bound and block for their whole duration, so they run on dedicated OS threads,
//! never on tokio's workers, which keep serving HTTP meanwhile. Batching follows Triton's
//! dynamic batcher: a batch never splits a request, and a request that would overflow the batch
//! waits for the next one. A job whose client went away (its oneshot receiver dropped) is
//! skipped before it runs; one that goes away during its forward pass just gets no answer.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::dense::DenseModel;
use crate::metrics::VersionMetrics;

/// Server-wide defaults for workers (command line), which a model's `config.toml` may override.
#[derive(Debug, Clone, Copy)]
pub struct WorkerOptions {
    /// libtorch intra-op threads for each instance's forward passes (`tch::set_num_threads`,
    /// which is per OS thread under OpenMP, so each instance thread sets it itself). At least 1.
    pub intra_op_threads: i32,
    /// Jobs that may wait per version when the model's config sets no `max_queue_size`; one
    /// more is refused with [`WorkerError::QueueFull`].
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

/// How one version's batcher forms batches (from `max_batch_size` and `[dynamic_batching]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Whether jobs are gathered into batches; `false`: one job per forward pass.
    pub batching: bool,
    /// The most rows per forward pass when batching (a job larger than this was refused by
    /// validation; a lone job runs whatever its size).
    pub max_batch_size: i64,
    /// How long the first job of a batch may wait for more.
    pub max_queue_delay: Duration,
    /// Batch sizes (rows) that run at once, without waiting out the delay.
    pub preferred_batch_sizes: Vec<i64>,
    /// Jobs that may be pending (queued, not yet handed to an instance).
    pub max_queue_size: usize,
    /// libtorch intra-op threads per instance. At least 1.
    pub intra_op_threads: i32,
}

impl BatchPolicy {
    /// One job per forward pass, `queue` pending jobs at most, `threads` intra-op threads.
    pub fn unbatched(queue: usize, threads: i32) -> BatchPolicy {
        BatchPolicy {
            batching: false,
            max_batch_size: 0,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: queue,
            intra_op_threads: threads,
        }
    }
}

/// A model that runs forward passes on rows of FP32 (a dense model, a TorchScript module).
pub trait Forward: Send + 'static {
    /// Runs `rows` rows of row-major `input` and returns the output row-major, on the host.
    /// Errors are libtorch's message.
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, String>;
    /// Output elements per row.
    fn out_features(&self) -> i64;
}

impl Forward for DenseModel {
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, String> {
        DenseModel::forward_rows(self, input, rows).map_err(|e| e.to_string())
    }

    fn out_features(&self) -> i64 {
        DenseModel::out_features(self)
    }
}

/// One request's rows for a forward pass.
#[derive(Debug)]
pub struct InferJob {
    /// The batch dimension: rows in `input`.
    pub rows: i64,
    /// Row-major FP32 input, `rows * in_features` elements, already validated.
    pub input: Vec<f32>,
    /// When the job was queued (the start of its queue time).
    pub enqueued: Instant,
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
    /// The worker threads have stopped (shutdown, or they died).
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

/// The handle to a running version: its batcher and instance threads. Dropping it closes the
/// queue and joins the threads after the jobs already queued are done.
#[derive(Debug)]
pub struct Worker {
    label: String,
    sender: Option<Sender<InferJob>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<VersionMetrics>,
    max_queue_size: usize,
}

impl Worker {
    /// Starts a batcher thread and one thread per model in `instances` (at least one); `label`
    /// (such as `digits/1`) names the threads and appears in errors and logs.
    pub fn spawn(
        label: String,
        instances: Vec<Box<dyn Forward>>,
        policy: BatchPolicy,
        metrics: Arc<VersionMetrics>,
    ) -> std::io::Result<Worker> {
        if instances.is_empty() {
            return Err(std::io::Error::other(
                "a worker needs at least one instance",
            ));
        }
        let (sender, jobs) = mpsc::channel();
        let (idle_sender, idle) = mpsc::channel();
        let mut threads = Vec::with_capacity(instances.len() + 1);
        let mut batch_senders = Vec::with_capacity(instances.len());
        for (index, model) in instances.into_iter().enumerate() {
            let (batch_sender, batches) = mpsc::sync_channel::<Vec<InferJob>>(1);
            batch_senders.push(batch_sender);
            let instance = Instance {
                label: label.clone(),
                index,
                model,
                threads: policy.intra_op_threads.max(1),
                metrics: metrics.clone(),
            };
            let idle_sender = idle_sender.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("instance {label}#{index}"))
                    .spawn(move || instance.run(batches, idle_sender))?,
            );
        }
        drop(idle_sender);
        let batcher = Batcher {
            label: label.clone(),
            policy: policy.clone(),
            metrics: metrics.clone(),
        };
        threads.insert(
            0,
            std::thread::Builder::new()
                .name(format!("batcher {label}"))
                .spawn(move || batcher.run(jobs, idle, batch_senders))?,
        );
        Ok(Worker {
            label,
            sender: Some(sender),
            threads,
            metrics,
            max_queue_size: policy.max_queue_size.max(1),
        })
    }

    /// The label given at spawn (`model/version`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The version's counters.
    pub fn metrics(&self) -> &Arc<VersionMetrics> {
        &self.metrics
    }

    /// Queues `rows` rows of validated input and waits for the forward pass.
    ///
    /// [`WorkerError::QueueFull`] at once when `max_queue_size` jobs are pending.
    pub async fn infer(&self, rows: i64, input: Vec<f32>) -> Result<ForwardOutput, WorkerError> {
        let result = self.enqueue(rows, input, false)?;
        result
            .await
            .map_err(|_| WorkerError::Stopped(self.label.clone()))?
    }

    /// Runs one job alone, without waiting for a batch to fill, for a caller outside the
    /// async runtime (warmup while loading). Panics if called from within an async context
    /// (tokio's `blocking_recv` rule).
    pub fn infer_blocking(&self, rows: i64, input: Vec<f32>) -> Result<ForwardOutput, WorkerError> {
        let result = self.enqueue(rows, input, true)?;
        result
            .blocking_recv()
            .map_err(|_| WorkerError::Stopped(self.label.clone()))?
    }

    fn enqueue(
        &self,
        rows: i64,
        input: Vec<f32>,
        alone: bool,
    ) -> Result<oneshot::Receiver<Result<ForwardOutput, WorkerError>>, WorkerError> {
        let Some(sender) = &self.sender else {
            return Err(WorkerError::Stopped(self.label.clone()));
        };
        let pending = self.metrics.pending.fetch_add(1, Ordering::AcqRel);
        if usize::try_from(pending).unwrap_or(0) >= self.max_queue_size {
            self.metrics.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(WorkerError::QueueFull(self.label.clone()));
        }
        let (reply, result) = oneshot::channel();
        let job = InferJob {
            rows,
            input,
            enqueued: Instant::now(),
            alone,
            reply,
        };
        if sender.send(job).is_err() {
            self.metrics.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(WorkerError::Stopped(self.label.clone()));
        }
        Ok(result)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.sender.take();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(worker = %self.label, "worker thread panicked");
            }
        }
    }
}

/// The batcher: owns the queue, forms batches, hands each to an idle instance.
struct Batcher {
    label: String,
    policy: BatchPolicy,
    metrics: Arc<VersionMetrics>,
}

impl Batcher {
    fn run(
        self,
        jobs: Receiver<InferJob>,
        idle: Receiver<usize>,
        instances: Vec<SyncSender<Vec<InferJob>>>,
    ) {
        tracing::debug!(worker = %self.label, "batcher started");
        let mut carry: Option<InferJob> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if self.skip_if_abandoned(&first) {
                continue;
            }
            // Wait for an idle instance; jobs keep queueing meanwhile and join this batch.
            let Ok(instance) = idle.recv() else {
                tracing::error!(worker = %self.label, "every instance thread has stopped");
                self.metrics.pending.fetch_sub(1, Ordering::AcqRel);
                break;
            };
            let mut rows = first.rows;
            let mut batch = vec![first];
            if self.policy.batching && !batch[0].alone {
                carry = self.gather(&jobs, &mut batch, &mut rows);
            }
            let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
            self.metrics.pending.fetch_sub(count, Ordering::AcqRel);
            if let Err(mpsc::SendError(batch)) = instances[instance].send(batch) {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(WorkerError::Stopped(self.label.clone())));
                }
            }
        }
        tracing::debug!(worker = %self.label, "batcher stopped");
    }

    /// Adds jobs to `batch` until it holds `max_batch_size` rows, reaches a preferred size with
    /// nothing else queued, or `max_queue_delay` has passed since its first job was queued.
    /// Returns a job that did not fit, for the next batch.
    fn gather(
        &self,
        jobs: &Receiver<InferJob>,
        batch: &mut Vec<InferJob>,
        rows: &mut i64,
    ) -> Option<InferJob> {
        let deadline = batch[0].enqueued + self.policy.max_queue_delay;
        while *rows < self.policy.max_batch_size {
            let next = match jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    if self.policy.preferred_batch_sizes.contains(rows) {
                        return None;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    match jobs.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                            return None
                        }
                    }
                }
            };
            if self.skip_if_abandoned(&next) {
                continue;
            }
            if next.alone || *rows + next.rows > self.policy.max_batch_size {
                return Some(next);
            }
            *rows += next.rows;
            batch.push(next);
        }
        None
    }

    /// Drops a job whose client went away before it ran; true when it did.
    fn skip_if_abandoned(&self, job: &InferJob) -> bool {
        if job.reply.is_closed() {
            self.metrics.pending.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        false
    }
}

/// One model instance on its thread.
struct Instance {
    label: String,
    index: usize,
    model: Box<dyn Forward>,
    threads: i32,
    metrics: Arc<VersionMetrics>,
}

impl Instance {
    fn run(self, batches: Receiver<Vec<InferJob>>, idle: Sender<usize>) {
        tch::set_num_threads(self.threads);
        // Serving never needs gradients: no autograd graph for any op on this thread.
        let _no_grad = tch::no_grad_guard();
        tracing::debug!(worker = %self.label, instance = self.index, "instance started");
        if idle.send(self.index).is_err() {
            return;
        }
        while let Ok(batch) = batches.recv() {
            self.run_batch(batch);
            if idle.send(self.index).is_err() {
                break;
            }
        }
        tracing::debug!(worker = %self.label, instance = self.index, "instance stopped");
    }

    /// Concatenates the jobs' rows along dim 0, runs one forward pass, splits the output back.
    fn run_batch(&self, batch: Vec<InferJob>) {
        let rows: i64 = batch.iter().map(|job| job.rows).sum();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if let [job] = batch.as_slice() {
                self.model.forward_rows(&job.input, rows)
            } else {
                let mut input =
                    Vec::with_capacity(batch.iter().map(|job| job.input.len()).sum::<usize>());
                for job in &batch {
                    input.extend_from_slice(&job.input);
                }
                self.model.forward_rows(&input, rows)
            }
        }));
        let compute = started.elapsed();
        self.metrics.execution_count.fetch_add(1, Ordering::Relaxed);
        VersionMetrics::add_us(&self.metrics.compute_us, compute);
        let out_features = self.model.out_features();
        let result = match result {
            Ok(Ok(data)) if Some(data.len()) == to_len(rows, out_features) => Ok(data),
            Ok(Ok(data)) => Err(format!(
                "forward pass returned {} elements for {rows} rows of {out_features}",
                data.len()
            )),
            Ok(Err(message)) => Err(message),
            Err(_) => Err("forward pass panicked".to_string()),
        };
        match result {
            Ok(data) => {
                let total = u64::try_from(rows).unwrap_or(0);
                self.metrics
                    .inference_count
                    .fetch_add(total, Ordering::Relaxed);
                let mut offset = 0usize;
                for job in batch {
                    let len = to_len(job.rows, out_features).unwrap_or(0);
                    let slice = data.get(offset..offset + len).unwrap_or_default().to_vec();
                    offset += len;
                    let queue = started.saturating_duration_since(job.enqueued);
                    VersionMetrics::add_us(&self.metrics.queue_us, queue);
                    let share = share_of(compute, job.rows, rows);
                    // The receiver may be gone (client disconnected); nothing to do then.
                    let _ = job.reply.send(Ok(ForwardOutput {
                        data: slice,
                        rows: job.rows,
                        compute: share,
                        queue,
                        batch_rows: rows,
                    }));
                }
            }
            Err(message) => {
                tracing::error!(worker = %self.label, instance = self.index, %message, "forward pass failed");
                for job in batch {
                    let _ = job.reply.send(Err(WorkerError::Forward {
                        label: self.label.clone(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }
}

/// `rows * features` as a length.
fn to_len(rows: i64, features: i64) -> Option<usize> {
    rows.checked_mul(features)
        .and_then(|n| usize::try_from(n).ok())
}

/// `compute * rows / total`, at nanosecond resolution.
fn share_of(compute: Duration, rows: i64, total: i64) -> Duration {
    if total <= 0 {
        return compute;
    }
    let nanos = compute.as_nanos() * u128::try_from(rows.max(0)).unwrap_or(0)
        / u128::try_from(total).unwrap_or(1);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dense_classifier;
    use crate::dense::{bias_name, weight_name};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tch::{Device, Kind, Tensor};

    fn zeros_model() -> DenseModel {
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
        DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap()
    }

    #[tokio::test]
    async fn runs_jobs_on_its_thread() {
        let worker = Worker::spawn(
            "test/1".into(),
            vec![Box::new(zeros_model())],
            BatchPolicy::unbatched(16, 1),
            Arc::default(),
        )
        .unwrap();
        let out = worker.infer(3, vec![1.0; 6]).await.unwrap();
        assert_eq!(out.rows, 3);
        assert_eq!(out.data, vec![0.5; 6]);
        drop(worker);
    }

    /// Doubles every element and records the batch sizes it saw; waits `delay` per pass.
    struct Recorder {
        batches: Arc<Mutex<Vec<i64>>>,
        delay: Duration,
    }

    impl Forward for Recorder {
        fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, String> {
            self.batches.lock().unwrap().push(rows);
            std::thread::sleep(self.delay);
            Ok(input.iter().map(|v| v * 2.0).collect())
        }

        fn out_features(&self) -> i64 {
            1
        }
    }

    fn batching(max: i64, delay_ms: u64, preferred: Vec<i64>, queue: usize) -> BatchPolicy {
        BatchPolicy {
            batching: true,
            max_batch_size: max,
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: preferred,
            max_queue_size: queue,
            intra_op_threads: 1,
        }
    }

    fn recorder(delay_ms: u64) -> (Box<dyn Forward>, Arc<Mutex<Vec<i64>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let model = Recorder {
            batches: batches.clone(),
            delay: Duration::from_millis(delay_ms),
        };
        (Box::new(model), batches)
    }

    #[tokio::test]
    async fn concurrent_jobs_share_a_batch_and_get_their_own_rows() {
        let (model, batches) = recorder(0);
        let metrics = Arc::new(VersionMetrics::default());
        let worker = Arc::new(
            Worker::spawn(
                "b/1".into(),
                vec![model],
                batching(8, 200, vec![], 64),
                metrics.clone(),
            )
            .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..4 {
            let worker = worker.clone();
            tasks.push(tokio::spawn(async move {
                let rows = 2;
                let input = vec![i as f32; 2];
                (i, worker.infer(rows, input).await.unwrap())
            }));
        }
        for task in tasks {
            let (i, out) = task.await.unwrap();
            assert_eq!(out.data, vec![2.0 * i as f32; 2]);
            assert_eq!(out.batch_rows, 8);
        }
        // Four jobs of 2 rows reached max_batch_size 8 before the 200 ms delay: one pass.
        assert_eq!(*batches.lock().unwrap(), vec![8]);
        assert_eq!(metrics.execution_count.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.inference_count.load(Ordering::Relaxed), 8);
        assert_eq!(metrics.pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_lone_job_waits_at_most_the_delay_and_preferred_sizes_run_at_once() {
        let (model, batches) = recorder(0);
        let worker = Worker::spawn(
            "d/1".into(),
            vec![model],
            batching(8, 30, vec![], 64),
            Arc::default(),
        )
        .unwrap();
        let started = Instant::now();
        worker.infer(1, vec![1.0]).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_millis(1000), "{waited:?}");
        drop(worker);
        assert_eq!(*batches.lock().unwrap(), vec![1]);

        let (model, _) = recorder(0);
        let worker = Worker::spawn(
            "p/1".into(),
            vec![model],
            batching(8, 5_000, vec![2], 64),
            Arc::default(),
        )
        .unwrap();
        let started = Instant::now();
        worker.infer(2, vec![1.0, 2.0]).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(2_000));
    }

    #[tokio::test]
    async fn a_job_that_does_not_fit_waits_for_the_next_batch() {
        // A slow instance: while it runs the first job, three more queue; 3 + 3 > 4.
        let (model, batches) = recorder(50);
        let worker = Arc::new(
            Worker::spawn(
                "f/1".into(),
                vec![model],
                batching(4, 0, vec![], 64),
                Arc::default(),
            )
            .unwrap(),
        );
        let mut tasks = Vec::new();
        for rows in [1i64, 3, 3, 1] {
            let worker = worker.clone();
            tasks.push(tokio::spawn(async move {
                let out = worker.infer(rows, vec![1.0; rows as usize]).await.unwrap();
                assert_eq!(out.data.len(), rows as usize);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let seen = batches.lock().unwrap().clone();
        assert!(seen.iter().all(|&b| b <= 4), "{seen:?}");
        assert_eq!(seen.iter().sum::<i64>(), 8, "{seen:?}");
    }

    /// Waits (up to 10 s) until `check` holds.
    async fn until(check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "condition not reached in 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once() {
        let (model, batches) = recorder(300);
        let metrics = Arc::new(VersionMetrics::default());
        let worker = Arc::new(
            Worker::spawn(
                "q/1".into(),
                vec![model],
                batching(1, 0, vec![], 2),
                metrics.clone(),
            )
            .unwrap(),
        );
        let spawn = || {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer(1, vec![1.0]).await })
        };
        // One runs (its forward pass has started), two wait: the queue (2) is full.
        let mut tasks = vec![spawn()];
        until(|| batches.lock().unwrap().len() == 1).await;
        tasks.push(spawn());
        tasks.push(spawn());
        until(|| metrics.pending.load(Ordering::Acquire) == 2).await;
        let started = Instant::now();
        let refused = worker.infer(1, vec![1.0]).await;
        assert!(
            matches!(refused, Err(WorkerError::QueueFull(_))),
            "{refused:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn instances_run_in_parallel() {
        let (a, seen_a) = recorder(200);
        let (b, seen_b) = recorder(200);
        let worker = Arc::new(
            Worker::spawn(
                "i/1".into(),
                vec![a, b],
                BatchPolicy::unbatched(16, 1),
                Arc::default(),
            )
            .unwrap(),
        );
        let started = Instant::now();
        let first = tokio::spawn({
            let worker = worker.clone();
            async move { worker.infer(1, vec![1.0]).await }
        });
        let second = worker.infer(1, vec![2.0]).await.unwrap();
        assert_eq!(second.data, vec![4.0]);
        first.await.unwrap().unwrap();
        // Two 200 ms passes on two instances take about 200 ms, not 400.
        assert!(
            started.elapsed() < Duration::from_millis(380),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(seen_a.lock().unwrap().len(), 1);
        assert_eq!(seen_b.lock().unwrap().len(), 1);
    }

    #[test]
    fn compute_shares_add_up() {
        let total = Duration::from_micros(1000);
        assert_eq!(share_of(total, 1, 4), Duration::from_micros(250));
        assert_eq!(share_of(total, 4, 4), total);
    }
}
