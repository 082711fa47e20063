//! `[limits]`: how the limiter decides (the rules themselves are in PostgreSQL).

use serde::{Deserialize, Serialize};

/// Where the limiter keeps its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// In process (governor): one gateway, no Redis.
    Local,
    /// Redis, shared by every gateway instance (needs `redis_url`).
    Redis,
}

/// What the `redis` backend does when Redis fails or is too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailurePolicy {
    /// Decide locally with every limit divided by `gateway_instances` (quotas and budgets are
    /// not enforced meanwhile).
    Open,
    /// Answer 503.
    Closed,
}

/// `[limits]`: admission control ((`limits::limiter`)); the rules themselves are in PostgreSQL
/// (`rate_limits`, set through the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// `local` (default) or `redis`.
    pub backend: LimiterBackend,
    /// Timeout of one Redis call on the request path, milliseconds. Default 20.
    pub redis_timeout_ms: u64,
    /// `open` (default) or `closed`.
    pub on_redis_failure: RedisFailurePolicy,
    /// Gateways sharing the limits; fail-open divides every limit by it. Default 1.
    pub gateway_instances: u32,
    /// After a Redis failure, Redis is not tried again for this many milliseconds. Default 1000.
    pub redis_retry_ms: u64,
    /// A concurrency slot whose gateway never released it (crash) expires after this many
    /// seconds; keep it above the longest request. Default 300.
    pub concurrency_lease_s: i64,
    /// Inference units reserved per request at admission against quotas and budgets, settled
    /// with the real count after the response. Default 1.
    pub quota_estimate_units: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimiterBackend::Local,
            redis_timeout_ms: 20,
            on_redis_failure: RedisFailurePolicy::Open,
            gateway_instances: 1,
            redis_retry_ms: 1000,
            concurrency_lease_s: 300,
            quota_estimate_units: 1,
        }
    }
}
