//! Pricing plans: per-model prices in integer micro-USD and included units (`plans`,
//! `plan_prices`; migration `20261129000003_usage_partitioned.sql`).
//!
//! A tenant's plan is `tenants.plan` (default `default`, a free plan). A price row names a
//! model or `*`, which prices every model of the plan without its own row.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::BillingError;

/// Model name of the catch-all price row of a plan.
pub const ANY_MODEL: &str = "*";

/// The price of one model in a plan. Money is integer micro-USD (1 USD = 1,000,000);
/// included units are per model per calendar month (UTC), consumed before anything is charged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelPrice {
    /// Model name, or [`ANY_MODEL`].
    pub model: String,
    /// Price of one billable (2xx) request.
    pub per_request_micro_usd: i64,
    /// Price of 1,000 inferences (rows processed, the backend's inference count).
    pub per_1k_inferences_micro_usd: i64,
    /// Price of one second of backend compute (`compute_us` / 1,000,000).
    pub per_compute_second_micro_usd: i64,
    /// Billable requests per month at no charge.
    pub included_requests: i64,
    /// Inferences per month at no charge.
    pub included_inferences: i64,
    /// Compute microseconds per month at no charge.
    pub included_compute_us: i64,
}

impl ModelPrice {
    /// List price of `requests` billable requests with `inference_count` rows and `compute_us`
    /// microseconds of compute, in thousandths of a micro-USD, ignoring included units (what a
    /// monthly budget counts). Exact for the request and inference terms, floor for compute;
    /// saturating, never overflowing.
    pub fn list_cost_milli(&self, requests: i64, inference_count: i64, compute_us: i64) -> i64 {
        requests
            .saturating_mul(self.per_request_micro_usd)
            .saturating_mul(1000)
            .saturating_add(inference_count.saturating_mul(self.per_1k_inferences_micro_usd))
            .saturating_add(compute_us.saturating_mul(self.per_compute_second_micro_usd) / 1000)
    }
}

/// The price of `model` (`None`: the plan's [`ANY_MODEL`] row) under tenant `tenant_id`'s plan:
/// the model's own row, else the `*` row; `None` when the plan prices neither (or the tenant
/// does not exist).
///
/// # Errors
/// Any database error.
pub async fn tenant_price(
    pool: &PgPool,
    tenant_id: Uuid,
    model: Option<&str>,
) -> Result<Option<ModelPrice>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.model, p.per_request_micro_usd, p.per_1k_inferences_micro_usd, \
                p.per_compute_second_micro_usd, p.included_requests, p.included_inferences, \
                p.included_compute_us \
         FROM plan_prices p JOIN tenants t ON t.plan = p.plan \
         WHERE t.id = $1 AND p.model IN ($2, '*') \
         ORDER BY (p.model = '*') LIMIT 1",
    )
    .bind(tenant_id)
    .bind(model.unwrap_or(ANY_MODEL))
    .fetch_optional(pool)
    .await
}

/// Creates `plan` if needed and sets (inserts or replaces) its price for `price.model`.
///
/// # Errors
/// A negative amount ([`BillingError::Invalid`]) or a database error.
pub async fn set_price(pool: &PgPool, plan: &str, price: &ModelPrice) -> Result<(), BillingError> {
    let values = [
        price.per_request_micro_usd,
        price.per_1k_inferences_micro_usd,
        price.per_compute_second_micro_usd,
        price.included_requests,
        price.included_inferences,
        price.included_compute_us,
    ];
    if values.iter().any(|v| *v < 0) {
        return Err(BillingError::Invalid(
            "prices and included units must be >= 0".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO plans (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(plan)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO plan_prices (plan, model, per_request_micro_usd, \
             per_1k_inferences_micro_usd, per_compute_second_micro_usd, included_requests, \
             included_inferences, included_compute_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (plan, model) DO UPDATE SET \
             per_request_micro_usd = EXCLUDED.per_request_micro_usd, \
             per_1k_inferences_micro_usd = EXCLUDED.per_1k_inferences_micro_usd, \
             per_compute_second_micro_usd = EXCLUDED.per_compute_second_micro_usd, \
             included_requests = EXCLUDED.included_requests, \
             included_inferences = EXCLUDED.included_inferences, \
             included_compute_us = EXCLUDED.included_compute_us",
    )
    .bind(plan)
    .bind(&price.model)
    .bind(price.per_request_micro_usd)
    .bind(price.per_1k_inferences_micro_usd)
    .bind(price.per_compute_second_micro_usd)
    .bind(price.included_requests)
    .bind(price.included_inferences)
    .bind(price.included_compute_us)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether plan `plan` exists.
///
/// # Errors
/// Any database error.
pub async fn plan_exists(pool: &PgPool, plan: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM plans WHERE name = $1")
        .bind(plan)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// Every price row of `plan`, by model name.
///
/// # Errors
/// [`BillingError::UnknownPlan`] or a database error.
pub async fn plan_prices(pool: &PgPool, plan: &str) -> Result<Vec<ModelPrice>, BillingError> {
    if !plan_exists(pool, plan).await? {
        return Err(BillingError::UnknownPlan(plan.to_string()));
    }
    Ok(sqlx::query_as(
        "SELECT model, per_request_micro_usd, per_1k_inferences_micro_usd, \
             per_compute_second_micro_usd, included_requests, included_inferences, \
             included_compute_us \
         FROM plan_prices WHERE plan = $1 ORDER BY model",
    )
    .bind(plan)
    .fetch_all(pool)
    .await?)
}

/// A plan's priority level in the backends' fair batchers (`plans.priority`, migration
/// `20261203000100_plan_priority.sql`): 1 to 16, default 1. Its tenants' requests are queued at
/// this level, their weight in the batchers' deficit round robin (rows per round) and the level
/// whose queue timeout applies; the gateway sends it as `x-maas-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i16")]
pub struct PlanPriority(i16);

impl PlanPriority {
    /// The level of a plan created without one.
    pub const DEFAULT: PlanPriority = PlanPriority(1);
    /// The highest level.
    pub const MAX: i16 = 16;

    /// The level as stored.
    pub fn level(self) -> i16 {
        self.0
    }
}

impl TryFrom<i64> for PlanPriority {
    type Error = BillingError;

    /// [`BillingError::Invalid`] outside `1..=16`.
    fn try_from(level: i64) -> Result<Self, BillingError> {
        i16::try_from(level)
            .ok()
            .filter(|l| (1..=Self::MAX).contains(l))
            .map(PlanPriority)
            .ok_or_else(|| {
                BillingError::Invalid(format!(
                    "priority must be an integer from 1 to {} (the plan's level in the backends' fair batchers), got {level}",
                    Self::MAX
                ))
            })
    }
}

impl From<PlanPriority> for i16 {
    fn from(p: PlanPriority) -> i16 {
        p.0
    }
}

/// Creates `plan` if it does not exist (description empty and priority
/// [`PlanPriority::DEFAULT`] unless given) and sets the fields given.
///
/// # Errors
/// Any database error.
pub async fn set_plan(
    pool: &PgPool,
    plan: &str,
    description: Option<&str>,
    priority: Option<PlanPriority>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plans (name, description, priority) \
         VALUES ($1, coalesce($2, ''), coalesce($3, 1::smallint)) \
         ON CONFLICT (name) DO UPDATE SET \
             description = coalesce($2, plans.description), \
             priority = coalesce($3, plans.priority)",
    )
    .bind(plan)
    .bind(description)
    .bind(priority.map(PlanPriority::level))
    .execute(pool)
    .await?;
    Ok(())
}

/// A plan with its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plan {
    /// Plan name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Priority level of the plan's tenants in the backends' fair batchers, 1 to 16.
    #[cfg_attr(feature = "openapi", schema(value_type = i16, minimum = 1, maximum = 16))]
    pub priority: PlanPriority,
    /// Its price rows, by model name (`*`: every model without its own row).
    pub prices: Vec<ModelPrice>,
}

/// Every plan with its prices, by name.
///
/// # Errors
/// Any database error.
pub async fn list_plans(pool: &PgPool) -> Result<Vec<Plan>, sqlx::Error> {
    let plans: Vec<(String, String, i16)> =
        sqlx::query_as("SELECT name, description, priority FROM plans ORDER BY name")
            .fetch_all(pool)
            .await?;
    #[derive(sqlx::FromRow)]
    struct PriceRow {
        plan: String,
        #[sqlx(flatten)]
        price: ModelPrice,
    }
    let rows: Vec<PriceRow> = sqlx::query_as(
        "SELECT plan, model, per_request_micro_usd, per_1k_inferences_micro_usd, \
             per_compute_second_micro_usd, included_requests, included_inferences, \
             included_compute_us \
         FROM plan_prices ORDER BY plan, model",
    )
    .fetch_all(pool)
    .await?;
    Ok(plans
        .into_iter()
        .map(|(name, description, priority)| Plan {
            // The column's CHECK keeps it in 1..=16.
            priority: PlanPriority::try_from(i64::from(priority)).unwrap_or(PlanPriority::DEFAULT),
            prices: rows
                .iter()
                .filter(|r| r.plan == name)
                .map(|r| r.price.clone())
                .collect(),
            name,
            description,
        })
        .collect())
}

/// Puts tenant `tenant` (by name) on `plan`.
///
/// # Errors
/// [`BillingError::UnknownTenant`], [`BillingError::UnknownPlan`] or a database error.
pub async fn assign_plan(pool: &PgPool, tenant: &str, plan: &str) -> Result<(), BillingError> {
    plan_prices(pool, plan).await?;
    let done = sqlx::query("UPDATE tenants SET plan = $2 WHERE name = $1")
        .bind(tenant)
        .bind(plan)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(BillingError::UnknownTenant(tenant.to_string()));
    }
    Ok(())
}

/// The price that applies to `model` among `prices`: its own row, else the `*` row.
pub fn price_for<'a>(prices: &'a [ModelPrice], model: &str) -> Option<&'a ModelPrice> {
    prices
        .iter()
        .find(|p| p.model == model)
        .or_else(|| prices.iter().find(|p| p.model == ANY_MODEL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_cost_counts_every_term_in_milli_micro_usd() {
        let price = ModelPrice {
            per_request_micro_usd: 3,
            per_1k_inferences_micro_usd: 7,
            per_compute_second_micro_usd: 1_000_000,
            ..ModelPrice::default()
        };
        // 2 requests: 6,000; 10 rows at 7 per 1,000: 70; 1,500 us at 1 USD/s: 1,500,000.
        assert_eq!(price.list_cost_milli(2, 10, 1_500), 6_000 + 70 + 1_500_000);
        assert_eq!(price.list_cost_milli(i64::MAX, 1, 1), i64::MAX);
    }
}
