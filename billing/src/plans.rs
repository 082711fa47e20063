//! Pricing plans: per-model prices in integer micro-USD and included units (`plans`,
//! `plan_prices`; migration `20261129000003_usage_partitioned.sql`).
//!
//! A tenant's plan is `tenants.plan` (default `default`, a free plan). A price row names a
//! model or `*`, which prices every model of the plan without its own row.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

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

/// Every price row of `plan`, by model name.
///
/// # Errors
/// [`BillingError::UnknownPlan`] or a database error.
pub async fn plan_prices(pool: &PgPool, plan: &str) -> Result<Vec<ModelPrice>, BillingError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT name FROM plans WHERE name = $1")
        .bind(plan)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
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
