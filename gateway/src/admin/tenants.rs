//! `/admin/v1/tenants`: create, list, look up by name, suspend and reactivate tenants (operator
//! only). A suspension is announced to every gateway ([`crate::invalidation`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody};
use super::extract::{AppJson, AppPath};
use super::state::AdminState;
use super::validate::check_name;
use crate::store::{self, Tenant, TenantStatus, DEFAULT_PLAN};

/// Body of `POST /admin/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTenant {
    /// Unique name, 1 to 200 characters.
    pub name: String,
    /// Pricing plan; default `default`.
    #[serde(default)]
    pub plan: Option<String>,
}

/// Create a tenant (active).
#[utoipa::path(
    post, path = "/admin/v1/tenants", request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 409, description = "A tenant with this name exists", body = ErrorBody)
    )
)]
pub async fn create_tenant(
    State(state): State<AdminState>,
    AppJson(body): AppJson<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), AppError> {
    check_name("name", &body.name)?;
    let plan = body.plan.as_deref().unwrap_or(DEFAULT_PLAN);
    check_name("plan", plan)?;
    let tenant = store::insert_tenant(&state.pool, &body.name, plan)
        .await?
        .ok_or_else(|| AppError::Conflict(format!("a tenant named '{}' exists", body.name)))?;
    tracing::info!(tenant_id = %tenant.id, "admin: tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// List every tenant, oldest first.
#[utoipa::path(
    get, path = "/admin/v1/tenants",
    responses(
        (status = 200, description = "All tenants", body = [Tenant]),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody)
    )
)]
pub async fn list_tenants(State(state): State<AdminState>) -> Result<Json<Vec<Tenant>>, AppError> {
    Ok(Json(store::list_tenants(&state.pool).await?))
}

async fn set_tenant_status(
    state: &AdminState,
    id: Uuid,
    status: TenantStatus,
) -> Result<Json<Tenant>, AppError> {
    let tenant = store::set_tenant_status(&state.pool, id, status)
        .await?
        .ok_or_else(|| AppError::no_tenant(id))?;
    tracing::info!(tenant_id = %id, status = status.as_str(), "admin: tenant status set");
    state.announce(id).await;
    Ok(Json(tenant))
}

/// Suspend a tenant: its keys and tokens are refused (403) on every gateway within a second
/// (announced on Redis; without Redis, once the gateways' cache TTL expires).
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/suspend",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant, now suspended", body = Tenant),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn suspend_tenant(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
) -> Result<Json<Tenant>, AppError> {
    set_tenant_status(&state, tenant_id, TenantStatus::Suspended).await
}

/// Reactivate a suspended tenant.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/reactivate",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant, now active", body = Tenant),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn reactivate_tenant(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
) -> Result<Json<Tenant>, AppError> {
    set_tenant_status(&state, tenant_id, TenantStatus::Active).await
}

/// A tenant by its name (the name the `maas-billing` CLI and `keys create` take).
#[utoipa::path(
    get, path = "/admin/v1/tenants/by-name/{name}",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "The tenant", body = Tenant),
        (status = 400, description = "Not a valid name (blank, too long, control characters)", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No tenant of that name", body = ErrorBody)
    )
)]
pub async fn tenant_by_name(
    State(state): State<AdminState>,
    AppPath(name): AppPath<String>,
) -> Result<Json<Tenant>, AppError> {
    check_name("name", &name)?;
    store::tenant_named(&state.pool, &name)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("no tenant named '{name}'")))
}
