//! Passive ejection: a backend whose requests fail (connect failure, reset, 5xx) `N` times in
//! a row gets no requests for a cool-down that doubles, up to a cap, with each ejection that
//! follows another without a success in between (Envoy's "outlier detection", simplified).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::EjectionConfig;

/// Milliseconds since the first call in this process: the clock of the ejection deadlines
/// (stored in atomics, so the request path reads them without a lock).
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One backend's passive-health state. Every method takes the time (`now_ms`, see
/// [`now_ms`]) so that tests can drive it.
#[derive(Debug)]
pub(super) struct Ejection {
    /// Failures in a row since the last success or ejection.
    consecutive: AtomicU32,
    /// Ejected until this time (ms); 0: not ejected.
    until_ms: AtomicU64,
    /// The cool-down the next ejection gets, ms.
    next_cooldown_ms: AtomicU64,
    /// Ejections so far.
    count: AtomicU64,
}

impl Ejection {
    /// Not ejected; the first cool-down will be `config.base_ms`.
    pub(super) fn new(config: &EjectionConfig) -> Self {
        Ejection {
            consecutive: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
            next_cooldown_ms: AtomicU64::new(config.base_ms),
            count: AtomicU64::new(0),
        }
    }

    /// Whether the backend is ejected at `now_ms`.
    pub(super) fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms.load(Relaxed)
    }

    /// How long the backend stays ejected after `now_ms` (`None`: it is not).
    pub(super) fn remaining(&self, now_ms: u64) -> Option<Duration> {
        let until = self.until_ms.load(Relaxed);
        (now_ms < until).then(|| Duration::from_millis(until - now_ms))
    }

    /// Ejections so far.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// A request succeeded (any answer below 500): the failure run and the doubling restart.
    pub(super) fn success(&self, config: &EjectionConfig) {
        if self.consecutive.load(Relaxed) != 0 {
            self.consecutive.store(0, Relaxed);
        }
        if self.next_cooldown_ms.load(Relaxed) != config.base_ms {
            self.next_cooldown_ms.store(config.base_ms, Relaxed);
        }
    }

    /// A request failed at `now_ms`. Returns the cool-down when this failure ejects the
    /// backend: the `consecutive_errors`-th in a row, or any `definitive` one (a refused
    /// connection: nothing listens there), while not ejected.
    pub(super) fn failure(
        &self,
        config: &EjectionConfig,
        now_ms: u64,
        definitive: bool,
    ) -> Option<Duration> {
        let n = self.consecutive.fetch_add(1, Relaxed) + 1;
        if (n < config.consecutive_errors && !definitive) || self.is_ejected(now_ms) {
            return None;
        }
        self.consecutive.store(0, Relaxed);
        let cooldown = self.next_cooldown_ms.load(Relaxed);
        self.next_cooldown_ms
            .store((cooldown.saturating_mul(2)).min(config.max_ms), Relaxed);
        self.until_ms.store(now_ms + cooldown, Relaxed);
        self.count.fetch_add(1, Relaxed);
        Some(Duration::from_millis(cooldown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EjectionConfig {
        EjectionConfig {
            consecutive_errors: 3,
            base_ms: 100,
            max_ms: 350,
        }
    }

    #[test]
    fn ejects_after_n_failures_and_doubles_up_to_the_cap() {
        let c = config();
        let e = Ejection::new(&c);
        assert_eq!(e.failure(&c, 0, false), None);
        assert_eq!(e.failure(&c, 1, false), None);
        assert_eq!(e.failure(&c, 2, false), Some(Duration::from_millis(100)));
        assert!(e.is_ejected(50));
        assert_eq!(e.remaining(52), Some(Duration::from_millis(50)));
        assert!(!e.is_ejected(102));
        // Failing again right after it returns: twice as long, then capped.
        for t in 102..104 {
            assert_eq!(e.failure(&c, t, false), None);
        }
        assert_eq!(e.failure(&c, 104, false), Some(Duration::from_millis(200)));
        for t in 304..306 {
            assert_eq!(e.failure(&c, t, false), None);
        }
        assert_eq!(e.failure(&c, 306, false), Some(Duration::from_millis(350)));
        assert_eq!(e.count(), 3);
        // Failures while ejected do not extend it.
        for t in 307..320 {
            assert_eq!(e.failure(&c, t, false), None);
        }
        assert_eq!(e.remaining(306), Some(Duration::from_millis(350)));
    }

    #[test]
    fn a_refused_connection_ejects_at_once() {
        let c = config();
        let e = Ejection::new(&c);
        assert_eq!(e.failure(&c, 0, true), Some(Duration::from_millis(100)));
        assert_eq!(e.failure(&c, 1, true), None);
        assert_eq!(e.count(), 1);
    }

    #[test]
    fn a_success_resets_the_run_and_the_doubling() {
        let c = config();
        let e = Ejection::new(&c);
        e.failure(&c, 0, false);
        e.failure(&c, 0, false);
        e.success(&c);
        assert_eq!(e.failure(&c, 1, false), None);
        assert_eq!(e.failure(&c, 1, false), None);
        assert_eq!(e.failure(&c, 1, false), Some(Duration::from_millis(100)));
        e.success(&c);
        for _ in 0..2 {
            e.failure(&c, 200, false);
        }
        assert_eq!(e.failure(&c, 200, false), Some(Duration::from_millis(100)));
    }
}
