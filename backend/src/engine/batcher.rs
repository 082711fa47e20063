//! The dynamic batching queue of one model version: the jobs not yet taken, and the rules by
//! which a free instance forms a batch out of them ([`decide`]).
//!
//! Batching follows Triton's dynamic batcher (`dynamic_batch_scheduler.cc`, which forms a batch
//! only when a model instance can take it): a batch is formed only by a free instance, so while
//! every instance is busy, jobs keep gathering in the queue and nothing is cut at a preferred
//! size; a free instance takes up to `max_batch_size` rows of what is queued. A batch never
//! splits a request, and a request that would overflow the batch waits for the next one. The
//! full rules, with the reason for each, are on [`decide`]. A job whose client went away (its
//! oneshot receiver dropped) is skipped before it runs.
//!
//! The queue holds one FIFO queue per fairness key ([`super::fairness`]) and lists its jobs to
//! the rules in the order weighted deficit round robin serves them ([`super::drr`]); with one
//! key (every request without one shares the default key) that order is arrival order.
//!
//! A job may carry a deadline, its priority level's queue timeout after its arrival
//! ([`QueueTimeouts`], Triton's `default_timeout_microseconds` per priority level with
//! `timeout_action: REJECT`): a job still queued at its deadline is answered
//! [`WorkerError::QueueTimeout`] and never runs. The waiting request's own timer takes it out
//! at the deadline ([`Queue::expire`]), and an instance forming a batch skips expired jobs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::drr::{FairQueue, Scheduled};
use super::fairness::{Fairness, Priority};
use super::{InferJob, WorkerError};
use crate::metrics::{Refusal, VersionMetrics};

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
    /// The longest a job of each priority level may wait in the queue.
    pub queue_timeouts: QueueTimeouts,
}

/// The queue timeout of each priority level (`[dynamic_batching] default_timeout_us` and
/// `priority_timeout_us`): how long a job of that level may wait from its arrival to the start
/// of its forward pass; `None`: as long as it takes. Default: no timeout at any level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueTimeouts {
    /// Index `level - 1`.
    by_level: [Option<Duration>; Priority::MAX.level() as usize],
}

impl QueueTimeouts {
    /// `timeout(level)` for each level 1 to 16 (`None` or zero: no timeout).
    pub fn from_levels(timeout: impl Fn(u8) -> Option<Duration>) -> QueueTimeouts {
        QueueTimeouts {
            by_level: std::array::from_fn(|i| {
                u8::try_from(i + 1)
                    .ok()
                    .and_then(&timeout)
                    .filter(|t| !t.is_zero())
            }),
        }
    }

    /// The timeout of `priority`, if it has one.
    pub fn of(&self, priority: Priority) -> Option<Duration> {
        self.by_level
            .get(usize::from(priority.level()).saturating_sub(1))
            .copied()
            .flatten()
    }
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
            queue_timeouts: QueueTimeouts::default(),
        }
    }
}

/// The queue shared by a version's instance threads: the jobs not yet taken, one FIFO queue
/// per fairness key served by weighted deficit round robin ([`super::drr`]).
#[derive(Debug)]
pub(super) struct Queue {
    /// The version's label (`model/version`), for the errors of jobs refused after queueing.
    label: String,
    state: Mutex<QueueState>,
    /// Signalled when a job is queued, an instance becomes free, or the queue closes.
    changed: Condvar,
    policy: BatchPolicy,
    metrics: Arc<VersionMetrics>,
}

#[derive(Debug)]
struct QueueState {
    jobs: FairQueue<InferJob>,
    /// No new jobs; the instances finish the queued ones and stop.
    closed: bool,
}

/// Why [`Queue::push`] did not queue a job.
#[derive(Debug)]
pub(super) enum Refused {
    /// The queue is closed.
    Closed,
    /// The queue is full and the job's key has at least as many rows queued as any other.
    Full,
}

impl Scheduled for InferJob {
    fn rows(&self) -> i64 {
        self.rows
    }

    fn fairness(&self) -> Fairness {
        self.fairness
    }
}

impl Queue {
    /// An open, empty queue of version `label` whose batches follow `policy`;
    /// `metrics.pending` counts its jobs.
    pub(super) fn new(label: String, policy: BatchPolicy, metrics: Arc<VersionMetrics>) -> Queue {
        Queue {
            label,
            state: Mutex::new(QueueState {
                jobs: FairQueue::new(),
                closed: false,
            }),
            changed: Condvar::new(),
            policy,
            metrics,
        }
    }

    /// Queues `job` and wakes the instances.
    ///
    /// When `max_queue_size` jobs are queued, the job refused is one of the key with the most
    /// rows queued: the arriving job itself if its key would then have at least as many rows
    /// as that key ([`Refused::Full`]), else that key's newest job, which is returned in `Ok`
    /// for the caller to answer. With one key this is the FIFO queue's rule: the arriving job
    /// is refused.
    pub(super) fn push(&self, job: InferJob) -> Result<Option<InferJob>, Refused> {
        let mut state = self.lock();
        if state.closed {
            self.metrics.refuse(Refusal::Closed);
            return Err(Refused::Closed);
        }
        let mut evicted = None;
        if state.jobs.len() >= self.policy.max_queue_size.max(1) {
            let key = job.fairness.key;
            let after = state.jobs.rows_of(key).saturating_add(job.rows);
            match state.jobs.heaviest() {
                Some((heaviest, rows)) if heaviest != key && rows > after => {
                    evicted = state.jobs.pop_newest(heaviest);
                }
                _ => {
                    self.metrics.refuse(Refusal::QueueFull);
                    return Err(Refused::Full);
                }
            }
        }
        let level = job.fairness.priority.level();
        state.jobs.push(job);
        drop(state);
        self.metrics.queued(level, 1);
        if let Some(evicted) = &evicted {
            self.metrics.queued(evicted.fairness.priority.level(), -1);
            self.metrics.refuse(Refusal::Evicted);
        } else {
            self.metrics.pending.fetch_add(1, Ordering::AcqRel);
        }
        // Every waiting instance re-reads the queue: one may take a batch, the others go back
        // to waiting (there are few instances per version).
        self.changed.notify_all();
        Ok(evicted)
    }

    /// Locks the state. No code panics while holding the lock, but a poisoned lock would
    /// still hold a consistent queue, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the queue: no new jobs; the instances finish the queued ones and stop.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Waits until this (free) instance should run a batch by the rules of [`decide`] and
    /// takes it off the queue; `None` once the queue is closed and empty. `free_since` is when
    /// the instance finished its previous forward pass (or started). The rules see the jobs
    /// in the order the round robin serves them.
    pub(super) fn next_batch(&self, free_since: Instant) -> Option<Vec<InferJob>> {
        let mut state = self.lock();
        // A batch never holds more jobs than rows, but a lone job may exceed the batch size.
        let window = if self.policy.batching {
            usize::try_from(self.policy.max_batch_size)
                .unwrap_or(0)
                .saturating_add(1)
        } else {
            1
        };
        loop {
            let now = Instant::now();
            self.drop_finished(&mut state.jobs, now);
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
            let jobs = state.jobs.order(window).into_iter().map(|job| Queued {
                rows: job.rows,
                alone: job.alone,
                enqueued: job.enqueued,
            });
            match decide(&self.policy, jobs, free_since, state.closed, now) {
                Decision::Take(count) => {
                    let count = count.clamp(1, state.jobs.len());
                    let batch = state.jobs.take(count);
                    drop(state);
                    for job in &batch {
                        self.metrics.queued(job.fairness.priority.level(), -1);
                    }
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

    /// Answers the queued jobs whose deadline is at or before `now` with
    /// [`WorkerError::QueueTimeout`] (and drops those whose clients went away) and wakes the
    /// instances; the jobs refused for their timeout.
    pub(super) fn expire(&self, now: Instant) -> usize {
        let mut state = self.lock();
        let expired = self.drop_finished(&mut state.jobs, now);
        drop(state);
        if expired > 0 {
            self.changed.notify_all();
        }
        expired
    }

    /// Drops the jobs whose clients went away before they ran, and answers those whose
    /// deadline is at or before `now` with [`WorkerError::QueueTimeout`]; the jobs timed out.
    fn drop_finished(&self, jobs: &mut FairQueue<InferJob>, now: Instant) -> usize {
        let dropped =
            jobs.drain_where(|job| job.reply.is_closed() || job.deadline.is_some_and(|d| d <= now));
        if dropped.is_empty() {
            return 0;
        }
        let mut expired = 0;
        for job in &dropped {
            self.metrics.queued(job.fairness.priority.level(), -1);
        }
        let count = i64::try_from(dropped.len()).unwrap_or(0);
        self.metrics.pending.fetch_sub(count, Ordering::AcqRel);
        for job in dropped {
            if job.reply.is_closed() {
                continue;
            }
            expired += 1;
            self.metrics.refuse(Refusal::Timeout);
            let priority = job.fairness.priority;
            let error = WorkerError::QueueTimeout {
                label: self.label.clone(),
                priority: priority.level(),
                timeout: self.policy.queue_timeouts.of(priority).unwrap_or_default(),
            };
            // The client may be gone meanwhile; nothing to do then.
            let _ = job.reply.send(Err(error));
        }
        expired
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

/// A batching policy for tests: `max` rows, `delay_ms` of queue delay, `preferred` sizes,
/// `queue` pending jobs.
#[cfg(test)]
pub(super) fn batching(max: i64, delay_ms: u64, preferred: Vec<i64>, queue: usize) -> BatchPolicy {
    BatchPolicy {
        batching: true,
        max_batch_size: max,
        max_queue_delay: Duration::from_millis(delay_ms),
        preferred_batch_sizes: preferred,
        max_queue_size: queue,
        intra_op_threads: 1,
        queue_timeouts: QueueTimeouts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn jobs_past_their_level_timeout_are_answered_and_never_run() {
        use super::super::fairness::FairnessKey;
        use crate::metrics::Refusal;
        use tokio::sync::oneshot;

        // Level 1 may wait 20 ms, level 2 50 ms, level 3 as long as it takes.
        let mut policy = batching(8, 0, vec![], 16);
        policy.queue_timeouts = QueueTimeouts::from_levels(|level| match level {
            1 => Some(ms(20)),
            2 => Some(ms(50)),
            _ => None,
        });
        let timeouts = policy.queue_timeouts;
        let metrics = Arc::new(VersionMetrics::default());
        let queue = Queue::new("m/1".into(), policy, metrics.clone());
        // The schedule starts a second ago, so that the instance's own clock is past it.
        let t0 = Instant::now() - Duration::from_secs(1);
        let mut replies = Vec::new();
        for (level, at_ms) in [(1, 0), (2, 0), (3, 0), (1, 10)] {
            let (reply, answer) = oneshot::channel();
            let priority = Priority::new(level).unwrap();
            let enqueued = t0 + ms(at_ms);
            queue
                .push(InferJob {
                    rows: 1,
                    input: vec![f32::from(level)],
                    enqueued,
                    fairness: Fairness {
                        key: FairnessKey::from_bits(u128::from(level)),
                        priority,
                    },
                    deadline: timeouts.of(priority).map(|t| enqueued + t),
                    alone: false,
                    reply,
                })
                .unwrap();
            replies.push(answer);
        }
        let timed_out = |answer: &mut oneshot::Receiver<_>| match answer.try_recv() {
            Ok(Err(WorkerError::QueueTimeout {
                label,
                priority,
                timeout,
            })) => Some((label, priority, timeout)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            other => panic!("{other:?}"),
        };
        // Nothing is due before 20 ms; at 20 ms the first level-1 job, at 30 ms the second.
        assert_eq!(queue.expire(t0 + ms(19)), 0);
        assert_eq!(queue.expire(t0 + ms(20)), 1);
        assert_eq!(
            timed_out(&mut replies[0]),
            Some(("m/1".to_string(), 1, ms(20)))
        );
        assert_eq!(queue.expire(t0 + ms(29)), 0);
        assert_eq!(queue.expire(t0 + ms(30)), 1);
        assert_eq!(
            timed_out(&mut replies[3]),
            Some(("m/1".to_string(), 1, ms(20)))
        );
        assert_eq!(timed_out(&mut replies[1]), None);
        assert_eq!(metrics.pending.load(Ordering::Acquire), 2);
        // An instance forming a batch now (a second on) skips the level-2 job, due at 50 ms,
        // and runs the level-3 job alone.
        let batch = queue.next_batch(t0).expect("a batch");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].fairness.priority.level(), 3);
        assert_eq!(
            timed_out(&mut replies[1]),
            Some(("m/1".to_string(), 2, ms(50)))
        );
        assert_eq!(
            metrics.refused[Refusal::Timeout as usize].load(Ordering::Relaxed),
            3
        );
        assert_eq!(metrics.pending.load(Ordering::Acquire), 0);
        assert_eq!(metrics.pending_by_priority[1].load(Ordering::Acquire), 0);
    }

    #[test]
    fn without_timeouts_no_job_has_a_deadline() {
        let policy = batching(8, 0, vec![], 16);
        for level in 1..=16 {
            assert_eq!(
                policy.queue_timeouts.of(Priority::new(level).unwrap()),
                None
            );
        }
        let zero = QueueTimeouts::from_levels(|_| Some(Duration::ZERO));
        assert_eq!(
            zero,
            QueueTimeouts::default(),
            "0 is no timeout, as in Triton"
        );
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
}
