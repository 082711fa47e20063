//! Admission control: request rates (GCRA), concurrent requests, monthly quotas and budgets,
//! decided together for every limit that applies to a request ([`crate::limits`]).
//!
//! Two backends, chosen by `[limits] backend`:
//! - `redis`: one Lua script per request ([`ADMIT_LUA`]) checks every limit and, only if all
//!   pass, consumes from all of them, atomically (Redis runs scripts one at a time), with Redis's
//!   own clock (`TIME`), so any number of gateway instances share exact counters. The rate limit
//!   is GCRA as in redis-cell: one key per counter holding the theoretical arrival time (TAT).
//!   Concurrency slots are leases in a sorted set (member: request id, score: lease expiry), so a
//!   gateway that dies cannot leak slots for longer than `concurrency_lease_s`. Monthly quota and
//!   budget counters are keyed by UTC month, reserved at admission with an estimate and settled
//!   with the real usage after the response; a missing counter (Redis restarted, new month) is
//!   rebuilt from PostgreSQL's `usage_hourly` before the script runs again.
//! - `local`: governor's in-process GCRA and in-process counters, for a single gateway without
//!   Redis.
//!
//! A counter refused by Redis is remembered in process until its reset instant, so a client
//! flooding past its limit is answered 429 without reaching Redis. Every Redis call has a
//! timeout (`redis_timeout_ms`, default 20 ms); on failure `on_redis_failure` decides:
//! `open` falls back to the local limiter with every limit divided by `gateway_instances`
//! (quotas and budgets are not enforced meanwhile; usage is still metered), `closed` answers
//! 503. After a failure Redis is not tried again for `redis_retry_ms`; recovery is automatic.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use governor::middleware::StateInformationMiddleware;
use governor::{clock::Clock, clock::DefaultClock, Quota, RateLimiter};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::{LimiterBackend, LimitsConfig, RedisFailurePolicy};
use crate::limits::{Level, RequestLimits};

/// The admission script. KEYS: one per item. ARGV: request id, lease (us), then three values
/// per item: kind (`g` GCRA, `c` concurrency, `q` counter), a, b.
/// - `g`: a = emission interval T (us), b = tolerance tau = T x (burst - 1) (us); the key holds
///   the TAT (us). Allowed when max(TAT, now) - now <= tau; the new TAT is max(TAT, now) + T.
/// - `c`: a = limit; the key is a sorted set of leases; expired leases are dropped first.
/// - `q`: a = limit, b = reservation; the key holds the month's total; missing: rebuild first.
///
/// Returns `{1, 0, 0, v1, w1, v2, w2, ...}` when admitted (per item: remaining and reset in us),
/// `{0, i, wait_us}` when item i refuses, `{-1, i, 0}` when counter i must be rebuilt.
pub const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid = ARGV[1]
local lease = tonumber(ARGV[2])
local new = {}
for i = 1, #KEYS do
  local kind = ARGV[3 * i]
  local a = tonumber(ARGV[3 * i + 1])
  local b = tonumber(ARGV[3 * i + 2])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if tat - now > b then return {0, i, tat - now - b} end
    new[i] = tat + a
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local n = redis.call('ZCARD', KEYS[i])
    if n >= a then return {0, i, 0} end
    new[i] = n + 1
  else
    local v = redis.call('GET', KEYS[i])
    if not v then return {-1, i, 0} end
    v = tonumber(v)
    if v + b > a then return {0, i, 0} end
    new[i] = v + b
  end
end
local out = {1, 0, 0}
for i = 1, #KEYS do
  local kind = ARGV[3 * i]
  local a = tonumber(ARGV[3 * i + 1])
  local b = tonumber(ARGV[3 * i + 2])
  if kind == 'g' then
    local ttl_ms = math.floor((new[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], new[i], 'PX', ttl_ms)
    table.insert(out, math.floor((b - (new[i] - now)) / a) + 1)
    table.insert(out, new[i] - now)
  elseif kind == 'c' then
    redis.call('ZADD', KEYS[i], now + lease, rid)
    redis.call('PEXPIRE', KEYS[i], math.floor(lease / 1000) + 1000)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  else
    redis.call('INCRBY', KEYS[i], b)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  end
end
return out
"#;

/// Prefix of every Redis key the limiter writes.
pub const KEY_PREFIX: &str = "maas:rl:";

/// What one item limits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// GCRA: `rate` per `period_s`, `burst` at once; T and tau in microseconds.
    Gcra {
        rate: i64,
        period_s: i64,
        burst: i64,
        t_us: i64,
        tau_us: i64,
    },
    /// Requests in flight.
    Concurrency { limit: i64 },
    /// Inference units this month; reservation per request.
    Quota { limit: i64, estimate: i64 },
    /// Thousandths of a micro-USD this month; reservation per request.
    Budget {
        limit_milli: i64,
        estimate_milli: i64,
    },
}

/// One limit of one counter, for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// Header item name, e.g. `key-rps`.
    name: String,
    /// Redis key (also the local map key).
    key: String,
    /// Counter: level and id, for the monthly rebuild.
    level: Level,
    counter: String,
    kind: Kind,
}

/// The month a request counts in, `YYYY-MM`, and the seconds from now to its end.
fn month_of(now: DateTime<Utc>) -> (String, i64, i64) {
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    (
        format!("{:04}-{:02}", now.year(), now.month()),
        (end - now).num_seconds().max(1),
        (end - start).num_seconds(),
    )
}

fn items(limits: &RequestLimits, config: &LimitsConfig, month: &str) -> Vec<Item> {
    let mut out = Vec::new();
    for (level, counter, rule) in &limits.rules {
        let base = format!("{KEY_PREFIX}{counter}");
        let item = |suffix: &str, name: &str, kind: Kind| Item {
            name: format!("{}-{name}", level.as_str()),
            key: format!("{base}:{suffix}"),
            level: *level,
            counter: counter.clone(),
            kind,
        };
        if let Some(rate) = rule.rate {
            let rate = i64::from(rate.max(1));
            let period_s = i64::from(rule.period_s.max(1));
            let burst = i64::from(rule.burst.unwrap_or(1).max(1));
            // Rounded up, so that no more than rate x time + burst are ever admitted.
            let t_us = (period_s * 1_000_000 + rate - 1) / rate;
            out.push(item(
                "gcra",
                "rps",
                Kind::Gcra {
                    rate,
                    period_s,
                    burst,
                    t_us,
                    tau_us: t_us * (burst - 1),
                },
            ));
        }
        if let Some(limit) = rule.concurrency {
            out.push(item(
                "conc",
                "concurrency",
                Kind::Concurrency {
                    limit: i64::from(limit),
                },
            ));
        }
        if let Some(limit) = rule.monthly_inference_quota {
            out.push(item(
                &format!("q:{month}"),
                "quota",
                Kind::Quota {
                    limit,
                    estimate: config.quota_estimate_units,
                },
            ));
        }
        if let Some(limit) = rule.monthly_budget_micro_usd {
            out.push(item(
                &format!("b:{month}"),
                "budget",
                Kind::Budget {
                    limit_milli: limit.saturating_mul(1000),
                    estimate_milli: limits.prices.cost_milli(1, config.quota_estimate_units, 0),
                },
            ));
        }
    }
    out
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The message for `{"error": ...}`.
    pub message: String,
    /// Seconds for `Retry-After` (at least 1).
    pub retry_after_s: u64,
    /// `RateLimit-Policy` and `RateLimit` values for the refusing limit.
    pub headers: Option<(String, String)>,
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

/// Counters kept by the limiter for logs and tests.
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Decisions made by the local limiter because Redis failed (fail-open).
    pub fail_open: AtomicU64,
    /// Requests answered 503 because Redis failed (fail-closed).
    pub fail_closed: AtomicU64,
    /// Redis calls that failed or timed out.
    pub redis_errors: AtomicU64,
    /// Requests refused from the local cache of refusing counters, without a Redis call.
    pub cached_denials: AtomicU64,
}

type Gcra = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;

#[derive(Default)]
struct LocalState {
    /// Per item key: its (T, burst) and governor's limiter.
    gcra: HashMap<String, ((i64, i64), Arc<Gcra>)>,
    /// Per item key: slots in use.
    concurrency: HashMap<String, i64>,
    /// Per item key: the month's quota or budget total (local backend only).
    counters: HashMap<String, i64>,
}

struct Inner {
    config: LimitsConfig,
    redis: Option<redis::Client>,
    conn: Mutex<Option<redis::aio::ConnectionManager>>,
    /// Held while connecting, so that one task connects and the others wait (bounded).
    connecting: tokio::sync::Mutex<()>,
    /// Redis is not tried before this instant (after a failure).
    redis_down_until: Mutex<Option<Instant>>,
    /// Item keys refused by Redis, until their reset instant.
    refused: Mutex<HashMap<String, (Instant, Denial)>>,
    local: Mutex<LocalState>,
    script: redis::Script,
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

enum RedisOutcome {
    Admitted(Vec<(i64, i64)>),
    Refused(usize, i64),
    Rebuild,
}

impl Limiter {
    /// A limiter for `config`; `redis` is required by the `redis` backend.
    ///
    /// # Errors
    /// The `redis` backend without a Redis URL.
    pub fn new(config: &LimitsConfig, redis: Option<redis::Client>) -> anyhow::Result<Self> {
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
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                redis_down_until: Mutex::new(None),
                refused: Mutex::new(HashMap::new()),
                local: Mutex::new(LocalState::default()),
                script: redis::Script::new(ADMIT_LUA),
                clock: DefaultClock::default(),
                stats: LimiterStats::default(),
            }),
        })
    }

    /// Connect to Redis now (the `redis` backend), so the first request does not pay for it.
    pub async fn warm_up(&self) {
        if self.inner.redis.is_some() {
            let _ = self.inner.connection().await;
        }
    }

    /// The limiter's counters.
    pub fn stats(&self) -> &LimiterStats {
        &self.inner.stats
    }

    /// Forget the cached refusals of `tenant_id`'s counters (its limits changed).
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        let needle = tenant_id.to_string();
        lock(&self.inner.refused).retain(|k, _| !k.contains(&needle));
    }

    /// Forget every cached refusal.
    pub fn invalidate_all(&self) {
        lock(&self.inner.refused).clear();
    }

    /// Decide whether request `request_id` under `limits` may go ahead, consuming from every
    /// limit only if all allow it. `pool` rebuilds missing monthly counters.
    pub async fn admit(
        &self,
        pool: &PgPool,
        request_id: Uuid,
        limits: &RequestLimits,
    ) -> Admission {
        if limits.is_empty() {
            return Admission::Unlimited;
        }
        let now = Utc::now();
        let (month, _, _) = month_of(now);
        let items = items(limits, &self.inner.config, &month);
        if items.is_empty() {
            return Admission::Unlimited;
        }
        let request_id = request_id.to_string();
        if self.inner.redis.is_none() {
            return self
                .inner
                .admit_local(pool, request_id, items, 1, true)
                .await;
        }
        // A counter that Redis refused, until its reset: refused here, without Redis.
        if let Some(denial) = self.inner.cached_refusal(&items) {
            self.inner
                .stats
                .cached_denials
                .fetch_add(1, Ordering::Relaxed);
            return Admission::Denied(denial);
        }
        match self.inner.admit_redis(pool, &request_id, &items).await {
            Ok(RedisOutcome::Admitted(values)) => {
                let headers = headers(&items, &values, now);
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
                    lock(&self.inner.refused).insert(items[i].key.clone(), (until, denial.clone()));
                }
                Admission::Denied(denial)
            }
            Ok(RedisOutcome::Rebuild) | Err(_) => match self.inner.config.on_redis_failure {
                RedisFailurePolicy::Open => {
                    self.inner.stats.fail_open.fetch_add(1, Ordering::Relaxed);
                    let instances = i64::from(self.inner.config.gateway_instances.max(1));
                    self.inner
                        .admit_local(pool, request_id, items, instances, false)
                        .await
                }
                RedisFailurePolicy::Closed => {
                    self.inner.stats.fail_closed.fetch_add(1, Ordering::Relaxed);
                    Admission::Unavailable
                }
            },
        }
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
        prices: &crate::limits::Prices,
    ) {
        permit.finished = true;
        let items = std::mem::take(&mut permit.items);
        let id = std::mem::take(&mut permit.request_id);
        let usage = if success {
            (
                inference_count,
                prices.cost_milli(1, inference_count, compute_us),
            )
        } else {
            (0, 0)
        };
        self.inner.release(id, items, permit.local, Some(usage));
    }

    /// Slots in use of the concurrency counter of `counter` (e.g. `k:<key id>`), as Redis or the
    /// local limiter holds it (for tests and operators).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn concurrency_in_use(&self, counter: &str) -> anyhow::Result<i64> {
        let key = format!("{KEY_PREFIX}{counter}:conc");
        match &self.inner.redis {
            None => Ok(*lock(&self.inner.local).concurrency.get(&key).unwrap_or(&0)),
            Some(client) => {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let now_us = Utc::now().timestamp_micros();
                let n: i64 = redis::cmd("ZCOUNT")
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
    fn cached_refusal(&self, items: &[Item]) -> Option<Denial> {
        let mut refused = lock(&self.refused);
        let now = Instant::now();
        refused.retain(|_, (until, _)| *until > now);
        items.iter().find_map(|i| {
            refused.get(&i.key).map(|(until, d)| Denial {
                retry_after_s: until
                    .saturating_duration_since(now)
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
                ..d.clone()
            })
        })
    }

    fn redis_available(&self) -> bool {
        lock(&self.redis_down_until).is_none_or(|t| Instant::now() >= t)
    }

    fn redis_failed(&self, error: &str) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        let mut down = lock(&self.redis_down_until);
        if down.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(%error, policy = ?self.config.on_redis_failure, "rate limiter: Redis failed; not retried for {} ms", self.config.redis_retry_ms);
        }
        *down = Some(Instant::now() + Duration::from_millis(self.config.redis_retry_ms));
    }

    /// The shared connection, made on first use within `5 x redis_timeout_ms` (the
    /// ConnectionManager then reconnects by itself); `None` when Redis cannot be reached.
    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        if let Some(c) = lock(&self.conn).clone() {
            return Some(c);
        }
        let client = self.redis.clone()?;
        let budget = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 5);
        let deadline = tokio::time::Instant::now() + budget;
        let _guard = tokio::time::timeout_at(deadline, self.connecting.lock())
            .await
            .ok()?;
        if let Some(c) = lock(&self.conn).clone() {
            return Some(c);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(budget)
            .set_response_timeout(Duration::from_millis(
                self.config.redis_timeout_ms.max(1) * 10,
            ))
            .set_number_of_retries(1);
        match tokio::time::timeout_at(
            deadline,
            redis::aio::ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(c)) => {
                *lock(&self.conn) = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.redis_failed(&e.to_string());
                None
            }
            Err(_) => {
                self.redis_failed("connecting timed out");
                None
            }
        }
    }

    async fn admit_redis(
        self: &Arc<Self>,
        pool: &PgPool,
        request_id: &str,
        items: &[Item],
    ) -> Result<RedisOutcome, ()> {
        if !self.redis_available() {
            return Err(());
        }
        let Some(mut conn) = self.connection().await else {
            return Err(());
        };
        let timeout = Duration::from_millis(self.config.redis_timeout_ms.max(1));
        for _attempt in 0..3 {
            let mut inv = self.script.prepare_invoke();
            inv.arg(request_id)
                .arg(self.config.concurrency_lease_s.saturating_mul(1_000_000));
            for item in items {
                inv.key(&item.key);
                match &item.kind {
                    Kind::Gcra { t_us, tau_us, .. } => inv.arg("g").arg(*t_us).arg(*tau_us),
                    Kind::Concurrency { limit } => inv.arg("c").arg(*limit).arg(0),
                    Kind::Quota { limit, estimate } => inv.arg("q").arg(*limit).arg(*estimate),
                    Kind::Budget {
                        limit_milli,
                        estimate_milli,
                    } => inv.arg("q").arg(*limit_milli).arg(*estimate_milli),
                };
            }
            let reply =
                tokio::time::timeout(timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
            let reply = match reply {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.redis_failed(&e.to_string());
                    return Err(());
                }
                Err(_) => {
                    self.redis_failed("timed out");
                    return Err(());
                }
            };
            let code = reply.first().copied().unwrap_or(0);
            let index = reply.get(1).copied().unwrap_or(1).max(1) as usize - 1;
            match code {
                1 => {
                    let values = reply[3..]
                        .chunks(2)
                        .map(|c| (c[0], c.get(1).copied().unwrap_or(0)))
                        .collect();
                    return Ok(RedisOutcome::Admitted(values));
                }
                0 => {
                    return Ok(RedisOutcome::Refused(
                        index.min(items.len() - 1),
                        reply.get(2).copied().unwrap_or(0),
                    ))
                }
                _ => {
                    let Some(item) = items.get(index) else {
                        return Err(());
                    };
                    if let Err(e) = self.rebuild(pool, &mut conn, item).await {
                        tracing::warn!(error = %e, key = %item.key, "could not rebuild a monthly counter");
                        return Ok(RedisOutcome::Rebuild);
                    }
                }
            }
        }
        Err(())
    }

    /// The month's total of `item`'s counter from PostgreSQL (quota: inference units; budget:
    /// thousandths of micro-USD at the plan's prices). `None` for other kinds.
    async fn month_total(&self, pool: &PgPool, item: &Item) -> anyhow::Result<Option<i64>> {
        let now = Utc::now();
        let start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .ok_or_else(|| anyhow::anyhow!("month start"))?;
        let (tenant, key, model) = parse_counter(&item.counter);
        let (requests, inferences, compute_us): (i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(sum(billable_requests), 0)::bigint, \
                    COALESCE(sum(inference_count), 0)::bigint, \
                    COALESCE(sum(compute_us), 0)::bigint \
             FROM usage_hourly \
             WHERE hour >= $1 AND ($2::uuid IS NULL OR tenant_id = $2) \
               AND ($3::uuid IS NULL OR api_key_id = $3) AND ($4::text IS NULL OR model = $4)",
        )
        .bind(start)
        .bind(tenant)
        .bind(key)
        .bind(&model)
        .fetch_one(pool)
        .await?;
        Ok(match item.kind {
            Kind::Quota { .. } => Some(inferences),
            Kind::Budget { .. } => {
                // Prices of the counter's model (or the plan's '*' price for tenant-wide and
                // per-key counters).
                let prices = match tenant.or(key) {
                    Some(_) => {
                        let row: Option<(i64, i64, i64)> = sqlx::query_as(
                            "SELECT p.per_request_micro_usd, p.per_1k_inferences_micro_usd, \
                                    p.per_compute_second_micro_usd \
                             FROM plan_prices p JOIN tenants t ON t.plan = p.plan \
                             WHERE t.id = COALESCE($1, (SELECT tenant_id FROM api_keys WHERE id = $2)) \
                               AND p.model IN (COALESCE($3, '*'), '*') \
                             ORDER BY (p.model = '*') LIMIT 1",
                        )
                        .bind(tenant)
                        .bind(key)
                        .bind(model)
                        .fetch_optional(pool)
                        .await?;
                        row.map(|(a, b, c)| crate::limits::Prices {
                            per_request: a,
                            per_1k_inferences: b,
                            per_compute_second: c,
                        })
                        .unwrap_or_default()
                    }
                    None => crate::limits::Prices::default(),
                };
                Some(prices.cost_milli(requests, inferences, compute_us))
            }
            _ => None,
        })
    }

    async fn rebuild(
        &self,
        pool: &PgPool,
        conn: &mut redis::aio::ConnectionManager,
        item: &Item,
    ) -> anyhow::Result<()> {
        let total = self.month_total(pool, item).await?.unwrap_or(0);
        let _: Option<String> = redis::cmd("SET")
            .arg(&item.key)
            .arg(total)
            .arg("NX")
            .arg("EX")
            .arg(40 * 24 * 3600)
            .query_async(conn)
            .await?;
        tracing::info!(key = %item.key, total, "monthly counter rebuilt from PostgreSQL");
        Ok(())
    }

    /// The local decision: governor for rates, in-process counters for the rest, under one lock.
    /// `divide` splits every limit among that many gateways (fail-open); `counters` enforces
    /// quotas and budgets (local backend; not in fail-open).
    async fn admit_local(
        self: &Arc<Self>,
        pool: &PgPool,
        request_id: String,
        items: Vec<Item>,
        divide: i64,
        counters: bool,
    ) -> Admission {
        let now_utc = Utc::now();
        if counters {
            // Start the month's counters from PostgreSQL once.
            for item in &items {
                if !matches!(item.kind, Kind::Quota { .. } | Kind::Budget { .. }) {
                    continue;
                }
                if lock(&self.local).counters.contains_key(&item.key) {
                    continue;
                }
                match self.month_total(pool, item).await {
                    Ok(total) => {
                        lock(&self.local)
                            .counters
                            .entry(item.key.clone())
                            .or_insert(total.unwrap_or(0));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, key = %item.key, "could not read the month's usage; counting from zero")
                    }
                }
            }
        }
        let mut state = lock(&self.local);
        // Check the counters first (no side effect), then the rates (governor consumes as it
        // checks), then apply the counters.
        let mut values = vec![(0i64, 0i64); items.len()];
        for (i, item) in items.iter().enumerate() {
            match &item.kind {
                Kind::Concurrency { limit } => {
                    let limit = (limit / divide).max(1);
                    let used = *state.concurrency.get(&item.key).unwrap_or(&0);
                    if used >= limit {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit - used - 1, 0);
                }
                Kind::Quota { limit, estimate } if counters => {
                    let used = *state.counters.get(&item.key).unwrap_or(&0);
                    if used + estimate > *limit {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit - used - estimate, 0);
                }
                Kind::Budget {
                    limit_milli,
                    estimate_milli,
                } if counters => {
                    let used = *state.counters.get(&item.key).unwrap_or(&0);
                    if used + estimate_milli > *limit_milli {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit_milli - used - estimate_milli, 0);
                }
                _ => {}
            }
        }
        for (i, item) in items.iter().enumerate() {
            if let Kind::Gcra { t_us, burst, .. } = item.kind {
                let t_us = t_us * divide;
                let burst = (burst / divide).max(1);
                let limiter = state
                    .gcra
                    .entry(item.key.clone())
                    .and_modify(|(params, l)| {
                        if *params != (t_us, burst) {
                            *params = (t_us, burst);
                            *l = Arc::new(gcra(t_us, burst));
                        }
                    })
                    .or_insert_with(|| ((t_us, burst), Arc::new(gcra(t_us, burst))))
                    .1
                    .clone();
                match limiter.check() {
                    Ok(snapshot) => {
                        let remaining = i64::from(snapshot.remaining_burst_capacity());
                        values[i] = (remaining, (burst - remaining) * t_us);
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        return Admission::Denied(denial(item, wait.as_micros() as i64, now_utc));
                    }
                }
            }
        }
        for item in &items {
            match &item.kind {
                Kind::Concurrency { .. } => {
                    *state.concurrency.entry(item.key.clone()).or_insert(0) += 1
                }
                Kind::Quota { estimate, .. } if counters => {
                    *state.counters.entry(item.key.clone()).or_insert(0) += estimate
                }
                Kind::Budget { estimate_milli, .. } if counters => {
                    *state.counters.entry(item.key.clone()).or_insert(0) += estimate_milli
                }
                _ => {}
            }
        }
        drop(state);
        let headers = headers(&items, &values, now_utc);
        Admission::Admitted(Permit {
            inner: self.clone(),
            request_id,
            items,
            local: true,
            headers,
            finished: false,
        })
    }

    /// Release `items`' slots and settle their reservations with `usage` (inference units,
    /// thousandths of micro-USD); `None`: keep the reservations.
    fn release(
        self: &Arc<Self>,
        request_id: String,
        items: Vec<Item>,
        local: bool,
        usage: Option<(i64, i64)>,
    ) {
        let deltas: Vec<(String, i64, bool)> = items
            .iter()
            .filter_map(|item| match &item.kind {
                Kind::Concurrency { .. } => Some((item.key.clone(), 0, true)),
                Kind::Quota { estimate, .. } => {
                    usage.map(|(n, _)| (item.key.clone(), n - estimate, false))
                }
                Kind::Budget { estimate_milli, .. } => {
                    usage.map(|(_, cost)| (item.key.clone(), cost - estimate_milli, false))
                }
                Kind::Gcra { .. } => None,
            })
            .filter(|(_, d, slot)| *slot || *d != 0)
            .collect();
        if deltas.is_empty() {
            return;
        }
        if local || self.redis.is_none() {
            let mut state = lock(&self.local);
            for (key, delta, slot) in deltas {
                if slot {
                    if let Some(n) = state.concurrency.get_mut(&key) {
                        *n = (*n - 1).max(0);
                    }
                } else if let Some(n) = state.counters.get_mut(&key) {
                    *n += delta;
                }
            }
            return;
        }
        let Some(mut conn) = lock(&self.conn).clone() else {
            return;
        };
        let timeout = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 10);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        handle.spawn(async move {
            let mut pipe = redis::pipe();
            for (key, delta, slot) in &deltas {
                if *slot {
                    pipe.cmd("ZREM").arg(key).arg(&request_id).ignore();
                } else {
                    pipe.cmd("INCRBY").arg(key).arg(*delta).ignore();
                }
            }
            match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => me.redis_failed(&e.to_string()),
                Err(_) => me.redis_failed("release timed out"),
            }
        });
    }
}

fn gcra(t_us: i64, burst: i64) -> Gcra {
    let period = Duration::from_micros(t_us.max(1) as u64);
    let burst =
        NonZeroU32::new(u32::try_from(burst.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}

/// `(tenant, key, model)` of a counter id (`t:<id>`, `k:<id>`, `m:<id>:<model>`).
fn parse_counter(counter: &str) -> (Option<Uuid>, Option<Uuid>, Option<String>) {
    match counter.split_once(':') {
        Some(("t", id)) => (Uuid::parse_str(id).ok(), None, None),
        Some(("k", id)) => (None, Uuid::parse_str(id).ok(), None),
        Some(("m", rest)) => match rest.split_once(':') {
            Some((id, model)) => (Uuid::parse_str(id).ok(), None, Some(model.to_string())),
            None => (None, None, None),
        },
        _ => (None, None, None),
    }
}

fn secs_ceil(us: i64) -> i64 {
    (us.max(0) + 999_999) / 1_000_000
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for `items`, with
/// `(remaining, reset_us)` per item.
fn headers(items: &[Item], values: &[(i64, i64)], now: DateTime<Utc>) -> Option<(String, String)> {
    let (_, to_month_end, month_len) = month_of(now);
    let mut policy = Vec::new();
    let mut state = Vec::new();
    for (item, (remaining, reset_us)) in items.iter().zip(values) {
        let r = (*remaining).max(0);
        match &item.kind {
            Kind::Gcra { rate, period_s, .. } => {
                policy.push(format!("\"{}\";q={rate};w={period_s}", item.name));
                state.push(format!(
                    "\"{}\";r={r};t={}",
                    item.name,
                    secs_ceil(*reset_us)
                ));
            }
            Kind::Concurrency { limit } => {
                policy.push(format!(
                    "\"{}\";q={limit};qu=\"concurrent-requests\"",
                    item.name
                ));
                state.push(format!("\"{}\";r={r}", item.name));
            }
            Kind::Quota { limit, .. } => {
                policy.push(format!(
                    "\"{}\";q={limit};w={month_len};qu=\"inference-units\"",
                    item.name
                ));
                state.push(format!("\"{}\";r={r};t={to_month_end}", item.name));
            }
            Kind::Budget { limit_milli, .. } => {
                policy.push(format!(
                    "\"{}\";q={};w={month_len};qu=\"micro-usd\"",
                    item.name,
                    limit_milli / 1000
                ));
                state.push(format!("\"{}\";r={};t={to_month_end}", item.name, r / 1000));
            }
        }
    }
    (!policy.is_empty()).then(|| (policy.join(", "), state.join(", ")))
}

fn denial(item: &Item, wait_us: i64, now: DateTime<Utc>) -> Denial {
    let (month, to_month_end, month_len) = month_of(now);
    let (message, retry_after_s, policy, state) = match &item.kind {
        Kind::Gcra {
            rate,
            period_s,
            burst,
            ..
        } => {
            let retry = secs_ceil(wait_us).max(1);
            (
                format!(
                    "rate limit exceeded: {} allows {rate} requests per {period_s} s (burst {burst}); retry after {retry} s",
                    item.name
                ),
                retry,
                format!("\"{}\";q={rate};w={period_s}", item.name),
                format!("\"{}\";r=0;t={retry}", item.name),
            )
        }
        Kind::Concurrency { limit } => (
            format!("concurrency limit reached: {} allows {limit} requests in flight", item.name),
            1,
            format!("\"{}\";q={limit};qu=\"concurrent-requests\"", item.name),
            format!("\"{}\";r=0", item.name),
        ),
        Kind::Quota { limit, .. } => (
            format!(
                "monthly inference quota exhausted: {} allows {limit} inference units in {month} (UTC)",
                item.name
            ),
            to_month_end,
            format!("\"{}\";q={limit};w={month_len};qu=\"inference-units\"", item.name),
            format!("\"{}\";r=0;t={to_month_end}", item.name),
        ),
        Kind::Budget { limit_milli, .. } => (
            format!(
                "monthly budget exhausted: {} allows {} micro-USD in {month} (UTC)",
                item.name,
                limit_milli / 1000
            ),
            to_month_end,
            format!("\"{}\";q={};w={month_len};qu=\"micro-usd\"", item.name, limit_milli / 1000),
            format!("\"{}\";r=0;t={to_month_end}", item.name),
        ),
    };
    Denial {
        message,
        retry_after_s: u64::try_from(retry_after_s.max(1)).unwrap_or(1),
        headers: Some((policy, state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitRule;

    fn limits(rule: LimitRule) -> RequestLimits {
        let t = Uuid::now_v7();
        RequestLimits {
            tenant_id: t,
            rules: vec![(Level::Tenant, format!("t:{t}"), rule)],
            prices: crate::limits::Prices::default(),
        }
    }

    fn rule() -> LimitRule {
        LimitRule {
            level: Level::Tenant,
            model: None,
            rate: None,
            period_s: 1,
            burst: None,
            concurrency: None,
            monthly_inference_quota: None,
            monthly_budget_micro_usd: None,
        }
    }

    #[test]
    fn months() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        assert_eq!(month_of(t), ("2026-12".to_string(), 60, 31 * 86400));
        let t = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        assert_eq!(month_of(t).2, 28 * 86400);
    }

    #[test]
    fn items_and_headers() {
        let config = LimitsConfig::default();
        let l = limits(LimitRule {
            rate: Some(3),
            burst: Some(5),
            concurrency: Some(2),
            monthly_inference_quota: Some(1000),
            ..rule()
        });
        let items = items(&l, &config, "2026-11");
        assert_eq!(items.len(), 3);
        // T rounded up: 3 per second is one per 333,334 us.
        assert_eq!(
            items[0].kind,
            Kind::Gcra {
                rate: 3,
                period_s: 1,
                burst: 5,
                t_us: 333_334,
                tau_us: 4 * 333_334
            }
        );
        assert!(items[2].key.ends_with(":q:2026-11"));
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
        let (policy, state) = headers(&items, &[(4, 333_334), (1, 0), (990, 0)], now).unwrap();
        assert_eq!(
            policy,
            "\"tenant-rps\";q=3;w=1, \"tenant-concurrency\";q=2;qu=\"concurrent-requests\", \"tenant-quota\";q=1000;w=2592000;qu=\"inference-units\""
        );
        assert_eq!(
            state,
            "\"tenant-rps\";r=4;t=1, \"tenant-concurrency\";r=1, \"tenant-quota\";r=990;t=86400"
        );
        let d = denial(&items[0], 1_500_000, now);
        assert_eq!(d.retry_after_s, 2);
        assert_eq!(
            d.message,
            "rate limit exceeded: tenant-rps allows 3 requests per 1 s (burst 5); retry after 2 s"
        );
        assert_eq!(
            parse_counter(&format!("m:{}:digits", l.tenant_id)),
            (Some(l.tenant_id), None, Some("digits".into()))
        );
    }

    #[tokio::test]
    async fn local_backend_is_all_or_nothing_and_releases() {
        let config = LimitsConfig::default();
        let limiter = Limiter::new(&config, None).unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let l = limits(LimitRule {
            rate: Some(1),
            burst: Some(3),
            concurrency: Some(2),
            ..rule()
        });
        let counter = l.rules[0].1.clone();
        let mut permits = vec![];
        for _ in 0..2 {
            match limiter.admit(&pool, Uuid::now_v7(), &l).await {
                Admission::Admitted(p) => permits.push(p),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 2);
        // The third is refused by concurrency, before the rate is consumed ...
        match limiter.admit(&pool, Uuid::now_v7(), &l).await {
            Admission::Denied(d) => assert!(d.message.starts_with("concurrency limit reached")),
            other => panic!("{other:?}"),
        }
        // ... so once a slot is free, the third burst cell is still there.
        let p = permits.pop().unwrap();
        limiter.finish(p, true, 1, 0, &l.prices);
        drop(permits.pop());
        assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 0);
        let p = match limiter.admit(&pool, Uuid::now_v7(), &l).await {
            Admission::Admitted(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            p.headers.as_ref().unwrap().1,
            "\"tenant-rps\";r=0;t=3, \"tenant-concurrency\";r=1"
        );
        match limiter.admit(&pool, Uuid::now_v7(), &l).await {
            Admission::Denied(d) => {
                assert!(
                    d.message.starts_with("rate limit exceeded: tenant-rps"),
                    "{}",
                    d.message
                );
                assert_eq!(d.retry_after_s, 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
