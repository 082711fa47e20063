//! API keys: issued, listed, revoked and rotated by the operator or by an admin of the key's
//! tenant (self-service: `/admin/v1/tenants/{id}/keys`, `/admin/v1/keys/{id}/...`; another
//! tenant's key is 403), and issued by the `maas-gateway keys create` command ([`create_key`]).
//! A secret is returned once, at issue; only its SHA-256 and display prefix are stored. A
//! rotated key keeps the old key's own limit rules. A revocation or rotation is announced to
//! every gateway ([`crate::invalidation`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{VisibleKey, VisibleTenant};
use super::error::{AppError, ErrorBody};
use super::extract::AppJson;
use super::state::AdminState;
use super::validate::check_name;
use crate::auth::{generate_key, NewKey};
use crate::store::{self, ApiKey, LimitRule, NewKeyRow};

/// Body of `POST /admin/v1/tenants/{tenant_id}/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    /// Name of the key, 1 to 200 characters.
    pub name: String,
    /// Models the key may call; absent or `null` for every model; never empty.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Expiry (RFC 3339), if any; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A newly created (or rotated) key: the only time the secret is ever returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The whole secret (`maas_` + 48 hex digits). Store it now: it is not kept.
    pub secret: String,
    /// The key as later listings show it.
    #[serde(flatten)]
    pub key: ApiKey,
}

/// A key as listed, with its own limit rules (level `key`; empty: the tenant's and plan's
/// rules apply).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListedApiKey {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKey,
    /// The key's own rules.
    pub limits: Vec<LimitRule>,
}

/// Generate a secret and store it as key `name` of `tenant_id`.
async fn issue(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    name: &str,
    allowed_models: Option<&[String]>,
    expires_at: Option<DateTime<Utc>>,
) -> anyhow::Result<(ApiKey, NewKey)> {
    let secret = generate_key()?;
    let key = store::insert_key(
        db,
        &NewKeyRow {
            tenant_id,
            name,
            prefix: &secret.prefix,
            secret_sha256: &secret.secret_sha256,
            allowed_models,
            expires_at,
        },
    )
    .await?;
    Ok((key, secret))
}

/// Create a key for tenant `tenant_name` (creating the tenant, active on the default plan, if it
/// does not exist) and return the new key's id and secret: the `keys create` command.
///
/// `models`: `None` lets the key call every model, otherwise only the listed ones.
///
/// # Errors
/// When PostgreSQL or the OS random source fails.
pub async fn create_key(
    pool: &PgPool,
    tenant_name: &str,
    key_name: &str,
    models: Option<Vec<String>>,
) -> anyhow::Result<(Uuid, NewKey)> {
    let mut tx = pool.begin().await?;
    let tenant_id = store::ensure_tenant(&mut tx, tenant_name).await?;
    let (key, secret) = issue(&mut *tx, tenant_id, key_name, models.as_deref(), None).await?;
    tx.commit().await?;
    Ok((key.id, secret))
}

/// Create an API key for a tenant; the response holds the secret, shown this once.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/keys", request_body = NewApiKey,
    operation_id = "create_key",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedApiKey),
        (status = 400, description = "Invalid body or tenant_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn create_tenant_key(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
    AppJson(body): AppJson<NewApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AppError> {
    Ok((
        StatusCode::CREATED,
        Json(create(&state, tenant_id, &body).await?),
    ))
}

/// Check `body` and issue a key for tenant `tenant_id` (the caller was checked).
///
/// # Errors
/// 400 for a bad name, empty model list or past expiry; 404 for no such tenant.
pub async fn create(
    state: &AdminState,
    tenant_id: Uuid,
    body: &NewApiKey,
) -> Result<CreatedApiKey, AppError> {
    check_name("name", &body.name)?;
    if let Some(models) = &body.allowed_models {
        if models.is_empty() {
            return Err(AppError::BadRequest(
                "allowed_models must list at least one model, or be null for every model".into(),
            ));
        }
        for m in models {
            check_name("each allowed model", m)?;
        }
    }
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(AppError::BadRequest(
            "expires_at must be in the future".into(),
        ));
    }
    state.tenant_name(tenant_id).await?;
    let (key, secret) = issue(
        &state.pool,
        tenant_id,
        &body.name,
        body.allowed_models.as_deref(),
        body.expires_at,
    )
    .await?;
    tracing::info!(%tenant_id, key_id = %key.id, prefix = %key.prefix, "admin: key created");
    Ok(CreatedApiKey {
        secret: secret.secret,
        key,
    })
}

/// List a tenant's keys (revoked ones included), oldest first, each with its own limit rules;
/// prefixes only, never a secret.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/keys",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's keys", body = [ListedApiKey]),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn list_keys(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
) -> Result<Json<Vec<ListedApiKey>>, AppError> {
    state.tenant_name(tenant_id).await?;
    Ok(Json(listed_keys(&state.pool, tenant_id).await?))
}

/// Tenant `tenant_id`'s keys with their own rules, oldest first.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn listed_keys(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<ListedApiKey>, AppError> {
    let keys = store::tenant_keys(pool, tenant_id).await?;
    let mut rules = store::tenant_key_rules(pool, tenant_id).await?;
    Ok(keys
        .into_iter()
        .map(|key| {
            let limits = rules
                .iter()
                .filter(|(k, _)| *k == key.id)
                .map(|(_, r)| r.clone())
                .collect();
            rules.retain(|(k, _)| *k != key.id);
            ListedApiKey { key, limits }
        })
        .collect())
}

/// Revoke a key (idempotent: revoking a revoked key keeps its first revocation time).
#[utoipa::path(
    post, path = "/admin/v1/keys/{key_id}/revoke",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKey),
        (status = 400, description = "key_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin, and the key is not its tenant's", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn revoke_key(
    VisibleKey { key_id, .. }: VisibleKey,
    State(state): State<AdminState>,
) -> Result<Json<ApiKey>, AppError> {
    Ok(Json(revoke(&state, key_id).await?))
}

/// Revoke key `key_id` (the caller was checked) and announce it.
///
/// # Errors
/// 404 for no such key.
pub async fn revoke(state: &AdminState, key_id: Uuid) -> Result<ApiKey, AppError> {
    let key = store::revoke_key(&state.pool, key_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no key {key_id}")))?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "admin: key revoked");
    state.announce(key.tenant_id).await;
    Ok(key)
}

/// Rotate a key: a new secret with the same tenant, name, models, expiry and own limit rules;
/// the old key is revoked in the same transaction.
#[utoipa::path(
    post, path = "/admin/v1/keys/{key_id}/rotate",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 201, description = "The new key; `secret` is shown only here", body = CreatedApiKey),
        (status = 400, description = "key_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin, and the key is not its tenant's", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "The key is already revoked", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn rotate_key(
    VisibleKey { key_id, .. }: VisibleKey,
    State(state): State<AdminState>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AppError> {
    Ok((StatusCode::CREATED, Json(rotate(&state, key_id).await?)))
}

/// Rotate key `key_id` (the caller was checked) and announce it.
///
/// # Errors
/// 404 for no such key, 409 for a revoked one.
pub async fn rotate(state: &AdminState, key_id: Uuid) -> Result<CreatedApiKey, AppError> {
    let mut tx = state.pool.begin().await?;
    let old = store::lock_key(&mut *tx, key_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no key {key_id}")))?;
    if old.revoked_at.is_some() {
        return Err(AppError::Conflict(format!(
            "key {key_id} is revoked; create a new key instead"
        )));
    }
    store::revoke_key(&mut *tx, key_id).await?;
    let (key, secret) = issue(
        &mut *tx,
        old.tenant_id,
        &old.name,
        old.allowed_models.as_deref(),
        old.expires_at,
    )
    .await?;
    store::copy_key_rules(&mut tx, key_id, key.id).await?;
    tx.commit().await?;
    tracing::info!(old_key_id = %key_id, key_id = %key.id, "admin: key rotated");
    state.announce(old.tenant_id).await;
    Ok(CreatedApiKey {
        secret: secret.secret,
        key,
    })
}
