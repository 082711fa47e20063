//! The load test's report: throughput, status counts and latency percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one run measured. Latencies are microseconds, from send to the last body byte.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Workers (closed loop).
    pub concurrency: usize,
    /// Requests answered (any HTTP status).
    pub responses: u64,
    /// Requests that got no HTTP answer (connect or I/O error).
    pub transport_errors: u64,
    /// Answers per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Answers per second.
    pub throughput_rps: f64,
    /// Latency percentiles, microseconds.
    pub latency_us: Percentiles,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest answer.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Report {
    /// Builds the report from the merged histogram and counters.
    pub fn new(
        hist: &Histogram<u64>,
        statuses: BTreeMap<u16, u64>,
        transport_errors: u64,
        elapsed: Duration,
        concurrency: usize,
    ) -> Self {
        let responses = hist.len();
        let elapsed_s = elapsed.as_secs_f64();
        Report {
            concurrency,
            responses,
            transport_errors,
            statuses,
            elapsed_s,
            throughput_rps: if elapsed_s > 0.0 {
                responses as f64 / elapsed_s
            } else {
                0.0
            },
            latency_us: Percentiles {
                p50: hist.value_at_quantile(0.50),
                p90: hist.value_at_quantile(0.90),
                p99: hist.value_at_quantile(0.99),
                p999: hist.value_at_quantile(0.999),
                max: hist.max(),
                mean: hist.mean(),
            },
        }
    }

    /// A small table for the terminal.
    pub fn table(&self) -> String {
        let l = &self.latency_us;
        format!(
            "responses {}  errors {}  statuses {:?}\n\
             throughput {:.0} req/s over {:.2} s at concurrency {}\n\
             latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
            self.responses,
            self.transport_errors,
            self.statuses,
            self.throughput_rps,
            self.elapsed_s,
            self.concurrency,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_throughput_come_from_the_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for v in 1..=1000u64 {
            h.record(v).expect("record");
        }
        let mut statuses = BTreeMap::new();
        statuses.insert(200, 1000);
        let r = Report::new(&h, statuses, 0, Duration::from_secs(2), 4);
        assert_eq!(r.responses, 1000);
        assert_eq!(r.throughput_rps, 500.0);
        assert_eq!(r.latency_us.p50, 500);
        assert_eq!(r.latency_us.p99, 990);
        assert_eq!(r.latency_us.max, 1000);
    }
}
