//! The queued jobs of one model version, one FIFO queue per fairness key, served by weighted
//! deficit round robin over rows (Shreedhar & Varghese, "Efficient Fair Queuing using Deficit
//! Round Robin", SIGCOMM 1995).
//!
//! The keys with queued jobs form a ring. The key at its head is given its quantum (its
//! [`Priority::weight`](super::fairness::Priority::weight) in rows) once per turn, and its jobs
//! are served, oldest first, while their rows fit in its deficit; then the turn passes to the
//! next key, and a key whose queue empties leaves the ring with its deficit reset. A batch is
//! therefore filled from the keys in turn, and over time each key with queued jobs is served
//! rows in proportion to its weight, whatever the others send. With one key this is exactly
//! the FIFO queue.
//!
//! [`FairQueue::order`] lists the jobs in the order they would be served (without serving
//! them), so the batching rules ([`super::batcher::decide`]) see the same shape of queue as
//! before; [`FairQueue::take`] then serves the first `n` of that order.

use std::collections::{HashMap, VecDeque};

use super::fairness::{FairnessKey, Priority};

/// What the scheduler needs of a job.
pub(super) trait Scheduled {
    /// The job's rows (its batch dimension); at least 1 counts.
    fn rows(&self) -> i64;
    /// Whose queue it joins, and the key's weight.
    fn fairness(&self) -> super::fairness::Fairness;
}

#[derive(Debug)]
struct KeyQueue<T> {
    jobs: VecDeque<T>,
    /// Rows of `jobs`.
    rows: i64,
    /// The key's weight (of its latest job's priority).
    priority: Priority,
}

/// The round robin's own state, apart from the jobs, so that it can be simulated on a copy.
#[derive(Debug, Clone, Default)]
struct Round {
    /// Keys with queued jobs, the one being served first.
    ring: VecDeque<FairnessKey>,
    /// Rows each key in the ring may still be served.
    deficit: HashMap<FairnessKey, i64>,
    /// The head key has been given its quantum for this turn.
    topped: bool,
}

impl Round {
    /// The key whose job is served next, with `head` telling the next unserved job's rows of a
    /// key (`None`: nothing left of it, the key leaves the ring) and `weight` its quantum.
    /// Charges that job's rows to the key's deficit.
    fn step(
        &mut self,
        head: impl Fn(FairnessKey) -> Option<i64>,
        weight: impl Fn(FairnessKey) -> i64,
    ) -> Option<FairnessKey> {
        // Turns passed since a job was served; after a whole round of none, skip ahead.
        let mut idle_turns = 0usize;
        loop {
            let key = *self.ring.front()?;
            let Some(rows) = head(key) else {
                self.ring.pop_front();
                self.deficit.remove(&key);
                self.topped = false;
                continue;
            };
            let rows = rows.max(1);
            let deficit = self.deficit.entry(key).or_insert(0);
            if !self.topped {
                *deficit = deficit.saturating_add(weight(key).max(1));
                self.topped = true;
            }
            if rows <= *deficit {
                *deficit -= rows;
                return Some(key);
            }
            self.ring.rotate_left(1);
            self.topped = false;
            idle_turns += 1;
            if idle_turns >= self.ring.len() {
                // Every key was given a quantum and none could send its next job: give every
                // key the rounds that the first of them to fit would need, minus the one it
                // gets on its next turn, at once (the same as running those rounds).
                let rounds = self
                    .ring
                    .iter()
                    .filter_map(|&k| {
                        let need = head(k)?.max(1) - self.deficit.get(&k).copied().unwrap_or(0);
                        let w = weight(k).max(1);
                        Some((need + w - 1) / w)
                    })
                    .min()
                    .unwrap_or(1)
                    .saturating_sub(1);
                if rounds > 0 {
                    for &k in &self.ring {
                        let d = self.deficit.entry(k).or_insert(0);
                        *d = d.saturating_add(rounds.saturating_mul(weight(k).max(1)));
                    }
                }
                idle_turns = 0;
            }
        }
    }
}

/// One version's queued jobs by fairness key.
#[derive(Debug)]
pub(super) struct FairQueue<T> {
    keys: HashMap<FairnessKey, KeyQueue<T>>,
    round: Round,
    len: usize,
}

impl<T: Scheduled> FairQueue<T> {
    /// An empty queue.
    pub(super) fn new() -> FairQueue<T> {
        FairQueue {
            keys: HashMap::new(),
            round: Round::default(),
            len: 0,
        }
    }

    /// Jobs queued, all keys together.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether no job is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys with queued jobs.
    #[cfg(test)]
    pub(super) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Jobs queued for `key`.
    #[cfg(test)]
    pub(super) fn jobs_of(&self, key: FairnessKey) -> usize {
        self.keys.get(&key).map_or(0, |q| q.jobs.len())
    }

    /// The key with the most rows queued (the lowest key among equals, so the choice is
    /// deterministic), and those rows.
    pub(super) fn heaviest(&self) -> Option<(FairnessKey, i64)> {
        self.keys
            .iter()
            .map(|(&k, q)| (k, q.rows))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    /// Rows queued for `key`.
    pub(super) fn rows_of(&self, key: FairnessKey) -> i64 {
        self.keys.get(&key).map_or(0, |q| q.rows)
    }

    /// Queues `job` at the back of its key's queue; a key new to the queue joins the ring last.
    pub(super) fn push(&mut self, job: T) {
        let fairness = job.fairness();
        let rows = job.rows();
        let queue = self.keys.entry(fairness.key).or_insert_with(|| KeyQueue {
            jobs: VecDeque::new(),
            rows: 0,
            priority: fairness.priority,
        });
        if queue.jobs.is_empty() {
            self.round.ring.push_back(fairness.key);
        }
        queue.priority = fairness.priority;
        queue.rows = queue.rows.saturating_add(rows);
        queue.jobs.push_back(job);
        self.len += 1;
    }

    /// Removes the newest job of `key` (the one refused when the queue is full).
    pub(super) fn pop_newest(&mut self, key: FairnessKey) -> Option<T> {
        let queue = self.keys.get_mut(&key)?;
        let job = queue.jobs.pop_back()?;
        queue.rows -= job.rows();
        self.len -= 1;
        if queue.jobs.is_empty() {
            self.forget(key);
        }
        Some(job)
    }

    /// The queued jobs in the order the round robin would serve them, first `limit` at most.
    pub(super) fn order(&self, limit: usize) -> Vec<&T> {
        let mut round = self.round.clone();
        let mut served: HashMap<FairnessKey, usize> = HashMap::new();
        let mut order = Vec::with_capacity(limit.min(self.len));
        while order.len() < limit {
            let next = round.step(
                |k| {
                    let at = served.get(&k).copied().unwrap_or(0);
                    self.keys.get(&k)?.jobs.get(at).map(Scheduled::rows)
                },
                |k| self.weight(k),
            );
            let Some(key) = next else { break };
            let at = served.entry(key).or_insert(0);
            if let Some(job) = self.keys.get(&key).and_then(|q| q.jobs.get(*at)) {
                order.push(job);
            }
            *at += 1;
        }
        order
    }

    /// Serves the first `count` jobs of [`FairQueue::order`], advancing the round robin.
    pub(super) fn take(&mut self, count: usize) -> Vec<T> {
        let mut batch = Vec::with_capacity(count.min(self.len));
        while batch.len() < count {
            let keys = &self.keys;
            let next = self.round.step(
                |k| keys.get(&k)?.jobs.front().map(Scheduled::rows),
                |k| keys.get(&k).map_or(1, |q| q.priority.weight()),
            );
            let Some(key) = next else { break };
            let Some(queue) = self.keys.get_mut(&key) else {
                break;
            };
            let Some(job) = queue.jobs.pop_front() else {
                break;
            };
            queue.rows -= job.rows();
            self.len -= 1;
            if queue.jobs.is_empty() {
                self.forget(key);
            }
            batch.push(job);
        }
        batch
    }

    /// Removes the jobs for which `drop` holds, returning them.
    pub(super) fn drain_where(&mut self, mut drop: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let mut emptied = Vec::new();
        for (&key, queue) in self.keys.iter_mut() {
            let mut kept = VecDeque::with_capacity(queue.jobs.len());
            for job in queue.jobs.drain(..) {
                if drop(&job) {
                    queue.rows -= job.rows();
                    dropped.push(job);
                } else {
                    kept.push_back(job);
                }
            }
            queue.jobs = kept;
            if queue.jobs.is_empty() {
                emptied.push(key);
            }
        }
        self.len -= dropped.len();
        for key in emptied {
            self.forget(key);
        }
        dropped
    }

    /// The rows of a key's next job, its weight.
    fn weight(&self, key: FairnessKey) -> i64 {
        self.keys.get(&key).map_or(1, |q| q.priority.weight())
    }

    /// A key whose queue emptied leaves the ring, its deficit reset (DRR's rule: an idle flow
    /// keeps no credit).
    fn forget(&mut self, key: FairnessKey) {
        self.keys.remove(&key);
        self.round.deficit.remove(&key);
        if self.round.ring.front() == Some(&key) {
            self.round.topped = false;
        }
        self.round.ring.retain(|&k| k != key);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fairness::Fairness;
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Job {
        key: u128,
        rows: i64,
        level: u8,
        n: u32,
    }

    impl Scheduled for Job {
        fn rows(&self) -> i64 {
            self.rows
        }
        fn fairness(&self) -> Fairness {
            Fairness {
                key: FairnessKey::from_bits(self.key),
                priority: Priority::new(self.level).unwrap(),
            }
        }
    }

    fn queue(jobs: &[(u128, i64, u8)]) -> FairQueue<Job> {
        let mut q = FairQueue::new();
        for (n, &(key, rows, level)) in jobs.iter().enumerate() {
            q.push(Job {
                key,
                rows,
                level,
                n: n as u32,
            });
        }
        q
    }

    fn names(jobs: &[Job]) -> String {
        jobs.iter()
            .map(|j| format!("{}{}", (b'A' + j.key as u8) as char, j.n))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn one_key_is_served_first_in_first_out() {
        let q = queue(&[(0, 3, 1), (0, 1, 1), (0, 5, 1), (0, 2, 1)]);
        let order: Vec<u32> = q.order(10).iter().map(|j| j.n).collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn keys_take_turns_by_rows_and_weight_on_a_deterministic_schedule() {
        // A floods with six 1-row jobs, then B queues two: B is served every other row.
        let mut q = queue(&[
            (0, 1, 1),
            (0, 1, 1),
            (0, 1, 1),
            (0, 1, 1),
            (0, 1, 1),
            (0, 1, 1),
            (1, 1, 1),
            (1, 1, 1),
        ]);
        let order: Vec<Job> = q.order(8).into_iter().copied().collect();
        assert_eq!(names(&order), "A0 B6 A1 B7 A2 A3 A4 A5");
        // Serving follows the listed order, in parts.
        assert_eq!(names(&q.take(3)), "A0 B6 A1");
        assert_eq!(names(&q.take(5)), "B7 A2 A3 A4 A5");
        assert!(q.is_empty());

        // B at level 2 gets two rows a turn to A's one; a 3-row job of A waits until A's
        // deficit has gathered 3 rows (three of A's turns), B's rows meanwhile go on.
        let mut q = queue(&[
            (0, 3, 1),
            (0, 1, 1),
            (1, 1, 2),
            (1, 1, 2),
            (1, 1, 2),
            (1, 1, 2),
            (1, 1, 2),
            (1, 1, 2),
        ]);
        let order: Vec<Job> = q.order(8).into_iter().copied().collect();
        assert_eq!(names(&order), "B2 B3 B4 B5 A0 B6 B7 A1");
        assert_eq!(names(&q.take(8)), "B2 B3 B4 B5 A0 B6 B7 A1");
    }

    #[test]
    fn the_heaviest_key_and_what_leaves_the_queue() {
        let mut q = queue(&[(0, 4, 1), (1, 1, 1), (0, 4, 1), (1, 1, 1)]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.keys(), 2);
        assert_eq!(q.heaviest(), Some((FairnessKey::from_bits(0), 8)));
        assert_eq!(
            q.pop_newest(FairnessKey::from_bits(0)).map(|j| j.n),
            Some(2)
        );
        assert_eq!(q.rows_of(FairnessKey::from_bits(0)), 4);
        let dropped = q.drain_where(|j| j.key == 1);
        assert_eq!(dropped.len(), 2);
        assert_eq!(q.keys(), 1);
        assert_eq!(q.jobs_of(FairnessKey::from_bits(1)), 0);
        assert_eq!(names(&q.take(5)), "A0");
        assert!(q.is_empty());
    }
}
