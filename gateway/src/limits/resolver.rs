//! The limits of a request, loaded from PostgreSQL (rules from [`crate::store`], the model's
//! price from the billing crate) and cached in process until an admin change is announced
//! (`crate::invalidation`) or the TTL passes.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::rules::{resolve, RequestLimits};
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
