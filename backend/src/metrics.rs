//! Per model version counters and their Prometheus text exposition at `GET /metrics`
//! (format: <https://prometheus.io/docs/instrumenting/exposition_formats/>; the series follow
//! Triton's `nv_inference_*` metrics, renamed `maas_*`).
//!
//! Every series has the labels `model` and `version`. Counters only grow while a version is
//! loaded; a version loaded again starts from zero. A version's `[[warmup]]` requests count in
//! its inference and execution counts (they are real forward passes), not in success.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The counters of one model version. Updated lock-free by the HTTP handlers (success,
/// failure), the batcher (pending) and the instance threads (counts and durations).
#[derive(Debug, Default)]
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
    /// For a model split into pipeline stages (`[pipeline]`), the stages' counters.
    pub pipeline: OnceLock<Arc<PipelineMetrics>>,
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
    /// Adds `duration` in whole microseconds to `counter`.
    pub fn add_us(counter: &AtomicU64, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        counter.fetch_add(micros, Ordering::Relaxed);
    }
}

/// One series family: name, type and help, and how to read it from [`VersionMetrics`].
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&VersionMetrics) -> i64,
}

fn load(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
}

const FAMILIES: [Family; 7] = [
    Family {
        name: "maas_inference_request_success_total",
        kind: "counter",
        help: "Infer requests answered with success.",
        read: |m| load(&m.success),
    },
    Family {
        name: "maas_inference_request_failure_total",
        kind: "counter",
        help: "Infer requests that reached the model version and failed.",
        read: |m| load(&m.failure),
    },
    Family {
        name: "maas_inference_count_total",
        kind: "counter",
        help: "Rows computed (batch dimension summed over requests).",
        read: |m| load(&m.inference_count),
    },
    Family {
        name: "maas_inference_exec_count_total",
        kind: "counter",
        help: "Forward passes run (batches); inference/exec is the average batch size.",
        read: |m| load(&m.execution_count),
    },
    Family {
        name: "maas_inference_queue_duration_us_total",
        kind: "counter",
        help: "Microseconds requests waited in the queue, summed over requests.",
        read: |m| load(&m.queue_us),
    },
    Family {
        name: "maas_inference_compute_duration_us_total",
        kind: "counter",
        help: "Microseconds spent in forward passes, summed over forward passes.",
        read: |m| load(&m.compute_us),
    },
    Family {
        name: "maas_inference_pending_request_count",
        kind: "gauge",
        help: "Requests queued, not yet handed to a model instance.",
        read: |m| m.pending.load(Ordering::Relaxed),
    },
];

/// Renders the Prometheus text format for `versions`: `(model, version, metrics)`, in the
/// order given.
pub fn render<'a>(
    versions: impl IntoIterator<Item = (&'a str, u64, &'a VersionMetrics)>,
) -> String {
    let versions: Vec<_> = versions.into_iter().collect();
    let mut out = String::new();
    for family in &FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (model, version, metrics) in &versions {
            let _ = writeln!(
                out,
                "{}{{model=\"{}\",version=\"{version}\"}} {}",
                family.name,
                escape_label(model),
                (family.read)(metrics)
            );
        }
    }
    render_pipelines(&mut out, &versions);
    out
}

/// One `maas_pipeline_*` family: its counters, one per stage (labelled `stage`) or one in all.
struct PipelineFamily {
    name: &'static str,
    help: &'static str,
    per_stage: bool,
    read: fn(&PipelineMetrics) -> &[AtomicU64],
}

const PIPELINE_FAMILIES: [PipelineFamily; 4] = [
    PipelineFamily {
        name: "maas_pipeline_stage_busy_us_total",
        help: "Microseconds each pipeline stage spent computing.",
        per_stage: true,
        read: |p| &p.stage_busy_us,
    },
    PipelineFamily {
        name: "maas_pipeline_stage_wall_us_total",
        help: "Microseconds each pipeline stage spent on micro-batches, transport included.",
        per_stage: true,
        read: |p| &p.stage_wall_us,
    },
    PipelineFamily {
        name: "maas_pipeline_duration_us_total",
        help: "Microseconds forward batches spent in the pipeline.",
        per_stage: false,
        read: |p| std::slice::from_ref(&p.duration_us),
    },
    PipelineFamily {
        name: "maas_pipeline_micro_batch_count_total",
        help: "Micro-batches run through the pipeline.",
        per_stage: false,
        read: |p| std::slice::from_ref(&p.micro_batches),
    },
];

/// The `maas_pipeline_*` series of the versions split into stages (none without any).
fn render_pipelines(out: &mut String, versions: &[(&str, u64, &VersionMetrics)]) {
    let pipelines: Vec<_> = versions
        .iter()
        .filter_map(|(model, version, m)| Some((escape_label(model), version, m.pipeline.get()?)))
        .collect();
    if pipelines.is_empty() {
        return;
    }
    for family in &PIPELINE_FAMILIES {
        let name = family.name;
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", family.help);
        for (model, version, p) in &pipelines {
            for (stage, counter) in (family.read)(p).iter().enumerate() {
                let stage = if family.per_stage {
                    format!(",stage=\"{stage}\"")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{name}{{model=\"{model}\",version=\"{version}\"{stage}}} {}",
                    load(counter)
                );
            }
        }
    }
}

/// Escapes a label value: backslash, double quote and newline (exposition format rules).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_per_version() {
        let a = VersionMetrics::default();
        a.success.store(3, Ordering::Relaxed);
        a.pending.store(2, Ordering::Relaxed);
        VersionMetrics::add_us(&a.compute_us, Duration::from_millis(2));
        let b = VersionMetrics::default();
        let text = render([("digits", 1, &a), ("we\"ird", 2, &b)]);
        assert!(text.contains("# TYPE maas_inference_request_success_total counter\n"));
        assert!(text
            .contains("maas_inference_request_success_total{model=\"digits\",version=\"1\"} 3\n"));
        assert!(text.contains(
            "maas_inference_compute_duration_us_total{model=\"digits\",version=\"1\"} 2000\n"
        ));
        assert!(text
            .contains("maas_inference_pending_request_count{model=\"digits\",version=\"1\"} 2\n"));
        assert!(text.contains("model=\"we\\\"ird\",version=\"2\"} 0\n"));
        assert!(!text.contains("maas_pipeline"));

        let split = VersionMetrics::default();
        let stages = Arc::new(PipelineMetrics::new(2));
        VersionMetrics::add_us(&stages.stage_busy_us[1], Duration::from_micros(7));
        stages.micro_batches.store(4, Ordering::Relaxed);
        let _ = split.pipeline.set(stages);
        let text = render([("digits", 1, &a), ("split", 3, &split)]);
        assert!(text.contains(
            "maas_pipeline_stage_busy_us_total{model=\"split\",version=\"3\",stage=\"1\"} 7\n"
        ));
        assert!(text
            .contains("maas_pipeline_micro_batch_count_total{model=\"split\",version=\"3\"} 4\n"));
        assert!(!text.contains("maas_pipeline_duration_us_total{model=\"digits\""));
    }
}
