//! The operator's page: every tenant ranked by this month's spend (list price), with
//! suspend and reactivate buttons, the plans with their priority levels and prices, and this
//! gateway's backend pools (health, ejection, requests in flight).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use maas_billing::invoice::format_usd;
use maas_billing::plans::list_plans;
use maas_billing::ranking::spend_ranking;
use maas_billing::Period;
use maud::{html, Markup};
use uuid::Uuid;

use super::super::error::AppError;
use super::super::state::AdminState;
use super::layout::{csrf_field, page as layout};
use super::sign_in::CsrfForm;
use super::signed_in::{PageError, SignedIn};
use crate::store::{self, TenantStatus};

/// `GET /dashboard/operator`.
pub async fn page(State(state): State<AdminState>, signed: SignedIn) -> Result<Markup, PageError> {
    signed.operator()?;
    let period = Period::of(Utc::now());
    let ranking = spend_ranking(&state.pool, period.start(), period.end()).await?;
    let plans = list_plans(&state.pool).await?;
    let pools = state
        .pools
        .as_ref()
        .map(|p| p.snapshot())
        .unwrap_or_default();
    let body = html! {
        h2 { "Tenants by spend, " (period) }
        table id="tenants-table" {
            thead { tr { th { "Tenant" } th { "Plan" } th { "Status" } th.num { "Requests" }
                th.num { "Succeeded" } th.num { "Spend (USD)" } th {} } }
            tbody {
                @for t in &ranking {
                    tr data-tenant-id=(t.tenant_id) {
                        td { a href={ "/dashboard/tenants/" (t.tenant_id) "/overview" } { (t.name) } }
                        td { (t.plan) }
                        td class={ "status-" (t.status) } { (t.status) }
                        td.num { (t.requests) } td.num { (t.billable_requests) }
                        td.num { (format_usd(t.spend_micro_usd)) }
                        td {
                            @let action = if t.status == "active" { "suspend" } else { "reactivate" };
                            form.inline method="post" action={ "/dashboard/operator/tenants/" (t.tenant_id) "/" (action) } {
                                (csrf_field(&signed))
                                button type="submit" class={ (if action == "suspend" { "danger" } else { "secondary" }) " " (action) } { (action) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Plans (micro-USD)" }
        table id="plans-table" {
            thead { tr { th { "Plan" } th.num { "Priority" } th { "Model" } th.num { "Per request" } th.num { "Per 1k inferences" }
                th.num { "Per compute second" } th.num { "Included requests" } th.num { "Included inferences" } } }
            tbody {
                @for p in &plans {
                    @for price in &p.prices {
                        tr { td { (p.name) } td.num { (p.priority.level()) } td { (price.model) } td.num { (price.per_request_micro_usd) }
                             td.num { (price.per_1k_inferences_micro_usd) } td.num { (price.per_compute_second_micro_usd) }
                             td.num { (price.included_requests) } td.num { (price.included_inferences) } }
                    }
                }
            }
        }
        h2 { "Backend pools of this gateway" }
        table id="pools-table" {
            thead { tr { th { "Pool" } th { "Backend" } th { "Healthy" } th { "Ejected" } th.num { "In flight" }
                th.num { "Requests" } th { "Models" } th { "Last error" } } }
            tbody {
                @for p in &pools {
                    @for b in &p.backends {
                        tr { td { (p.name) } td { (b.address) } td { (if b.healthy { "yes" } else { "no" }) }
                             td { (b.ejected_for_ms.map(|ms| format!("{ms} ms")).unwrap_or_default()) }
                             td.num { (b.in_flight) } td.num { (b.requests) }
                             td { (b.models.as_ref().map(|m| m.join(", ")).unwrap_or_default()) }
                             td { (b.last_error.as_deref().unwrap_or("")) } }
                    }
                }
            }
        }
    };
    Ok(layout("All tenants", &signed, None, "operator", body))
}

/// `POST /dashboard/operator/tenants/{tenant_id}/{suspend|reactivate}`.
pub async fn set_status(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path((tenant_id, action)): Path<(Uuid, String)>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    signed.operator()?;
    signed.check_form(&headers, &form.csrf)?;
    let status = match action.as_str() {
        "suspend" => TenantStatus::Suspended,
        "reactivate" => TenantStatus::Active,
        other => {
            return Err(
                AppError::NotFound(format!("{other}: expected suspend or reactivate")).into(),
            )
        }
    };
    store::set_tenant_status(&state.pool, tenant_id, status)
        .await?
        .ok_or_else(|| AppError::no_tenant(tenant_id))?;
    tracing::info!(%tenant_id, status = status.as_str(), "dashboard: tenant status set");
    state.announce(tenant_id).await;
    Ok(Redirect::to("/dashboard/operator").into_response())
}
