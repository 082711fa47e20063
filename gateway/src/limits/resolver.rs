//! The limits of a request, loaded from PostgreSQL (rules from [`crate::store`], the model's
//! price from the billing crate) and cached in process until an admin change is announced
//! (`crate::invalidation`) or the TTL passes; while PostgreSQL cannot be reached, the last
//! answer is served up to a stale-if-error bound (`crate::cache`, `crate::breaker`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::rules::{resolve, RequestLimits};
use crate::breaker::{Breaker, LookupError};
use crate::cache::TtlCache;
use crate::store;

/// Load the rules that may apply to `tenant_id` (its plan's, its own, `key`'s), resolve them
/// for `model`, and, when a budget applies, the price of `model` under the tenant's plan.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn load(
    pool: &PgPool,
    tenant_id: Uuid,
    key: Option<Uuid>,
    model: Option<&str>,
) -> Result<RequestLimits, sqlx::Error> {
    let rules = store::request_rules(pool, tenant_id, key).await?;
    let rules = resolve(&rules, tenant_id, key, model);
    let needs_prices = rules
        .iter()
        .any(|(_, r)| r.monthly_budget_micro_usd.is_some());
    let prices = if needs_prices {
        maas_billing::plans::tenant_price(pool, tenant_id, model)
            .await?
            .unwrap_or_default()
    } else {
        Default::default()
    };
    Ok(RequestLimits {
        tenant_id,
        rules,
        prices,
    })
}

/// Resolved limits per (tenant, key, model), cached for the auth cache TTL and dropped when an
/// admin change is announced.
pub struct LimitResolver {
    cache: TtlCache<RequestLimits>,
    breaker: Breaker,
}

impl LimitResolver {
    /// A resolver caching for `ttl`, at most `capacity` entries (no stale answers).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        LimitResolver {
            cache: TtlCache::new(ttl, capacity),
            breaker: Breaker::new(Duration::ZERO),
        }
    }

    /// The same, serving an answer up to `stale` past its TTL while PostgreSQL fails, and
    /// asking PostgreSQL again at most every `retry` meanwhile.
    pub fn with_stale_if_error(mut self, stale: Duration, retry: Duration) -> Self {
        self.cache = self.cache.with_stale_if_error(stale);
        self.breaker = Breaker::new(retry);
        self
    }

    /// The limits of a request by `key` (if any) of `tenant_id` for `model` (if any).
    ///
    /// # Errors
    /// When PostgreSQL fails (or is not tried, [`LookupError::NotTried`]) and no answer, fresh
    /// or stale, is cached.
    pub async fn limits(
        &self,
        pool: &PgPool,
        tenant_id: Uuid,
        key: Option<Uuid>,
        model: Option<&str>,
    ) -> Result<Arc<RequestLimits>, LookupError> {
        let cache_key = format!(
            "{tenant_id}/{}/{}",
            key.map(|k| k.to_string()).unwrap_or_default(),
            model.unwrap_or("")
        );
        if let Some(Some(hit)) = self.cache.get(&cache_key) {
            return Ok(hit);
        }
        match self.breaker.run(load(pool, tenant_id, key, model)).await {
            Ok(limits) => {
                let limits = Arc::new(limits);
                self.cache.insert(cache_key, Some(limits.clone()));
                Ok(limits)
            }
            Err(e) => match self.cache.get_stale(&cache_key) {
                Some(Some(stale)) => Ok(stale),
                _ => Err(e),
            },
        }
    }

    /// Forget the cached limits of `tenant_id`.
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        self.cache.evict(|l| l.tenant_id == tenant_id);
    }

    /// Mark every cached limit outdated (served again only stale, while PostgreSQL is down).
    pub fn invalidate_all(&self) {
        self.cache.clear();
    }
}
