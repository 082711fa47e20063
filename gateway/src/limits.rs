//! Which limits apply to a request: rules from `rate_limits` (migration
//! `20261129000004_rate_limits.sql`) resolved for one tenant, key and model, with the plan's
//! prices for budgets, cached in process.
//!
//! Three counters may govern a request ([`Level`]): the API key's own, the tenant's, and the
//! tenant's for the model. For each, the most specific rule wins (key > tenant > plan; for the
//! model level a rule naming the model beats a rule for every model at the same owner); a rule
//! is taken whole, not merged field by field. A level without a rule has no limit.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cache::TtlCache;

/// The counter a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Each API key's own counter (JWT requests have no key and skip it).
    Key,
    /// The tenant's counter: every key and model together.
    Tenant,
    /// The tenant's counter for one model.
    Model,
}

impl Level {
    /// `key`, `tenant` or `model`, as stored and as used in header item names.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Key => "key",
            Level::Tenant => "tenant",
            Level::Model => "model",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "key" => Some(Level::Key),
            "tenant" => Some(Level::Tenant),
            "model" => Some(Level::Model),
            _ => None,
        }
    }
}

/// One rule: the limits of one counter (`None`: no limit of that kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitRule {
    /// Which counter.
    pub level: Level,
    /// For `level = model`: the model; `None`: every model, each counted apart.
    #[serde(default)]
    pub model: Option<String>,
    /// GCRA rate: requests per `period_s`.
    #[serde(default)]
    pub rate: Option<i32>,
    /// Period of `rate`, seconds (default 1).
    #[serde(default = "one")]
    pub period_s: i32,
    /// Requests that may arrive at once (default 1 when `rate` is set).
    #[serde(default)]
    pub burst: Option<i32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrency: Option<i32>,
    /// Inference units (rows) per calendar month (UTC).
    #[serde(default)]
    pub monthly_inference_quota: Option<i64>,
    /// List-price value of the month's usage (UTC), micro-USD, priced by the tenant's plan.
    #[serde(default)]
    pub monthly_budget_micro_usd: Option<i64>,
}

fn one() -> i32 {
    1
}

impl LimitRule {
    /// Check the values a client sent (400 text on error).
    ///
    /// # Errors
    /// A non-positive rate, period, burst or concurrency, a negative quota or budget, a burst
    /// without a rate, or a model on a level other than `model`.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: Option<i32>| match v {
            Some(v) if v <= 0 => Err(format!("{name} must be a positive integer, got {v}")),
            _ => Ok(()),
        };
        positive("rate", self.rate)?;
        positive("period_s", Some(self.period_s))?;
        positive("burst", self.burst)?;
        positive("concurrency", self.concurrency)?;
        for (name, v) in [
            ("monthly_inference_quota", self.monthly_inference_quota),
            ("monthly_budget_micro_usd", self.monthly_budget_micro_usd),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(format!("{name} must not be negative"));
            }
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err("burst needs a rate".into());
        }
        if self.model.is_some() && self.level != Level::Model {
            return Err("model may only be set on level \"model\"".into());
        }
        if self.model.as_deref() == Some("") {
            return Err("model must not be empty (omit it for every model)".into());
        }
        Ok(())
    }
}

/// Who a rule belongs to, from least to most specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// The tenant's plan.
    Plan,
    /// The tenant.
    Tenant,
    /// The API key.
    Key,
}

/// The plan's prices for a model, micro-USD (`plan_prices`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    /// Per request.
    pub per_request: i64,
    /// Per 1,000 inference units.
    pub per_1k_inferences: i64,
    /// Per second of backend compute.
    pub per_compute_second: i64,
}

impl Prices {
    /// List price of one request, in thousandths of a micro-USD (exact for the first two terms,
    /// floor for compute time).
    pub fn cost_milli(&self, requests: i64, inference_count: i64, compute_us: i64) -> i64 {
        requests
            .saturating_mul(self.per_request)
            .saturating_mul(1000)
            .saturating_add(inference_count.saturating_mul(self.per_1k_inferences))
            .saturating_add(compute_us.saturating_mul(self.per_compute_second) / 1000)
    }
}

/// The rules that govern one request, one per level at most, and the prices for its budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLimits {
    /// Tenant the counters belong to.
    pub tenant_id: Uuid,
    /// `(level, counter id, rule)`: the counter id names the counter in Redis, e.g.
    /// `k:<key id>`, `t:<tenant id>`, `m:<tenant id>:<model>`.
    pub rules: Vec<(Level, String, LimitRule)>,
    /// Prices of the model under the tenant's plan.
    pub prices: Prices,
}

impl RequestLimits {
    /// Whether nothing limits the request.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Pick, for each level, the most specific of `rules` (owner and rule) that applies to a
/// request by `key` (if any) for `model` (if any). Pure; the counter ids use `tenant_id`.
pub fn resolve(
    rules: &[(Owner, LimitRule)],
    tenant_id: Uuid,
    key: Option<Uuid>,
    model: Option<&str>,
) -> Vec<(Level, String, LimitRule)> {
    let mut out = Vec::new();
    let best = |level: Level| {
        rules
            .iter()
            .filter(|(owner, r)| {
                r.level == level
                    && (*owner != Owner::Key || key.is_some())
                    && (level != Level::Model || r.model.is_none() || r.model.as_deref() == model)
            })
            .max_by_key(|(owner, r)| (*owner, r.model.is_some()))
            .map(|(_, r)| r.clone())
    };
    if let Some(key) = key {
        if let Some(r) = best(Level::Key) {
            out.push((Level::Key, format!("k:{key}"), r));
        }
    }
    if let Some(r) = best(Level::Tenant) {
        out.push((Level::Tenant, format!("t:{tenant_id}"), r));
    }
    if let Some(model) = model {
        if let Some(r) = best(Level::Model) {
            out.push((Level::Model, format!("m:{tenant_id}:{model}"), r));
        }
    }
    out
}

/// One `rate_limits` row as selected (`owner_rank`: 2 key, 1 tenant, 0 plan; absent: 0).
#[derive(sqlx::FromRow)]
pub(crate) struct RuleRow {
    #[sqlx(default)]
    owner_rank: i32,
    level: String,
    model: Option<String>,
    rate: Option<i32>,
    period_s: i32,
    burst: Option<i32>,
    concurrency: Option<i32>,
    monthly_inference_quota: Option<i64>,
    monthly_budget_micro_usd: Option<i64>,
}

impl RuleRow {
    pub(crate) fn into_rule(self) -> Option<(Owner, LimitRule)> {
        let owner = match self.owner_rank {
            2 => Owner::Key,
            1 => Owner::Tenant,
            _ => Owner::Plan,
        };
        Some((
            owner,
            LimitRule {
                level: Level::parse(&self.level)?,
                model: self.model,
                rate: self.rate,
                period_s: self.period_s,
                burst: self.burst,
                concurrency: self.concurrency,
                monthly_inference_quota: self.monthly_inference_quota,
                monthly_budget_micro_usd: self.monthly_budget_micro_usd,
            },
        ))
    }
}

/// Load the rules that may apply to `tenant_id` (its plan's, its own, `key`'s) and the prices of
/// `model` under its plan.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn load(
    pool: &PgPool,
    tenant_id: Uuid,
    key: Option<Uuid>,
    model: Option<&str>,
) -> Result<RequestLimits, sqlx::Error> {
    let rows: Vec<RuleRow> = sqlx::query_as(
        "SELECT CASE WHEN r.api_key_id IS NOT NULL THEN 2 \
                     WHEN r.tenant_id IS NOT NULL THEN 1 ELSE 0 END AS owner_rank, \
                r.level, r.model, r.rate, r.period_s, r.burst, r.concurrency, \
                r.monthly_inference_quota, r.monthly_budget_micro_usd \
         FROM rate_limits r JOIN tenants t ON t.id = $1 \
         WHERE r.plan = t.plan OR r.tenant_id = $1 OR r.api_key_id = $2",
    )
    .bind(tenant_id)
    .bind(key)
    .fetch_all(pool)
    .await?;
    let rules: Vec<(Owner, LimitRule)> = rows.into_iter().filter_map(RuleRow::into_rule).collect();
    let rules = resolve(&rules, tenant_id, key, model);
    let needs_prices = rules
        .iter()
        .any(|(_, _, r)| r.monthly_budget_micro_usd.is_some());
    let prices = if needs_prices {
        let row: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT p.per_request_micro_usd, p.per_1k_inferences_micro_usd, \
                    p.per_compute_second_micro_usd \
             FROM plan_prices p JOIN tenants t ON t.plan = p.plan \
             WHERE t.id = $1 AND p.model IN ($2, '*') \
             ORDER BY (p.model = '*') LIMIT 1",
        )
        .bind(tenant_id)
        .bind(model.unwrap_or("*"))
        .fetch_optional(pool)
        .await?;
        row.map(|(a, b, c)| Prices {
            per_request: a,
            per_1k_inferences: b,
            per_compute_second: c,
        })
        .unwrap_or_default()
    } else {
        Prices::default()
    };
    Ok(RequestLimits {
        tenant_id,
        rules,
        prices,
    })
}

/// Resolved limits per (tenant, key, model), cached for the auth cache TTL and dropped when an
/// admin change is announced ([`crate::invalidation`]).
pub struct LimitResolver {
    cache: TtlCache<RequestLimits>,
}

impl LimitResolver {
    /// A resolver caching for `ttl`, at most `capacity` entries.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        LimitResolver {
            cache: TtlCache::new(ttl, capacity),
        }
    }

    /// The limits of a request by `key` (if any) of `tenant_id` for `model` (if any).
    ///
    /// # Errors
    /// When PostgreSQL fails (not cached).
    pub async fn limits(
        &self,
        pool: &PgPool,
        tenant_id: Uuid,
        key: Option<Uuid>,
        model: Option<&str>,
    ) -> Result<Arc<RequestLimits>, sqlx::Error> {
        let cache_key = format!(
            "{tenant_id}/{}/{}",
            key.map(|k| k.to_string()).unwrap_or_default(),
            model.unwrap_or("")
        );
        if let Some(Some(hit)) = self.cache.get(&cache_key) {
            return Ok(hit);
        }
        let limits = Arc::new(load(pool, tenant_id, key, model).await?);
        self.cache.insert(cache_key, Some(limits.clone()));
        Ok(limits)
    }

    /// Forget the cached limits of `tenant_id`.
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        self.cache.evict(|l| l.tenant_id == tenant_id);
    }

    /// Forget every cached limit.
    pub fn invalidate_all(&self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(level: Level, model: Option<&str>, rate: i32) -> LimitRule {
        LimitRule {
            level,
            model: model.map(str::to_string),
            rate: Some(rate),
            period_s: 1,
            burst: None,
            concurrency: None,
            monthly_inference_quota: None,
            monthly_budget_micro_usd: None,
        }
    }

    #[test]
    fn most_specific_rule_wins_per_level() {
        let t = Uuid::now_v7();
        let k = Uuid::now_v7();
        let rules = vec![
            (Owner::Plan, rule(Level::Key, None, 10)),
            (Owner::Tenant, rule(Level::Key, None, 20)),
            (Owner::Key, rule(Level::Key, None, 30)),
            (Owner::Plan, rule(Level::Tenant, None, 100)),
            (Owner::Plan, rule(Level::Model, None, 5)),
            (Owner::Plan, rule(Level::Model, Some("digits"), 6)),
            (Owner::Tenant, rule(Level::Model, None, 7)),
        ];
        let got = resolve(&rules, t, Some(k), Some("digits"));
        let rates: Vec<(Level, String, Option<i32>)> =
            got.into_iter().map(|(l, c, r)| (l, c, r.rate)).collect();
        assert_eq!(
            rates,
            vec![
                (Level::Key, format!("k:{k}"), Some(30)),
                (Level::Tenant, format!("t:{t}"), Some(100)),
                // The tenant's rule for every model beats the plan's rule naming the model.
                (Level::Model, format!("m:{t}:digits"), Some(7)),
            ]
        );
        // A JWT (no key): no key level, and key-owned rules never apply.
        let got = resolve(&rules, t, None, Some("other"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, Level::Tenant);
        // At the same owner, the rule naming the model wins.
        let rules = vec![
            (Owner::Plan, rule(Level::Model, None, 5)),
            (Owner::Plan, rule(Level::Model, Some("digits"), 6)),
        ];
        assert_eq!(resolve(&rules, t, None, Some("digits"))[0].2.rate, Some(6));
        assert_eq!(resolve(&rules, t, None, Some("seed"))[0].2.rate, Some(5));
        assert!(resolve(&rules, t, None, None).is_empty());
    }

    #[test]
    fn validation_and_prices() {
        let mut r = rule(Level::Key, None, 10);
        assert_eq!(r.validate(), Ok(()));
        r.rate = Some(0);
        assert!(r.validate().unwrap_err().contains("rate"));
        let mut r = rule(Level::Tenant, Some("m"), 1);
        assert!(r.validate().unwrap_err().contains("model"));
        r.model = None;
        r.rate = None;
        r.burst = Some(3);
        assert_eq!(r.validate().unwrap_err(), "burst needs a rate");
        let p = Prices {
            per_request: 10,
            per_1k_inferences: 2000,
            per_compute_second: 500,
        };
        // 10 micro-USD + 3 rows x 2 micro-USD + 1.5 s x 500 micro-USD = 766 micro-USD.
        assert_eq!(p.cost_milli(1, 3, 1_500_000), 766_000);
    }
}
