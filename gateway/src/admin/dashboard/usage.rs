//! Usage of a tenant over a date range, by hour or day, in a chosen time zone, optionally by
//! model or key: a chart of successful and failed requests, the table, and downloads of exactly
//! that table as CSV or JSON lines (`usage.csv`, `usage.jsonl`), plus a link to the raw events'
//! export (`/admin/v1/tenants/{id}/usage/export`, read with the session cookie).
//!
//! Query (all optional): `from`, `to` (dates `YYYY-MM-DD`, both included, local to `tz`;
//! default: the 1st of this month to today, UTC), `granularity` (`day` or `hour`), `tz` (IANA
//! name, default `UTC`), `group` (`none`, `model` or `key`). A bad value is a 400 page naming it.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use maas_billing::report::{usage_report, Granularity, UsageBucket, UsageQuery};
use maud::{html, Markup};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::error::AppError;
use super::super::params::{check_time_zone, ReportQuery, UsageParams};
use super::super::state::AdminState;
use super::chart::{embed, Chart, Series, FAILURE, SUCCESS};
use super::layout::{page as layout, TenantRef};
use super::signed_in::{PageError, SignedIn};
use crate::store;

/// The page's query, as sent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct UsageForm {
    /// First day, `YYYY-MM-DD`.
    pub from: Option<String>,
    /// Last day (included), `YYYY-MM-DD`.
    pub to: Option<String>,
    /// `day` or `hour`.
    pub granularity: Option<String>,
    /// IANA time zone.
    pub tz: Option<String>,
    /// `none`, `model` or `key`.
    pub group: Option<String>,
}

/// What a checked form asks for.
struct Selection {
    first: NaiveDate,
    last: NaiveDate,
    granularity: Granularity,
    tz: String,
    group: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    by_model: bool,
    by_key: bool,
}

fn date(name: &str, raw: Option<&str>, default: NaiveDate) -> Result<NaiveDate, AppError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| AppError::BadRequest(format!("{name} `{s}`: expected a date YYYY-MM-DD"))),
    }
}

async fn select(state: &AdminState, f: &UsageForm) -> Result<Selection, AppError> {
    let today = Utc::now().date_naive();
    let month_start = today.with_day(1).unwrap_or(today);
    let first = date("from", f.from.as_deref(), month_start)?;
    let last = date("to", f.to.as_deref(), today)?;
    if last < first {
        return Err(AppError::BadRequest("to must not be before from".into()));
    }
    if (last - first).num_days() > 366 {
        return Err(AppError::BadRequest(
            "the range may span at most 366 days".into(),
        ));
    }
    let group = match f.group.as_deref().unwrap_or("none") {
        "" | "none" => "none",
        "model" => "model",
        "key" => "key",
        other => {
            return Err(AppError::BadRequest(format!(
                "group `{other}`: expected none, model or key"
            )))
        }
    };
    let tz =
        f.tz.clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "UTC".into());
    // Validated by the API's own rules (plausible name, granularity), then PostgreSQL's zones.
    let probe = ReportQuery::try_from(UsageParams {
        from: Some("2000-01-01T00:00:00Z".into()),
        to: Some("2000-01-02T00:00:00Z".into()),
        granularity: f.granularity.clone().filter(|g| !g.is_empty()),
        group_by: Some(if group == "none" {
            String::new()
        } else {
            group.to_string()
        }),
        tz: Some(tz.clone()),
    })?;
    check_time_zone(&state.pool, &tz).await?;
    let (from, to): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "SELECT ($1::date)::timestamp AT TIME ZONE $3, ($2::date + 1)::timestamp AT TIME ZONE $3",
    )
    .bind(first)
    .bind(last)
    .bind(&tz)
    .fetch_one(&state.pool)
    .await?;
    Ok(Selection {
        first,
        last,
        granularity: probe.granularity,
        tz,
        group,
        from,
        to,
        by_model: probe.by_model,
        by_key: probe.by_key,
    })
}

async fn report(
    state: &AdminState,
    tenant_id: Uuid,
    s: &Selection,
) -> Result<Vec<UsageBucket>, AppError> {
    Ok(usage_report(
        &state.pool,
        &UsageQuery {
            tenant_id,
            from: s.from,
            to: s.to,
            granularity: s.granularity,
            time_zone: s.tz.clone(),
            by_model: s.by_model,
            by_key: s.by_key,
        },
    )
    .await?)
}

/// One table row, as shown and as downloaded.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Local start of the bucket in the selected zone.
    start: String,
    /// Model, when grouped by model.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Key name and prefix, when grouped by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    requests: i64,
    success: i64,
    failed: i64,
    inferences: i64,
    compute_us: i64,
}

async fn rows(
    state: &AdminState,
    tenant_id: Uuid,
    s: &Selection,
    buckets: &[UsageBucket],
) -> Result<Vec<Row>, AppError> {
    let names: HashMap<Uuid, String> = if s.by_key {
        store::tenant_keys(&state.pool, tenant_id)
            .await?
            .into_iter()
            .map(|k| (k.id, format!("{} ({})", k.name, k.prefix)))
            .collect()
    } else {
        HashMap::new()
    };
    Ok(buckets
        .iter()
        .map(|b| Row {
            start: b.local_start.clone(),
            model: s
                .by_model
                .then(|| b.model.clone().unwrap_or_else(|| "(none)".into())),
            key: s.by_key.then(|| match b.api_key_id {
                Some(id) => names.get(&id).cloned().unwrap_or_else(|| id.to_string()),
                None => "(no key)".into(),
            }),
            requests: b.requests,
            success: b.billable_requests,
            failed: b.error_requests,
            inferences: b.inference_count,
            compute_us: b.compute_us,
        })
        .collect())
}

fn query_string(s: &Selection) -> String {
    format!(
        "from={}&to={}&granularity={}&tz={}&group={}",
        s.first,
        s.last,
        match s.granularity {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        },
        s.tz.replace('+', "%2B"),
        s.group
    )
}

async fn tenant_name(state: &AdminState, tenant_id: Uuid) -> Result<String, PageError> {
    Ok(state.tenant_name(tenant_id).await?)
}

/// `GET /dashboard/tenants/{tenant_id}/usage`.
pub async fn page(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
    Query(form): Query<UsageForm>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    let name = tenant_name(&state, tenant_id).await?;
    let s = select(&state, &form).await?;
    let buckets = report(&state, tenant_id, &s).await?;
    let table = rows(&state, tenant_id, &s, &buckets).await?;
    // The chart sums each bucket over its groups.
    let mut x: Vec<i64> = Vec::new();
    let (mut ok, mut failed): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for b in &buckets {
        let t = b.bucket_start.timestamp();
        if x.last() != Some(&t) {
            x.push(t);
            ok.push(0.0);
            failed.push(0.0);
        }
        if let (Some(o), Some(f)) = (ok.last_mut(), failed.last_mut()) {
            *o += b.billable_requests as f64;
            *f += b.error_requests as f64;
        }
    }
    let chart = Chart {
        title: format!(
            "Requests per {} ({})",
            if s.granularity == Granularity::Hour {
                "hour"
            } else {
                "day"
            },
            s.tz
        ),
        tz: s.tz.clone(),
        bars: true,
        x,
        x_range: (s.from.timestamp(), s.to.timestamp()),
        series: vec![
            Series {
                label: "success (2xx)".into(),
                color: SUCCESS,
                values: ok,
            },
            Series {
                label: "failure (>= 400)".into(),
                color: FAILURE,
                values: failed,
            },
        ],
    };
    let qs = query_string(&s);
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let export = format!(
        "/admin/v1/tenants/{tenant_id}/usage/export?from={}&to={}&format=csv",
        rfc(s.from),
        rfc(s.to)
    );
    let total: (i64, i64, i64) = table.iter().fold((0, 0, 0), |(r, o, f), row| {
        (r + row.requests, o + row.success, f + row.failed)
    });
    let body = html! {
        form.filters method="get" id="usage-filters" {
            label { "From" input type="date" name="from" id="from" value=(s.first); }
            label { "To (included)" input type="date" name="to" id="to" value=(s.last); }
            label { "Granularity"
                select name="granularity" id="granularity" {
                    option value="day" selected[s.granularity == Granularity::Day] { "day" }
                    option value="hour" selected[s.granularity == Granularity::Hour] { "hour" }
                }
            }
            label { "Time zone" input type="text" name="tz" id="tz" value=(s.tz) size="16"; }
            label { "Split by"
                select name="group" id="group" {
                    @for g in ["none", "model", "key"] { option value=(g) selected[s.group == g] { (g) } }
                }
            }
            button type="submit" id="apply" { "Show" }
        }
        p.muted id="range" { (rfc(s.from)) " to " (rfc(s.to)) " (end excluded), " (s.tz) }
        (embed("chart-usage", &chart))
        p.downloads {
            "Download this table: "
            a id="download-csv" href={ "/dashboard/tenants/" (tenant_id) "/usage.csv?" (qs) } { "CSV" }
            a id="download-jsonl" href={ "/dashboard/tenants/" (tenant_id) "/usage.jsonl?" (qs) } { "JSON lines" }
            " · Raw events of the range: "
            a id="export-csv" href=(export) { "events CSV" }
        }
        table id="usage-table" {
            thead { tr {
                th { "Start (" (s.tz) ")" }
                @if s.by_model { th { "Model" } }
                @if s.by_key { th { "Key" } }
                th.num { "Requests" } th.num { "Succeeded" } th.num { "Failed" }
                th.num { "Inferences" } th.num { "Compute (s)" }
            } }
            tbody {
                @for r in &table {
                    tr {
                        td { (r.start) }
                        @if let Some(m) = &r.model { td { (m) } }
                        @if let Some(k) = &r.key { td { (k) } }
                        td.num { (r.requests) } td.num { (r.success) } td.num { (r.failed) }
                        td.num { (r.inferences) } td.num { (format!("{:.3}", r.compute_us as f64 / 1e6)) }
                    }
                }
            }
            tfoot { tr {
                th colspan=(1 + usize::from(s.by_model) + usize::from(s.by_key)) { "Total" }
                th.num id="usage-total-requests" { (total.0) } th.num id="usage-total-success" { (total.1) }
                th.num id="usage-total-failed" { (total.2) } th {} th {}
            } }
        }
    };
    Ok(layout(
        "Usage",
        &signed,
        Some(TenantRef {
            id: tenant_id,
            name: &name,
        }),
        "usage",
        body,
    ))
}

/// The CSV of `rows` (header row first; RFC 4180 quoting of text fields).
fn csv(rows: &[Row], by_model: bool, by_key: bool) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("start");
    if by_model {
        out.push_str(",model");
    }
    if by_key {
        out.push_str(",key");
    }
    out.push_str(",requests,success,failed,inferences,compute_us\n");
    for r in rows {
        out.push_str(&quote(&r.start));
        if let Some(m) = &r.model {
            out.push(',');
            out.push_str(&quote(m));
        }
        if let Some(k) = &r.key {
            out.push(',');
            out.push_str(&quote(k));
        }
        out.push_str(&format!(
            ",{},{},{},{},{}\n",
            r.requests, r.success, r.failed, r.inferences, r.compute_us
        ));
    }
    out
}

/// `GET /dashboard/tenants/{tenant_id}/usage.{csv|jsonl}`: the page's table, as a download.
pub async fn download(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path((tenant_id, ext)): Path<(Uuid, String)>,
    Query(form): Query<UsageForm>,
) -> Result<Response, PageError> {
    signed.tenant(tenant_id)?;
    state.tenant_name(tenant_id).await?;
    let s = select(&state, &form).await?;
    let buckets = report(&state, tenant_id, &s).await?;
    let table = rows(&state, tenant_id, &s, &buckets).await?;
    let (body, content_type) = match ext.as_str() {
        "csv" => (
            csv(&table, s.by_model, s.by_key),
            "text/csv; charset=utf-8; header=present",
        ),
        "jsonl" => (
            table
                .iter()
                .filter_map(|r| serde_json::to_string(r).ok())
                .map(|l| l + "\n")
                .collect(),
            "application/x-ndjson",
        ),
        other => {
            return Err(AppError::NotFound(format!(
                "usage.{other}: expected usage.csv or usage.jsonl"
            ))
            .into())
        }
    };
    let disposition = format!(
        "attachment; filename=\"usage-{tenant_id}-{}-{}.{ext}\"",
        s.first, s.last
    );
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
