//! Per-request series: requests by model, status class and outcome, and the latency
//! histograms (total, the gateway's own time, upstream time).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
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

/// One `model` label's series, resolved once (a handle shares its family's value): the request
/// counters by outcome and status class, created on first use, and the two histograms.
#[derive(Debug)]
struct ModelSeries {
    model: String,
    requests: [[OnceLock<Counter>; StatusClass::COUNT]; Outcome::COUNT],
    total: Histogram,
    upstream: Histogram,
}

/// The per-request families, registered in the gateway's registry.
#[derive(Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    total: Family<ModelLabel, Histogram, fn() -> Histogram>,
    overhead: Histogram,
    upstream: Family<ModelLabel, Histogram, fn() -> Histogram>,
    /// The series of each `model` label seen, so a request costs one map lookup by `&str`.
    series: RwLock<HashMap<String, Arc<ModelSeries>>>,
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
            series: RwLock::new(HashMap::new()),
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

    fn new_series(&self, model: &str) -> ModelSeries {
        let label = ModelLabel {
            model: model.to_string(),
        };
        ModelSeries {
            model: model.to_string(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            total: (*self.total.get_or_create(&label)).clone(),
            upstream: (*self.upstream.get_or_create(&label)).clone(),
        }
    }

    /// The series of `model`'s label: `""` without one, `"other"` past `max_models` names.
    fn model_series(&self, model: Option<&str>) -> Arc<ModelSeries> {
        let model = model.unwrap_or("");
        let known = self.series.read().unwrap_or_else(|p| p.into_inner());
        if let Some(series) = known.get(model) {
            return series.clone();
        }
        // "" and "other" do not count against max_models.
        let named = known
            .keys()
            .filter(|k| !k.is_empty() && *k != "other")
            .count();
        drop(known);
        let model = if model.is_empty() || named < self.max_models {
            model
        } else {
            "other"
        };
        let mut known = self.series.write().unwrap_or_else(|p| p.into_inner());
        known
            .entry(model.to_string())
            .or_insert_with(|| Arc::new(self.new_series(model)))
            .clone()
    }

    /// Count one finished request.
    pub fn observe(&self, o: &RequestObservation<'_>) {
        let series = self.model_series(o.model);
        let class = StatusClass::of(o.status);
        series.requests[o.outcome.index()][class.index()]
            .get_or_init(|| {
                (*self.requests.get_or_create(&RequestLabels {
                    model: series.model.clone(),
                    status_class: class,
                    outcome: o.outcome,
                }))
                .clone()
            })
            .inc();
        series.total.observe(o.total.as_secs_f64());
        self.overhead.observe(o.overhead.as_secs_f64());
        if let Some(upstream) = o.upstream {
            series.upstream.observe(upstream.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_capped() {
        let mut registry = Registry::default();
        let m = RequestMetrics::new(&mut registry, 2);
        for model in [Some("a"), Some("b"), Some("c"), Some("d"), None, Some("a")] {
            m.observe(&RequestObservation {
                model,
                status: 200,
                outcome: Outcome::Ok,
                total: Duration::from_micros(100),
                overhead: Duration::from_micros(10),
                upstream: Some(Duration::from_micros(90)),
            });
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let count = |model: &str| {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == "maas_gateway_requests_total"
                        && s.labels.get("model") == Some(model)
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) => v,
                    _ => f64::NAN,
                })
        };
        assert_eq!(count("a"), Some(2.0));
        assert_eq!(count("b"), Some(1.0));
        assert_eq!(count("other"), Some(2.0));
        assert_eq!(count(""), Some(1.0));
        assert_eq!(count("c"), None);
    }
}
