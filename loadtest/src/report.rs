//! The load test's report: throughput, status counts per key and latency percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::record::Recorder;

/// What one run measured. Latencies are microseconds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `open` or `closed`.
    pub mode: String,
    /// Open loop: the intended arrival rate, requests/s.
    pub target_rate_rps: Option<f64>,
    /// Workers (closed) or most requests in flight (open).
    pub concurrency: usize,
    /// Requests answered (any HTTP status).
    pub responses: u64,
    /// Requests that got no HTTP answer (connect error, timeout, reset).
    pub transport_errors: u64,
    /// Answers per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Wall time of the measured phase, seconds.
    pub elapsed_s: f64,
    /// Answers per second.
    pub throughput_rps: f64,
    /// 2xx answers per second.
    pub ok_throughput_rps: f64,
    /// Latency percentiles over all answers.
    pub latency_us: Percentiles,
    /// Open loop: how late requests were handed to their connection after their intended send
    /// times (the tool's own lateness plus waits for a free slot); absent in closed loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Percentiles>,
    /// Per key label: statuses and latency.
    pub keys: BTreeMap<String, KeyReport>,
    /// (percentile, latency us) points for plotting, from the overall histogram.
    pub percentile_curve: Vec<(f64, u64)>,
}

/// One key's share of the run.
#[derive(Debug, Serialize)]
pub struct KeyReport {
    /// Answers per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests with no HTTP answer.
    pub transport_errors: u64,
    /// Latency percentiles.
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

/// The points of [`Report::percentile_curve`]: (percentile as printed, quantile asked of the
/// histogram). The quantiles are written out rather than computed as `p / 100`, so that the
/// curve, the plot and [`Percentiles`] ask the histogram the very same question (`99.9 / 100` is
/// `0.9990000000000001` in binary floating point, which lands one bucket higher).
const CURVE: [(f64, f64); 12] = [
    (0.0, 0.0),
    (25.0, 0.25),
    (50.0, 0.5),
    (75.0, 0.75),
    (90.0, 0.9),
    (95.0, 0.95),
    (99.0, 0.99),
    (99.5, 0.995),
    (99.9, 0.999),
    (99.95, 0.9995),
    (99.99, 0.9999),
    (100.0, 1.0),
];

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

impl Report {
    /// Builds the report of a measured phase.
    pub fn new(
        scenario: &str,
        mode: &str,
        target_rate_rps: Option<f64>,
        concurrency: usize,
        rec: &Recorder,
        elapsed: Duration,
    ) -> Self {
        let mut statuses = BTreeMap::<u16, u64>::new();
        for s in &rec.statuses {
            for (&code, &n) in s {
                *statuses.entry(code).or_default() += n;
            }
        }
        let responses = rec.overall.len();
        let ok: u64 = statuses
            .iter()
            .filter(|(c, _)| (200..300).contains(*c))
            .map(|(_, n)| n)
            .sum();
        let elapsed_s = elapsed.as_secs_f64();
        let per_s = |n: u64| {
            if elapsed_s > 0.0 {
                n as f64 / elapsed_s
            } else {
                0.0
            }
        };
        let keys = rec
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.clone(),
                    KeyReport {
                        statuses: rec.statuses[i].clone(),
                        transport_errors: rec.transport_errors[i],
                        latency_us: Percentiles::of(&rec.per_key[i]),
                    },
                )
            })
            .collect();
        let percentile_curve = CURVE
            .iter()
            .map(|&(p, q)| (p, rec.overall.value_at_quantile(q)))
            .collect();
        Report {
            scenario: scenario.to_string(),
            mode: mode.to_string(),
            target_rate_rps,
            concurrency,
            responses,
            transport_errors: rec.transport_errors.iter().sum(),
            statuses,
            elapsed_s,
            throughput_rps: per_s(responses),
            ok_throughput_rps: per_s(ok),
            latency_us: Percentiles::of(&rec.overall),
            send_lag_us: (!rec.send_lag.is_empty()).then(|| Percentiles::of(&rec.send_lag)),
            keys,
            percentile_curve,
        }
    }

    /// A small table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} ({} loop{})\n\
             responses {}  transport errors {}  statuses {:?}\n\
             throughput {:.0} req/s ({:.0} 2xx/s) over {:.2} s\n\
             {:<12} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            self.scenario,
            self.mode,
            self.target_rate_rps
                .map(|r| format!(", target {r:.0} req/s"))
                .unwrap_or_default(),
            self.responses,
            self.transport_errors,
            self.statuses,
            self.throughput_rps,
            self.ok_throughput_rps,
            self.elapsed_s,
            "latency us",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        );
        let mut row = |name: &str, l: &Percentiles| {
            out.push_str(&format!(
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                name, l.p50, l.p90, l.p99, l.p999, l.max
            ));
        };
        row("all", &self.latency_us);
        if let Some(lag) = &self.send_lag_us {
            row("send lag", lag);
        }
        if self.keys.len() > 1 {
            for (k, r) in &self.keys {
                row(k, &r.latency_us);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Sample;

    #[test]
    fn percentiles_throughput_and_statuses_come_from_the_samples() {
        let mut rec = Recorder::new(vec!["a".into(), "b".into()]).expect("recorder");
        for v in 1..=1000u64 {
            rec.record(Sample {
                key: (v % 2) as usize,
                status: Some(if v <= 900 { 200 } else { 429 }),
                latency_us: v,
                send_lag_us: None,
            });
        }
        rec.record(Sample {
            key: 0,
            status: None,
            latency_us: 5,
            send_lag_us: None,
        });
        let r = Report::new("t", "closed", None, 4, &rec, Duration::from_secs(2));
        assert_eq!(r.responses, 1000);
        assert_eq!(r.transport_errors, 1);
        assert_eq!(r.throughput_rps, 500.0);
        assert_eq!(r.ok_throughput_rps, 450.0);
        assert_eq!(r.statuses.get(&200), Some(&900));
        assert_eq!(r.statuses.get(&429), Some(&100));
        assert_eq!(r.latency_us.p50, 500);
        assert_eq!(r.latency_us.p99, 990);
        assert_eq!(r.latency_us.max, 1000);
        assert_eq!(r.keys["a"].statuses.values().sum::<u64>(), 500);
        assert_eq!(r.keys["a"].transport_errors, 1);
        assert_eq!(r.percentile_curve.last(), Some(&(100.0, 1000)));
        assert!(r.table().contains("p99.9"));
        assert!(
            r.send_lag_us.is_none(),
            "closed loop has no intended send times"
        );
    }

    #[test]
    fn the_curve_and_the_percentiles_agree() {
        // A long tail spread over many histogram buckets, where p/100 and the written-out
        // quantile used to pick different buckets.
        let mut rec = Recorder::new(vec![]).expect("recorder");
        for v in 0..100_000u64 {
            rec.record(Sample {
                key: 0,
                status: Some(200),
                latency_us: 100 + v * v / 1_000_000,
                send_lag_us: Some(v % 10),
            });
        }
        let r = Report::new("t", "open", Some(1.0), 1, &rec, Duration::from_secs(1));
        let at = |p: f64| {
            r.percentile_curve
                .iter()
                .find(|&&(x, _)| x == p)
                .map(|&(_, v)| v)
                .expect("point on the curve")
        };
        let table = r.table();
        assert_eq!(at(50.0), r.latency_us.p50);
        assert_eq!(at(90.0), r.latency_us.p90);
        assert_eq!(at(99.0), r.latency_us.p99);
        assert_eq!(at(99.9), r.latency_us.p999);
        assert_eq!(at(100.0), r.latency_us.max);
        // Send lags 0..9 us, each a tenth of the requests (0 is recorded as 1 us).
        let lag = r
            .send_lag_us
            .as_ref()
            .expect("open loop reports its send lag");
        assert_eq!((lag.p50, lag.p90, lag.max), (4, 8, 9));
        assert!(table.contains("send lag"), "{table}");
        assert!(
            table.contains(&format!(
                " {:>9} {:>9}\n",
                r.latency_us.p999, r.latency_us.max
            )),
            "{table}"
        );
    }
}
