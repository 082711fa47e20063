//! Usage events and their exactly-once store in PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::period::Period;

/// One request the gateway forwarded (the row of `usage_events`).
///
/// Requests the gateway refused itself (401, 403, 404, 429, ...) are not usage events: they
/// are counted per tenant, outcome and minute (`crate::add_refused`). Only 2xx inference calls
/// are billable ([`CallKind::Inference`]).
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
    /// What kind of call it was; only [`CallKind::Inference`] is billable.
    pub call: CallKind,
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

/// The kind of an Open Inference Protocol v2 call (KServe `rest.md`), stored in
/// `usage_events.call`. Only inference calls are billable: a 2xx inference call counts as a
/// billable request with its rows and compute; every other kind is recorded and never priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CallKind {
    /// `POST /v2/models/{model}[/versions/{version}]/infer`.
    #[default]
    Inference,
    /// Model metadata (`GET /v2/models/{model}[/versions/{version}]`) or server metadata
    /// (`GET /v2`).
    Metadata,
    /// Model readiness (`GET /v2/models/{model}[/versions/{version}]/ready`).
    Readiness,
    /// The model repository index (`POST /v2/repository/index`).
    Index,
    /// Anything else (a path the gateway does not route).
    Other,
}

impl CallKind {
    /// Every kind, in the order of [`CallKind::code`].
    pub const ALL: [CallKind; 5] = [
        CallKind::Inference,
        CallKind::Metadata,
        CallKind::Readiness,
        CallKind::Index,
        CallKind::Other,
    ];

    /// The value stored in `usage_events.call`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Inference => "inference",
            CallKind::Metadata => "metadata",
            CallKind::Readiness => "readiness",
            CallKind::Index => "index",
            CallKind::Other => "other",
        }
    }

    /// A small stable number for compact encodings (0: inference, then in [`CallKind::ALL`]
    /// order).
    pub fn code(self) -> u8 {
        match self {
            CallKind::Inference => 0,
            CallKind::Metadata => 1,
            CallKind::Readiness => 2,
            CallKind::Index => 3,
            CallKind::Other => 4,
        }
    }

    /// The kind of [`CallKind::code`] `code`, `None` for an unknown one.
    pub fn from_code(code: u8) -> Option<CallKind> {
        CallKind::ALL.get(usize::from(code)).copied()
    }

    /// Whether a call of this kind answered 2xx is billable (only inference calls are).
    pub fn is_billable(self) -> bool {
        self == CallKind::Inference
    }
}

/// The statement behind [`insert_usage_events`]: the batch as UNNEST arrays, inserted with
/// `ON CONFLICT (request_id, started_at) DO NOTHING`, and `usage_hourly` upserted in the same
/// statement from exactly the rows the insert returned (so a duplicate adds nothing anywhere).
/// The result is the number of new rows.
const INSERT_USAGE_SQL: &str = "\
WITH ins AS ( \
    INSERT INTO usage_events (request_id, started_at, tenant_id, api_key_id, model, \
        model_version, http_status, inference_count, compute_us, request_bytes, \
        response_bytes, latency_us, call) \
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::text[], \
        $6::text[], $7::smallint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
        $12::bigint[], $13::text[]) \
    ON CONFLICT (request_id, started_at) DO NOTHING \
    RETURNING tenant_id, api_key_id, model, started_at, http_status, inference_count, \
        compute_us, request_bytes, response_bytes, \
        (http_status BETWEEN 200 AND 299 AND call = 'inference') AS billable \
), up AS ( \
    INSERT INTO usage_hourly AS h (tenant_id, api_key_id, model, hour, requests, \
        billable_requests, error_requests, inference_count, compute_us, request_bytes, \
        response_bytes) \
    SELECT tenant_id, api_key_id, model, date_trunc('hour', started_at, 'UTC'), count(*), \
        count(*) FILTER (WHERE billable), \
        count(*) FILTER (WHERE http_status >= 400 OR http_status < 100), \
        coalesce(sum(inference_count) FILTER (WHERE billable), 0), \
        coalesce(sum(compute_us) FILTER (WHERE billable), 0), \
        sum(request_bytes), sum(response_bytes) \
    FROM ins GROUP BY 1, 2, 3, 4 \
    ON CONFLICT ON CONSTRAINT usage_hourly_key DO UPDATE SET \
        requests = h.requests + EXCLUDED.requests, \
        billable_requests = h.billable_requests + EXCLUDED.billable_requests, \
        error_requests = h.error_requests + EXCLUDED.error_requests, \
        inference_count = h.inference_count + EXCLUDED.inference_count, \
        compute_us = h.compute_us + EXCLUDED.compute_us, \
        request_bytes = h.request_bytes + EXCLUDED.request_bytes, \
        response_bytes = h.response_bytes + EXCLUDED.response_bytes \
) \
SELECT count(*) FROM ins";

/// Inserts a batch of usage events in one statement (UNNEST arrays), skipping request ids that
/// are already stored, so a replayed batch counts nothing twice, and adds exactly the newly
/// inserted rows to the hourly rollup (`usage_hourly`) in the same statement.
///
/// Dedup key: `(request_id, started_at)` (the table is partitioned by month of `started_at`);
/// callers must give a request id the same `started_at` every time (the gateway does: it is the
/// UUIDv7's timestamp, and the spool carries it). A month without a partition is created on
/// demand (`maas_create_usage_partition`) and the batch retried once.
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
    match insert_once(pool, events).await {
        Err(e) if is_missing_partition(&e) => {
            let mut months: Vec<DateTime<Utc>> = events.iter().map(|e| e.started_at).collect();
            months.sort_unstable();
            months.dedup_by_key(|t| Period::of(*t));
            for t in months {
                create_usage_partition(pool, t).await?;
            }
            insert_once(pool, events).await
        }
        other => other,
    }
}

async fn insert_once(pool: &PgPool, events: &[UsageEvent]) -> Result<u64, sqlx::Error> {
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
    let mut call = Vec::with_capacity(n);
    for e in events {
        request_id.push(e.request_id);
        started_at.push(e.started_at);
        tenant_id.push(e.tenant_id);
        api_key_id.push(e.api_key_id);
        model.push(e.model.as_deref());
        model_version.push(e.model_version.as_deref());
        http_status.push(e.http_status);
        inference_count.push(e.inference_count);
        compute_us.push(e.compute_us);
        request_bytes.push(e.request_bytes);
        response_bytes.push(e.response_bytes);
        latency_us.push(e.latency_us);
        call.push(e.call.as_str());
    }
    let (inserted,): (i64,) = sqlx::query_as(INSERT_USAGE_SQL)
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
        .bind(&call)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(inserted).unwrap_or(0))
}

/// SQLSTATE 23514 with "no partition": a row whose month has no partition yet.
fn is_missing_partition(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23514") && db.message().contains("no partition")
        }
        _ => false,
    }
}

/// Creates (if missing) the `usage_events` partition of the UTC month holding `at`; returns
/// its name (`usage_events_YYYY_MM`). Safe to call concurrently.
///
/// # Errors
/// Any database error.
pub async fn create_usage_partition(
    pool: &PgPool,
    at: DateTime<Utc>,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT maas_create_usage_partition($1)")
        .bind(at)
        .fetch_one(pool)
        .await
}

/// Creates the partitions of the UTC month holding `now` and of the `months_ahead` months
/// after it (the service calls this at start and periodically, so inserts never wait on DDL).
///
/// # Errors
/// Any database error.
pub async fn ensure_usage_partitions(
    pool: &PgPool,
    now: DateTime<Utc>,
    months_ahead: u32,
) -> Result<Vec<String>, sqlx::Error> {
    let mut names = Vec::new();
    let mut period = Period::of(now);
    for _ in 0..=months_ahead {
        names.push(create_usage_partition(pool, period.start()).await?);
        period = period.next();
    }
    Ok(names)
}

/// Usage of one tenant over a time range, from `usage_events`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageSummary {
    /// Requests recorded (all statuses).
    pub requests: i64,
    /// Inference calls answered 2xx (the billable ones).
    pub successful_requests: i64,
    /// Rows processed by successful inference calls.
    pub inference_count: i64,
    /// Backend compute microseconds of successful inference calls.
    pub compute_us: i64,
    /// Requests the gateway refused itself (counted in `refused_requests`, not in `requests`).
    pub refused_requests: i64,
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
    let row: (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), \
                count(*) FILTER (WHERE u.http_status BETWEEN 200 AND 299 AND u.call = 'inference'), \
                coalesce(sum(u.inference_count) FILTER (WHERE u.http_status BETWEEN 200 AND 299 AND u.call = 'inference'), 0)::bigint, \
                coalesce(sum(u.compute_us) FILTER (WHERE u.http_status BETWEEN 200 AND 299 AND u.call = 'inference'), 0)::bigint, \
                (SELECT coalesce(sum(r.requests), 0)::bigint FROM refused_requests r \
                 JOIN tenants t ON t.id = r.tenant_id \
                 WHERE t.name = $1 AND r.minute >= $2 AND r.minute < $3) \
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
        refused_requests: row.4,
    })
}

/// Which rollup rows [`rollup_totals`] sums: every `None` matches anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupFilter<'a> {
    /// Only this tenant's usage.
    pub tenant_id: Option<Uuid>,
    /// Only this API key's usage.
    pub api_key_id: Option<Uuid>,
    /// Only this model's usage.
    pub model: Option<&'a str>,
}

/// Billable usage summed over hourly rollups (`usage_hourly`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupTotals {
    /// Requests answered 2xx.
    pub billable_requests: i64,
    /// Rows processed by them.
    pub inference_count: i64,
    /// Their backend compute, microseconds.
    pub compute_us: i64,
}

/// Sums the hourly rollups matching `filter` from the hour holding `from` on (the gateway
/// rebuilds a monthly quota or budget counter from this, with `from` the period's start).
///
/// # Errors
/// Any database error.
pub async fn rollup_totals(
    pool: &PgPool,
    filter: RollupFilter<'_>,
    from: DateTime<Utc>,
) -> Result<RollupTotals, sqlx::Error> {
    let (billable_requests, inference_count, compute_us): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(billable_requests), 0)::bigint, \
                COALESCE(sum(inference_count), 0)::bigint, \
                COALESCE(sum(compute_us), 0)::bigint \
         FROM usage_hourly \
         WHERE hour >= $1 AND ($2::uuid IS NULL OR tenant_id = $2) \
           AND ($3::uuid IS NULL OR api_key_id = $3) AND ($4::text IS NULL OR model = $4)",
    )
    .bind(from)
    .bind(filter.tenant_id)
    .bind(filter.api_key_id)
    .bind(filter.model)
    .fetch_one(pool)
    .await?;
    Ok(RollupTotals {
        billable_requests,
        inference_count,
        compute_us,
    })
}

/// One model's usage of one tenant over a range, from the hourly rollups.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelTotals {
    /// The model (`None`: requests refused before a model was known).
    pub model: Option<String>,
    /// Every request.
    pub requests: i64,
    /// Requests answered 2xx.
    pub billable_requests: i64,
    /// Requests answered >= 400 or not answered.
    pub error_requests: i64,
    /// Rows processed by 2xx requests.
    pub inference_count: i64,
    /// Backend compute of 2xx requests, microseconds.
    pub compute_us: i64,
}

/// Tenant `tenant_id`'s usage per model over the hours in `[from, to)` (hour-aligned bounds
/// are exact), from `usage_hourly`, by model name.
///
/// # Errors
/// Any database error.
pub async fn model_totals(
    pool: &PgPool,
    tenant_id: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ModelTotals>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model, sum(requests)::bigint AS requests, \
                sum(billable_requests)::bigint AS billable_requests, \
                sum(error_requests)::bigint AS error_requests, \
                sum(inference_count)::bigint AS inference_count, \
                sum(compute_us)::bigint AS compute_us \
         FROM usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 \
         GROUP BY model ORDER BY model NULLS FIRST",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
