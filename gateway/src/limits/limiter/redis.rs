//! The Redis limiter: one admission script call per request ([`ADMIT_LUA`]) decides every
//! limit at once, atomically, with Redis's own clock, so any number of gateways share exact
//! counters. Also: the shared connection, failure accounting, the rebuild of a missing monthly
//! counter, refusals remembered in process, and settling reservations after the response.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::monthly::month_total;
use super::plan::{Item, Kind};
use super::{lock, Denial, Inner, RedisConnection};

/// The admission script. KEYS: one per item. ARGV: request id, lease (us), then three values
/// per item: kind (`g` GCRA, `c` concurrency, `q` counter), a, b.
/// - `g`: a = emission interval T (us), b = tolerance tau = T x (burst - 1) (us); the key holds
///   the TAT (us). Allowed when max(TAT, now) - now <= tau; the new TAT is max(TAT, now) + T.
/// - `c`: a = limit; the key is a sorted set of leases; expired leases are dropped first.
/// - `q`: a = limit, b = reservation; the key holds the month's total; missing: rebuild first.
///
/// Returns `{1, 0, 0, v1, w1, v2, w2, ...}` when admitted (per item: remaining and reset in us),
/// `{0, i, wait_us}` when item i refuses, `{-1, i, 0}` when counter i must be rebuilt.
pub const ADMIT_LUA: &str = include_str!("admit.lua");

/// A counter Redis refused, remembered until `until`.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    /// When the counter may admit again (or is rechecked).
    pub(super) until: Instant,
    /// The refusal to repeat meanwhile.
    pub(super) denial: Denial,
    /// The counter's tenant (invalidation by tenant drops it).
    pub(super) tenant: uuid::Uuid,
    /// What the refused request would have reserved (quota units, budget thousandths of
    /// micro-USD; 0 for rates and concurrency): a request reserving less is asked of Redis.
    pub(super) reserved: i64,
}

/// What the admission script answered.
pub(super) enum RedisOutcome {
    Admitted(Vec<(i64, i64)>),
    Refused(usize, i64),
    Rebuild,
}

impl Inner {
    pub(super) fn cached_refusal(&self, items: &[Item]) -> Option<Denial> {
        let mut refused = lock(&self.refused);
        let now = Instant::now();
        refused.retain(|_, r| r.until > now);
        items.iter().find_map(|i| {
            let r = refused.get(&i.key)?;
            (i.reserved() >= r.reserved).then(|| Denial {
                retry_after_s: r
                    .until
                    .saturating_duration_since(now)
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
                ..r.denial.clone()
            })
        })
    }

    /// Remember that Redis refused `item` until `until`, so that requests on its counter are
    /// refused in process meanwhile.
    pub(super) fn remember_refusal(&self, item: &Item, until: Instant, denial: Denial) {
        lock(&self.refused).insert(
            item.key.clone(),
            Refusal {
                until,
                denial,
                tenant: item.counter.tenant(),
                reserved: item.reserved(),
            },
        );
    }

    pub(super) fn redis_available(&self) -> bool {
        lock(&self.redis_down_until).is_none_or(|t| Instant::now() >= t)
    }

    pub(super) fn redis_failed(&self, error: &str) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        let mut down = lock(&self.redis_down_until);
        if down.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(%error, policy = ?self.config.on_redis_failure, "rate limiter: Redis failed; not retried for {} ms", self.config.redis_retry_ms);
        }
        *down = Some(Instant::now() + Duration::from_millis(self.config.redis_retry_ms));
    }

    /// The shared connection, made on first use within `5 x redis_timeout_ms` (the
    /// ConnectionManager then reconnects by itself); `None` when Redis cannot be reached.
    pub(super) async fn connection(&self) -> Option<RedisConnection> {
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
        let response = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 10);
        match tokio::time::timeout_at(deadline, client.connect(budget, response)).await {
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

    pub(super) async fn admit_redis(
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
            let call = Instant::now();
            let reply =
                tokio::time::timeout(timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
            self.stats
                .redis_call_seconds
                .observe(call.elapsed().as_secs_f64());
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

    async fn rebuild(
        &self,
        pool: &PgPool,
        conn: &mut RedisConnection,
        item: &Item,
    ) -> anyhow::Result<()> {
        let total = month_total(pool, item).await?.unwrap_or(0);
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

    /// Apply settled `deltas` (item key, delta, whether it is a concurrency slot) in Redis, in
    /// the background: one pipeline, bounded by ten times `redis_timeout_ms`.
    pub(super) fn release_redis(
        self: &Arc<Self>,
        request_id: String,
        deltas: Vec<(String, i64, bool)>,
    ) {
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
