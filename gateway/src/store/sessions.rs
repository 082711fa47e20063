//! The `admin_sessions` table (migration `20261202000003_admin_sessions.sql`): dashboard
//! sessions, stored as the SHA-256 of their token, for a tenant admin or the operator.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A live session as looked up: who it is for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    /// The tenant admin signed in; `None`: the operator.
    pub tenant_admin_id: Option<Uuid>,
    /// That admin's tenant (`None` for the operator).
    pub tenant_id: Option<Uuid>,
    /// For the operator, the SHA-256 (hex) of the operator token signed in with.
    pub operator_sha256: Option<String>,
    /// When the session ends.
    pub expires_at: DateTime<Utc>,
}

/// Store a session whose token hashes to `token_sha256`, for tenant admin `tenant_admin_id` or
/// (with `operator_sha256`) the operator, ending at `expires_at`.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn insert_session(
    db: impl PgExecutor<'_>,
    token_sha256: &str,
    tenant_admin_id: Option<Uuid>,
    operator_sha256: Option<&str>,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_sessions (token_sha256, tenant_admin_id, operator_sha256, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_sha256)
    .bind(tenant_admin_id)
    .bind(operator_sha256)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// The live session whose token hashes to `token_sha256`: not expired, not revoked, and for a
/// tenant admin, that admin not revoked.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn live_session(
    db: impl PgExecutor<'_>,
    token_sha256: &str,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.tenant_admin_id, a.tenant_id, s.operator_sha256, s.expires_at \
         FROM admin_sessions s LEFT JOIN tenant_admins a ON a.id = s.tenant_admin_id \
         WHERE s.token_sha256 = $1 AND s.revoked_at IS NULL AND s.expires_at > now() \
           AND (s.tenant_admin_id IS NULL OR a.revoked_at IS NULL)",
    )
    .bind(token_sha256)
    .fetch_optional(db)
    .await
}

/// Revoke the session whose token hashes to `token_sha256` (sign-out); whether one was live.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn revoke_session(
    db: impl PgExecutor<'_>,
    token_sha256: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE admin_sessions SET revoked_at = now() \
         WHERE token_sha256 = $1 AND revoked_at IS NULL",
    )
    .bind(token_sha256)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Delete the sessions that ended more than a day ago; how many.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn delete_old_sessions(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM admin_sessions \
         WHERE expires_at < now() - interval '1 day' OR revoked_at < now() - interval '1 day'",
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
