//! The `tenants` table (migration `20261129000001_tenancy.sql`): a tenant as the admin API shows
//! it ([`Tenant`]), as the data path caches it ([`TenantRecord`]), and every statement on the
//! table but the existence check of a rule owner (`rules.rs`).

use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

/// The plan a tenant is on when none is named (the column's default in the migration).
pub const DEFAULT_PLAN: &str = "default";

/// The columns of a [`Tenant`], in one place for every statement that returns one.
macro_rules! tenant_columns {
    () => {
        "id, name, status, plan, created_at"
    };
}

/// A tenant as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Tenant {
    /// Tenant id (UUIDv7).
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// `active` or `suspended` (a suspended tenant's calls are refused with 403).
    pub status: String,
    /// Pricing plan name.
    pub plan: String,
    /// Creation time, UTC.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Whether a tenant's credentials are accepted (`tenants.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    /// Its keys and tokens are accepted.
    Active,
    /// Its keys and tokens are refused with 403.
    Suspended,
}

impl TenantStatus {
    /// `active` or `suspended`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

/// One `tenants` row, as the data path caches it for JWT requests.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantRecord {
    /// `tenants.id`.
    pub id: Uuid,
    /// `tenants.status`: `active` or `suspended`.
    pub status: String,
    /// `plans.priority` of the tenant's plan, 1..=16 (1 when the plan is not found).
    pub plan_priority: i16,
}

/// Create tenant `name` (active) on `plan`; `None` when a tenant of that name exists.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn insert_tenant(
    db: impl PgExecutor<'_>,
    name: &str,
    plan: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO tenants (id, name, plan) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING RETURNING ",
        tenant_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(plan)
    .fetch_optional(db)
    .await
}

/// The id of tenant `name`, creating it (active, on [`DEFAULT_PLAN`]) if there is none.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn ensure_tenant(conn: &mut PgConnection, name: &str) -> Result<Uuid, sqlx::Error> {
    if let Some(created) = insert_tenant(&mut *conn, name, DEFAULT_PLAN).await? {
        return Ok(created.id);
    }
    tenant_by_name(&mut *conn, name)
        .await?
        .map(|t| t.id)
        .ok_or(sqlx::Error::RowNotFound)
}

/// Every tenant, oldest first.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn list_tenants(db: impl PgExecutor<'_>) -> Result<Vec<Tenant>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants ORDER BY created_at, id"
    ))
    .fetch_all(db)
    .await
}

/// Set tenant `id`'s status; the tenant as it now is, `None` when there is no such tenant.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn set_tenant_status(
    db: impl PgExecutor<'_>,
    id: Uuid,
    status: TenantStatus,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tenants SET status = $2 WHERE id = $1 RETURNING ",
        tenant_columns!()
    ))
    .bind(id)
    .bind(status.as_str())
    .fetch_optional(db)
    .await
}

/// The name of tenant `id`; `None` when there is no such tenant.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_name(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Tenant `id` as the data path caches it.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_by_id(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<TenantRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, t.status, coalesce(p.priority, 1::smallint) AS plan_priority \
         FROM tenants t LEFT JOIN plans p ON p.name = t.plan WHERE t.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Tenant `name` as the data path caches it.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_by_name(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<TenantRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, t.status, coalesce(p.priority, 1::smallint) AS plan_priority \
         FROM tenants t LEFT JOIN plans p ON p.name = t.plan WHERE t.name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Tenant `name` as the admin API shows it; `None` when there is none.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_named(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(db)
    .await
}

/// Tenant `id` as the admin API shows it; `None` when there is none.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_row(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}
