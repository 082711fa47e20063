//! Scrape-time series read from the state the gateway keeps anyway (the limiter's, the
//! metering pipeline's and the authenticator's counters), so they cost the request path
//! nothing beyond the atomics already there.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::auth::Authenticator;
use crate::config::LimiterBackend;
use crate::limits::{Decision, Limiter};
use crate::metering::{MeteringStats, Spool};

/// What the gateway's state collector reads at each scrape.
pub struct GatewayState {
    /// The rate limiter (decisions, Redis calls, fallbacks).
    pub limiter: Limiter,
    /// The usage spool (bytes on disk).
    pub spool: Arc<Spool>,
    /// The metering pipeline's counters (writer batches, rows, errors, drops).
    pub metering: Arc<MeteringStats>,
    /// The authenticator (cache lookups, JWK Set fetches).
    pub auth: Arc<Authenticator>,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl GatewayState {
    fn encode_limiter(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.limiter.stats();
        let mut family = encoder.encode_descriptor(
            "maas_gateway_limiter_decisions",
            "Admission decisions by limiter backend (local, redis) and result",
            None,
            MetricType::Counter,
        )?;
        for (backend, name) in [
            (LimiterBackend::Local, "local"),
            (LimiterBackend::Redis, "redis"),
        ] {
            for decision in Decision::ALL {
                let labels = [("backend", name), ("result", decision.as_str())];
                ConstCounter::new(stats.decisions(backend, decision))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        stats.redis_call_seconds.encode(encoder.encode_descriptor(
            "maas_gateway_limiter_redis_call_duration_seconds",
            "Seconds of each admission script call to Redis (round trip, failures included)",
            None,
            MetricType::Histogram,
        )?)?;
        counter(
            encoder,
            "maas_gateway_limiter_redis_errors",
            "Redis calls of the limiter that failed or timed out",
            stats.redis_errors.load(Relaxed),
        )?;
        let mut family = encoder.encode_descriptor(
            "maas_gateway_limiter_fallbacks",
            "Requests decided without Redis after it failed, by policy (open: local limiter; closed: 503)",
            None,
            MetricType::Counter,
        )?;
        for (policy, value) in [
            ("open", stats.fail_open.load(Relaxed)),
            ("closed", stats.fail_closed.load(Relaxed)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&[("policy", policy)])?)?;
        }
        counter(
            encoder,
            "maas_gateway_limiter_cached_denials",
            "Requests refused from the cache of counters Redis refused, without a Redis call",
            stats.cached_denials.load(Relaxed),
        )?;
        gauge(
            encoder,
            "maas_gateway_limiter_redis_down",
            "1 while Redis is not tried after a failure (the limiter is in its fallback), else 0",
            if self.limiter.redis_down() { 1.0 } else { 0.0 },
        )
    }

    fn encode_metering(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metering;
        gauge(
            encoder,
            "maas_gateway_spool_bytes",
            "Bytes in the usage spool's segment files (not yet trimmed after writing)",
            self.spool.stats().bytes.load(Relaxed) as f64,
        )?;
        let pending = m
            .sent
            .load(Relaxed)
            .saturating_sub(m.committed.load(Relaxed));
        gauge(
            encoder,
            "maas_gateway_spool_pending_events",
            "Usage events this process spooled and has not yet written to PostgreSQL",
            pending as f64,
        )?;
        let oldest = m.writing_oldest_unix_us.load(Relaxed);
        let age = if oldest > 0 {
            let now = chrono::Utc::now().timestamp_micros();
            (now - oldest).max(0) as f64 / 1e6
        } else {
            0.0
        };
        gauge(
            encoder,
            "maas_gateway_spool_oldest_unwritten_age_seconds",
            "Age of the oldest event of the batch being written (0 while the writer is idle)",
            age,
        )?;
        for (name, help, value) in [
            (
                "maas_gateway_usage_batches",
                "Usage batches the writer committed to PostgreSQL",
                m.batches.load(Relaxed),
            ),
            (
                "maas_gateway_usage_rows_written",
                "Usage rows inserted in PostgreSQL (duplicates excluded)",
                m.inserted.load(Relaxed),
            ),
            (
                "maas_gateway_usage_write_errors",
                "Failed insert attempts of the usage writer (each is retried)",
                m.failed_attempts.load(Relaxed),
            ),
            (
                "maas_gateway_usage_rows_rejected",
                "Usage events PostgreSQL refused for their data (skipped and logged)",
                m.rejected.load(Relaxed),
            ),
            (
                "maas_gateway_usage_events_dropped",
                "Usage events not metered (spool full under spool_full = serve, or a failed spool write)",
                m.dropped.load(Relaxed),
            ),
            (
                "maas_gateway_usage_requests_refused",
                "Requests answered 503 because the usage spool was full (spool_full = reject)",
                m.refused.load(Relaxed),
            ),
        ] {
            counter(encoder, name, help, value)?;
        }
        Ok(())
    }

    fn encode_auth(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "maas_gateway_auth_cache_lookups",
            "Lookups of the authenticator's caches by cache (api_key, tenant) and result (hit, miss)",
            None,
            MetricType::Counter,
        )?;
        for (cache, (hits, misses)) in self.auth.cache_lookups() {
            for (result, value) in [("hit", hits), ("miss", misses)] {
                let labels = [("cache", cache), ("result", result)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        let jwt = self.auth.jwt();
        counter(
            encoder,
            "maas_gateway_jwks_fetches",
            "Times the JWK Set was fetched or re-read",
            jwt.map_or(0, |j| j.jwks_fetches()),
        )?;
        counter(
            encoder,
            "maas_gateway_jwks_fetch_failures",
            "JWK Set fetches or reads that failed (the previous keys were kept)",
            jwt.map_or(0, |j| j.jwks_failures()),
        )
    }
}

impl Collector for GatewayState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_limiter(&mut encoder)?;
        self.encode_metering(&mut encoder)?;
        self.encode_auth(&mut encoder)
    }
}
