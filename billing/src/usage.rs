//! Usage events and their exactly-once store in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// One request as seen by the gateway (the row of `usage_events`).
///
/// Rejected requests (401, 403, 404, ...) are usage events too, with `tenant_id` / `api_key_id`
/// `None` when the caller could not be identified; only 2xx events are billable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Request id (UUIDv7), also returned to the client as `x-request-id`; the dedup key.
    pub request_id: Uuid,
    /// When the gateway received the request (UTC).
    pub started_at: DateTime<Utc>,
    /// The authenticated tenant, if any.
    pub tenant_id: Option<Uuid>,
    /// The API key used, if it was valid.
    pub api_key_id: Option<Uuid>,
    /// Model named in the path (`/v2/models/{model}/...`), if any.
    pub model: Option<String>,
    /// Model version named in the path, if any.
    pub model_version: Option<String>,
    /// HTTP status sent to the client.
    pub http_status: i16,
    /// Rows processed (the batch dimension summed over the request), from the backend's
    /// `x-maas-inference-count` header; 0 when the backend did not run.
    pub inference_count: i64,
    /// Backend compute time in microseconds, from `x-maas-compute-us`; 0 when not run.
    pub compute_us: i64,
    /// Request body bytes received from the client.
    pub request_bytes: i64,
    /// Response body bytes sent to the client.
    pub response_bytes: i64,
    /// Gateway latency in microseconds (request received to response finished).
    pub latency_us: i64,
}

/// Inserts a batch of usage events in one statement (UNNEST arrays), skipping request ids that
/// are already stored, so a replayed batch counts nothing twice.
///
/// Returns the number of rows newly inserted (0..=events.len()).
///
/// # Errors
/// Any database error; the caller keeps the batch and retries (nothing was written: the
/// statement is atomic).
pub async fn insert_usage_events(pool: &PgPool, events: &[UsageEvent]) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let n = events.len();
    let mut request_id = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut tenant_id = Vec::with_capacity(n);
    let mut api_key_id = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut model_version = Vec::with_capacity(n);
    let mut http_status = Vec::with_capacity(n);
    let mut inference_count = Vec::with_capacity(n);
    let mut compute_us = Vec::with_capacity(n);
    let mut request_bytes = Vec::with_capacity(n);
    let mut response_bytes = Vec::with_capacity(n);
    let mut latency_us = Vec::with_capacity(n);
    for e in events {
        request_id.push(e.request_id);
        started_at.push(e.started_at);
        tenant_id.push(e.tenant_id);
        api_key_id.push(e.api_key_id);
        model.push(e.model.clone());
        model_version.push(e.model_version.clone());
        http_status.push(e.http_status);
        inference_count.push(e.inference_count);
        compute_us.push(e.compute_us);
        request_bytes.push(e.request_bytes);
        response_bytes.push(e.response_bytes);
        latency_us.push(e.latency_us);
    }
    let result = sqlx::query(
        "INSERT INTO usage_events (request_id, started_at, tenant_id, api_key_id, model, \
             model_version, http_status, inference_count, compute_us, request_bytes, \
             response_bytes, latency_us) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::text[], \
             $6::text[], $7::smallint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
             $12::bigint[]) \
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(&request_id)
    .bind(&started_at)
    .bind(&tenant_id)
    .bind(&api_key_id)
    .bind(&model)
    .bind(&model_version)
    .bind(&http_status)
    .bind(&inference_count)
    .bind(&compute_us)
    .bind(&request_bytes)
    .bind(&response_bytes)
    .bind(&latency_us)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Usage of one tenant over a time range, from `usage_events`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageSummary {
    /// Requests recorded (all statuses).
    pub requests: i64,
    /// Requests answered 2xx (the billable ones).
    pub successful_requests: i64,
    /// Rows processed by successful requests.
    pub inference_count: i64,
    /// Backend compute microseconds of successful requests.
    pub compute_us: i64,
}

/// Sums the usage of tenant `tenant_name` with `from <= started_at < to` (UTC).
///
/// # Errors
/// Any database error. An unknown tenant sums to zeros.
pub async fn usage_summary(
    pool: &PgPool,
    tenant_name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<UsageSummary, sqlx::Error> {
    let row: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), \
                count(*) FILTER (WHERE u.http_status BETWEEN 200 AND 299), \
                coalesce(sum(u.inference_count) FILTER (WHERE u.http_status BETWEEN 200 AND 299), 0)::bigint, \
                coalesce(sum(u.compute_us) FILTER (WHERE u.http_status BETWEEN 200 AND 299), 0)::bigint \
         FROM usage_events u JOIN tenants t ON t.id = u.tenant_id \
         WHERE t.name = $1 AND u.started_at >= $2 AND u.started_at < $3",
    )
    .bind(tenant_name)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    Ok(UsageSummary {
        requests: row.0,
        successful_requests: row.1,
        inference_count: row.2,
        compute_us: row.3,
    })
}
