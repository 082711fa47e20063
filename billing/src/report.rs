//! Usage reports: a tenant's usage over a time range in hour or day buckets, optionally per
//! model and/or API key, with bucket boundaries in UTC or in any IANA time zone.
//!
//! Storage is UTC; the zone is only a query parameter (`AT TIME ZONE $tz` in SQL, so
//! PostgreSQL's time zone database decides offsets and daylight-saving changes). The report
//! reads the hourly rollups when they are exact for the query (`from` and `to` on whole UTC
//! hours, and the zone's offset a whole number of hours throughout the range); otherwise
//! (e.g. Asia/Kolkata, UTC+05:30, or a range starting at 10:30) it reads the raw events.
//! Buckets are clipped to `[from, to)`: a range that starts mid-day yields a first day bucket
//! holding only the usage from `from` on.

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::BillingError;

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One bucket per hour.
    Hour,
    /// One bucket per day (midnight to midnight in the query's time zone).
    Day,
}

impl Granularity {
    fn sql(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }
}

impl std::str::FromStr for Granularity {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            _ => Err(BillingError::Invalid(format!(
                "granularity `{s}`: expected hour or day"
            ))),
        }
    }
}

/// What to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Start, inclusive.
    pub from: DateTime<Utc>,
    /// End, exclusive.
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub granularity: Granularity,
    /// IANA time zone of the bucket boundaries, e.g. `UTC`, `America/New_York`.
    pub time_zone: String,
    /// One row per model within each bucket.
    pub by_model: bool,
    /// One row per API key within each bucket.
    pub by_key: bool,
}

/// One bucket (and group) of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageBucket {
    /// Start of the bucket (an instant; local midnight or hour in the query's zone).
    pub bucket_start: DateTime<Utc>,
    /// Start of the bucket as local time in the query's zone, `YYYY-MM-DDTHH:MM:SS`.
    pub local_start: String,
    /// The model, when grouped by model.
    pub model: Option<String>,
    /// The API key, when grouped by key.
    pub api_key_id: Option<Uuid>,
    /// Every request.
    pub requests: i64,
    /// 2xx requests.
    pub billable_requests: i64,
    /// Requests answered >= 400 or not answered.
    pub error_requests: i64,
    /// Inferences of 2xx requests.
    pub inference_count: i64,
    /// Compute microseconds of 2xx requests.
    pub compute_us: i64,
    /// Request body bytes.
    pub request_bytes: i64,
    /// Response body bytes.
    pub response_bytes: i64,
}

const FROM_ROLLUP: &str = "\
SELECT date_trunc($4, hour AT TIME ZONE $5) AT TIME ZONE $5 AS bucket_start, \
    to_char(date_trunc($4, hour AT TIME ZONE $5), 'YYYY-MM-DD\"T\"HH24:MI:SS') AS local_start, \
    CASE WHEN $6 THEN model END AS model, CASE WHEN $7 THEN api_key_id END AS api_key_id, \
    sum(requests)::bigint AS requests, sum(billable_requests)::bigint AS billable_requests, \
    sum(error_requests)::bigint AS error_requests, sum(inference_count)::bigint AS inference_count, \
    sum(compute_us)::bigint AS compute_us, sum(request_bytes)::bigint AS request_bytes, \
    sum(response_bytes)::bigint AS response_bytes \
FROM usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 \
GROUP BY 1, 2, 3, 4 ORDER BY 1, 3 NULLS FIRST, 4 NULLS FIRST";

const FROM_EVENTS: &str = "\
SELECT date_trunc($4, started_at AT TIME ZONE $5) AT TIME ZONE $5 AS bucket_start, \
    to_char(date_trunc($4, started_at AT TIME ZONE $5), 'YYYY-MM-DD\"T\"HH24:MI:SS') AS local_start, \
    CASE WHEN $6 THEN model END AS model, CASE WHEN $7 THEN api_key_id END AS api_key_id, \
    sum(n)::bigint AS requests, \
    count(*) FILTER (WHERE http_status BETWEEN 200 AND 299 AND call = 'inference') AS billable_requests, \
    coalesce(sum(n) FILTER (WHERE http_status >= 400 OR http_status < 100), 0)::bigint AS error_requests, \
    coalesce(sum(inference_count) FILTER (WHERE http_status BETWEEN 200 AND 299 AND call = 'inference'), 0)::bigint AS inference_count, \
    coalesce(sum(compute_us) FILTER (WHERE http_status BETWEEN 200 AND 299 AND call = 'inference'), 0)::bigint AS compute_us, \
    sum(request_bytes)::bigint AS request_bytes, sum(response_bytes)::bigint AS response_bytes \
FROM ( \
    SELECT started_at, model, api_key_id, http_status, call, inference_count, compute_us, \
        request_bytes, response_bytes, 1::bigint AS n \
    FROM usage_events WHERE tenant_id = $1 AND started_at >= $2 AND started_at < $3 \
    UNION ALL \
    SELECT minute, NULL, NULL, 0::smallint, 'other', 0, 0, 0, 0, requests \
    FROM refused_requests WHERE tenant_id = $1 AND minute >= $2 AND minute < $3 \
) AS e \
GROUP BY 1, 2, 3, 4 ORDER BY 1, 3 NULLS FIRST, 4 NULLS FIRST";

/// Whether `tz` is a whole number of hours from UTC at every hour of `[from, to)`.
async fn whole_hour_zone(
    pool: &PgPool,
    tz: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(bool_and(extract(minute FROM h AT TIME ZONE $1) = 0), true) \
         FROM generate_series($2::timestamptz, $3::timestamptz, interval '1 hour') AS h",
    )
    .bind(tz)
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
}

fn on_hour(t: DateTime<Utc>) -> bool {
    t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0
}

/// The zone names of `pg_timezone_names`, read once per process: the view parses PostgreSQL's
/// time zone files on every read (tens of milliseconds), and they do not change while the
/// server runs.
static ZONE_NAMES: std::sync::OnceLock<std::collections::HashSet<String>> =
    std::sync::OnceLock::new();

/// Whether PostgreSQL's time zone database knows `tz` as a zone name (`pg_timezone_names`:
/// IANA names such as `UTC` or `Europe/Paris`; abbreviations like `CET` are not names). The
/// names are read from the database once per process.
///
/// # Errors
/// Database errors.
pub async fn is_known_time_zone(pool: &PgPool, tz: &str) -> Result<bool, sqlx::Error> {
    if let Some(names) = ZONE_NAMES.get() {
        return Ok(names.contains(tz));
    }
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM pg_timezone_names")
        .fetch_all(pool)
        .await?;
    let known = names.iter().any(|n| n == tz);
    let _ = ZONE_NAMES.set(names.into_iter().collect());
    Ok(known)
}

/// Runs a usage report (see the module notes for where it reads from).
///
/// # Errors
/// [`BillingError::Invalid`] for `from >= to` or an unknown time zone; database errors.
pub async fn usage_report(pool: &PgPool, q: &UsageQuery) -> Result<Vec<UsageBucket>, BillingError> {
    if q.from >= q.to {
        return Err(BillingError::Invalid("`from` must be before `to`".into()));
    }
    if !is_known_time_zone(pool, &q.time_zone).await? {
        return Err(BillingError::Invalid(format!(
            "time zone `{}`: expected an IANA name such as UTC or Europe/Berlin",
            q.time_zone
        )));
    }
    let exact = on_hour(q.from)
        && on_hour(q.to)
        && whole_hour_zone(pool, &q.time_zone, q.from, q.to).await?;
    let sql = if exact { FROM_ROLLUP } else { FROM_EVENTS };
    Ok(sqlx::query_as(sql)
        .bind(q.tenant_id)
        .bind(q.from)
        .bind(q.to)
        .bind(q.granularity.sql())
        .bind(&q.time_zone)
        .bind(q.by_model)
        .bind(q.by_key)
        .fetch_all(pool)
        .await?)
}
