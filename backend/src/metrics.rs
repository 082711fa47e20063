//! Per model version counters and histograms, and their Prometheus exposition at `GET /metrics`
//! through `prometheus-client` (the Prometheus project's Rust client; text format 0.0.4,
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>). The series follow Triton's
//! `nv_inference_*` metrics, renamed `maas_*`.
//!
//! Every series has the labels `model` and `version`. Counters only grow while a version is
//! loaded; a version loaded again starts from zero. A version's `[[warmup]]` requests count in
//! its inference and execution counts and in the batch and compute histograms (they are real
//! forward passes), not in success or the request histogram.
//!
//! The counters are atomics updated lock-free on the request path and read at scrape time by a
//! `prometheus-client` collector ([`render`]); the histograms are `prometheus-client`
//! histograms (one short mutex per observation).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Bucket upper bounds of the duration histograms, seconds: 50 µs doubling up to 13.1 s
/// (19 buckets), so that both a sub-millisecond forward pass and a slow queue resolve.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 19)
}

/// Bucket upper bounds of the batch size histogram, rows: 1, 2, 4, ... 4096.
pub fn batch_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

/// The counters and histograms of one model version. Updated by the HTTP handlers (success,
/// failure, request duration), the batcher (pending) and the instance threads (counts,
/// durations, batch sizes).
#[derive(Debug)]
pub struct VersionMetrics {
    /// Infer requests answered 200.
    pub success: AtomicU64,
    /// Infer requests that reached this version and failed (400, 503, 500).
    pub failure: AtomicU64,
    /// Rows computed (the batch dimension summed over requests; Triton's inference count).
    pub inference_count: AtomicU64,
    /// Forward passes (batches); `inference_count / execution_count` is the average batch size.
    pub execution_count: AtomicU64,
    /// Time requests waited in the queue before their forward pass started, summed over
    /// requests, microseconds.
    pub queue_us: AtomicU64,
    /// Time spent in forward passes (input to device, forward, output to host), summed over
    /// forward passes, microseconds.
    pub compute_us: AtomicU64,
    /// Requests queued and not yet handed to an instance.
    pub pending: AtomicI64,
    /// Seconds from the infer request reaching this version to its answer (validation, queue,
    /// forward pass, encoding), per request, success or failure.
    pub request_duration: Histogram,
    /// Seconds each request waited in the queue before its forward pass started.
    pub queue_duration: Histogram,
    /// Seconds of each forward pass (per batch).
    pub compute_duration: Histogram,
    /// Rows of each forward pass (the batch the dynamic batcher formed).
    pub batch_size: Histogram,
    /// For a model split into pipeline stages (`[pipeline]`), the stages' counters.
    pub pipeline: OnceLock<Arc<PipelineMetrics>>,
    /// Per priority level (index `level - 1`, levels 1..=[`PRIORITY_LEVELS`]): requests
    /// queued at that level. Updated with [`VersionMetrics::queued`].
    pub pending_by_priority: [AtomicI64; PRIORITY_LEVELS],
    /// Per priority level: seconds each request of that level waited in the queue; set once a
    /// request of the level was queued, so that only levels in use are exposed.
    pub queue_duration_by_priority: [OnceLock<Histogram>; PRIORITY_LEVELS],
    /// Requests the queue refused, by [`Refusal`] (index `Refusal as usize`).
    pub refused: [AtomicU64; Refusal::ALL.len()],
}

/// Priority levels of the batcher (1..=16, Triton's priority levels); the `priority` label.
pub const PRIORITY_LEVELS: usize = 16;

/// Why the batcher refused a request (the `reason` label of `maas_inference_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full and the request's fairness key had the most rows queued: refused on
    /// arrival (503).
    QueueFull = 0,
    /// Queued, then taken out of a full queue for a request of a key with fewer rows (503).
    Evicted = 1,
    /// The model version was unloading (503).
    Closed = 2,
    /// Waited in the queue longer than its priority level's queue timeout (503).
    Timeout = 3,
}

impl Refusal {
    /// Every reason, in index order.
    pub const ALL: [Refusal; 4] = [
        Refusal::QueueFull,
        Refusal::Evicted,
        Refusal::Closed,
        Refusal::Timeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::Evicted => "evicted",
            Refusal::Closed => "closed",
            Refusal::Timeout => "timeout",
        }
    }
}

impl Default for VersionMetrics {
    fn default() -> Self {
        VersionMetrics {
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            queue_us: AtomicU64::new(0),
            compute_us: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            request_duration: Histogram::new(duration_buckets()),
            queue_duration: Histogram::new(duration_buckets()),
            compute_duration: Histogram::new(duration_buckets()),
            batch_size: Histogram::new(batch_buckets()),
            pipeline: OnceLock::new(),
            pending_by_priority: std::array::from_fn(|_| AtomicI64::new(0)),
            queue_duration_by_priority: std::array::from_fn(|_| OnceLock::new()),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The counters of a model version split into pipeline stages (the engine's pipeline), shared by
/// its instances. The measured bubble fraction over an interval is
/// `1 - sum_k busy_k / (stages * pipeline_duration)` (deltas of these counters): the share of
/// stage time, while a forward batch was in the pipeline, that the stages were idle.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Per stage, in order: microseconds the stage spent computing (for a stage in another
    /// process, the compute time its answers reported in `x-maas-compute-us`).
    pub stage_busy_us: Vec<AtomicU64>,
    /// Per stage: microseconds spent on micro-batches in total (for a remote stage, the HTTP
    /// round trips; the difference to busy is the transport).
    pub stage_wall_us: Vec<AtomicU64>,
    /// Microseconds forward batches spent in the pipeline, from cutting the batch to the last
    /// micro-batch's result, summed over forward batches.
    pub duration_us: AtomicU64,
    /// Micro-batches run (each through every stage).
    pub micro_batches: AtomicU64,
}

impl PipelineMetrics {
    /// Zeroed counters for `stages` stages.
    pub fn new(stages: usize) -> PipelineMetrics {
        PipelineMetrics {
            stage_busy_us: (0..stages).map(|_| AtomicU64::new(0)).collect(),
            stage_wall_us: (0..stages).map(|_| AtomicU64::new(0)).collect(),
            duration_us: AtomicU64::new(0),
            micro_batches: AtomicU64::new(0),
        }
    }
}

impl VersionMetrics {
    /// The slot of priority `level` (1..=16; out of range clamps).
    fn level_index(level: u8) -> usize {
        usize::from(level.clamp(1, PRIORITY_LEVELS as u8)) - 1
    }

    /// `delta` requests of priority `level` joined (positive) or left (negative) the queue.
    pub fn queued(&self, level: u8, delta: i64) {
        let i = Self::level_index(level);
        self.queue_duration_by_priority[i].get_or_init(|| Histogram::new(duration_buckets()));
        self.pending_by_priority[i].fetch_add(delta, Ordering::AcqRel);
    }

    /// A request of priority `level` waited `waited` in the queue before its forward pass.
    pub fn observe_queue(&self, level: u8, waited: Duration) {
        let i = Self::level_index(level);
        self.queue_duration_by_priority[i]
            .get_or_init(|| Histogram::new(duration_buckets()))
            .observe(waited.as_secs_f64());
    }

    /// The queue refused a request for `reason`.
    pub fn refuse(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `duration` in whole microseconds to `counter`.
    pub fn add_us(counter: &AtomicU64, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        counter.fetch_add(micros, Ordering::Relaxed);
    }
}

/// The loaded versions at one scrape: `(model, version, metrics)`.
#[derive(Debug)]
struct Versions(Vec<(String, u64, Arc<VersionMetrics>)>);

/// A counter family read from [`VersionMetrics`]; the name is given without `_total` (the
/// encoder adds it).
type CounterRead = fn(&VersionMetrics) -> u64;

const COUNTERS: [(&str, &str, CounterRead); 6] = [
    (
        "maas_inference_request_success",
        "Infer requests answered with success.",
        |m| m.success.load(Ordering::Relaxed),
    ),
    (
        "maas_inference_request_failure",
        "Infer requests that reached the model version and failed.",
        |m| m.failure.load(Ordering::Relaxed),
    ),
    (
        "maas_inference_count",
        "Rows computed (batch dimension summed over requests).",
        |m| m.inference_count.load(Ordering::Relaxed),
    ),
    (
        "maas_inference_exec_count",
        "Forward passes run (batches); inference/exec is the average batch size.",
        |m| m.execution_count.load(Ordering::Relaxed),
    ),
    (
        "maas_inference_queue_duration_us",
        "Microseconds requests waited in the queue, summed over requests.",
        |m| m.queue_us.load(Ordering::Relaxed),
    ),
    (
        "maas_inference_compute_duration_us",
        "Microseconds spent in forward passes, summed over forward passes.",
        |m| m.compute_us.load(Ordering::Relaxed),
    ),
];

type HistogramRead = fn(&VersionMetrics) -> &Histogram;

const HISTOGRAMS: [(&str, &str, HistogramRead); 4] = [
    (
        "maas_inference_request_duration_seconds",
        "Seconds from an infer request reaching the model version to its answer.",
        |m| &m.request_duration,
    ),
    (
        "maas_inference_queue_duration_seconds",
        "Seconds each request waited in the queue before its forward pass.",
        |m| &m.queue_duration,
    ),
    (
        "maas_inference_compute_duration_seconds",
        "Seconds of each forward pass (input to device, forward, output to host).",
        |m| &m.compute_duration,
    ),
    (
        "maas_inference_batch_size",
        "Rows of each forward pass (the batch the dynamic batcher formed).",
        |m| &m.batch_size,
    ),
];

type PipelineRead = fn(&PipelineMetrics) -> &[AtomicU64];

/// `maas_pipeline_*` counter families: name (without `_total`), help, one counter per stage
/// (labelled `stage`) or one in all, and the counters.
const PIPELINE_COUNTERS: [(&str, &str, bool, PipelineRead); 4] = [
    (
        "maas_pipeline_stage_busy_us",
        "Microseconds each pipeline stage spent computing.",
        true,
        |p| &p.stage_busy_us,
    ),
    (
        "maas_pipeline_stage_wall_us",
        "Microseconds each pipeline stage spent on micro-batches, transport included.",
        true,
        |p| &p.stage_wall_us,
    ),
    (
        "maas_pipeline_duration_us",
        "Microseconds forward batches spent in the pipeline.",
        false,
        |p| std::slice::from_ref(&p.duration_us),
    ),
    (
        "maas_pipeline_micro_batch_count",
        "Micro-batches run through the pipeline.",
        false,
        |p| std::slice::from_ref(&p.micro_batches),
    ),
];

impl Versions {
    fn labels(model: &str, version: u64) -> [(&'static str, String); 2] {
        [
            ("model", model.to_string()),
            ("version", version.to_string()),
        ]
    }
}

impl Collector for Versions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, read) in COUNTERS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (model, version, m) in &self.0 {
                let labels = Self::labels(model, *version);
                ConstCounter::new(read(m)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "maas_inference_pending_request_count",
            "Requests queued, not yet handed to a model instance.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (model, version, m) in &self.0 {
            let labels = Self::labels(model, *version);
            ConstGauge::new(m.pending.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "maas_inference_refused",
            "Infer requests the batcher's queue refused, by reason (queue_full, evicted, closed, timeout).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (model, version, m) in &self.0 {
            for reason in Refusal::ALL {
                let [mo, v] = Self::labels(model, *version);
                let labels = [mo, v, ("reason", reason.label().to_string())];
                ConstCounter::new(m.refused[reason as usize].load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "maas_inference_queue_depth",
            "Requests queued, by priority level (the levels requests were queued at).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (model, version, m) in &self.0 {
            for (i, used) in m.queue_duration_by_priority.iter().enumerate() {
                if used.get().is_some() {
                    let [mo, v] = Self::labels(model, *version);
                    let labels = [mo, v, ("priority", (i + 1).to_string())];
                    ConstGauge::new(m.pending_by_priority[i].load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "maas_inference_queue_priority_duration_seconds",
            "Seconds each request waited in the queue before its forward pass, by priority level.",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (model, version, m) in &self.0 {
            for (i, histogram) in m.queue_duration_by_priority.iter().enumerate() {
                if let Some(histogram) = histogram.get() {
                    let [mo, v] = Self::labels(model, *version);
                    let labels = [mo, v, ("priority", (i + 1).to_string())];
                    histogram.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, read) in HISTOGRAMS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for (model, version, m) in &self.0 {
                let labels = Self::labels(model, *version);
                read(m).encode(family.encode_family(&labels)?)?;
            }
        }
        let pipelines: Vec<_> = self
            .0
            .iter()
            .filter_map(|(model, version, m)| Some((model, *version, m.pipeline.get()?)))
            .collect();
        if pipelines.is_empty() {
            return Ok(());
        }
        for (name, help, per_stage, read) in PIPELINE_COUNTERS {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (model, version, p) in &pipelines {
                for (stage, counter) in read(p).iter().enumerate() {
                    let value = ConstCounter::new(counter.load(Ordering::Relaxed));
                    let [m, v] = Self::labels(model, *version);
                    if per_stage {
                        let labels = [m, v, ("stage", stage.to_string())];
                        value.encode(family.encode_family(&labels)?)?;
                    } else {
                        value.encode(family.encode_family(&[m, v])?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The Prometheus text format (0.0.4) for `versions`: `(model, version, metrics)`, in the
/// order given, plus what `extra` adds (process-wide collectors such as device memory).
pub fn render(
    versions: impl IntoIterator<Item = (String, u64, Arc<VersionMetrics>)>,
    extra: Vec<Box<dyn Collector>>,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Versions(versions.into_iter().collect())));
    for collector in extra {
        registry.register_collector(collector);
    }
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a collector.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
    }

    fn value(scrape: &Scrape, name: &str, model: &str, version: &str) -> Option<Value> {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("model") == Some(model)
                    && s.labels.get("version") == Some(version)
            })
            .map(|s| s.value.clone())
    }

    #[test]
    fn renders_series_per_version() {
        let a = Arc::new(VersionMetrics::default());
        a.success.store(3, Ordering::Relaxed);
        a.pending.store(2, Ordering::Relaxed);
        VersionMetrics::add_us(&a.compute_us, Duration::from_millis(2));
        a.request_duration.observe(0.0003);
        a.request_duration.observe(0.2);
        a.batch_size.observe(8.0);
        let b = Arc::new(VersionMetrics::default());
        let text = render(
            [
                ("digits".to_string(), 1, a.clone()),
                ("we\"ird".to_string(), 2, b),
            ],
            Vec::new(),
        );
        let scrape = parse(&text);
        let success = "maas_inference_request_success_total";
        assert!(
            matches!(value(&scrape, success, "digits", "1"), Some(Value::Counter(v)) if v == 3.0)
        );
        assert!(matches!(
            value(&scrape, "maas_inference_compute_duration_us_total", "digits", "1"),
            Some(Value::Counter(v)) if v == 2000.0
        ));
        assert!(matches!(
            value(&scrape, "maas_inference_pending_request_count", "digits", "1"),
            Some(Value::Gauge(v)) if v == 2.0
        ));
        // Label values are escaped (the exposition format's rule for backslash, quote, newline).
        assert!(text.contains(
            "maas_inference_request_success_total{model=\"we\\\"ird\",version=\"2\"} 0\n"
        ));
        let Some(Value::Histogram(buckets)) = value(
            &scrape,
            "maas_inference_request_duration_seconds",
            "digits",
            "1",
        ) else {
            panic!("no request histogram in\n{text}");
        };
        // 19 bounds and +Inf; cumulative: 0.3 ms is under 400 µs, 0.2 s under 0.2048 s.
        assert_eq!(buckets.len(), 20);
        let at = |le: f64| {
            buckets
                .iter()
                .find(|b| (b.less_than - le).abs() < 1e-9)
                .map(|b| b.count)
        };
        assert_eq!(at(0.0002), Some(0.0));
        assert_eq!(at(0.0004), Some(1.0));
        assert_eq!(at(0.2048), Some(2.0));
        assert_eq!(buckets.last().map(|b| b.count), Some(2.0));
        assert!(!text.contains("maas_pipeline"));

        let split = Arc::new(VersionMetrics::default());
        let stages = Arc::new(PipelineMetrics::new(2));
        VersionMetrics::add_us(&stages.stage_busy_us[1], Duration::from_micros(7));
        stages.micro_batches.store(4, Ordering::Relaxed);
        let _ = split.pipeline.set(stages);
        let text = render(
            [
                ("digits".to_string(), 1, a),
                ("split".to_string(), 3, split),
            ],
            Vec::new(),
        );
        let scrape = parse(&text);
        let busy = scrape.samples.iter().find(|s| {
            s.metric == "maas_pipeline_stage_busy_us_total"
                && s.labels.get("model") == Some("split")
                && s.labels.get("stage") == Some("1")
        });
        assert!(matches!(busy.map(|s| &s.value), Some(Value::Counter(v)) if *v == 7.0));
        assert!(matches!(
            value(&scrape, "maas_pipeline_micro_batch_count_total", "split", "3"),
            Some(Value::Counter(v)) if v == 4.0
        ));
        assert!(value(&scrape, "maas_pipeline_duration_us_total", "digits", "1").is_none());
    }
}
