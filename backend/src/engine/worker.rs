//! The runner of one model version: its batching queue ([`super::batcher`]) shared by one
//! thread per model instance, each job answered through a tokio oneshot.
//!
//! ```text
//! HTTP handlers ──InferJob──▶ queue (Mutex + Condvar) ◀──takes a batch── instance 0 thread
//!   (503 when max_queue_size                          ◀──takes a batch── instance 1 thread
//!    jobs are pending)                                    ...
//!                                  each, when free: forms a batch by the rules of the
//!                                  batcher's `decide`, concatenates it along dim 0, runs one
//!                                  forward pass (no grad), splits the rows back to the jobs
//! ```
//!
//! Forward passes are CPU- (or device-) bound and block for their whole duration, so they run
//! on dedicated OS threads, never on tokio's workers, which keep serving HTTP meanwhile. The
//! instance threads form batches themselves (no batcher thread in between), so a job reaches a
//! forward pass with one thread wake-up. A job whose client went away during its forward pass
//! just gets no answer.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::{BatchPolicy, Queue, QueueTimeouts, Refused};
use super::fairness::Fairness;
use super::{Forward, ForwardError, ForwardOutput, InferJob, WorkerError};
use crate::metrics::VersionMetrics;

/// Where a job's answer comes.
type Reply = oneshot::Receiver<Result<ForwardOutput, WorkerError>>;

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

/// The handle to a running version: its queue and instance threads. Dropping it closes the
/// queue and joins the threads after the jobs already queued are done.
#[derive(Debug)]
pub struct Worker {
    label: String,
    queue: Arc<Queue>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<VersionMetrics>,
    timeouts: QueueTimeouts,
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
        let queue = Arc::new(Queue::new(label.clone(), policy.clone(), metrics.clone()));
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
            timeouts: policy.queue_timeouts,
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

    /// Queues `rows` rows of validated input under the default fairness key and waits for
    /// the forward pass.
    ///
    /// [`WorkerError::QueueFull`] at once when `max_queue_size` jobs are pending.
    #[cfg(test)]
    pub async fn infer(&self, rows: i64, input: Vec<f32>) -> Result<ForwardOutput, WorkerError> {
        self.infer_as(Fairness::default(), rows, input).await
    }

    /// Queues `rows` rows of validated input in the queue of `fairness.key` and waits for the
    /// forward pass.
    ///
    /// [`WorkerError::QueueFull`] when `max_queue_size` jobs are pending and this key has at
    /// least as many rows queued as any other (at once), or when a job of another key took
    /// this one's place because this key had the most rows queued;
    /// [`WorkerError::QueueTimeout`] when its level has a queue timeout and the job is still
    /// queued when it has passed (answered then, not when an instance gets to it).
    pub async fn infer_as(
        &self,
        fairness: Fairness,
        rows: i64,
        input: Vec<f32>,
    ) -> Result<ForwardOutput, WorkerError> {
        let (mut result, deadline) = self.enqueue(fairness, rows, input, false)?;
        if let Some(deadline) = deadline {
            tokio::select! {
                answer = &mut result => {
                    return answer.map_err(|_| WorkerError::Stopped(self.label.clone()))?;
                }
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            // The deadline passed. Unless the answer is in already (the forward pass ended
            // meanwhile, or another request's timer expired this job too), take every expired
            // job out of the queue: this one, if still queued, is answered QueueTimeout now;
            // if it is in a forward pass, its answer follows.
            match result.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(WorkerError::Stopped(self.label.clone()))
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.queue.expire(Instant::now());
                }
            }
        }
        result
            .await
            .map_err(|_| WorkerError::Stopped(self.label.clone()))?
    }

    /// Runs one job alone, without waiting for a batch to fill, for a caller outside the
    /// async runtime (warmup while loading). Panics if called from within an async context
    /// (tokio's `blocking_recv` rule).
    pub fn infer_blocking(&self, rows: i64, input: Vec<f32>) -> Result<ForwardOutput, WorkerError> {
        let (result, _) = self.enqueue(Fairness::default(), rows, input, true)?;
        result
            .blocking_recv()
            .map_err(|_| WorkerError::Stopped(self.label.clone()))?
    }

    /// Queues the job; where its answer comes, and its deadline (none for a job that runs
    /// alone: warmup waits for nothing but the instance).
    fn enqueue(
        &self,
        fairness: Fairness,
        rows: i64,
        input: Vec<f32>,
        alone: bool,
    ) -> Result<(Reply, Option<Instant>), WorkerError> {
        let (reply, result) = oneshot::channel();
        let enqueued = Instant::now();
        let deadline = if alone {
            None
        } else {
            self.timeouts
                .of(fairness.priority)
                .and_then(|timeout| enqueued.checked_add(timeout))
        };
        let job = InferJob {
            rows,
            input,
            enqueued,
            fairness,
            deadline,
            alone,
            reply,
        };
        match self.queue.push(job) {
            Ok(evicted) => {
                if let Some(evicted) = evicted {
                    // The client may be gone already; nothing to do then.
                    let _ = evicted
                        .reply
                        .send(Err(WorkerError::QueueFull(self.label.clone())));
                }
                Ok((result, deadline))
            }
            Err(Refused::Full) => Err(WorkerError::QueueFull(self.label.clone())),
            Err(Refused::Closed) => Err(WorkerError::Stopped(self.label.clone())),
        }
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
        self.metrics.compute_duration.observe(compute.as_secs_f64());
        self.metrics.batch_size.observe(rows as f64);
        let out_features = self.model.out_features();
        let result = match result {
            Ok(Ok(data)) if Some(data.len()) == to_len(rows, out_features) => Ok(data),
            Ok(Ok(data)) => Err(ForwardError::OutputLength {
                found: data.len(),
                rows,
                features: out_features,
            }),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(ForwardError::Panicked),
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
                    self.metrics.queue_duration.observe(queue.as_secs_f64());
                    self.metrics
                        .observe_queue(job.fairness.priority.level(), queue);
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
                tracing::error!(worker = %self.label, instance = self.index, error = %failure, "forward pass failed");
                for job in batch {
                    let _ = job.reply.send(Err(WorkerError::Forward {
                        label: self.label.clone(),
                        source: failure.clone(),
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
    use crate::engine::batcher::batching;
    use crate::engine::{bias_name, weight_name, DenseModel};
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
        fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
            self.batches.lock().unwrap().push(rows);
            std::thread::sleep(self.delay);
            Ok(input.iter().map(|v| v * 2.0).collect())
        }

        fn out_features(&self) -> i64 {
            1
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
    async fn a_full_queue_refuses_the_flooding_key_and_serves_the_other_in_turn() {
        use crate::engine::{FairnessKey, Priority};
        let (model, batches) = recorder(200);
        let metrics = Arc::new(VersionMetrics::default());
        let worker = Arc::new(
            Worker::spawn(
                "q/1".into(),
                vec![model],
                batching(2, 0, vec![], 4),
                metrics.clone(),
            )
            .unwrap(),
        );
        let tenant = |bits| Fairness {
            key: FairnessKey::from_bits(bits),
            priority: Priority::DEFAULT,
        };
        let spawn = |bits: u128, value: f32| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer_as(tenant(bits), 1, vec![value]).await })
        };
        // A's first job runs; four more of A fill the queue (4).
        let mut flood = vec![spawn(1, 1.0)];
        until(|| batches.lock().unwrap().len() == 1).await;
        for _ in 0..4 {
            flood.push(spawn(1, 1.0));
        }
        until(|| metrics.pending.load(Ordering::Acquire) == 4).await;
        // A fifth of A is refused at once; B's job takes the place of A's newest.
        let refused = worker.infer_as(tenant(1), 1, vec![1.0]).await;
        assert!(
            matches!(refused, Err(WorkerError::QueueFull(_))),
            "{refused:?}"
        );
        let b = spawn(2, 2.0);
        let evicted = flood.pop().unwrap().await.unwrap();
        assert!(
            matches!(evicted, Err(WorkerError::QueueFull(_))),
            "{evicted:?}"
        );
        // B is served in the next batch, beside A's oldest waiting job, not after A's three.
        let out = b.await.unwrap().unwrap();
        assert_eq!(out.batch_rows, 2);
        assert_eq!(batches.lock().unwrap()[1], 2);
        for task in flood {
            task.await.unwrap().unwrap();
        }
        assert_eq!(metrics.pending.load(Ordering::Acquire), 0);
    }

    /// A queue timeout is kept while every instance is busy: the waiting request's own timer
    /// answers it at its level's timeout, not when the instance gets to it.
    #[tokio::test]
    async fn a_queued_job_past_its_level_timeout_is_answered_while_the_instance_is_busy() {
        use crate::engine::{FairnessKey, Priority};
        use crate::metrics::Refusal;
        let (model, batches) = recorder(400);
        let metrics = Arc::new(VersionMetrics::default());
        let mut policy = batching(1, 0, vec![], 16);
        policy.queue_timeouts =
            QueueTimeouts::from_levels(|level| (level == 1).then(|| Duration::from_millis(50)));
        let worker =
            Arc::new(Worker::spawn("t/1".into(), vec![model], policy, metrics.clone()).unwrap());
        let at = |level| Fairness {
            key: FairnessKey::from_bits(u128::from(level)),
            priority: Priority::new(level).unwrap(),
        };
        let spawn = |level: u8| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.infer_as(at(level), 1, vec![1.0]).await })
        };
        // The first job's 400 ms pass starts; a level-2 job (no timeout) and a level-1 job
        // (50 ms) queue behind it.
        let running = spawn(1);
        until(|| batches.lock().unwrap().len() == 1).await;
        let patient = spawn(2);
        let started = Instant::now();
        let refused = worker.infer_as(at(1), 1, vec![1.0]).await;
        let waited = started.elapsed();
        match refused {
            Err(WorkerError::QueueTimeout {
                priority, timeout, ..
            }) => {
                assert_eq!(priority, 1);
                assert_eq!(timeout, Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_millis(300),
            "{waited:?}"
        );
        assert_eq!(
            batches.lock().unwrap().len(),
            1,
            "answered during the first pass"
        );
        assert_eq!(
            metrics.refused[Refusal::Timeout as usize].load(Ordering::Relaxed),
            1
        );
        running.await.unwrap().unwrap();
        patient.await.unwrap().unwrap();
        assert_eq!(
            *batches.lock().unwrap(),
            vec![1, 1],
            "the timed-out job never ran"
        );
        assert_eq!(metrics.pending.load(Ordering::Acquire), 0);
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
