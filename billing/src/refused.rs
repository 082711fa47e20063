//! Requests the gateway refused itself, counted per tenant, outcome and UTC minute
//! (`refused_requests`), never stored one row each.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Refusals of one tenant (or of unidentified callers) with one outcome in one UTC minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCount {
    /// The tenant, when the caller could be identified.
    pub tenant_id: Option<Uuid>,
    /// The minute (UTC, truncated to the minute).
    pub minute: DateTime<Utc>,
    /// The gateway's outcome label (`unauthenticated`, `forbidden`, `rate_limited`, ...).
    pub outcome: String,
    /// How many requests.
    pub requests: i64,
}

/// Adds `counts` to `refused_requests` and to the hourly rollup (`usage_hourly.requests` and
/// `error_requests`, key and model NULL), in one statement. Not idempotent: a caller retries
/// only batches that failed (nothing is written then; the statement is atomic).
///
/// # Errors
/// Any database error.
pub async fn add_refused(pool: &PgPool, counts: &[RefusedCount]) -> Result<(), sqlx::Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let tenant: Vec<Option<Uuid>> = counts.iter().map(|c| c.tenant_id).collect();
    let minute: Vec<DateTime<Utc>> = counts.iter().map(|c| c.minute).collect();
    let outcome: Vec<&str> = counts.iter().map(|c| c.outcome.as_str()).collect();
    let requests: Vec<i64> = counts.iter().map(|c| c.requests).collect();
    sqlx::query(
        "WITH c AS ( \
            SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::bigint[]) \
                AS c (tenant_id, minute, outcome, requests) \
        ), r AS ( \
            INSERT INTO refused_requests AS r (tenant_id, minute, outcome, requests) \
            SELECT tenant_id, date_trunc('minute', minute, 'UTC'), outcome, sum(requests) \
            FROM c GROUP BY 1, 2, 3 \
            ON CONFLICT ON CONSTRAINT refused_requests_key \
            DO UPDATE SET requests = r.requests + EXCLUDED.requests \
        ) \
        INSERT INTO usage_hourly AS h (tenant_id, api_key_id, model, hour, requests, \
            error_requests) \
        SELECT tenant_id, NULL::uuid, NULL::text, date_trunc('hour', minute, 'UTC'), \
            sum(requests), sum(requests) \
        FROM c GROUP BY 1, 4 \
        ON CONFLICT ON CONSTRAINT usage_hourly_key DO UPDATE SET \
            requests = h.requests + EXCLUDED.requests, \
            error_requests = h.error_requests + EXCLUDED.error_requests",
    )
    .bind(&tenant)
    .bind(&minute)
    .bind(&outcome)
    .bind(&requests)
    .execute(pool)
    .await?;
    Ok(())
}

/// Refusals of tenant `tenant_id` with `from <= minute < to`, by outcome, sorted by outcome.
///
/// # Errors
/// Any database error.
pub async fn refused_by_outcome(
    pool: &PgPool,
    tenant_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, sum(requests)::bigint FROM refused_requests \
         WHERE tenant_id = $1 AND minute >= $2 AND minute < $3 GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
