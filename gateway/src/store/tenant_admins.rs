//! The `tenant_admins` table (migration `20261129000005_tenant_admins.sql`): a tenant admin as
//! the admin API lists it ([`TenantAdmin`]) and every statement on the table. Only a token's
//! SHA-256 and its display prefix are stored, never the token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// The columns of a [`TenantAdmin`], in one place for every statement that returns one.
macro_rules! admin_columns {
    () => {
        "id, tenant_id, name, prefix, created_at, revoked_at"
    };
}

/// A tenant admin as listed: the display prefix only, never the token or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TenantAdmin {
    /// Tenant admin id (UUIDv7).
    pub id: Uuid,
    /// The tenant it administers.
    pub tenant_id: Uuid,
    /// Name given at creation (e.g. the person's e-mail).
    pub name: String,
    /// Non-secret display prefix (first 15 characters of the token, `maas_ta_` + 7 hex).
    pub prefix: String,
    /// Creation time, UTC.
    pub created_at: DateTime<Utc>,
    /// Revocation time, UTC; `null` while the token is live.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Store a tenant admin of `tenant_id` named `name` whose token has display prefix `prefix`
/// and SHA-256 `token_sha256`, under a new id (UUIDv7).
///
/// # Errors
/// When PostgreSQL fails (e.g. no such tenant, or a hash that is already stored).
pub async fn insert_tenant_admin(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    name: &str,
    prefix: &str,
    token_sha256: &str,
) -> Result<TenantAdmin, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO tenant_admins (id, tenant_id, name, prefix, token_sha256) \
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        admin_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(name)
    .bind(prefix)
    .bind(token_sha256)
    .fetch_one(db)
    .await
}

/// Tenant `tenant_id`'s admins, revoked ones included, oldest first.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_admins_of(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<TenantAdmin>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        admin_columns!(),
        " FROM tenant_admins WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// Revoke tenant admin `id` now, or keep its first revocation time if it is revoked already;
/// the admin as it now is, `None` when there is no such admin.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn revoke_tenant_admin(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<TenantAdmin>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tenant_admins SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
         RETURNING ",
        admin_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The live (not revoked) tenant admin whose token hashes to `token_sha256`.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn live_tenant_admin(
    db: impl PgExecutor<'_>,
    token_sha256: &str,
) -> Result<Option<TenantAdmin>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        admin_columns!(),
        " FROM tenant_admins WHERE token_sha256 = $1 AND revoked_at IS NULL"
    ))
    .bind(token_sha256)
    .fetch_optional(db)
    .await
}
