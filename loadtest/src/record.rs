//! What the load loops record: one [`Sample`] per request, gathered into HDR histograms and
//! status counts by a [`Recorder`] (the runner fills it, the report reads it).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// What one request produced.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index into the target's keys (`runner::Target::keys`).
    pub key: usize,
    /// HTTP status, or `None` when no answer came (connect error, timeout, reset).
    pub status: Option<u16>,
    /// Latency, microseconds.
    pub latency_us: u64,
    /// Open loop: how late the request was handed to its connection after its intended send
    /// time, microseconds (the load generator's own lateness plus any wait for a free slot);
    /// `None` in closed loop.
    pub send_lag_us: Option<u64>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 us .. 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Collects samples into HDR histograms, overall and per key label.
pub struct Recorder {
    /// The key labels, in key order (at least one).
    pub labels: Vec<String>,
    /// Latencies of every answered request, microseconds.
    pub overall: Histogram<u64>,
    /// Latencies per key, microseconds.
    pub per_key: Vec<Histogram<u64>>,
    /// Open loop: send lag of every request ([`Sample::send_lag_us`]), microseconds.
    pub send_lag: Histogram<u64>,
    /// Answers per HTTP status, per key.
    pub statuses: Vec<BTreeMap<u16, u64>>,
    /// Requests without an HTTP answer, per key.
    pub transport_errors: Vec<u64>,
}

impl Recorder {
    /// A recorder for keys with these labels (one unnamed bucket when there are none).
    ///
    /// # Errors
    /// Never in practice (histogram bounds are constant).
    pub fn new(mut labels: Vec<String>) -> anyhow::Result<Self> {
        if labels.is_empty() {
            labels.push("anonymous".to_string());
        }
        let n = labels.len();
        Ok(Recorder {
            labels,
            overall: histogram()?,
            send_lag: histogram()?,
            per_key: (0..n).map(|_| histogram()).collect::<anyhow::Result<_>>()?,
            statuses: vec![BTreeMap::new(); n],
            transport_errors: vec![0; n],
        })
    }

    /// Records one sample. Only answered requests enter the latency histograms.
    pub fn record(&mut self, s: Sample) {
        let k = s.key.min(self.labels.len() - 1);
        if let Some(lag) = s.send_lag_us {
            // A lag of 0 us is recorded as 1 us, the histogram's lowest value.
            self.send_lag.saturating_record(lag.max(1));
        }
        match s.status {
            Some(code) => {
                self.overall.saturating_record(s.latency_us.max(1));
                self.per_key[k].saturating_record(s.latency_us.max(1));
                *self.statuses[k].entry(code).or_default() += 1;
            }
            None => self.transport_errors[k] += 1,
        }
    }
}
