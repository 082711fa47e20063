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
