//! `[upstream]`: the backends requests are forwarded to.

use serde::{Deserialize, Serialize};

/// `[upstream]`: the backends (OIP v2 inference servers) requests are forwarded to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// `host:port` of each backend, plain HTTP: the pool `default`, which routes every model to
    /// every backend (policy p2c, default health checks and ejection), when no `[[pools]]` is
    /// given; a connection failure is retried once on another backend. Default
    /// `["127.0.0.1:8001"]`.
    pub backends: Vec<String>,
    /// TCP connect timeout to a backend, milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
    /// The secret sent to the backends in `x-maas-gateway-secret` (their `--gateway-secret`),
    /// which makes them honour the tenant's fairness key in their batchers. Default empty: no
    /// fairness headers are sent (every tenant shares one queue per model version).
    /// Env `MAAS_GATEWAY_UPSTREAM__GATEWAY_SECRET`.
    pub gateway_secret: String,
    /// The HMAC-SHA256 key of the fairness keys (a tenant's key is the HMAC of its id), known
    /// to the gateway only, so a backend cannot tell which tenant a key belongs to. Default
    /// empty: no fairness headers.
    pub fairness_hmac_key: String,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            backends: vec!["127.0.0.1:8001".into()],
            connect_timeout_ms: 1000,
            gateway_secret: String::new(),
            fairness_hmac_key: String::new(),
        }
    }
}
