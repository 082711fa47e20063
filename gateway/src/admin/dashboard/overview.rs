//! The overview of a tenant: this month's requests, inferences, compute time and spend against
//! the budget, the inference quota's burn-down with its reset date, and a daily chart of
//! successful and failed requests.

use axum::extract::{Path, State};
use chrono::Utc;
use maas_billing::invoice::format_usd;
use maas_billing::report::{usage_report, Granularity, UsageQuery};
use maud::{html, Markup};
use uuid::Uuid;

use super::super::account::{account, MonthlyLimit};
use super::super::state::AdminState;
use super::chart::{embed, Chart, Series, ACCENT, FAILURE, SUCCESS};
use super::layout::{page as layout, TenantRef};
use super::signed_in::{PageError, SignedIn};

fn meter(m: &MonthlyLimit) -> Markup {
    let pct = if m.limit > 0 {
        (m.used.saturating_mul(100) / m.limit).min(100)
    } else {
        100
    };
    html! {
        div.meter { span class=[(m.used >= m.limit).then_some("over")] data-pct=(pct) {} }
    }
}

/// `GET /dashboard/tenants/{tenant_id}/overview`.
pub async fn page(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    let a = account(&state, tenant_id, Utc::now()).await?;
    let days = usage_report(
        &state.pool,
        &UsageQuery {
            tenant_id,
            from: a.period_start,
            to: a.resets_at,
            granularity: Granularity::Day,
            time_zone: "UTC".into(),
            by_model: false,
            by_key: false,
        },
    )
    .await?;
    // Every day of the month, zero where there was no usage (bars then have a day's width).
    let by_day: std::collections::HashMap<i64, (i64, i64)> = days
        .iter()
        .map(|b| {
            (
                b.bucket_start.timestamp(),
                (b.billable_requests, b.error_requests),
            )
        })
        .collect();
    let x: Vec<i64> = (a.period_start.timestamp()..a.resets_at.timestamp())
        .step_by(86_400)
        .collect();
    let day = |t: &i64| by_day.get(t).copied().unwrap_or_default();
    let daily = Chart {
        title: format!("Requests per day, {} (UTC)", a.period),
        tz: "UTC".into(),
        bars: true,
        x: x.clone(),
        x_range: (a.period_start.timestamp(), a.resets_at.timestamp()),
        series: vec![
            Series {
                label: "success (2xx)".into(),
                color: SUCCESS,
                values: x.iter().map(|t| day(t).0 as f64).collect(),
            },
            Series {
                label: "failure (>= 400)".into(),
                color: FAILURE,
                values: x.iter().map(|t| day(t).1 as f64).collect(),
            },
        ],
    };
    // Remaining quota at the start of the month, at the end of each day with usage, and now.
    let burn = a.inference_quota.map(|q| {
        let mut left = q.limit;
        let mut bx = vec![a.period_start.timestamp()];
        let mut by = vec![q.limit as f64];
        for b in &days {
            left = left.saturating_sub(b.inference_count);
            bx.push(b.bucket_start.timestamp() + 86_400);
            by.push(left.max(0) as f64);
        }
        let now = Utc::now().timestamp();
        if bx.last().is_some_and(|t| *t < now) {
            bx.push(now);
            by.push(q.remaining as f64);
        }
        Chart {
            title: format!(
                "Inference quota remaining (resets {})",
                a.resets_at.format("%Y-%m-%d")
            ),
            tz: "UTC".into(),
            bars: false,
            x: bx,
            x_range: (a.period_start.timestamp(), a.resets_at.timestamp()),
            series: vec![Series {
                label: "remaining".into(),
                color: ACCENT,
                values: by,
            }],
        }
    });
    let u = &a.usage;
    let body = html! {
        p.muted { "This month: " (a.period) " (UTC), " (a.period_start.format("%Y-%m-%d")) " to "
            (a.resets_at.format("%Y-%m-%d")) ". Plan " strong { (a.tenant.plan) } "." }
        div.cards {
            div.card { div.label { "Requests" } div.value id="ov-requests" { (u.requests) }
                div.sub { span id="ov-success" { (u.billable_requests) } " succeeded, "
                    span id="ov-failed" { (u.error_requests) } " failed" } }
            div.card { div.label { "Inferences" } div.value id="ov-inferences" { (u.inference_count) } }
            div.card { div.label { "Compute time" }
                div.value id="ov-compute" { (format!("{:.3}", u.compute_us as f64 / 1e6)) " s" } }
            div.card { div.label { "Spend (list price)" }
                div.value { "$" span id="ov-spend" { (format_usd(a.spend_micro_usd)) } }
                @if let Some(b) = &a.budget {
                    div.sub { "of $" span id="ov-budget" { (format_usd(b.limit)) } " budget" }
                    (meter(b))
                } @else { div.sub { "no monthly budget" } }
                @if let Some(i) = a.invoice_micro_usd { div.sub { "invoice so far $" (format_usd(i)) } }
            }
            div.card { div.label { "Inference quota" }
                @if let Some(q) = &a.inference_quota {
                    div.value id="ov-quota-remaining" { (q.remaining) }
                    div.sub { "left of " span id="ov-quota" { (q.limit) } ", resets "
                        span id="ov-resets" { (a.resets_at.format("%Y-%m-%d %H:%M UTC")) } }
                    (meter(q))
                } @else {
                    div.value { "none" }
                    div.sub { "resets " span id="ov-resets" { (a.resets_at.format("%Y-%m-%d %H:%M UTC")) } }
                }
            }
        }
        h2 { "Daily requests" }
        (embed("chart-daily", &daily))
        @if let Some(b) = &burn {
            h2 { "Quota burn-down" }
            (embed("chart-quota", b))
        }
    };
    Ok(layout(
        "Overview",
        &signed,
        Some(TenantRef {
            id: tenant_id,
            name: &a.tenant.name,
        }),
        "overview",
        body,
    ))
}
