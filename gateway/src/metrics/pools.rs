//! Scrape-time series of the backend pools, read from their [`PoolSnapshot`]s: health,
//! passive ejection, requests in flight and sent, ejections, READY models, per pool and backend.
//!
//! The labels are `pool` (its configured name) and `backend` (the `ip:port` requests go to):
//! both are bounded by the configuration (and the DNS answers of its names), never by clients.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::pools::{BackendSnapshot, Pools};

/// The collector of the pools' state (`maas_gateway_backend_*`).
pub struct PoolState {
    /// The gateway's pools.
    pub pools: Arc<Pools>,
}

impl std::fmt::Debug for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolState").finish_non_exhaustive()
    }
}

/// One family of backend series: name, help, type, and how a backend's value is read.
type BackendFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&BackendSnapshot) -> u64,
);

/// One family: `value` of each backend of each pool.
fn family(
    encoder: &mut DescriptorEncoder,
    snapshot: &[crate::pools::PoolSnapshot],
    (name, help, kind): (&str, &str, MetricType),
    value: impl Fn(&BackendSnapshot) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for pool in snapshot {
        for backend in &pool.backends {
            let labels = [
                ("pool", pool.name.as_str()),
                ("backend", backend.address.as_str()),
            ];
            let v = value(backend);
            match kind {
                MetricType::Counter => {
                    ConstCounter::new(v).encode(family.encode_family(&labels)?)?
                }
                _ => ConstGauge::new(v as i64).encode(family.encode_family(&labels)?)?,
            }
        }
    }
    Ok(())
}

impl Collector for PoolState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.pools.snapshot();
        let families: [BackendFamily; 6] = [
            (
                "maas_gateway_backend_healthy",
                "1 while the backend passes the active health check (GET /v2/health/ready), else 0",
                MetricType::Gauge,
                |b| u64::from(b.healthy),
            ),
            (
                "maas_gateway_backend_ejected",
                "1 while the backend is passively ejected (cool-down after consecutive failures)",
                MetricType::Gauge,
                |b| u64::from(b.ejected_for_ms.is_some()),
            ),
            (
                "maas_gateway_backend_in_flight",
                "Requests in flight to the backend through this gateway",
                MetricType::Gauge,
                |b| b.in_flight as u64,
            ),
            (
                "maas_gateway_backend_ready_models",
                "Models the backend's last repository index read reported READY",
                MetricType::Gauge,
                |b| b.models.as_ref().map_or(0, |m| m.len() as u64),
            ),
            (
                "maas_gateway_backend_requests",
                "Requests (tries, retries included) sent to the backend through this gateway",
                MetricType::Counter,
                |b| b.requests,
            ),
            (
                "maas_gateway_backend_ejections",
                "Passive ejections of the backend since the gateway started",
                MetricType::Counter,
                |b| b.ejections,
            ),
        ];
        for (name, help, kind, value) in families {
            family(&mut encoder, &snapshot, (name, help, kind), value)?;
        }
        Ok(())
    }
}
