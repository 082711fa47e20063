//! Plans and prices over the admin API (operator only; the same data as `maas-billing plan
//! set|show|assign`): list the plans with their prices, read one, create or update one (its
//! description and priority level), set one model's price (creating the plan), and put a
//! tenant on a plan. Money is integer micro-USD. A change is
//! announced to every gateway ([`crate::invalidation`]): budgets are priced with these rows.

use axum::extract::State;
use axum::Json;
use maas_billing::plans::{self as billing_plans, ModelPrice, Plan, PlanPriority};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody};
use super::extract::{AppJson, AppPath};
use super::limits::PlanName;
use super::state::AdminState;
use super::validate::check_name;
use crate::store::{self, Tenant};

/// Body of `PUT /admin/v1/plans/{plan}/prices/{model}`: every field defaults to 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PriceBody {
    /// Price of one billable (2xx) request, micro-USD.
    pub per_request_micro_usd: i64,
    /// Price of 1,000 inferences, micro-USD.
    pub per_1k_inferences_micro_usd: i64,
    /// Price of one second of backend compute, micro-USD.
    pub per_compute_second_micro_usd: i64,
    /// Billable requests per month at no charge.
    pub included_requests: i64,
    /// Inferences per month at no charge.
    pub included_inferences: i64,
    /// Compute microseconds per month at no charge.
    pub included_compute_us: i64,
}

/// Body of `PUT /admin/v1/plans/{plan}`: the fields to set; a field left out keeps its value
/// (for a new plan: an empty description, priority 1).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PlanBody {
    /// Free text.
    pub description: Option<String>,
    /// The plan's priority level in the backends' fair batchers, 1 to 16: its tenants'
    /// requests get this many rows per round of the batchers' deficit round robin under
    /// contention (a level-1 plan's one) and their level's queue timeout.
    #[schema(minimum = 1, maximum = 16)]
    pub priority: Option<i64>,
}

/// Body of `PUT /admin/v1/tenants/{tenant_id}/plan`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanAssignment {
    /// The plan to put the tenant on; it must exist.
    pub plan: String,
}

/// The `{plan}` and `{model}` of the price route.
#[derive(Deserialize)]
pub struct PriceParams {
    plan: PlanName,
    model: String,
}

async fn plan_named(state: &AdminState, plan: &str) -> Result<Plan, AppError> {
    billing_plans::list_plans(&state.pool)
        .await?
        .into_iter()
        .find(|p| p.name == plan)
        .ok_or_else(|| AppError::NotFound(format!("no plan '{plan}'")))
}

/// Every plan with its prices, by name.
#[utoipa::path(
    get, path = "/admin/v1/plans",
    responses(
        (status = 200, description = "Every plan", body = [Plan]),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody)
    )
)]
pub async fn list_plans(State(state): State<AdminState>) -> Result<Json<Vec<Plan>>, AppError> {
    Ok(Json(billing_plans::list_plans(&state.pool).await?))
}

/// One plan with its prices.
#[utoipa::path(
    get, path = "/admin/v1/plans/{plan}",
    params(("plan" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan", body = Plan),
        (status = 400, description = "Not a valid plan name (blank, too long, control characters)", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody)
    )
)]
pub async fn get_plan(
    State(state): State<AdminState>,
    AppPath(PlanName(plan)): AppPath<PlanName>,
) -> Result<Json<Plan>, AppError> {
    Ok(Json(plan_named(&state, &plan).await?))
}

/// Create `plan` or update its description and priority level; the plan as it now is. Every
/// gateway hears of the change; a tenant's requests carry the new level once its cached
/// credential is read again (`auth.cache_ttl_ms`, or at once through the invalidation
/// channel).
#[utoipa::path(
    put, path = "/admin/v1/plans/{plan}",
    params(("plan" = String, Path, description = "Plan name")),
    request_body = PlanBody,
    responses(
        (status = 200, description = "The plan as it now is", body = Plan),
        (status = 400, description = "A priority outside 1 to 16, an unknown field or a bad name", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody)
    )
)]
pub async fn put_plan(
    State(state): State<AdminState>,
    AppPath(PlanName(plan)): AppPath<PlanName>,
    AppJson(body): AppJson<PlanBody>,
) -> Result<Json<Plan>, AppError> {
    let priority = body.priority.map(PlanPriority::try_from).transpose()?;
    billing_plans::set_plan(&state.pool, &plan, body.description.as_deref(), priority).await?;
    tracing::info!(%plan, priority = ?priority.map(PlanPriority::level), "admin: plan set");
    state.announce_change(None).await;
    Ok(Json(plan_named(&state, &plan).await?))
}

/// Set (insert or replace) the price of `model` (`*`: every model without its own row) in
/// `plan`, creating the plan if it does not exist; the plan as it now is.
#[utoipa::path(
    put, path = "/admin/v1/plans/{plan}/prices/{model}",
    params(
        ("plan" = String, Path, description = "Plan name"),
        ("model" = String, Path, description = "Model name, or * for every model")
    ),
    request_body = PriceBody,
    responses(
        (status = 200, description = "The plan, with the price set", body = Plan),
        (status = 400, description = "A negative amount, an unknown field or a bad name", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody)
    )
)]
pub async fn put_price(
    State(state): State<AdminState>,
    AppPath(PriceParams {
        plan: PlanName(plan),
        model,
    }): AppPath<PriceParams>,
    AppJson(body): AppJson<PriceBody>,
) -> Result<Json<Plan>, AppError> {
    check_name("model", &model)?;
    let price = ModelPrice {
        model,
        per_request_micro_usd: body.per_request_micro_usd,
        per_1k_inferences_micro_usd: body.per_1k_inferences_micro_usd,
        per_compute_second_micro_usd: body.per_compute_second_micro_usd,
        included_requests: body.included_requests,
        included_inferences: body.included_inferences,
        included_compute_us: body.included_compute_us,
    };
    billing_plans::set_price(&state.pool, &plan, &price).await?;
    tracing::info!(%plan, model = %price.model, "admin: price set");
    state.announce_change(None).await;
    Ok(Json(plan_named(&state, &plan).await?))
}

/// Put a tenant on a plan (which must exist); the tenant as it now is.
#[utoipa::path(
    put, path = "/admin/v1/tenants/{tenant_id}/plan",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body = PlanAssignment,
    responses(
        (status = 200, description = "The tenant, on its new plan", body = Tenant),
        (status = 400, description = "Invalid body or tenant_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "No such plan", body = ErrorBody)
    )
)]
pub async fn put_tenant_plan(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
    AppJson(body): AppJson<PlanAssignment>,
) -> Result<Json<Tenant>, AppError> {
    check_name("plan", &body.plan)?;
    let name = state.tenant_name(tenant_id).await?;
    billing_plans::assign_plan(&state.pool, &name, &body.plan).await?;
    tracing::info!(%tenant_id, plan = %body.plan, "admin: tenant plan set");
    state.announce(tenant_id).await;
    store::tenant_row(&state.pool, tenant_id)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::no_tenant(tenant_id))
}
