//! A tenant's invoices: one per month from the tenant's creation to this month (the current
//! one so far), and one invoice's lines, from `maas_billing::invoice`.

use axum::extract::{Path, State};
use chrono::Utc;
use maas_billing::invoice::{build_invoice, format_usd};
use maas_billing::Period;
use maud::{html, Markup};
use uuid::Uuid;

use super::super::error::AppError;
use super::super::state::AdminState;
use super::layout::{page as layout, TenantRef};
use super::signed_in::{PageError, SignedIn};
use crate::store;

/// Months listed at most.
const MAX_MONTHS: usize = 36;

/// `GET /dashboard/tenants/{tenant_id}/invoices`.
pub async fn list(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    let tenant = store::tenant_row(&state.pool, tenant_id)
        .await?
        .ok_or_else(|| AppError::no_tenant(tenant_id))?;
    let now = Period::of(Utc::now());
    let mut months = Vec::new();
    let mut p = Period::of(tenant.created_at);
    while p.start() <= now.start() {
        months.push(p);
        p = p.next();
    }
    months.reverse();
    months.truncate(MAX_MONTHS);
    let mut rows = Vec::new();
    for m in months {
        let total = match build_invoice(&state.pool, &tenant.name, m).await {
            Ok(inv) => Ok(inv.total_micro_usd),
            Err(e) => Err(e.to_string()),
        };
        rows.push((m, total));
    }
    let body = html! {
        table id="invoices-table" {
            thead { tr { th { "Month" } th.num { "Total (USD)" } th {} } }
            tbody {
                @for (m, total) in &rows {
                    tr {
                        td { a href={ "/dashboard/tenants/" (tenant_id) "/invoices/" (m) } { (m) } }
                        @match total {
                            Ok(t) => { td.num { (format_usd(*t)) } }
                            Err(e) => { td.num.error { (e) } }
                        }
                        td { @if m.start() == now.start() { span.muted { "so far" } } }
                    }
                }
            }
        }
    };
    Ok(layout(
        "Invoices",
        &signed,
        Some(TenantRef {
            id: tenant_id,
            name: &tenant.name,
        }),
        "invoices",
        body,
    ))
}

/// `GET /dashboard/tenants/{tenant_id}/invoices/{period}`.
pub async fn one(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path((tenant_id, period)): Path<(Uuid, String)>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    let period = Period::parse(&period)?;
    let name = state.tenant_name(tenant_id).await?;
    let inv = build_invoice(&state.pool, &name, period).await?;
    let body = html! {
        p { "Plan " strong { (inv.plan) } ", " (inv.from.format("%Y-%m-%d")) " to "
            (inv.to.format("%Y-%m-%d")) " (UTC, end excluded). Included units are deducted first." }
        table id="invoice-lines" {
            thead { tr { th { "Model" } th.num { "Requests" } th.num { "Inferences" } th.num { "Compute (s)" }
                th.num { "Requests (USD)" } th.num { "Inferences (USD)" } th.num { "Compute (USD)" } th.num { "Amount (USD)" } } }
            tbody {
                @for l in &inv.lines {
                    tr { td { (l.usage.model) } td.num { (l.usage.requests) } td.num { (l.usage.inference_count) }
                         td.num { (format!("{:.3}", l.usage.compute_us as f64 / 1e6)) }
                         td.num { (format_usd(l.requests_micro_usd)) } td.num { (format_usd(l.inferences_micro_usd)) }
                         td.num { (format_usd(l.compute_micro_usd)) } td.num { (format_usd(l.amount_micro_usd)) } }
                }
            }
            tfoot { tr { th colspan="7" { "Total" } th.num id="invoice-total" { (format_usd(inv.total_micro_usd)) } } }
        }
        p { a href={ "/admin/v1/tenants/" (tenant_id) "/invoices/" (period) } { "This invoice as JSON" } }
    };
    Ok(layout(
        &format!("Invoice {period}"),
        &signed,
        Some(TenantRef {
            id: tenant_id,
            name: &name,
        }),
        "invoices",
        body,
    ))
}
