//! The runner of one model version: a queue of [`InferJob`]s shared by one thread per model
//! instance, each job answered through a tokio oneshot.
//!
//! ```text
//! HTTP handlers ──InferJob──▶ queue (Mutex + Condvar) ◀──takes a batch── instance 0 thread
//!   (503 when max_queue_size                          ◀──takes a batch── instance 1 thread
//!    jobs are pending)                                    ...
//!                                  each, when free: forms a batch by the rules of
//!                                  [`decide`], concatenates it along dim 0, runs one forward
//!                                  pass (no grad), splits the rows back to the jobs
//! ```
//!
//! Batching follows Triton's dynamic batcher (`dynamic_batch_scheduler.cc`, which forms a batch
//! only when a model instance can take it): a batch is formed only by a free instance, so while
//! every instance is busy, jobs keep gathering in the queue and nothing is cut at a preferred
//! size; a free instance takes up to `max_batch_size` rows of what is queued. A batch never
//! splits a request, and a request that would overflow the batch waits for the next one. The
//! full rules, with the reason for each, are on [`decide`].
//!
//! Forward passes are CPU- (or device-) bound and block for their whole duration, so they run
//! on dedicated OS threads, never on tokio's workers, which keep serving HTTP meanwhile. The
//! instance threads form batches themselves (no batcher thread in between), so a job reaches a
//! forward pass with one thread wake-up. A job whose client went away (its oneshot receiver
//! dropped) is skipped before it runs; one that goes away during its forward pass just gets no
//! answer.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
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

/// How one version's instances form batches (from `max_batch_size` and `[dynamic_batching]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Whether jobs are gathered into batches; `false`: one job per forward pass.
    pub batching: bool,
    /// The most rows per forward pass when batching (a job larger than this was refused by
    /// validation; a lone job runs whatever its size).
    pub max_batch_size: i64,
    /// How long a free instance may hold a batch back for more jobs to join (see [`decide`]).
    pub max_queue_delay: Duration,
    /// Batch sizes (rows) that run at once, without waiting out the delay (see [`decide`]).
    pub preferred_batch_sizes: Vec<i64>,
    /// Jobs that may be pending (queued, not yet taken by an instance).
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

/// A model that runs forward passes on rows of FP32 (a dense model, a TorchScript module, a
/// dense model split into pipeline stages).
pub trait Forward: Send + 'static {
    /// Runs `rows` rows of row-major `input` and returns the output row-major, on the host.
    /// Errors: [`ForwardFailure::Compute`] with libtorch's message, or
    /// [`ForwardFailure::Unavailable`] when a part of the model in another process did not
    /// answer.
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardFailure>;
    /// Output elements per row.
    fn out_features(&self) -> i64;
}

/// Why a forward pass failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The computation failed (libtorch's message): a server error (500).
    Compute(String),
    /// A part of the model served elsewhere (a pipeline stage in another process) is down,
    /// timed out or answered an error: the model is unavailable (503), the message says which
    /// part and why.
    Unavailable(String),
}

impl From<String> for ForwardFailure {
    fn from(message: String) -> ForwardFailure {
        ForwardFailure::Compute(message)
    }
}

impl Forward for DenseModel {
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardFailure> {
        DenseModel::forward_rows(self, input, rows).map_err(|e| e.to_string().into())
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
    /// A part of the model in another process (a pipeline stage) did not answer or failed.
    #[error("{label}: {message}")]
    Unavailable {
        /// The worker's label (`model/version`).
        label: String,
        /// Which part, at which address, and why.
        message: String,
    },
}

/// The handle to a running version: its queue and instance threads. Dropping it closes the
/// queue and joins the threads after the jobs already queued are done.
#[derive(Debug)]
pub struct Worker {
    label: String,
    queue: Arc<Queue>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<VersionMetrics>,
    max_queue_size: usize,
}

impl Worker {
    /// Starts one thread per model in `instances` (at least one); `label` (such as `digits/1`)
    /// names the threads and appears in errors and logs.
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
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            policy: policy.clone(),
            metrics: metrics.clone(),
        });
        // Every instance is free from now on, before any job can be queued.
        let started = Instant::now();
        let mut threads = Vec::with_capacity(instances.len());
        for (index, model) in instances.into_iter().enumerate() {
            let instance = Instance {
                label: label.clone(),
                index,
                model,
                threads: policy.intra_op_threads.max(1),
                metrics: metrics.clone(),
                queue: queue.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("instance {label}#{index}"))
                .spawn(move || instance.run(started));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    queue.close();
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Worker {
            label,
            queue,
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
        let mut state = self.queue.lock();
        if state.closed {
            drop(state);
            self.metrics.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(WorkerError::Stopped(self.label.clone()));
        }
        state.jobs.push_back(job);
        drop(state);
        // Every waiting instance re-reads the queue: one may take a batch, the others go back
        // to waiting (there are few instances per version).
        self.queue.changed.notify_all();
        Ok(result)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.queue.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(worker = %self.label, "worker thread panicked");
            }
        }
    }
}

/// The queue shared by a version's instance threads: the jobs not yet taken.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job is queued, an instance becomes free, or the queue closes.
    changed: Condvar,
    policy: BatchPolicy,
    metrics: Arc<VersionMetrics>,
}

#[derive(Debug)]
struct QueueState {
    jobs: VecDeque<InferJob>,
    /// No new jobs; the instances finish the queued ones and stop.
    closed: bool,
}

impl Queue {
    /// Locks the state. No code panics while holding the lock, but a poisoned lock would
    /// still hold a consistent queue, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Waits until this (free) instance should run a batch by the rules of [`decide`] and
    /// takes it off the queue; `None` once the queue is closed and empty. `free_since` is when
    /// the instance finished its previous forward pass (or started).
    fn next_batch(&self, free_since: Instant) -> Option<Vec<InferJob>> {
        let mut state = self.lock();
        loop {
            self.drop_abandoned(&mut state.jobs);
            if state.jobs.is_empty() {
                if state.closed {
                    return None;
                }
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let now = Instant::now();
            let jobs = state.jobs.iter().map(|job| Queued {
                rows: job.rows,
                alone: job.alone,
                enqueued: job.enqueued,
            });
            match decide(&self.policy, jobs, free_since, state.closed, now) {
                Decision::Take(count) => {
                    let count = count.clamp(1, state.jobs.len());
                    let batch: Vec<InferJob> = state.jobs.drain(..count).collect();
                    drop(state);
                    let taken = i64::try_from(batch.len()).unwrap_or(i64::MAX);
                    self.metrics.pending.fetch_sub(taken, Ordering::AcqRel);
                    return Some(batch);
                }
                Decision::WaitUntil(deadline) => {
                    let timeout = deadline.saturating_duration_since(now);
                    state = self
                        .changed
                        .wait_timeout(state, timeout)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Drops the jobs whose clients went away before they ran.
    fn drop_abandoned(&self, jobs: &mut VecDeque<InferJob>) {
        let before = jobs.len();
        jobs.retain(|job| !job.reply.is_closed());
        let dropped = i64::try_from(before - jobs.len()).unwrap_or(0);
        if dropped > 0 {
            self.metrics.pending.fetch_sub(dropped, Ordering::AcqRel);
        }
    }
}

/// A queued job as the batching rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// Rows (the job's batch dimension).
    pub rows: i64,
    /// The job runs alone, at once (warmup).
    pub alone: bool,
    /// When it was queued.
    pub enqueued: Instant,
}

/// What a free instance does with a non-empty queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the first `n` queued jobs as one batch now.
    Take(usize),
    /// Wait for more jobs until this instant (or until the queue changes), then decide again.
    WaitUntil(Instant),
}

/// The dynamic batching rules, for a free instance looking at the queue (oldest job first,
/// never empty) at `now`; `free_since` is when that instance finished its last forward pass.
///
/// The candidate batch is the longest run of queued jobs, oldest first, whose rows add up to
/// at most `max_batch_size` (a job never splits; the first job that does not fit, or a job
/// that must run alone, ends it). Then, in order:
/// 1. Without batching, or for a job that runs alone: the first job, now.
/// 2. The candidate is full (it has `max_batch_size` rows, or a queued job did not fit), or the
///    queue is closing: now.
/// 3. The candidate reached a preferred batch size by a job that arrived while this instance
///    was free: now (Triton's preferred sizes run without waiting out the delay). A size that
///    was already queued when the instance became free does not count: those jobs gathered
///    while every instance was busy, so a batch is only ever cut at a preferred size by an
///    idle instance, never by the order in which a busy period happened to end.
/// 4. Otherwise the instance holds the batch back for more jobs until `max_queue_delay` after
///    the later of the oldest job's arrival and `free_since`: an idle instance makes a lone
///    job wait at most the delay (Triton's `max_queue_delay_microseconds`), and an instance
///    that just became free gives the jobs still on their way the same delay to join the
///    ones that queued while it was busy. No job is held back by batching for more than the
///    delay; any longer wait is time when every instance was busy.
///
/// Why rules 3 and 4 look at `free_since`: under a closed loop of as many clients as
/// `max_batch_size` and one instance, taking only what is queued the moment the instance
/// becomes free splits the clients into groups that take turns for good (each group comes back
/// while the other's pass runs), and every pass runs a fraction of the batch it could. Giving
/// the returning group the delay to join merges the groups into full batches.
pub fn decide(
    policy: &BatchPolicy,
    queue: impl IntoIterator<Item = Queued>,
    free_since: Instant,
    closing: bool,
    now: Instant,
) -> Decision {
    let mut queue = queue.into_iter();
    let Some(first) = queue.next() else {
        return Decision::WaitUntil(now + policy.max_queue_delay);
    };
    if !policy.batching || first.alone {
        return Decision::Take(1);
    }
    let mut count = 1usize;
    let mut rows = first.rows;
    let mut newest = first.enqueued;
    let mut full = rows >= policy.max_batch_size;
    if !full {
        for job in queue {
            if job.alone || rows.saturating_add(job.rows) > policy.max_batch_size {
                full = true;
                break;
            }
            rows += job.rows;
            count += 1;
            newest = newest.max(job.enqueued);
            if rows >= policy.max_batch_size {
                full = true;
                break;
            }
        }
    }
    if full || closing {
        return Decision::Take(count);
    }
    if newest >= free_since && policy.preferred_batch_sizes.contains(&rows) {
        return Decision::Take(count);
    }
    let deadline = first.enqueued.max(free_since) + policy.max_queue_delay;
    if now >= deadline {
        Decision::Take(count)
    } else {
        Decision::WaitUntil(deadline)
    }
}

/// One model instance on its thread.
struct Instance {
    label: String,
    index: usize,
    model: Box<dyn Forward>,
    threads: i32,
    metrics: Arc<VersionMetrics>,
    queue: Arc<Queue>,
}

impl Instance {
    /// Takes batches off the queue and runs them until the queue closes; free from `started`.
    fn run(self, started: Instant) {
        precise_timers();
        tch::set_num_threads(self.threads);
        // Serving never needs gradients: no autograd graph for any op on this thread.
        let _no_grad = tch::no_grad_guard();
        tracing::debug!(worker = %self.label, instance = self.index, "instance started");
        let mut free_since = started;
        while let Some(batch) = self.queue.next_batch(free_since) {
            tracing::trace!(
                worker = %self.label,
                instance = self.index,
                jobs = batch.len(),
                rows = batch.iter().map(|job| job.rows).sum::<i64>(),
                idle_us = free_since.elapsed().as_micros(),
                "batch"
            );
            free_since = self.run_batch(batch);
        }
        tracing::debug!(worker = %self.label, instance = self.index, "instance stopped");
    }

    /// Concatenates the jobs' rows along dim 0, runs one forward pass, splits the output back.
    /// Returns when the forward pass ended (before the answers went out): from then on, the
    /// instance is free, and jobs that arrive are the ones it did not make wait.
    fn run_batch(&self, batch: Vec<InferJob>) -> Instant {
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
        let ended = Instant::now();
        let compute = ended.saturating_duration_since(started);
        self.metrics.execution_count.fetch_add(1, Ordering::Relaxed);
        VersionMetrics::add_us(&self.metrics.compute_us, compute);
        let out_features = self.model.out_features();
        let result = match result {
            Ok(Ok(data)) if Some(data.len()) == to_len(rows, out_features) => Ok(data),
            Ok(Ok(data)) => Err(ForwardFailure::Compute(format!(
                "forward pass returned {} elements for {rows} rows of {out_features}",
                data.len()
            ))),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(ForwardFailure::Compute("forward pass panicked".to_string())),
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
            Err(failure) => {
                let (message, unavailable) = match failure {
                    ForwardFailure::Compute(message) => (message, false),
                    ForwardFailure::Unavailable(message) => (message, true),
                };
                tracing::error!(worker = %self.label, instance = self.index, %message, "forward pass failed");
                for job in batch {
                    let label = self.label.clone();
                    let message = message.clone();
                    let _ = job.reply.send(Err(if unavailable {
                        WorkerError::Unavailable { label, message }
                    } else {
                        WorkerError::Forward { label, message }
                    }));
                }
            }
        }
        ended
    }
}

/// Makes this thread's timed waits end on time: Linux lets a timer of a normal thread fire up
/// to 50 us late (the default timer slack, `prctl(2)` `PR_SET_TIMERSLACK`) so that wake-ups can
/// be grouped; for an instance thread that waits out `max_queue_delay` for a lone request, that
/// slack was latency added to every such request. 1 us keeps the delay a bound to within a few
/// microseconds. Elsewhere (and if the call fails) the default stays.
fn precise_timers() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the calling thread's
        // timer slack; no memory is passed or shared.
        let result = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
        if result != 0 {
            tracing::debug!("prctl(PR_SET_TIMERSLACK) failed; keeping the default timer slack");
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
        fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardFailure> {
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn queued(t0: Instant, rows: i64, at_ms: u64) -> Queued {
        Queued {
            rows,
            alone: false,
            enqueued: t0 + ms(at_ms),
        }
    }

    #[test]
    fn an_idle_instance_waits_the_delay_from_the_oldest_job() {
        let p = batching(8, 100, vec![4], 64);
        let t0 = Instant::now();
        // Free since t0; a lone job at 10 ms waits until 110 ms, then runs whatever came.
        let one = [queued(t0, 1, 10)];
        assert_eq!(
            decide(&p, one, t0, false, t0 + ms(20)),
            Decision::WaitUntil(t0 + ms(110))
        );
        assert_eq!(decide(&p, one, t0, false, t0 + ms(110)), Decision::Take(1));
        let two = [queued(t0, 1, 10), queued(t0, 2, 30)];
        assert_eq!(
            decide(&p, two, t0, false, t0 + ms(40)),
            Decision::WaitUntil(t0 + ms(110))
        );
        assert_eq!(decide(&p, two, t0, false, t0 + ms(111)), Decision::Take(2));
    }

    #[test]
    fn preferred_full_alone_and_closing_batches_run_at_once() {
        let p = batching(8, 100, vec![4], 64);
        let t0 = Instant::now();
        // Reached the preferred size 4 by jobs that came while the instance was free.
        let four = [queued(t0, 1, 10), queued(t0, 1, 11), queued(t0, 2, 12)];
        assert_eq!(decide(&p, four, t0, false, t0 + ms(13)), Decision::Take(3));
        // Full: 8 rows.
        let eight = [queued(t0, 4, 10), queued(t0, 4, 11)];
        assert_eq!(decide(&p, eight, t0, false, t0 + ms(12)), Decision::Take(2));
        // A job that does not fit ends the batch and waits for the next one: 3 + 3 + 3 > 8.
        let threes = [queued(t0, 3, 10), queued(t0, 3, 11), queued(t0, 3, 12)];
        assert_eq!(
            decide(&p, threes, t0, false, t0 + ms(13)),
            Decision::Take(2)
        );
        // A warmup job runs alone, even behind nothing.
        let mut alone = queued(t0, 2, 10);
        alone.alone = true;
        assert_eq!(
            decide(&p, [alone, queued(t0, 1, 11)], t0, false, t0 + ms(12)),
            Decision::Take(1)
        );
        // A job behind which a warmup job waits does not take it along.
        assert_eq!(
            decide(&p, [queued(t0, 1, 9), alone], t0, false, t0 + ms(12)),
            Decision::Take(1)
        );
        // Closing: what is queued runs without waiting.
        assert_eq!(
            decide(&p, [queued(t0, 1, 10)], t0, true, t0 + ms(11)),
            Decision::Take(1)
        );
        // Without batching: one job per pass.
        let unbatched = BatchPolicy::unbatched(64, 1);
        assert_eq!(
            decide(
                &unbatched,
                [queued(t0, 1, 10), queued(t0, 1, 11)],
                t0,
                false,
                t0
            ),
            Decision::Take(1)
        );
    }

    #[test]
    fn a_freed_instance_gives_late_jobs_the_delay_to_join_what_gathered_while_it_was_busy() {
        let p = batching(8, 100, vec![4], 64);
        let t0 = Instant::now();
        // Four rows queued at 10..13 ms while the instance was busy until 50 ms: a preferred
        // size, but reached while busy, so it is not cut; the freed instance waits until
        // 50 + 100 ms for more instead of running them at once.
        let stale = [
            queued(t0, 1, 10),
            queued(t0, 1, 11),
            queued(t0, 1, 12),
            queued(t0, 1, 13),
        ];
        let free = t0 + ms(50);
        assert_eq!(
            decide(&p, stale, free, false, t0 + ms(51)),
            Decision::WaitUntil(t0 + ms(150))
        );
        assert_eq!(
            decide(&p, stale, free, false, t0 + ms(150)),
            Decision::Take(4)
        );
        // Four more rows arrive after the instance became free: a full batch of 8 runs now.
        let merged: Vec<Queued> = stale
            .iter()
            .copied()
            .chain((0..4).map(|i| queued(t0, 1, 52 + i)))
            .collect();
        assert_eq!(
            decide(&p, merged, free, false, t0 + ms(56)),
            Decision::Take(8)
        );
        // One more row after the freeing reaches no preferred size (5): still waiting.
        let five: Vec<Queued> = stale.iter().copied().chain([queued(t0, 1, 52)]).collect();
        assert_eq!(
            decide(&p, five, free, false, t0 + ms(53)),
            Decision::WaitUntil(t0 + ms(150))
        );
    }

    /// The closed-loop case of the benchmark, small: one instance, `max_batch_size` 8,
    /// preferred 4. Four clients start together and run as a preferred batch of 4; four
    /// more queue while that pass runs. When the instance becomes free, the four that
    /// gathered while it was busy are not cut at the preferred size: the first four clients'
    /// next requests, sent as soon as they are answered, join them, and the instance runs
    /// one full batch of 8 instead of two groups taking turns at 4.
    #[tokio::test]
    async fn a_busy_instance_leads_to_full_batches() {
        let (model, batches) = recorder(150);
        let worker = Arc::new(
            Worker::spawn(
                "busy/1".into(),
                vec![model],
                batching(8, 2_000, vec![4], 64),
                Arc::default(),
            )
            .unwrap(),
        );
        let client = |rounds: usize, value: f32| {
            let worker = worker.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let out = worker.infer(1, vec![value]).await.unwrap();
                    assert_eq!(out.data, vec![2.0 * value]);
                }
            })
        };
        // Group A: four clients with two requests each, started together.
        let mut tasks: Vec<_> = (0..4).map(|i| client(2, i as f32)).collect();
        until(|| batches.lock().unwrap().len() == 1).await;
        // Group B: four clients with one request each, while A's pass runs.
        tasks.extend((4..8).map(|i| client(1, i as f32)));
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*batches.lock().unwrap(), vec![4, 8]);
    }

    #[test]
    fn compute_shares_add_up() {
        let total = Duration::from_micros(1000);
        assert_eq!(share_of(total, 1, 4), Duration::from_micros(250));
        assert_eq!(share_of(total, 4, 4), total);
    }
}
