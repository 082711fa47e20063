//! A tenant's account state for its admin (and the operator): the tenant and its plan's
//! prices, the limits that govern its own counter and each model, and this calendar month's
//! (UTC) usage against the monthly inference quota and budget, with the date they reset.
//! Read from the hourly rollups (`usage_hourly`), never the raw events.
//!
//! The budget counts list price (no included units: [`ModelPrice::list_cost_milli`], as the
//! limiter does); `invoice_micro_usd` is what the month's invoice says so far (after included
//! units, rounded as in `maas_billing::invoice`).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use maas_billing::invoice::{price_line, ModelUsage};
use maas_billing::plans::{plan_prices, price_for, ModelPrice};
use maas_billing::{model_totals, ModelTotals, Period};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::VisibleTenant;
use super::error::{AppError, ErrorBody};
use super::state::AdminState;
use crate::store::{self, Level, LimitRule, Specificity, Tenant};

/// A rule that applies to the tenant, with where it is set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AppliedRule {
    /// `plan` or `tenant` (a tenant's rule overrides its plan's for the same level and model).
    pub source: String,
    /// Whether this rule is the one in force for its level (and model).
    pub in_force: bool,
    /// The rule.
    #[serde(flatten)]
    pub rule: LimitRule,
}

/// A monthly limit and how much of it is used.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct MonthlyLimit {
    /// The limit (inferences, or micro-USD for the budget).
    pub limit: i64,
    /// Used so far this month.
    pub used: i64,
    /// `limit - used`, never below 0.
    pub remaining: i64,
}

impl MonthlyLimit {
    fn new(limit: i64, used: i64) -> Self {
        MonthlyLimit {
            limit,
            used,
            remaining: limit.saturating_sub(used).max(0),
        }
    }
}

/// `GET /admin/v1/tenants/{tenant_id}/account`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Account {
    /// The tenant (its plan by name).
    pub tenant: Tenant,
    /// The current billing period, `YYYY-MM` (UTC).
    pub period: String,
    /// Start of the period (UTC).
    pub period_start: DateTime<Utc>,
    /// When the monthly quota and budget reset: the end of the period (UTC).
    pub resets_at: DateTime<Utc>,
    /// The plan's prices (`*`: every model without its own row).
    pub prices: Vec<ModelPrice>,
    /// The plan's and the tenant's rules of levels `tenant` and `model` (key rules are on each
    /// key: `GET /admin/v1/tenants/{tenant_id}/keys`).
    pub rules: Vec<AppliedRule>,
    /// This month's usage per model.
    pub usage_by_model: Vec<ModelTotals>,
    /// This month's totals over every model.
    pub usage: ModelTotals,
    /// List-price value of this month's billable usage, micro-USD (what a budget counts).
    pub spend_micro_usd: i64,
    /// The month's invoice so far (included units deducted), micro-USD; `null` when a model
    /// used has no price in the plan.
    pub invoice_micro_usd: Option<i64>,
    /// The monthly inference quota of the tenant's own counter, if one is set.
    pub inference_quota: Option<MonthlyLimit>,
    /// The monthly budget of the tenant's own counter, micro-USD, if one is set.
    pub budget: Option<MonthlyLimit>,
}

/// Build the account state of tenant `tenant_id` at `now`.
///
/// # Errors
/// 404 for no such tenant; 409 when its plan is missing; 500 when PostgreSQL fails.
pub async fn account(
    state: &AdminState,
    tenant_id: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<Account, AppError> {
    let tenant = store::tenant_row(&state.pool, tenant_id)
        .await?
        .ok_or_else(|| AppError::no_tenant(tenant_id))?;
    let prices = plan_prices(&state.pool, &tenant.plan).await?;
    let period = Period::of(now);
    let by_model = model_totals(&state.pool, tenant_id, period.start(), period.end()).await?;
    let mut usage = ModelTotals::default();
    let mut spend_milli: i64 = 0;
    let mut invoice: Option<i64> = Some(0);
    for m in &by_model {
        usage.requests += m.requests;
        usage.billable_requests += m.billable_requests;
        usage.error_requests += m.error_requests;
        usage.inference_count += m.inference_count;
        usage.compute_us += m.compute_us;
        if m.billable_requests == 0 {
            continue;
        }
        let name = m.model.clone().unwrap_or_default();
        match price_for(&prices, &name) {
            Some(p) => {
                spend_milli = spend_milli.saturating_add(p.list_cost_milli(
                    m.billable_requests,
                    m.inference_count,
                    m.compute_us,
                ));
                let line = price_line(
                    ModelUsage {
                        model: name,
                        requests: m.billable_requests,
                        inference_count: m.inference_count,
                        compute_us: m.compute_us,
                    },
                    p,
                )?;
                invoice = invoice.and_then(|i| i.checked_add(line.amount_micro_usd));
            }
            None => invoice = None,
        }
    }
    let spend_micro_usd = spend_milli / 1000;
    let all = store::request_rules(&state.pool, tenant_id, None).await?;
    let mut rules: Vec<AppliedRule> = all
        .iter()
        .filter(|(owner, r)| *owner != Specificity::Key && r.level != Level::Key)
        .map(|(owner, r)| AppliedRule {
            source: match owner {
                Specificity::Plan => "plan",
                _ => "tenant",
            }
            .into(),
            // A plan rule is overridden by a tenant rule of the same level and model.
            in_force: *owner == Specificity::Tenant
                || !all.iter().any(|(o, x)| {
                    *o == Specificity::Tenant && x.level == r.level && x.model == r.model
                }),
            rule: r.clone(),
        })
        .collect();
    rules.sort_by(|a, b| {
        (a.rule.level.as_str(), &a.rule.model, &a.source).cmp(&(
            b.rule.level.as_str(),
            &b.rule.model,
            &b.source,
        ))
    });
    let tenant_rule = rules
        .iter()
        .find(|r| r.in_force && r.rule.level == Level::Tenant)
        .map(|r| r.rule.clone());
    let inference_quota = tenant_rule
        .as_ref()
        .and_then(|r| r.monthly_inference_quota)
        .map(|q| MonthlyLimit::new(q, usage.inference_count));
    let budget = tenant_rule
        .as_ref()
        .and_then(|r| r.monthly_budget_micro_usd)
        .map(|b| MonthlyLimit::new(b, spend_micro_usd));
    Ok(Account {
        tenant,
        period: period.to_string(),
        period_start: period.start(),
        resets_at: period.end(),
        prices,
        rules,
        usage_by_model: by_model,
        usage,
        spend_micro_usd,
        invoice_micro_usd: invoice,
        inference_quota,
        budget,
    })
}

/// A tenant's account: plan and prices, the limits that apply, and this month's (UTC) usage
/// against its quota and budget, with their reset date.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/account",
    params(("tenant_id" = uuid::Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The account state", body = Account),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_account(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
) -> Result<Json<Account>, AppError> {
    Ok(Json(account(&state, tenant_id, Utc::now()).await?))
}
