//! The `api_keys` table (migration `20261129000001_tenancy.sql`): a key as the admin API lists
//! it ([`ApiKey`]), as the data path caches it with its tenant's status ([`KeyRecord`]), and
//! every statement on the table but the owner lookup of a key's limit rules (`rules.rs`).
//!
//! Only a key's SHA-256 and its display prefix are stored, never the secret (its format is
//! `auth::api_keys`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// The columns of an [`ApiKey`], in one place for every statement that returns one.
macro_rules! key_columns {
    () => {
        "id, tenant_id, name, prefix, allowed_models, created_at, expires_at, revoked_at, last_used_at"
    };
}

/// An API key as listed: the display prefix only, never the secret or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ApiKey {
    /// Key id (UUIDv7).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Name given at creation.
    pub name: String,
    /// Non-secret display prefix (first 12 characters of the secret).
    pub prefix: String,
    /// Models this key may call; `null` for every model.
    pub allowed_models: Option<Vec<String>>,
    /// Creation time, UTC.
    pub created_at: DateTime<Utc>,
    /// Expiry, UTC; `null` for none.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, UTC; `null` while the key is live.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key last authenticated a request, UTC (written every
    /// `auth.last_used_flush_ms`, so up to that late); `null` if never.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key to store: what is kept of a newly issued secret, and what it may do.
#[derive(Debug, Clone, Copy)]
pub struct NewKeyRow<'a> {
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Name of the key.
    pub name: &'a str,
    /// Non-secret display prefix of the secret.
    pub prefix: &'a str,
    /// SHA-256 of the secret, 64 lowercase hex digits.
    pub secret_sha256: &'a str,
    /// Models the key may call; `None`: every model.
    pub allowed_models: Option<&'a [String]>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One `api_keys` row with its tenant's status, as the data path caches it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    /// `api_keys.id`.
    pub key_id: Uuid,
    /// `api_keys.tenant_id`.
    pub tenant_id: Uuid,
    /// `api_keys.secret_sha256`, lowercase hex.
    pub secret_sha256: String,
    /// `api_keys.allowed_models`; `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// `api_keys.expires_at`.
    pub expires_at: Option<DateTime<Utc>>,
    /// `api_keys.revoked_at`.
    pub revoked_at: Option<DateTime<Utc>>,
    /// `tenants.status`: `active` or `suspended`.
    pub tenant_status: String,
    /// `plans.priority` of the tenant's plan: its level in the backends' fair batchers,
    /// 1..=16 (1 when the plan is not found).
    pub plan_priority: i16,
}

/// Store `key` under a new id (UUIDv7) and return it as listed.
///
/// # Errors
/// When PostgreSQL fails (e.g. no such tenant, or a hash that is already stored).
pub async fn insert_key(
    db: impl PgExecutor<'_>,
    key: &NewKeyRow<'_>,
) -> Result<ApiKey, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO api_keys \
             (id, tenant_id, name, prefix, secret_sha256, allowed_models, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
        key_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(key.tenant_id)
    .bind(key.name)
    .bind(key.prefix)
    .bind(key.secret_sha256)
    .bind(key.allowed_models)
    .bind(key.expires_at)
    .fetch_one(db)
    .await
}

/// Tenant `tenant_id`'s keys, revoked ones included, oldest first.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_keys(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// Key `id`, locked until the end of the caller's transaction (`FOR UPDATE`); `None` when there
/// is no such key.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn lock_key(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Revoke key `id` now, or keep its first revocation time if it is revoked already; the key as
/// it now is, `None` when there is no such key.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn revoke_key(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING ",
        key_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The key whose secret hashes to `secret_sha256`, with its tenant's status and plan priority.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn key_by_hash(
    db: impl PgExecutor<'_>,
    secret_sha256: &str,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.id AS key_id, k.tenant_id, k.secret_sha256, k.allowed_models, \
                k.expires_at, k.revoked_at, t.status AS tenant_status, \
                coalesce(p.priority, 1::smallint) AS plan_priority \
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
         LEFT JOIN plans p ON p.name = t.plan \
         WHERE k.secret_sha256 = $1",
    )
    .bind(secret_sha256)
    .fetch_optional(db)
    .await
}

/// Set `last_used_at = now()` on keys `ids` in one statement; how many rows were written.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn touch_keys(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// The tenant owning key `id`; `None` when there is no such key.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn key_tenant(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
