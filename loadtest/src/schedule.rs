//! The open loop's arrival schedule: request `i` is due `i / rate` seconds after the start
//! (a constant arrival rate, as wrk2), until the phase's end or its request count.

use std::time::{Duration, Instant};

/// Intended send times of one open-loop phase.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    end: Instant,
    /// Requests per second (> 0).
    rate: f64,
    max_requests: u64,
}

impl Schedule {
    /// `rate` requests/s from `start` for `duration`, at most `max_requests`.
    pub fn new(start: Instant, duration: Duration, rate: f64, max_requests: u64) -> Self {
        Schedule {
            start,
            end: start + duration,
            rate,
            max_requests,
        }
    }

    /// The intended send time of request `i`, or `None` once the phase is over. Computed from
    /// `i` itself (not by adding intervals), so rounding does not accumulate.
    pub fn at(&self, i: u64) -> Option<Instant> {
        if i >= self.max_requests {
            return None;
        }
        let t = self.start + Duration::from_secs_f64(i as f64 / self.rate);
        (t < self.end).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_schedules_rate_times_duration_requests_evenly_spaced() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, Duration::from_secs_f64(1.5), 200.0, u64::MAX);
        let times: Vec<Instant> = (0..).map_while(|i| s.at(i)).collect();
        assert_eq!(times.len(), 300);
        assert_eq!(times[0], t0);
        assert_eq!(times[299] - t0, Duration::from_micros(1_495_000));
        for w in times.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(5));
        }
    }

    #[test]
    fn the_request_count_ends_a_phase_before_its_duration() {
        let s = Schedule::new(Instant::now(), Duration::from_secs(10), 1000.0, 7);
        assert_eq!((0..).map_while(|i| s.at(i)).count(), 7);
        let s = Schedule::new(Instant::now(), Duration::ZERO, 1000.0, 7);
        assert_eq!(s.at(0), None);
    }

    #[test]
    fn a_non_integer_interval_does_not_drift() {
        // 3 requests/s: 1/3 s is not exact in binary; request 3,000 is still due at 1,000 s.
        let t0 = Instant::now();
        let s = Schedule::new(t0, Duration::from_secs(2000), 3.0, u64::MAX);
        let d = s.at(3000).expect("in the phase") - t0;
        assert!(
            d.abs_diff(Duration::from_secs(1000)) < Duration::from_nanos(2),
            "{d:?}"
        );
    }
}
