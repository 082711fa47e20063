//! Per-request series: requests by model, status class and outcome, and the latency
//! histograms (total, the gateway's own time, upstream time).

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::outcome::{Outcome, StatusClass};

/// Bucket upper bounds of the latency histograms, seconds: 50 µs doubling to 13.1 s (19
/// buckets), so that both the gateway's own overhead (tens of µs) and a slow model resolve.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 19)
}

/// The labels of `maas_gateway_requests_total`. Tenant and key are never labels (unbounded).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    status_class: StatusClass,
    outcome: Outcome,
}

/// The `model` label of the latency histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// What one finished request contributes to the metrics.
#[derive(Debug, Clone, Copy)]
pub struct RequestObservation<'a> {
    /// The model the path named (`None`: no model route).
    pub model: Option<&'a str>,
    /// The status the client got (0: none).
    pub status: u16,
    /// What became of the request.
    pub outcome: Outcome,
    /// From the request header read to the request done (logging phase).
    pub total: Duration,
    /// Time spent in the gateway itself: routing, authentication, limits and metering.
    pub overhead: Duration,
    /// From choosing a backend to the end of its response, for forwarded requests.
    pub upstream: Option<Duration>,
}

/// The per-request families, registered in the gateway's registry.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    total: Family<ModelLabel, Histogram, fn() -> Histogram>,
    overhead: Histogram,
    upstream: Family<ModelLabel, Histogram, fn() -> Histogram>,
    models: RwLock<HashSet<String>>,
    max_models: usize,
}

impl RequestMetrics {
    /// The families, registered in `registry`; at most `max_models` distinct model labels.
    pub fn new(registry: &mut Registry, max_models: usize) -> RequestMetrics {
        let m = RequestMetrics {
            requests: Family::default(),
            total: Family::new_with_constructor(new_latency_histogram),
            overhead: new_latency_histogram(),
            upstream: Family::new_with_constructor(new_latency_histogram),
            models: RwLock::new(HashSet::new()),
            max_models,
        };
        registry.register(
            "maas_gateway_requests",
            "Requests by model, status class and outcome",
            m.requests.clone(),
        );
        registry.register(
            "maas_gateway_request_duration_seconds",
            "Seconds from the request header read to the request done",
            m.total.clone(),
        );
        registry.register(
            "maas_gateway_overhead_duration_seconds",
            "Seconds each request spent in the gateway itself (routing, authentication, limits, metering)",
            m.overhead.clone(),
        );
        registry.register(
            "maas_gateway_upstream_duration_seconds",
            "Seconds from choosing a backend to the end of its response, per forwarded request",
            m.upstream.clone(),
        );
        m
    }

    /// The `model` label for `model`: `""` without one, `"other"` past `max_models` names.
    fn model_label(&self, model: Option<&str>) -> String {
        let Some(model) = model else {
            return String::new();
        };
        let known = self.models.read().unwrap_or_else(|p| p.into_inner());
        if known.contains(model) {
            return model.to_string();
        }
        let full = known.len() >= self.max_models;
        drop(known);
        if full {
            return "other".to_string();
        }
        let mut known = self.models.write().unwrap_or_else(|p| p.into_inner());
        if known.len() >= self.max_models {
            return "other".to_string();
        }
        known.insert(model.to_string());
        model.to_string()
    }

    /// Count one finished request.
    pub fn observe(&self, o: &RequestObservation<'_>) {
        let model = self.model_label(o.model);
        self.requests
            .get_or_create(&RequestLabels {
                model: model.clone(),
                status_class: StatusClass::of(o.status),
                outcome: o.outcome,
            })
            .inc();
        let label = ModelLabel { model };
        self.total
            .get_or_create(&label)
            .observe(o.total.as_secs_f64());
        self.overhead.observe(o.overhead.as_secs_f64());
        if let Some(upstream) = o.upstream {
            self.upstream
                .get_or_create(&label)
                .observe(upstream.as_secs_f64());
        }
    }
}
