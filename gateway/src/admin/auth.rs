//! Who is calling the admin API ([`Caller`]), from `Authorization: Bearer <token>` (RFC 6750
//! section 2.1): the operator token ([`OperatorToken`], compared in constant time, no database),
//! or a live tenant admin's token (`maas_ta_` + 48 hex, looked up by its SHA-256); or, without
//! that header, from a dashboard session cookie (`super::session`), whose state-changing
//! requests must carry the session's `X-CSRF-Token`. Operator-only
//! routes sit behind [`require_operator`]; the routes a tenant admin may use take a
//! [`VisibleTenant`], which answers 403 for another tenant before anything else is read.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::AppError;
use super::extract::AppPath;
use super::session::{self, SessionToken};
use crate::auth::{hash_key, TENANT_ADMIN_TOKEN};
use crate::store;

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, token trimmed), if
/// the header is there and well formed.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The operator token, kept as its SHA-256 so that the comparison is constant-time and does not
/// depend on the presented token's length.
#[derive(Clone)]
pub struct OperatorToken {
    sha256: [u8; 32],
}

impl OperatorToken {
    /// Accept `token`.
    pub fn new(token: &str) -> Self {
        OperatorToken {
            sha256: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `token` is the operator token.
    pub fn matches(&self, token: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        presented.ct_eq(&self.sha256).into()
    }

    /// The SHA-256 of the operator token, lowercase hex (what an operator session records).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// What resolving a [`Caller`] needs from the router's state: the operator token, and the pool
/// where tenant admins are looked up.
pub trait CallerSource: Send + Sync {
    /// The operator token.
    fn operator_token(&self) -> &OperatorToken;
    /// The pool holding `tenant_admins`.
    fn pool(&self) -> &PgPool;
}

/// Who sent an admin API request, from its bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator token: every route, every tenant.
    Operator,
    /// A live (not revoked) tenant admin: its own tenant's usage, invoices and exports only.
    TenantAdmin {
        /// `tenant_admins.id`.
        admin_id: Uuid,
        /// The tenant it administers.
        tenant_id: Uuid,
    },
}

impl Caller {
    /// Resolve the caller of a request: `Authorization: Bearer` when present
    /// ([`Caller::from_token`]), else the dashboard session cookie ([`Caller::from_session`]),
    /// whose state-changing requests (any method but GET, HEAD and OPTIONS) must also carry the
    /// session's CSRF token in `X-CSRF-Token`.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] for no credential, a malformed, unknown, expired or revoked
    /// one; [`AppError::Forbidden`] for a session request without its CSRF token;
    /// [`AppError::Internal`] when the lookup fails.
    pub async fn resolve(
        operator: &OperatorToken,
        pool: &PgPool,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Caller, AppError> {
        if let Some(token) = bearer_token(headers) {
            return Caller::from_token(operator, pool, token).await;
        }
        let session = session::cookie_token(headers).ok_or(AppError::Unauthorized)?;
        let caller = Caller::from_session(operator, pool, &session).await?;
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let presented = headers
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !session.csrf_matches(presented) {
                return Err(AppError::Forbidden(
                    "a request made with the session cookie that changes state needs the \
                     session's X-CSRF-Token header"
                        .into(),
                ));
            }
        }
        Ok(caller)
    }

    /// The caller a bearer `token` stands for: the operator token (constant-time comparison,
    /// no database), else a well-formed tenant admin token looked up by its SHA-256 among the
    /// live admins in `pool`.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] for a malformed, unknown or revoked token;
    /// [`AppError::Internal`] when the lookup fails.
    pub async fn from_token(
        operator: &OperatorToken,
        pool: &PgPool,
        token: &str,
    ) -> Result<Caller, AppError> {
        if operator.matches(token) {
            return Ok(Caller::Operator);
        }
        if !TENANT_ADMIN_TOKEN.is_well_formed(token) {
            return Err(AppError::Unauthorized);
        }
        store::live_tenant_admin(pool, &hash_key(token))
            .await?
            .map(|admin| Caller::TenantAdmin {
                admin_id: admin.id,
                tenant_id: admin.tenant_id,
            })
            .ok_or(AppError::Unauthorized)
    }

    /// The caller of a live dashboard session: not expired or revoked, its tenant admin live,
    /// or for the operator, signed in with the current operator token.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] when the session is not live; [`AppError::Internal`] when the
    /// lookup fails.
    pub async fn from_session(
        operator: &OperatorToken,
        pool: &PgPool,
        session: &SessionToken,
    ) -> Result<Caller, AppError> {
        let row = store::live_session(pool, &session.sha256())
            .await?
            .ok_or(AppError::Unauthorized)?;
        match (row.tenant_admin_id, row.tenant_id, row.operator_sha256) {
            (Some(admin_id), Some(tenant_id), _) => Ok(Caller::TenantAdmin {
                admin_id,
                tenant_id,
            }),
            (None, _, Some(op)) if op == operator.sha256_hex() => Ok(Caller::Operator),
            _ => Err(AppError::Unauthorized),
        }
    }

    /// Whether this caller may read tenant `tenant_id`'s usage, invoices and exports.
    pub fn may_see(&self, tenant_id: Uuid) -> bool {
        match self {
            Caller::Operator => true,
            Caller::TenantAdmin { tenant_id: own, .. } => *own == tenant_id,
        }
    }

    /// [`Caller::may_see`] as a result: 403 for an admin of another tenant.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub fn check_tenant(&self, tenant_id: Uuid) -> Result<(), AppError> {
        match self {
            Caller::TenantAdmin { tenant_id: own, .. } if !self.may_see(tenant_id) => {
                Err(AppError::Forbidden(format!(
                    "a tenant admin may read only its own tenant ({own}), not tenant {tenant_id}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Operator-only routes: 403 for a tenant admin.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub fn require_operator(&self) -> Result<(), AppError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::TenantAdmin { .. } => Err(AppError::Forbidden(
                "this route needs the operator token; a tenant admin may use only its own \
                 tenant's keys, limits, usage, invoices and exports"
                    .into(),
            )),
        }
    }
}

impl<S: CallerSource> FromRequestParts<S> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Caller::resolve(
            state.operator_token(),
            state.pool(),
            &parts.method,
            &parts.headers,
        )
        .await
    }
}

/// Middleware of the operator-only routes: the operator token passes; a tenant admin's token
/// is 403; anything else 401.
pub async fn require_operator(
    caller: Caller,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    caller.require_operator()?;
    Ok(next.run(req).await)
}

/// The operator, as an extractor for a handler whose route also has methods open to tenant
/// admins: 401 for no valid token, 403 for a tenant admin (before the body is read).
#[derive(Debug, Clone, Copy)]
pub struct OperatorOnly;

impl<S: CallerSource> FromRequestParts<S> for OperatorOnly {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_operator()?;
        Ok(OperatorOnly)
    }
}

/// The `{tenant_id}` of the route.
#[derive(Deserialize)]
struct TenantParam {
    tenant_id: Uuid,
}

/// The `{tenant_id}` of a route open to tenant admins, once the [`Caller`] may see it: 401 for
/// no valid token, 400 for an id that is not a UUID, 403 for an admin of another tenant (before
/// anything else is read, so the answer reveals nothing about that tenant, not even whether it
/// exists).
#[derive(Debug, Clone, Copy)]
pub struct VisibleTenant(pub Uuid);

impl<S: CallerSource> FromRequestParts<S> for VisibleTenant {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let AppPath(TenantParam { tenant_id }) = AppPath::from_request_parts(parts, state).await?;
        caller.check_tenant(tenant_id)?;
        Ok(VisibleTenant(tenant_id))
    }
}

/// The `{key_id}` of the route.
#[derive(Deserialize)]
struct KeyParam {
    key_id: Uuid,
}

/// The `{key_id}` of a route open to tenant admins, once the [`Caller`] may act on it, with the
/// key's tenant: 401 for no valid token, 400 for an id that is not a UUID; for a tenant admin,
/// 403 for a key of another tenant and for a key that does not exist (the answer reveals
/// nothing about other tenants' keys). The operator gets 404 for a key that does not exist.
#[derive(Debug, Clone, Copy)]
pub struct VisibleKey {
    /// The key.
    pub key_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Who is asking.
    pub caller: Caller,
}

impl<S: CallerSource> FromRequestParts<S> for VisibleKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let AppPath(KeyParam { key_id }) = AppPath::from_request_parts(parts, state).await?;
        let found = store::key_tenant(state.pool(), key_id).await?;
        let tenant_id = match (caller, found) {
            (Caller::TenantAdmin { tenant_id: own, .. }, Some(t)) if t == own => t,
            (Caller::TenantAdmin { tenant_id: own, .. }, _) => {
                return Err(AppError::Forbidden(format!(
                    "a tenant admin may act only on its own tenant's ({own}) keys, and key \
                     {key_id} is not one of them"
                )))
            }
            (Caller::Operator, Some(t)) => t,
            (Caller::Operator, None) => return Err(AppError::NotFound(format!("no key {key_id}"))),
        };
        Ok(VisibleKey {
            key_id,
            tenant_id,
            caller,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn state(token: &str) -> Operator {
        Operator(OperatorToken::new(token))
    }

    /// Reads `Authorization: Bearer <operator token>` as [`Caller::resolve`] does.
    struct Operator(OperatorToken);

    impl Operator {
        fn authorized(&self, headers: &HeaderMap) -> bool {
            bearer_token(headers).is_some_and(|t| self.0.matches(t))
        }
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[tokio::test]
    async fn operator_token_is_checked() {
        let s = state("op-token");
        assert!(s.authorized(&headers("Bearer op-token")));
        assert!(s.authorized(&headers("bearer op-token")));
        assert!(!s.authorized(&headers("Bearer op-toke")));
        assert!(!s.authorized(&headers("Bearer op-token2")));
        assert!(!s.authorized(&headers("Basic op-token")));
        assert!(!s.authorized(&headers("op-token")));
        assert!(!s.authorized(&HeaderMap::new()));
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bEaReR  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tenant_admins_see_only_their_tenant() {
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        let admin = Caller::TenantAdmin {
            admin_id: Uuid::now_v7(),
            tenant_id: own,
        };
        assert!(admin.may_see(own));
        assert!(!admin.may_see(other));
        assert!(admin.check_tenant(own).is_ok());
        let e = admin.check_tenant(other).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            admin.require_operator().unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(Caller::Operator.may_see(other));
        assert!(Caller::Operator.require_operator().is_ok());
    }
}
