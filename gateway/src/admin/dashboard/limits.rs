//! What limits a tenant's requests, and what they cost: the plan's and the tenant's rules for
//! the tenant and each model (which one is in force), each key's own rules, and the plan's
//! prices.

use axum::extract::{Path, State};
use chrono::Utc;
use maas_billing::invoice::format_usd;
use maud::{html, Markup};
use uuid::Uuid;

use super::super::account::account;
use super::super::keys::listed_keys;
use super::super::state::AdminState;
use super::layout::{page as layout, TenantRef};
use super::signed_in::{PageError, SignedIn};
use crate::store::LimitRule;

/// A rule in words, e.g. `10 per 1 s (burst 5), 4 in flight, 1000 inferences/month`.
pub fn rule_summary(r: &LimitRule) -> String {
    let mut parts = Vec::new();
    if let Some(rate) = r.rate {
        let burst = r.burst.map(|b| format!(" (burst {b})")).unwrap_or_default();
        parts.push(format!("{rate} per {} s{burst}", r.period_s));
    }
    if let Some(c) = r.concurrency {
        parts.push(format!("{c} in flight"));
    }
    if let Some(q) = r.monthly_inference_quota {
        parts.push(format!("{q} inferences/month"));
    }
    if let Some(b) = r.monthly_budget_micro_usd {
        parts.push(format!("${}/month", format_usd(b)));
    }
    if parts.is_empty() {
        "no limit".into()
    } else {
        parts.join(", ")
    }
}

/// `GET /dashboard/tenants/{tenant_id}/limits`.
pub async fn page(
    State(state): State<AdminState>,
    signed: SignedIn,
    Path(tenant_id): Path<Uuid>,
) -> Result<Markup, PageError> {
    signed.tenant(tenant_id)?;
    let a = account(&state, tenant_id, Utc::now()).await?;
    let keys = listed_keys(&state.pool, tenant_id).await?;
    let body = html! {
        p { "Plan " strong id="plan" { (a.tenant.plan) } ". Quotas and budgets reset "
            (a.resets_at.format("%Y-%m-%d %H:%M UTC")) "." }
        h2 { "Tenant and model limits" }
        table id="rules-table" {
            thead { tr { th { "Counter" } th { "Model" } th { "Limit" } th { "Set on" } th { "In force" } } }
            tbody {
                @for r in &a.rules {
                    tr {
                        td { (r.rule.level.as_str()) }
                        td { (r.rule.model.as_deref().unwrap_or(if r.rule.level.as_str() == "model" { "each model" } else { "" })) }
                        td { (rule_summary(&r.rule)) }
                        td { (r.source) }
                        td { @if r.in_force { "yes" } @else { span.muted { "overridden" } } }
                    }
                }
                @if a.rules.is_empty() { tr { td colspan="5" { "No tenant or model limits." } } }
            }
        }
        h2 { "Key limits" }
        table id="key-rules-table" {
            thead { tr { th { "Key" } th { "Own limit" } } }
            tbody {
                @for k in keys.iter().filter(|k| k.key.revoked_at.is_none()) {
                    tr { td { (k.key.name) " " code { (k.key.prefix) } }
                         td { @if k.limits.is_empty() { span.muted { "none of its own" } }
                              @for r in &k.limits { (rule_summary(r)) } } }
                }
            }
        }
        h2 { "Prices (micro-USD)" }
        table id="prices-table" {
            thead { tr { th { "Model" } th.num { "Per request" } th.num { "Per 1k inferences" }
                th.num { "Per compute second" } th.num { "Included requests" }
                th.num { "Included inferences" } th.num { "Included compute (us)" } } }
            tbody {
                @for p in &a.prices {
                    tr { td { (p.model) } td.num { (p.per_request_micro_usd) }
                         td.num { (p.per_1k_inferences_micro_usd) } td.num { (p.per_compute_second_micro_usd) }
                         td.num { (p.included_requests) } td.num { (p.included_inferences) }
                         td.num { (p.included_compute_us) } }
                }
            }
        }
    };
    Ok(layout(
        "Limits and plan",
        &signed,
        Some(TenantRef {
            id: tenant_id,
            name: &a.tenant.name,
        }),
        "limits",
        body,
    ))
}
