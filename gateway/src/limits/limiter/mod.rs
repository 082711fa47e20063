//! Admission control: request rates (GCRA), concurrent requests, monthly quotas and budgets,
//! decided together for every limit that applies to a request ((`limits`)).
//!
//! Two backends, chosen by `[limits] backend`:
//! - `redis`: one Lua script per request (`admit.lua`, see the `redis` module) checks every limit and, only if all
//!   pass, consumes from all of them, atomically (Redis runs scripts one at a time), with Redis's
//!   own clock (`TIME`), so any number of gateway instances share exact counters. The rate limit
//!   is GCRA as in redis-cell: one key per counter holding the theoretical arrival time (TAT).
//!   Concurrency slots are leases in a sorted set (member: request id, score: lease expiry), so a
//!   gateway that dies cannot leak slots for longer than `concurrency_lease_s`. Monthly quota and
//!   budget counters are keyed by UTC month, reserved at admission with an estimate and settled
//!   with the real usage after the response; a missing counter (Redis restarted, new month) is
//!   rebuilt from PostgreSQL's `usage_hourly` before the script runs again. Releases (slots
//!   freed, reservations settled) wait in process per tenant and ride on the tenant's next
//!   script call, or go in one pipeline within 2 ms (the `release` module): one Redis call
//!   per admitted request in all. Each tokio runtime calling Redis has its own connection.
//! - `local`: governor's in-process GCRA and in-process counters, for a single gateway without
//!   Redis.
//!
//! A counter refused by Redis is remembered in process until its reset instant, so a client
//! flooding past its limit is answered 429 without reaching Redis. Every Redis call has a
//! timeout (`redis_timeout_ms`, default 20 ms); on failure `on_redis_failure` decides:
//! `open` falls back to the local limiter with every limit divided by `gateway_instances`
//! (quotas and budgets are not enforced meanwhile; usage is still metered), `closed` answers
//! 503. After a failure Redis is not tried again for `redis_retry_ms`; recovery is automatic.

mod connection;
mod headers;
mod local;
mod monthly;
mod plan;
mod redis;
mod release;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use governor::clock::DefaultClock;
use maas_billing::plans::ModelPrice;
use maas_billing::Period;
use sqlx::PgPool;
use uuid::Uuid;

use self::headers::{denial, rate_limit_headers};
use self::local::LocalState;
use self::plan::{plan, Item, Kind};
use self::redis::{RedisOutcome, Refusal, ADMIT_LUA};
use self::release::{PendingReleases, Release, ReleaseOp};
use crate::config::{LimiterBackend, LimitsConfig, RedisFailurePolicy};
use crate::limits::rules::RequestLimits;
pub use connection::{RedisConnection, RedisEndpoint};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The message for `{"error": ...}`.
    pub message: String,
    /// Seconds for `Retry-After` (at least 1).
    pub retry_after_s: u64,
    /// `RateLimit-Policy` and `RateLimit` values for the refusing limit.
    pub headers: Option<(String, String)>,
    /// Which kind of limit refused.
    pub limit: LimitKind,
}

/// The kind of limit that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// A request rate (GCRA).
    Rate,
    /// Requests in flight.
    Concurrency,
    /// Inference units per calendar month.
    Quota,
    /// List-price value per calendar month.
    Budget,
}

/// A decision of [`Limiter::admit`] as its counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted.
    Admitted,
    /// Refused (429).
    Denied,
    /// Redis failed under fail-closed (503).
    Unavailable,
}

impl Decision {
    /// Every decision, in the order of [`LimiterStats::decisions`].
    pub const ALL: [Decision; 3] = [Decision::Admitted, Decision::Denied, Decision::Unavailable];

    /// The label value: `admitted`, `denied`, `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Admitted => "admitted",
            Decision::Denied => "denied",
            Decision::Unavailable => "unavailable",
        }
    }
}

/// What a request takes from monthly quotas and budgets, reserved at admission and settled
/// with the real usage in [`Limiter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// An inference call declaring `rows` rows (the first dimension of its inputs' shapes;
    /// `None`: not known before it runs, `limits.quota_estimate_units` is reserved).
    Inference {
        /// Declared rows.
        rows: Option<u64>,
    },
    /// A call that is never billed (metadata, readiness, index): rates and concurrency apply,
    /// nothing is reserved from quotas and budgets.
    Unbilled,
}

/// The outcome of [`Limiter::admit`].
#[derive(Debug)]
pub enum Admission {
    /// No limit applies.
    Unlimited,
    /// Admitted: keep the permit until the request is done, then [`Limiter::finish`] it.
    Admitted(Permit),
    /// Refused with 429.
    Denied(Denial),
    /// Redis failed and the policy is fail-closed: 503.
    Unavailable,
}

/// An admitted request's reservations: concurrency slots to release and quota and budget
/// reservations to settle. Released (with the reservations kept as they are) if dropped
/// unfinished.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    request_id: String,
    items: Vec<Item>,
    /// Whether the local limiter admitted it (Redis otherwise).
    local: bool,
    /// `RateLimit-Policy` and `RateLimit` header values.
    pub headers: Option<(String, String)>,
    finished: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let inner = self.inner.clone();
            let (id, items, local) = (
                std::mem::take(&mut self.request_id),
                std::mem::take(&mut self.items),
                self.local,
            );
            inner.release(id, items, local, None);
        }
    }
}

/// Counters kept by the limiter for metrics, logs and tests.
#[derive(Debug)]
pub struct LimiterStats {
    /// Decisions by backend (0: local, 1: Redis) and [`Decision`] (in [`Decision::ALL`]
    /// order). A fail-open decision counts as local.
    pub decisions: [[AtomicU64; 3]; 2],
    /// Seconds of each admission script call to Redis (`EVALSHA`, round trip), failed ones
    /// included.
    pub redis_call_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Decisions made by the local limiter because Redis failed (fail-open).
    pub fail_open: AtomicU64,
    /// Requests answered 503 because Redis failed (fail-closed).
    pub fail_closed: AtomicU64,
    /// Redis calls that failed or timed out.
    pub redis_errors: AtomicU64,
    /// Requests refused from the local cache of refusing counters, without a Redis call.
    pub cached_denials: AtomicU64,
}

impl Default for LimiterStats {
    fn default() -> Self {
        LimiterStats {
            decisions: Default::default(),
            // 25 µs doubling to 0.8 s: a loopback round trip is about 55 µs, the timeout 20 ms.
            redis_call_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(25e-6, 2.0, 16),
            ),
            fail_open: AtomicU64::new(0),
            fail_closed: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            cached_denials: AtomicU64::new(0),
        }
    }
}

impl LimiterStats {
    /// Decisions so far by `backend` and `decision`.
    pub fn decisions(&self, backend: LimiterBackend, decision: Decision) -> u64 {
        let b = usize::from(backend == LimiterBackend::Redis);
        let d = Decision::ALL
            .iter()
            .position(|x| *x == decision)
            .unwrap_or(0);
        self.decisions[b][d].load(Ordering::Relaxed)
    }

    fn count(&self, backend: LimiterBackend, admission: &Admission) {
        let d = match admission {
            Admission::Unlimited => return,
            Admission::Admitted(_) => 0,
            Admission::Denied(_) => 1,
            Admission::Unavailable => 2,
        };
        let b = usize::from(backend == LimiterBackend::Redis);
        self.decisions[b][d].fetch_add(1, Ordering::Relaxed);
    }
}

struct Inner {
    config: LimitsConfig,
    redis: Option<RedisEndpoint>,
    /// One connection per tokio runtime that calls Redis (see [`Inner::connection`]).
    conns: Mutex<Vec<(tokio::runtime::Id, RedisConnection)>>,
    /// Releases of finished requests waiting to go to Redis (`release` module).
    pending: Mutex<PendingReleases>,
    /// Held while connecting, so that one task connects and the others wait (bounded).
    connecting: tokio::sync::Mutex<()>,
    /// Redis is not tried before this instant (after a failure).
    redis_down_until: Mutex<Option<Instant>>,
    /// Item keys refused by Redis, until their reset instant.
    refused: Mutex<HashMap<String, Refusal>>,
    local: Mutex<LocalState>,
    script: ::redis::Script,
    clock: DefaultClock,
    stats: LimiterStats,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// The limiter; cheap to clone.
#[derive(Clone, Debug)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl Limiter {
    /// A limiter for `config`; `redis` is required by the `redis` backend.
    ///
    /// # Errors
    /// The `redis` backend without a Redis URL.
    pub fn new(config: &LimitsConfig, redis: Option<RedisEndpoint>) -> anyhow::Result<Self> {
        if config.backend == LimiterBackend::Redis && redis.is_none() {
            anyhow::bail!("limits.backend = \"redis\" needs redis_url (or REDIS_URL)");
        }
        Ok(Limiter {
            inner: Arc::new(Inner {
                config: config.clone(),
                redis: match config.backend {
                    LimiterBackend::Redis => redis,
                    LimiterBackend::Local => None,
                },
                conns: Mutex::new(Vec::new()),
                pending: Mutex::new(PendingReleases::default()),
                connecting: tokio::sync::Mutex::new(()),
                redis_down_until: Mutex::new(None),
                refused: Mutex::new(HashMap::new()),
                local: Mutex::new(LocalState::default()),
                script: ::redis::Script::new(ADMIT_LUA),
                clock: DefaultClock::default(),
                stats: LimiterStats::default(),
            }),
        })
    }

    /// Connect to Redis now (the `redis` backend) from the calling runtime, so that an
    /// unreachable Redis is logged at start. Each runtime that admits requests makes its own
    /// connection on its first call (see the `redis` module).
    pub async fn warm_up(&self) {
        if self.inner.redis.is_some() {
            let _ = self.inner.connection().await;
        }
    }

    /// The limiter's counters.
    pub fn stats(&self) -> &LimiterStats {
        &self.inner.stats
    }

    /// Whether Redis is configured and currently not tried after a failure (the limiter is in
    /// its fallback: fail-open or fail-closed).
    pub fn redis_down(&self) -> bool {
        self.inner.redis.is_some() && !self.inner.redis_available()
    }

    /// Forget the cached refusals of `tenant_id`'s counters (its limits changed), its keys'
    /// own counters included.
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        lock(&self.inner.refused).retain(|_, r| r.tenant != tenant_id);
    }

    /// Forget every cached refusal.
    pub fn invalidate_all(&self) {
        lock(&self.inner.refused).clear();
    }

    /// Decide whether request `request_id` under `limits`, taking `demand` from quotas and
    /// budgets, may go ahead, consuming from every limit only if all allow it (one decision:
    /// one Redis script call). `pool` rebuilds missing monthly counters.
    pub async fn admit(
        &self,
        pool: &PgPool,
        request_id: Uuid,
        limits: &RequestLimits,
        demand: Demand,
    ) -> Admission {
        let (admission, backend) = self.decide(pool, request_id, limits, demand).await;
        self.inner.stats.count(backend, &admission);
        admission
    }

    /// [`Limiter::admit`]'s decision and the backend that made it.
    async fn decide(
        &self,
        pool: &PgPool,
        request_id: Uuid,
        limits: &RequestLimits,
        demand: Demand,
    ) -> (Admission, LimiterBackend) {
        use LimiterBackend::{Local, Redis};
        if limits.is_empty() {
            return (Admission::Unlimited, Local);
        }
        let now = Utc::now();
        let items = plan(limits, &self.inner.config, Period::of(now), demand);
        if items.is_empty() {
            return (Admission::Unlimited, Local);
        }
        let request_id = request_id.to_string();
        if self.inner.redis.is_none() {
            let admission = self
                .inner
                .admit_local(pool, request_id, items, 1, true)
                .await;
            return (admission, Local);
        }
        // A counter that Redis refused, until its reset: refused here, without Redis.
        if let Some(denial) = self.inner.cached_refusal(&items) {
            self.inner
                .stats
                .cached_denials
                .fetch_add(1, Ordering::Relaxed);
            return (Admission::Denied(denial), Redis);
        }
        let admission = match self.inner.admit_redis(pool, &request_id, &items).await {
            Ok(RedisOutcome::Admitted(values)) => {
                let headers = rate_limit_headers(&items, &values, now);
                Admission::Admitted(Permit {
                    inner: self.inner.clone(),
                    request_id,
                    items,
                    local: false,
                    headers,
                    finished: false,
                })
            }
            Ok(RedisOutcome::Refused(i, wait_us)) => {
                let denial = denial(&items[i], wait_us, now);
                if !matches!(items[i].kind, Kind::Concurrency { .. }) {
                    let until = Instant::now() + Duration::from_micros(wait_us.max(0) as u64);
                    let until = match items[i].kind {
                        // Quotas and budgets can be raised or settled down: recheck each second.
                        Kind::Quota { .. } | Kind::Budget { .. } => {
                            Instant::now() + Duration::from_secs(1)
                        }
                        _ => until,
                    };
                    self.inner
                        .remember_refusal(&items[i], until, denial.clone());
                }
                Admission::Denied(denial)
            }
            Ok(RedisOutcome::Rebuild) | Err(_) => match self.inner.config.on_redis_failure {
                RedisFailurePolicy::Open => {
                    self.inner.stats.fail_open.fetch_add(1, Ordering::Relaxed);
                    let instances = i64::from(self.inner.config.gateway_instances.max(1));
                    let admission = self
                        .inner
                        .admit_local(pool, request_id, items, instances, false)
                        .await;
                    return (admission, Local);
                }
                RedisFailurePolicy::Closed => {
                    self.inner.stats.fail_closed.fetch_add(1, Ordering::Relaxed);
                    Admission::Unavailable
                }
            },
        };
        (admission, Redis)
    }

    /// The request is done: release its concurrency slots and settle its quota and budget
    /// reservations with what it used (`inference_count` rows, `compute_us`; only a 2xx answer
    /// counts, `success`).
    pub fn finish(
        &self,
        mut permit: Permit,
        success: bool,
        inference_count: i64,
        compute_us: i64,
        prices: &ModelPrice,
    ) {
        permit.finished = true;
        let items = std::mem::take(&mut permit.items);
        let id = std::mem::take(&mut permit.request_id);
        let usage = if success {
            (
                inference_count,
                prices.list_cost_milli(1, inference_count, compute_us),
            )
        } else {
            (0, 0)
        };
        self.inner.release(id, items, permit.local, Some(usage));
    }

    /// Slots in use of the concurrency counter of `counter`, as Redis or the local limiter
    /// holds it (tests only).
    #[cfg(test)]
    pub(crate) async fn concurrency_in_use(
        &self,
        counter: &crate::limits::rules::CounterId,
    ) -> anyhow::Result<i64> {
        let key = plan::redis_key(counter, "conc");
        match &self.inner.redis {
            None => Ok(*lock(&self.inner.local).concurrency.get(&key).unwrap_or(&0)),
            Some(endpoint) => {
                let mut conn = endpoint
                    .connect(Duration::from_secs(2), Duration::from_secs(2))
                    .await?;
                let now_us = Utc::now().timestamp_micros();
                let n: i64 = ::redis::cmd("ZCOUNT")
                    .arg(&key)
                    .arg(now_us)
                    .arg("+inf")
                    .query_async(&mut conn)
                    .await?;
                Ok(n)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Release `items`' slots and settle their reservations with `usage` (inference units,
    /// thousandths of micro-USD); `None`: keep the reservations.
    fn release(
        self: &Arc<Self>,
        request_id: String,
        items: Vec<Item>,
        local: bool,
        usage: Option<(i64, i64)>,
    ) {
        let Some(tenant) = items.first().map(|i| i.counter.tenant()) else {
            return;
        };
        let releases: Vec<Release> = items
            .into_iter()
            .filter_map(|item| {
                let op = match &item.kind {
                    // One slot per concurrency counter, each a lease under the request id.
                    Kind::Concurrency { .. } => ReleaseOp::Slot {
                        request_id: request_id.clone(),
                    },
                    Kind::Quota { estimate, .. } => ReleaseOp::Settle {
                        delta: usage.map(|(n, _)| n - estimate)?,
                    },
                    Kind::Budget { estimate_milli, .. } => ReleaseOp::Settle {
                        delta: usage.map(|(_, cost)| cost - estimate_milli)?,
                    },
                    Kind::Gcra { .. } => return None,
                };
                (op != ReleaseOp::Settle { delta: 0 }).then_some(Release { key: item.key, op })
            })
            .collect();
        if local || self.redis.is_none() {
            self.release_local(&releases);
        } else {
            self.queue_releases(tenant, releases);
        }
    }
}

#[cfg(test)]
mod tests;
