//! Tenant admins (operator only): `POST /admin/v1/tenants/{tenant_id}/admins`, `GET` the same,
//! `POST /admin/v1/tenant-admins/{admin_id}/revoke`. A tenant admin's token (`maas_ta_` + 48
//! hex, [`crate::auth::TENANT_ADMIN_TOKEN`]) is returned once, at creation; only its SHA-256 is
//! stored (`tenant_admins`). What the token may read is decided in `auth.rs`.

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
use crate::auth::TENANT_ADMIN_TOKEN;
use crate::store::{self, TenantAdmin};

/// The OpenAPI tag of these operations: the one they have always had, shared with the usage
/// routes.
const USAGE_TAG: &str = "crate::admin::usage";

/// Body of `POST /admin/v1/tenants/{tenant_id}/admins`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTenantAdmin {
    /// Name of the admin, 1 to 200 characters.
    pub name: String,
}

/// A newly created tenant admin: the only time its token is ever returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedTenantAdmin {
    /// The whole token (`maas_ta_` + 48 hex digits). Store it now: it is not kept.
    pub token: String,
    /// The admin as later listings show it.
    #[serde(flatten)]
    pub admin: TenantAdmin,
}

/// Create an admin for a tenant; the response holds its token, shown this once.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/admins", tag = USAGE_TAG, request_body = NewTenantAdmin,
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = CreatedTenantAdmin),
        (status = 400, description = "Invalid body or tenant_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn create_tenant_admin(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
    AppJson(body): AppJson<NewTenantAdmin>,
) -> Result<(StatusCode, Json<CreatedTenantAdmin>), AppError> {
    check_name("name", &body.name)?;
    state.tenant_name(tenant_id).await?;
    let new = TENANT_ADMIN_TOKEN.generate()?;
    let admin = store::insert_tenant_admin(
        &state.pool,
        tenant_id,
        &body.name,
        &new.prefix,
        &new.secret_sha256,
    )
    .await?;
    tracing::info!(%tenant_id, admin_id = %admin.id, prefix = %admin.prefix, "admin: tenant admin created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenantAdmin {
            token: new.secret,
            admin,
        }),
    ))
}

/// List a tenant's admins (revoked ones included), oldest first; prefixes only.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/admins", tag = USAGE_TAG,
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's admins", body = [TenantAdmin]),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn list_tenant_admins(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
) -> Result<Json<Vec<TenantAdmin>>, AppError> {
    state.tenant_name(tenant_id).await?;
    Ok(Json(store::tenant_admins_of(&state.pool, tenant_id).await?))
}

/// Revoke a tenant admin: its token is refused (401) from the next request on. Idempotent
/// (revoking again keeps the first revocation time).
#[utoipa::path(
    post, path = "/admin/v1/tenant-admins/{admin_id}/revoke", tag = USAGE_TAG,
    params(("admin_id" = Uuid, Path, description = "Tenant admin id")),
    responses(
        (status = 200, description = "The tenant admin, revoked", body = TenantAdmin),
        (status = 400, description = "admin_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant admin", body = ErrorBody)
    )
)]
pub async fn revoke_tenant_admin(
    State(state): State<AdminState>,
    AppPath(admin_id): AppPath<Uuid>,
) -> Result<Json<TenantAdmin>, AppError> {
    let admin = store::revoke_tenant_admin(&state.pool, admin_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no tenant admin {admin_id}")))?;
    tracing::info!(admin_id = %admin.id, prefix = %admin.prefix, "admin: tenant admin revoked");
    Ok(Json(admin))
}
