//! The Redis limiter: one admission script call per request ([`ADMIT_LUA`]) decides every
//! limit at once, atomically, with Redis's own clock, so any number of gateways share exact
//! counters; it also applies the releases of the tenant's earlier requests (`release`
//! module). Also: a connection per runtime, failure accounting, the rebuild of a missing
//! monthly counter, refusals remembered in process.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::monthly::month_total;
use super::plan::{Item, Kind};
use super::release::{Release, ReleaseOp};
use super::{lock, Denial, Inner, RedisConnection};

/// The admission script. KEYS: one per pending release, then one per item. ARGV: request id,
/// lease (us), the number of releases r, two values per release, then three values per item:
/// kind (`g` GCRA, `c` concurrency, `q` counter), a, b.
/// - release `z`, request id: the earlier request's concurrency slot is freed (`ZREM`);
///   release `i`, delta: a quota or budget reservation settled (`INCRBY`). Applied first, so
///   that what finished before this request counts for its decision.
/// - `g`: a = emission interval T (us), b = tolerance tau = T x (burst - 1) (us); the key holds
///   the TAT (us). Allowed when max(TAT, now) - now <= tau; the new TAT is max(TAT, now) + T.
/// - `c`: a = limit; the key is a sorted set of leases; expired leases are dropped first.
/// - `q`: a = limit, b = reservation; the key holds the month's total; missing: rebuild first.
///
/// Returns `{1, 0, 0, v1, w1, v2, w2, ...}` when admitted (per item: remaining and reset in us),
/// `{0, i, wait_us}` when item i refuses, `{-1, i, 0}` when counter i must be rebuilt (i counts
/// items from 1). Every key of one call belongs to one tenant (one Redis Cluster slot).
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

    /// The calling runtime's connection, made on its first use within `5 x redis_timeout_ms`
    /// (the ConnectionManager, or the cluster connection, then reconnects by itself); `None`
    /// when Redis cannot be reached or there is no runtime.
    ///
    /// One per tokio runtime: redis-rs drives a multiplexed connection from a task spawned on
    /// the runtime that made it, and pingora runs its services on runtimes of their own, so a
    /// connection shared across runtimes turns every call into two cross-thread wake-ups (the
    /// caller's runtime to the driver's and back). Made by the runtime that calls, the driver
    /// runs beside its callers.
    pub(super) async fn connection(&self) -> Option<RedisConnection> {
        let runtime = tokio::runtime::Handle::try_current().ok()?.id();
        if let Some(c) = self.connection_of(runtime) {
            return Some(c);
        }
        let client = self.redis.clone()?;
        let budget = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 5);
        let deadline = tokio::time::Instant::now() + budget;
        let _guard = tokio::time::timeout_at(deadline, self.connecting.lock())
            .await
            .ok()?;
        if let Some(c) = self.connection_of(runtime) {
            return Some(c);
        }
        let response = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 10);
        match tokio::time::timeout_at(deadline, client.connect(budget, response)).await {
            Ok(Ok(c)) => {
                lock(&self.conns).push((runtime, c.clone()));
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

    /// The connection made by `runtime`, if any.
    pub(super) fn connection_of(&self, runtime: tokio::runtime::Id) -> Option<RedisConnection> {
        lock(&self.conns)
            .iter()
            .find(|(r, _)| *r == runtime)
            .map(|(_, c)| c.clone())
    }

    /// One admission script call for `items` (with Redis's answer decoded), carrying the
    /// releases of the items' tenant that are still pending (`release` module), applied by the
    /// script before it checks. A counter the script finds missing is rebuilt from PostgreSQL
    /// and the call made again (at most three calls).
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
        let Some(tenant) = items.first().map(|i| i.counter.tenant()) else {
            return Err(());
        };
        let mut releases = self.take_releases(tenant);
        for _attempt in 0..3 {
            let cmd = admit_cmd(
                self.script.get_hash(),
                request_id,
                self.config.concurrency_lease_s.saturating_mul(1_000_000),
                &releases,
                items,
            );
            let call = Instant::now();
            let mut reply =
                tokio::time::timeout(timeout, cmd.query_async::<Vec<i64>>(&mut conn)).await;
            if matches!(&reply, Ok(Err(e)) if e.kind() == redis::ErrorKind::NoScriptError) {
                // Redis restarted or was flushed: load the script (the call did not run) and
                // call again.
                reply = match tokio::time::timeout(timeout, self.script.load_async(&mut conn)).await
                {
                    Ok(Ok(_)) => {
                        tokio::time::timeout(timeout, cmd.query_async::<Vec<i64>>(&mut conn)).await
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                };
            }
            self.stats
                .redis_call_seconds
                .observe(call.elapsed().as_secs_f64());
            let reply = match reply {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.redis_failed(&e.to_string());
                    self.requeue_releases(tenant, releases);
                    return Err(());
                }
                Err(_) => {
                    self.redis_failed("timed out");
                    self.requeue_releases(tenant, releases);
                    return Err(());
                }
            };
            // The script applied the releases, whatever it decided.
            releases.clear();
            let code = reply.first().copied().unwrap_or(0);
            let index = reply.get(1).copied().unwrap_or(1).max(1) as usize - 1;
            match code {
                1 => {
                    let values = reply
                        .get(3..)
                        .unwrap_or_default()
                        .chunks(2)
                        .map(|c| (c[0], c.get(1).copied().unwrap_or(0)))
                        .collect();
                    return Ok(RedisOutcome::Admitted(values));
                }
                0 => {
                    return Ok(RedisOutcome::Refused(
                        index.min(items.len().saturating_sub(1)),
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
}

/// `EVALSHA` of the admission script (`hash`) for `items`, applying `releases` first: KEYS are
/// the releases' keys then the items'; ARGV: request id, lease (us), the number of releases,
/// two values per release (`z` and the request id of a slot to free, or `i` and a settlement
/// delta), then three per item (see [`ADMIT_LUA`]). Built straight into one command buffer.
pub(super) fn admit_cmd(
    hash: &str,
    request_id: &str,
    lease_us: i64,
    releases: &[Release],
    items: &[Item],
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(hash).arg(releases.len() + items.len());
    for r in releases {
        cmd.arg(&r.key);
    }
    for item in items {
        cmd.arg(&item.key);
    }
    cmd.arg(request_id).arg(lease_us).arg(releases.len());
    for r in releases {
        match &r.op {
            ReleaseOp::Slot { request_id } => cmd.arg("z").arg(request_id),
            ReleaseOp::Settle { delta } => cmd.arg("i").arg(*delta),
        };
    }
    for item in items {
        match &item.kind {
            Kind::Gcra { t_us, tau_us, .. } => cmd.arg("g").arg(*t_us).arg(*tau_us),
            Kind::Concurrency { limit } => cmd.arg("c").arg(*limit).arg(0),
            Kind::Quota { limit, estimate } => cmd.arg("q").arg(*limit).arg(*estimate),
            Kind::Budget {
                limit_milli,
                estimate_milli,
            } => cmd.arg("q").arg(*limit_milli).arg(*estimate_milli),
        };
    }
    cmd
}
