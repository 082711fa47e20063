//! Monthly counters' start values: a quota or budget counter missing from Redis (a restart, a
//! new month) or from the local limiter starts from the period's billable usage in PostgreSQL's
//! hourly rollups, priced by the tenant's plan for a budget.

use chrono::Utc;
use maas_billing::{rollup_totals, Period};
use sqlx::PgPool;

use super::plan::{Item, Kind};

/// The month's total of `item`'s counter (quota: inference units; budget: thousandths of
/// micro-USD at the plan's list prices, the model's or the plan's `*` price for tenant-wide and
/// per-key counters). `None` for other kinds.
///
/// # Errors
/// When PostgreSQL fails.
pub(super) async fn month_total(pool: &PgPool, item: &Item) -> Result<Option<i64>, sqlx::Error> {
    let from = Period::of(Utc::now()).start();
    let totals = rollup_totals(pool, item.counter.rollup_filter(), from).await?;
    Ok(match item.kind {
        Kind::Quota { .. } => Some(totals.inference_count),
        Kind::Budget { .. } => {
            let prices = maas_billing::plans::tenant_price(
                pool,
                item.counter.tenant(),
                item.counter.model(),
            )
            .await?
            .unwrap_or_default();
            Some(prices.list_cost_milli(
                totals.billable_requests,
                totals.inference_count,
                totals.compute_us,
            ))
        }
        _ => None,
    })
}
