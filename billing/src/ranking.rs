//! Every tenant's usage and list-price spend over a range, highest spend first: the operator's
//! ranking of tenants, from the hourly rollups in one statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One tenant's line of the ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantSpend {
    /// Tenant id.
    pub tenant_id: Uuid,
    /// Tenant name.
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Its plan.
    pub plan: String,
    /// Every request in the range.
    pub requests: i64,
    /// Requests answered 2xx.
    pub billable_requests: i64,
    /// List-price value of the billable usage (no included units), micro-USD, each model
    /// priced by its own row of the plan or the plan's `*` row (unpriced models count 0).
    pub spend_micro_usd: i64,
}

/// Every tenant with its usage and spend over the hours in `[from, to)`, highest spend first,
/// then by name.
///
/// # Errors
/// Any database error.
pub async fn spend_ranking(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<TenantSpend>, sqlx::Error> {
    sqlx::query_as(
        // Per tenant, a range scan of the rollup's (tenant_id, hour) index (a scan by hour
        // alone would read every tenant's rows of every month).
        "SELECT t.id AS tenant_id, t.name, t.status, t.plan, \
                coalesce(sum(u.requests), 0)::bigint AS requests, \
                coalesce(sum(u.billable), 0)::bigint AS billable_requests, \
                floor(coalesce(sum(u.billable * p.per_request_micro_usd \
                    + u.inferences * p.per_1k_inferences_micro_usd / 1000.0 \
                    + u.compute_us * p.per_compute_second_micro_usd / 1000000.0), 0))::bigint \
                    AS spend_micro_usd \
         FROM tenants t \
         LEFT JOIN LATERAL ( \
             SELECT h.model, sum(h.requests) AS requests, sum(h.billable_requests) AS billable, \
                    sum(h.inference_count) AS inferences, sum(h.compute_us) AS compute_us \
             FROM usage_hourly h WHERE h.tenant_id = t.id AND h.hour >= $1 AND h.hour < $2 \
             GROUP BY h.model) u ON true \
         LEFT JOIN LATERAL ( \
             SELECT * FROM plan_prices pp WHERE pp.plan = t.plan AND pp.model IN (u.model, '*') \
             ORDER BY pp.model = '*' LIMIT 1) p ON true \
         GROUP BY t.id ORDER BY spend_micro_usd DESC, t.name",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
