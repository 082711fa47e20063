//! Usage exports: the raw usage events of a time range as CSV, JSON lines or CloudEvents.
//!
//! - `csv`: RFC 4180, one header row, then one row per event (opens in a spreadsheet);
//!   timestamps RFC 3339 UTC, empty cells for absent values.
//! - `jsonl`: one JSON object per line, the same fields (reads with `jq`).
//! - `cloudevents`: one CloudEvents 1.0 structured-mode JSON event per line
//!   (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md>): `id` is the
//!   request id, so consumers that deduplicate by event id (OpenMeter-style) count each request
//!   once; `source` is `maas-gateway`, `type` [`CLOUDEVENT_TYPE`], `subject` the tenant id,
//!   `time` the request's start, `data` the event's fields.
//!
//! Events are read in pages ordered by (`started_at`, `request_id`) ([`UsageExport`]), so an
//! export of any size runs in constant memory.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::BillingError;

/// CloudEvents `type` of an exported usage event.
pub const CLOUDEVENT_TYPE: &str = "io.maas.usage.v1";
/// CloudEvents `source` of an exported usage event.
pub const CLOUDEVENT_SOURCE: &str = "maas-gateway";
/// Events fetched per page.
const PAGE: i64 = 5000;

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// CSV with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// One CloudEvents 1.0 JSON event per line.
    CloudEvents,
}

impl std::str::FromStr for ExportFormat {
    type Err = BillingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" => Ok(ExportFormat::Jsonl),
            "cloudevents" => Ok(ExportFormat::CloudEvents),
            _ => Err(BillingError::Invalid(format!(
                "format `{s}`: expected csv, jsonl or cloudevents"
            ))),
        }
    }
}

/// One exported usage event (the columns of `usage_events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ExportedEvent {
    /// Request id (UUIDv7).
    pub request_id: Uuid,
    /// Start of the request, UTC.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// Tenant, if identified.
    pub tenant_id: Option<Uuid>,
    /// API key, if valid.
    pub api_key_id: Option<Uuid>,
    /// Model.
    pub model: Option<String>,
    /// Model version.
    pub model_version: Option<String>,
    /// HTTP status sent to the client (0: none).
    pub http_status: i16,
    /// Rows processed.
    pub inference_count: i64,
    /// Backend compute, microseconds.
    pub compute_us: i64,
    /// Request body bytes.
    pub request_bytes: i64,
    /// Response body bytes.
    pub response_bytes: i64,
    /// Gateway latency, microseconds.
    pub latency_us: i64,
    /// The kind of call (`inference`, `metadata`, `readiness`, `index`, `other`; only 2xx
    /// inference calls are billable, see `crate::CallKind`).
    pub call: String,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The CSV header row, in column order.
pub const CSV_HEADER: [&str; 13] = [
    "request_id",
    "started_at",
    "tenant_id",
    "api_key_id",
    "model",
    "model_version",
    "http_status",
    "inference_count",
    "compute_us",
    "request_bytes",
    "response_bytes",
    "latency_us",
    "call",
];

fn csv_record(e: &ExportedEvent) -> [String; 13] {
    let opt = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    [
        e.request_id.to_string(),
        e.started_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        opt(e.tenant_id),
        opt(e.api_key_id),
        e.model.clone().unwrap_or_default(),
        e.model_version.clone().unwrap_or_default(),
        e.http_status.to_string(),
        e.inference_count.to_string(),
        e.compute_us.to_string(),
        e.request_bytes.to_string(),
        e.response_bytes.to_string(),
        e.latency_us.to_string(),
        e.call.clone(),
    ]
}

/// The CloudEvents 1.0 JSON form of one event.
pub fn cloudevent(e: &ExportedEvent) -> serde_json::Value {
    let mut ce = serde_json::json!({
        "specversion": "1.0",
        "id": e.request_id.to_string(),
        "source": CLOUDEVENT_SOURCE,
        "type": CLOUDEVENT_TYPE,
        "time": e.started_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": e,
    });
    if let Some(t) = e.tenant_id {
        ce["subject"] = serde_json::Value::String(t.to_string());
    }
    ce
}

/// An export read page by page: each call to [`UsageExport::next_chunk`] fetches one page of
/// events (at most 5,000) and encodes it, so a caller can stream an export of any size in
/// constant memory (the admin API sends each chunk as it comes; [`export_usage`] writes them to
/// a `Write`). The CSV header row is the start of the first chunk.
#[derive(Debug)]
pub struct UsageExport {
    pool: PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant_id: Option<Uuid>,
    format: ExportFormat,
    /// Where the next page starts: after this (started_at, request_id).
    after: Option<(DateTime<Utc>, Uuid)>,
    /// Chunks returned so far.
    chunks: u64,
    /// Events encoded so far.
    events: u64,
    /// The last page was read (or a page failed): no more chunks.
    done: bool,
}

impl UsageExport {
    /// An export of the events with `from <= started_at < to` (of one tenant, when given).
    ///
    /// # Errors
    /// [`BillingError::Invalid`] when `from >= to`.
    pub fn new(
        pool: PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        tenant_id: Option<Uuid>,
        format: ExportFormat,
    ) -> Result<UsageExport, BillingError> {
        if from >= to {
            return Err(BillingError::Invalid("`from` must be before `to`".into()));
        }
        Ok(UsageExport {
            pool,
            from,
            to,
            tenant_id,
            format,
            after: None,
            chunks: 0,
            events: 0,
            done: false,
        })
    }

    /// Events encoded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The next chunk of the export: `Some(bytes)` for each page (the first one always, even
    /// when empty, so a CSV export always has its header row), `None` once every event was
    /// returned. After an error the export is over (further calls return `None`).
    ///
    /// # Errors
    /// A database error, or an encoding error.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BillingError> {
        if self.done {
            return Ok(None);
        }
        let page = match self.fetch_page().await {
            Ok(page) => page,
            Err(e) => {
                self.done = true;
                return Err(e.into());
            }
        };
        let chunk = match self.encode(&page) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        self.chunks += 1;
        self.events += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => {
                self.after = Some((last.started_at, last.request_id));
            }
            _ => self.done = true,
        }
        Ok(Some(chunk))
    }

    async fn fetch_page(&self) -> Result<Vec<ExportedEvent>, sqlx::Error> {
        sqlx::query_as(
            "SELECT request_id, started_at, tenant_id, api_key_id, model, model_version, \
                 http_status, inference_count, compute_us, request_bytes, response_bytes, \
                 latency_us, call \
             FROM usage_events \
             WHERE started_at >= $1 AND started_at < $2 \
               AND ($3::uuid IS NULL OR tenant_id = $3) \
               AND ($4::timestamptz IS NULL OR (started_at, request_id) > ($4, $5)) \
             ORDER BY started_at, request_id LIMIT $6",
        )
        .bind(self.from)
        .bind(self.to)
        .bind(self.tenant_id)
        .bind(self.after.map(|a| a.0))
        .bind(self.after.map(|a| a.1))
        .bind(PAGE)
        .fetch_all(&self.pool)
        .await
    }

    fn encode(&self, page: &[ExportedEvent]) -> Result<Vec<u8>, BillingError> {
        let mut out = Vec::new();
        match self.format {
            ExportFormat::Csv => {
                let mut w = csv::Writer::from_writer(&mut out);
                if self.chunks == 0 {
                    w.write_record(CSV_HEADER).map_err(csv_err)?;
                }
                for e in page {
                    w.write_record(csv_record(e)).map_err(csv_err)?;
                }
                w.flush()?;
            }
            ExportFormat::Jsonl | ExportFormat::CloudEvents => {
                for e in page {
                    if self.format == ExportFormat::CloudEvents {
                        serde_json::to_writer(&mut out, &cloudevent(e))
                    } else {
                        serde_json::to_writer(&mut out, e)
                    }
                    .map_err(std::io::Error::from)?;
                    out.push(b'\n');
                }
            }
        }
        Ok(out)
    }
}

/// Writes the events with `from <= started_at < to` (of one tenant, when given) to `out` in
/// `format`, page by page ([`UsageExport`]). Returns the number of events written.
///
/// # Errors
/// [`BillingError::Invalid`] when `from >= to`, a database error, or a write error.
pub async fn export_usage<W: Write>(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant_id: Option<Uuid>,
    format: ExportFormat,
    mut out: W,
) -> Result<u64, BillingError> {
    let mut export = UsageExport::new(pool.clone(), from, to, tenant_id, format)?;
    while let Some(chunk) = export.next_chunk().await? {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(export.events())
}

fn csv_err(e: csv::Error) -> BillingError {
    BillingError::Io(std::io::Error::other(e))
}
