//! Invoices: one line per model for a tenant and a calendar month (UTC), from the hourly
//! rollups (`usage_hourly`) and the tenant's plan.
//!
//! # Rounding rule
//! No floating point touches money. For each line and each of its three charges:
//!
//! ```text
//! billed units   = max(0, used units - included units)
//! requests       = billed requests * per_request_micro_usd                      (exact)
//! inferences     = round_half_up(billed inferences * per_1k_inferences / 1,000)
//! compute        = round_half_up(billed compute_us * per_compute_second / 1,000,000)
//! line amount    = requests + inferences + compute
//! invoice total  = sum of the line amounts
//! ```
//!
//! Each charge is rounded once, half up, to a whole micro-USD, from the month's totals (never
//! per event or per hour); products are computed in 128-bit integers so they cannot overflow.
//! Only billable (2xx) requests and their inferences and compute are charged.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::period::Period;
use crate::plans::{plan_prices, price_for, ModelPrice};
use crate::BillingError;

/// A model's billable usage over a period (2xx requests only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelUsage {
    /// Model name.
    pub model: String,
    /// Billable requests.
    pub requests: i64,
    /// Inferences (rows processed).
    pub inference_count: i64,
    /// Backend compute, microseconds.
    pub compute_us: i64,
}

/// One invoice line: a model's usage, what is billed after included units, and the charges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvoiceLine {
    /// The usage.
    pub usage: ModelUsage,
    /// The price row applied (its `model` may be `*`).
    pub price: ModelPrice,
    /// Requests beyond the included ones.
    pub billed_requests: i64,
    /// Inferences beyond the included ones.
    pub billed_inferences: i64,
    /// Compute microseconds beyond the included ones.
    pub billed_compute_us: i64,
    /// `billed_requests * per_request_micro_usd`.
    pub requests_micro_usd: i64,
    /// `billed_inferences * per_1k_inferences_micro_usd / 1000`, rounded half up.
    pub inferences_micro_usd: i64,
    /// `billed_compute_us * per_compute_second_micro_usd / 1e6`, rounded half up.
    pub compute_micro_usd: i64,
    /// Sum of the three charges.
    pub amount_micro_usd: i64,
}

/// An invoice of one tenant for one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invoice {
    /// Tenant name.
    pub tenant: String,
    /// Tenant id.
    pub tenant_id: Uuid,
    /// The plan priced with.
    pub plan: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Start of the period (UTC, inclusive).
    pub from: DateTime<Utc>,
    /// End of the period (UTC, exclusive).
    pub to: DateTime<Utc>,
    /// One line per model with billable usage, by model name.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines, micro-USD.
    pub total_micro_usd: i64,
}

/// `round_half_up(units * price / divisor)` in integers (all operands >= 0).
///
/// # Errors
/// [`BillingError::Invalid`] when the result does not fit in an `i64`.
pub fn charge(units: i64, price: i64, divisor: i64) -> Result<i64, BillingError> {
    let product = i128::from(units) * i128::from(price);
    let d = i128::from(divisor);
    let rounded = (product + d / 2) / d;
    i64::try_from(rounded).map_err(|_| BillingError::Invalid("charge overflows i64".into()))
}

/// Prices one model's usage (see the module's rounding rule).
///
/// # Errors
/// [`BillingError::Invalid`] on overflow.
pub fn price_line(usage: ModelUsage, price: &ModelPrice) -> Result<InvoiceLine, BillingError> {
    let billed_requests = (usage.requests - price.included_requests).max(0);
    let billed_inferences = (usage.inference_count - price.included_inferences).max(0);
    let billed_compute_us = (usage.compute_us - price.included_compute_us).max(0);
    let requests_micro_usd = charge(billed_requests, price.per_request_micro_usd, 1)?;
    let inferences_micro_usd = charge(billed_inferences, price.per_1k_inferences_micro_usd, 1000)?;
    let compute_micro_usd = charge(
        billed_compute_us,
        price.per_compute_second_micro_usd,
        1_000_000,
    )?;
    let amount_micro_usd = requests_micro_usd
        .checked_add(inferences_micro_usd)
        .and_then(|a| a.checked_add(compute_micro_usd))
        .ok_or_else(|| BillingError::Invalid("line amount overflows i64".into()))?;
    Ok(InvoiceLine {
        usage,
        price: price.clone(),
        billed_requests,
        billed_inferences,
        billed_compute_us,
        requests_micro_usd,
        inferences_micro_usd,
        compute_micro_usd,
        amount_micro_usd,
    })
}

/// Builds the invoice of tenant `tenant` (by name) for `period` from `usage_hourly`.
///
/// # Errors
/// [`BillingError::UnknownTenant`], [`BillingError::UnknownPlan`], [`BillingError::NoPrice`]
/// (a model with billable usage and neither its own price nor a `*` row), or a database error.
pub async fn build_invoice(
    pool: &PgPool,
    tenant: &str,
    period: Period,
) -> Result<Invoice, BillingError> {
    let row: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, plan FROM tenants WHERE name = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    let (tenant_id, plan) = row.ok_or_else(|| BillingError::UnknownTenant(tenant.to_string()))?;
    let prices = plan_prices(pool, &plan).await?;
    let (from, to) = (period.start(), period.end());
    let usage: Vec<(Option<String>, i64, i64, i64)> = sqlx::query_as(
        "SELECT model, sum(billable_requests)::bigint, sum(inference_count)::bigint, \
             sum(compute_us)::bigint \
         FROM usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 \
         GROUP BY model HAVING sum(billable_requests) > 0 ORDER BY model",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut lines = Vec::new();
    let mut unpriced = Vec::new();
    for (model, requests, inference_count, compute_us) in usage {
        let model = model.unwrap_or_default();
        let Some(price) = price_for(&prices, &model) else {
            unpriced.push(model);
            continue;
        };
        lines.push(price_line(
            ModelUsage {
                model,
                requests,
                inference_count,
                compute_us,
            },
            price,
        )?);
    }
    if !unpriced.is_empty() {
        return Err(BillingError::NoPrice {
            plan,
            models: unpriced,
        });
    }
    let total_micro_usd = lines
        .iter()
        .try_fold(0i64, |acc, l| acc.checked_add(l.amount_micro_usd))
        .ok_or_else(|| BillingError::Invalid("invoice total overflows i64".into()))?;
    Ok(Invoice {
        tenant: tenant.to_string(),
        tenant_id,
        plan,
        period: period.to_string(),
        from,
        to,
        lines,
        total_micro_usd,
    })
}

/// `micro` as a decimal USD string with six decimals (`1234567` -> `"1.234567"`), for display.
pub fn format_usd(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let abs = micro.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_round_half_up_once() {
        assert_eq!(charge(1, 500, 1000).unwrap(), 1); // 0.5 -> 1
        assert_eq!(charge(1, 499, 1000).unwrap(), 0);
        assert_eq!(charge(3, 1, 2).unwrap(), 2); // 1.5 -> 2
        assert!(charge(i64::MAX, 2, 1).is_err());
        assert_eq!(format_usd(1_234_567), "1.234567");
        assert_eq!(format_usd(5), "0.000005");
    }

    #[test]
    fn included_units_are_consumed_first() {
        let price = ModelPrice {
            model: "m".into(),
            per_request_micro_usd: 100,
            per_1k_inferences_micro_usd: 2_500,
            per_compute_second_micro_usd: 30_000,
            included_requests: 10,
            included_inferences: 1_000,
            included_compute_us: 0,
        };
        let line = price_line(
            ModelUsage {
                model: "m".into(),
                requests: 5,
                inference_count: 1_333,
                compute_us: 1_500_001,
            },
            &price,
        )
        .unwrap();
        assert_eq!(line.billed_requests, 0);
        assert_eq!(line.billed_inferences, 333);
        assert_eq!(line.inferences_micro_usd, 833); // 832.5 -> 833
        assert_eq!(line.compute_micro_usd, 45_000); // 45000.03 -> 45000
        assert_eq!(line.amount_micro_usd, 45_833);
    }
}
