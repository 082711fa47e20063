//! Unit tests of the limiter: planning, headers, the local backend, invalidation.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use maas_billing::Period;
use uuid::Uuid;

use super::headers::{denial, rate_limit_headers};
use super::plan::{plan, Kind};
use super::{Admission, Demand, Limiter};
use crate::config::LimitsConfig;
use crate::limits::rules::{CounterId, RequestLimits};
use crate::store::{Level, LimitRule};

/// An inference call whose rows are not known before it runs.
const UNKNOWN_ROWS: Demand = Demand::Inference { rows: None };

fn limits(rule: LimitRule) -> RequestLimits {
    let t = Uuid::now_v7();
    RequestLimits {
        tenant_id: t,
        rules: vec![(CounterId::Tenant(t), rule)],
        prices: Default::default(),
    }
}

fn rule() -> LimitRule {
    LimitRule::unlimited(Level::Tenant)
}

#[test]
fn months() {
    let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
    let p = Period::of(t);
    assert_eq!(
        (p.to_string(), p.seconds_to_end(t), p.seconds()),
        ("2026-12".to_string(), 60, 31 * 86400)
    );
    let t = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    assert_eq!(Period::of(t).seconds(), 28 * 86400);
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
    let items = plan(&l, &config, Period::parse("2026-11").unwrap(), UNKNOWN_ROWS);
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
    let (policy, state) =
        rate_limit_headers(&items, &[(4, 333_334), (1, 0), (990, 0)], now).unwrap();
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
        d.headers,
        Some((
            "\"tenant-rps\";q=3;w=1".to_string(),
            "\"tenant-rps\";r=0;t=2".to_string()
        ))
    );
    // A monthly refusal resets at the month's end (one day after 2026-11-30T00:00Z).
    let q = denial(&items[2], 0, now);
    assert_eq!(q.retry_after_s, 86_400);
    assert_eq!(
        q.headers.map(|h| h.1),
        Some("\"tenant-quota\";r=0;t=86400".to_string())
    );
    assert_eq!(
        d.message,
        "rate limit exceeded: tenant-rps allows 3 requests per 1 s (burst 5); retry after 2 s"
    );
}

#[test]
fn quotas_and_budgets_reserve_the_declared_rows() {
    let config = LimitsConfig::default();
    let mut l = limits(LimitRule {
        monthly_inference_quota: Some(100),
        monthly_budget_micro_usd: Some(1_000_000),
        ..rule()
    });
    l.prices.per_request_micro_usd = 10;
    l.prices.per_1k_inferences_micro_usd = 2_000;
    let period = Period::parse("2026-11").unwrap();
    let reserved = |demand| {
        let items = plan(&l, &config, period, demand);
        match (&items[0].kind, &items[1].kind) {
            (Kind::Quota { estimate, .. }, Kind::Budget { estimate_milli, .. }) => {
                (*estimate, *estimate_milli)
            }
            other => panic!("{other:?}"),
        }
    };
    // 8 rows: 8 units, and 10 µUSD for the request + 8 x 2 µUSD (in thousandths).
    assert_eq!(reserved(Demand::Inference { rows: Some(8) }), (8, 26_000));
    assert_eq!(
        reserved(UNKNOWN_ROWS),
        (
            config.quota_estimate_units,
            10_000 + 2_000 * config.quota_estimate_units
        )
    );
    // A metadata call reserves nothing (it is never billed).
    assert_eq!(reserved(Demand::Unbilled), (0, 0));
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
    let counter = l.rules[0].0.clone();
    let mut permits = vec![];
    for _ in 0..2 {
        match limiter.admit(&pool, Uuid::now_v7(), &l, UNKNOWN_ROWS).await {
            Admission::Admitted(p) => permits.push(p),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 2);
    // The third is refused by concurrency, before the rate is consumed ...
    match limiter.admit(&pool, Uuid::now_v7(), &l, UNKNOWN_ROWS).await {
        Admission::Denied(d) => assert!(d.message.starts_with("concurrency limit reached")),
        other => panic!("{other:?}"),
    }
    // ... so once a slot is free, the third burst cell is still there.
    let p = permits.pop().unwrap();
    limiter.finish(p, true, 1, 0, &l.prices);
    drop(permits.pop());
    assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 0);
    let p = match limiter.admit(&pool, Uuid::now_v7(), &l, UNKNOWN_ROWS).await {
        Admission::Admitted(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        p.headers.as_ref().unwrap().1,
        "\"tenant-rps\";r=0;t=3, \"tenant-concurrency\";r=1"
    );
    match limiter.admit(&pool, Uuid::now_v7(), &l, UNKNOWN_ROWS).await {
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

/// A refusal remembered for a key's own counter is dropped when the key's tenant is
/// invalidated, although the counter's Redis key (`k:<key id>`) holds no tenant id.
#[tokio::test]
async fn invalidating_a_tenant_forgets_its_key_counters_refusals() {
    let config = LimitsConfig {
        backend: crate::config::LimiterBackend::Redis,
        ..LimitsConfig::default()
    };
    let client = ::redis::Client::open("redis://127.0.0.1:1/").unwrap();
    let limiter = Limiter::new(&config, Some(super::RedisEndpoint::Single(client))).unwrap();
    let (tenant, other) = (Uuid::now_v7(), Uuid::now_v7());
    let key_rules = |tenant: Uuid| RequestLimits {
        tenant_id: tenant,
        rules: vec![(
            CounterId::Key {
                tenant,
                key: Uuid::now_v7(),
            },
            LimitRule {
                level: Level::Key,
                rate: Some(1),
                ..rule()
            },
        )],
        prices: Default::default(),
    };
    let (mine, theirs) = (key_rules(tenant), key_rules(other));
    let period = Period::of(Utc::now());
    let until = Instant::now() + Duration::from_secs(60);
    let mut refused = Vec::new();
    for l in [&mine, &theirs] {
        let items = plan(l, &config, period, UNKNOWN_ROWS);
        let d = denial(&items[0], 1_000_000, Utc::now());
        limiter.inner.remember_refusal(&items[0], until, d);
        refused.push(items);
    }
    assert!(limiter.inner.cached_refusal(&refused[0]).is_some());
    limiter.invalidate_tenant(tenant);
    assert!(limiter.inner.cached_refusal(&refused[0]).is_none());
    // Another tenant's refusal stays.
    assert!(limiter.inner.cached_refusal(&refused[1]).is_some());
}

/// A private `redis-server` on a free loopback port, stopped when dropped.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/setup.sh)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }

    fn limiter(&self) -> Limiter {
        let config = LimitsConfig {
            backend: crate::config::LimiterBackend::Redis,
            redis_timeout_ms: 1000,
            ..LimitsConfig::default()
        };
        let url = format!("redis://127.0.0.1:{}/", self.port);
        let client = ::redis::Client::open(url).unwrap();
        Limiter::new(&config, Some(super::RedisEndpoint::Single(client))).unwrap()
    }

    async fn get(&self, key: &str) -> Option<i64> {
        let client = ::redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        ::redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn no_database() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap()
}

/// A finished request's slot and settlement are applied by the tenant's next admission call,
/// before it checks: with one slot, a request right after another finished is admitted, and
/// the quota counter holds what was used, not what was reserved.
#[tokio::test]
async fn the_next_admission_carries_the_releases() {
    let redis = PrivateRedis::start();
    let limiter = redis.limiter();
    let pool = no_database();
    let l = limits(LimitRule {
        concurrency: Some(1),
        monthly_inference_quota: Some(1_000),
        ..rule()
    });
    let counter = l.rules[0].0.clone();
    let quota_key = super::plan::redis_key(&counter, &format!("q:{}", Period::of(Utc::now())));
    // The month's counter as PostgreSQL's rollups would have rebuilt it.
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(&quota_key)
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    let rows = |n| Demand::Inference { rows: Some(n) };
    let first = match limiter.admit(&pool, Uuid::now_v7(), &l, rows(10)).await {
        Admission::Admitted(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(redis.get(&quota_key).await, Some(110));
    match limiter.admit(&pool, Uuid::now_v7(), &l, rows(10)).await {
        Admission::Denied(d) => assert!(d.message.starts_with("concurrency limit reached")),
        other => panic!("{other:?}"),
    }
    // 10 rows reserved, 4 used: the settlement (-6) and the slot wait for the next call ...
    limiter.finish(first, true, 4, 0, &l.prices);
    assert_eq!(limiter.inner.pending_releases(), 2);
    // ... which applies them before it decides: admitted, and 100 + 4 + 5 reserved.
    let second = match limiter.admit(&pool, Uuid::now_v7(), &l, rows(5)).await {
        Admission::Admitted(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(redis.get(&quota_key).await, Some(109));
    assert_eq!(limiter.inner.pending_releases(), 0);
    assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 1);
    // Nothing else comes: the releases go on their own within RELEASE_FLUSH.
    limiter.finish(second, true, 5, 0, &l.prices);
    tokio::time::sleep(super::release::RELEASE_FLUSH * 10).await;
    assert_eq!(limiter.concurrency_in_use(&counter).await.unwrap(), 0);
    assert_eq!(redis.get(&quota_key).await, Some(109));
}

/// 32 clients of two tenants, each tenant with 4 slots, on a multi-threaded runtime: no more
/// than 4 of a tenant's requests are ever in flight, every request is either admitted or
/// refused by concurrency, and once all are done no slot is left taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_releases_are_exact_under_concurrency() {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::Arc;
    let redis = PrivateRedis::start();
    let limiter = redis.limiter();
    let pool = no_database();
    const SLOTS: i64 = 4;
    let tenants: Vec<Arc<RequestLimits>> = (0..2)
        .map(|_| {
            Arc::new(limits(LimitRule {
                concurrency: Some(SLOTS as i32),
                ..rule()
            }))
        })
        .collect();
    let in_flight: Arc<Vec<AtomicI64>> = Arc::new((0..2).map(|_| AtomicI64::new(0)).collect());
    let most = Arc::new(AtomicI64::new(0));
    let (admitted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for c in 0..32 {
        let t = c % 2;
        let (limiter, pool, l) = (limiter.clone(), pool.clone(), tenants[t].clone());
        let (in_flight, most) = (in_flight.clone(), most.clone());
        let (admitted, refused) = (admitted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..50u64 {
                match limiter.admit(&pool, Uuid::now_v7(), &l, UNKNOWN_ROWS).await {
                    Admission::Admitted(p) => {
                        let n = in_flight[t].fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_micros(200 * (round % 3))).await;
                        in_flight[t].fetch_sub(1, Ordering::SeqCst);
                        if round % 2 == 0 {
                            limiter.finish(p, true, 1, 0, &l.prices);
                        } else {
                            drop(p); // released as unfinished
                        }
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Admission::Denied(d) => {
                        assert!(d.message.starts_with("concurrency limit reached"), "{d:?}");
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (admitted, refused) = (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    assert_eq!(admitted + refused, 32 * 50);
    assert!(admitted >= 100, "only {admitted} admitted");
    assert!(
        most.load(Ordering::SeqCst) <= SLOTS,
        "{} in flight",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(limiter.stats().redis_errors.load(Ordering::Relaxed), 0);
    tokio::time::sleep(super::release::RELEASE_FLUSH * 10).await;
    for l in &tenants {
        assert_eq!(limiter.concurrency_in_use(&l.rules[0].0).await.unwrap(), 0);
    }
}
