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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::drr::{FairQueue, Scheduled};
use super::fairness::Fairness;
use super::InferJob;
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

/// The queue shared by a version's instance threads: the jobs not yet taken, one FIFO queue
/// per fairness key served by weighted deficit round robin ([`super::drr`]).
#[derive(Debug)]
pub(super) struct Queue {
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
    /// An open, empty queue whose batches follow `policy`; `metrics.pending` counts its jobs.
    pub(super) fn new(policy: BatchPolicy, metrics: Arc<VersionMetrics>) -> Queue {
        Queue {
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

    /// Drops the jobs whose clients went away before they ran.
    fn drop_abandoned(&self, jobs: &mut FairQueue<InferJob>) {
        let dropped = jobs.drain_where(|job| job.reply.is_closed());
        for job in &dropped {
            self.metrics.queued(job.fairness.priority.level(), -1);
        }
        let dropped = i64::try_from(dropped.len()).unwrap_or(0);
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
