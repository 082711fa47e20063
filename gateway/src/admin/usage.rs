//! A tenant's usage, read by the operator or by an admin of that tenant ([`VisibleTenant`]):
//!
//! - `GET /admin/v1/tenants/{tenant_id}/usage`: [`maas_billing::report::usage_report`] (hour or
//!   day buckets in any IANA time zone, optionally per model and/or key).
//! - `GET /admin/v1/tenants/{tenant_id}/invoices/{period}`: [`maas_billing::invoice::build_invoice`]
//!   as JSON, money in integer micro-USD.
//! - `GET /admin/v1/tenants/{tenant_id}/usage/export`: [`maas_billing::export::UsageExport`]
//!   streamed page by page (constant memory, any size): CSV with a header row (`text/csv`), JSON
//!   lines or CloudEvents 1.0 structured events one per line (`application/x-ndjson`).
//!
//! An admin of another tenant gets 403 whether or not the tenant exists, so the answer reveals
//! nothing about other tenants. Every query parameter is checked before anything is read
//! (`params.rs`), and a bad one is a 400 that names it.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use maas_billing::export::{ExportFormat, UsageExport};
use maas_billing::invoice::{build_invoice, Invoice};
use maas_billing::report::{usage_report, Granularity, UsageBucket, UsageQuery};
use maas_billing::Period;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::VisibleTenant;
use super::error::{AppError, ErrorBody};
use super::extract::{AppPath, AppQuery};
use super::params::{
    check_time_zone, ExportParams, ExportQuery, ReportQuery, TimeRange, UsageParams,
};
use super::state::AdminState;

// ---- usage report ----

/// A tenant's usage report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Start of the range, inclusive (UTC).
    pub from: DateTime<Utc>,
    /// End of the range, exclusive (UTC).
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub granularity: Granularity,
    /// Time zone of the bucket boundaries.
    pub tz: String,
    /// What each bucket is split by: `model`, `key`, both or neither.
    pub group_by: Vec<String>,
    /// Buckets in time order (then model, then key); buckets without usage are left out, and
    /// the first and last are clipped to the range.
    pub buckets: Vec<UsageBucket>,
}

/// A tenant's usage over `[from, to)` in hour or day buckets, in UTC or an IANA time zone,
/// optionally per model and/or API key. Requests are counted by status: `requests` all of
/// them, `billable_requests` the 2xx ones (whose inferences and compute are counted).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/usage",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 400, description = "A parameter is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_usage(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
    AppQuery(q): AppQuery<ReportQuery>,
) -> Result<Json<UsageReport>, AppError> {
    let ReportQuery {
        range: TimeRange { from, to },
        granularity,
        by_model,
        by_key,
        tz,
    } = q;
    check_time_zone(&state.pool, &tz).await?;
    state.tenant_name(tenant_id).await?;
    let buckets = usage_report(
        &state.pool,
        &UsageQuery {
            tenant_id,
            from,
            to,
            granularity,
            time_zone: tz.clone(),
            by_model,
            by_key,
        },
    )
    .await?;
    let group_by = [(by_model, "model"), (by_key, "key")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .collect();
    Ok(Json(UsageReport {
        tenant_id,
        from,
        to,
        granularity,
        tz,
        group_by,
        buckets,
    }))
}

// ---- invoices ----

/// The `{period}` of the invoice route.
#[derive(Deserialize)]
pub struct PeriodParam {
    period: Period,
}

/// A tenant's invoice for one calendar month (UTC): one line per model with billable usage,
/// priced with the tenant's plan; every amount is integer micro-USD (rounding rule:
/// `maas_billing::invoice`). The current month gives the invoice so far.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/invoices/{period}",
    params(
        ("tenant_id" = Uuid, Path, description = "Tenant id"),
        ("period" = String, Path, description = "Month, YYYY-MM (e.g. 2026-11)")
    ),
    responses(
        (status = 200, description = "The invoice", body = Invoice),
        (status = 400, description = "tenant_id or period is malformed", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant's plan is missing or has no price for a model it used", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_invoice(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
    AppPath(PeriodParam { period }): AppPath<PeriodParam>,
) -> Result<Json<Invoice>, AppError> {
    let name = state.tenant_name(tenant_id).await?;
    Ok(Json(build_invoice(&state.pool, &name, period).await?))
}

// ---- exports ----

/// Content type and file extension of an export format.
fn media_type(format: ExportFormat) -> (&'static str, &'static str) {
    match format {
        // RFC 4180 section 3: the optional `header` parameter says a header row comes first.
        ExportFormat::Csv => ("text/csv; charset=utf-8; header=present", "csv"),
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
        // One structured-mode event per line (not a JSON array, which is what
        // application/cloudevents-batch+json would promise).
        ExportFormat::CloudEvents => ("application/x-ndjson", "cloudevents.jsonl"),
    }
}

/// A tenant's raw usage events in `[from, to)`, streamed: CSV with a header row (opens in a
/// spreadsheet), JSON lines (reads with `jq`), or CloudEvents 1.0 structured events, one per
/// line, whose `id` is the request id (so a consumer that deduplicates by event id counts each
/// request once). Rejected requests are included, with their status.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/usage/export",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), ExportParams),
    responses(
        (status = 200, description = "The events, oldest first", content(
            (String = "text/csv"),
            (String = "application/x-ndjson")
        )),
        (status = 400, description = "A parameter is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn export_usage(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
    AppQuery(ExportQuery {
        range: TimeRange { from, to },
        format,
    }): AppQuery<ExportQuery>,
) -> Result<Response, AppError> {
    state.tenant_name(tenant_id).await?;
    let mut export = UsageExport::new(state.pool.clone(), from, to, Some(tenant_id), format)?;
    // The first page is read before the status is sent, so that a failure there is a JSON
    // error; a failure on a later page ends the body early (the client sees a truncated body).
    let first = export.next_chunk().await?.unwrap_or_default();
    let rest = futures_util::stream::unfold(export, move |mut export| async move {
        match export.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), export)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(%tenant_id, error = %e, "admin: usage export failed mid-stream");
                Some((Err(e), export))
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest);
    let (content_type, extension) = media_type(format);
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let disposition = format!(
        "attachment; filename=\"usage-{tenant_id}-{}-{}.{extension}\"",
        stamp(from),
        stamp(to)
    );
    let mut resp = Body::from_stream(body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    tracing::info!(%tenant_id, from = %from.to_rfc3339_opts(SecondsFormat::Secs, true),
        to = %to.to_rfc3339_opts(SecondsFormat::Secs, true), ?format, "admin: usage export");
    Ok(resp)
}
