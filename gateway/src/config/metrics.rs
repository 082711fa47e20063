//! `[metrics]`: the Prometheus metrics listener, and the access log.

use serde::{Deserialize, Serialize};

/// `[metrics]`: Prometheus metrics at `GET /metrics` on their own listener (no credential:
/// bind it to loopback or a private network, like the admin listener).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Collect per-request metrics and serve them. Default true; false: no listener and no
    /// per-request work (the benchmark's baseline).
    pub enabled: bool,
    /// Address the metrics listener binds, `host:port`. Default `127.0.0.1:9464`.
    pub listen: String,
    /// At most this many distinct `model` label values (the model named in the path); further
    /// models are counted under `model="other"`, so clients cannot grow the series without
    /// bound. Default 100.
    pub max_models: usize,
    /// One line per request on stdout: `off` (default) or `json` (request id, trace id,
    /// tenant, key id, model, status, outcome, latencies).
    pub access_log: AccessLogFormat,
}

/// The access log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log (requests still reach the debug log).
    Off,
    /// One JSON object per line on stdout.
    Json,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
            max_models: 100,
            access_log: AccessLogFormat::Off,
        }
    }
}
