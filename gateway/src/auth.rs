//! API key authentication and authorization, with a short-lived in-process cache.
//!
//! A client sends `Authorization: Bearer <key>` (RFC 6750 section 2.1) or `x-api-key: <key>`.
//! The key's SHA-256 is looked up in `api_keys` joined with `tenants`; the verdict (key found or
//! not) is cached for `auth.cache_ttl_ms`, so PostgreSQL sees at most one lookup per key per TTL
//! and a revoked key stops working within one TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pingora::http::RequestHeader;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::error::GatewayError;
use crate::keys;

/// Who a request is, once its key has been accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// `tenants.id`.
    pub tenant_id: Uuid,
    /// `api_keys.id`.
    pub api_key_id: Uuid,
}

/// One `api_keys` row with its tenant's status, as cached.
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
}

/// A refused request, with who sent it when the key itself was recognised (for the usage
/// event of a 403, a revoked or an expired key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The key's tenant and id, when the presented key matched a stored one.
    pub principal: Option<Principal>,
    /// What the client is told.
    pub error: GatewayError,
}

impl From<GatewayError> for Rejection {
    fn from(error: GatewayError) -> Self {
        Rejection {
            principal: None,
            error,
        }
    }
}

impl KeyRecord {
    /// The tenant and key this row describes.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant_id: self.tenant_id,
            api_key_id: self.key_id,
        }
    }

    /// Decide whether the key whose hash is `presented_sha256` may call `model` at `now`.
    ///
    /// The hash comparison is constant-time (subtle), although the row was found by that hash.
    pub fn authorize(
        &self,
        presented_sha256: &str,
        model: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Principal, GatewayError> {
        let same: bool = self
            .secret_sha256
            .as_bytes()
            .ct_eq(presented_sha256.as_bytes())
            .into();
        if !same {
            return Err(GatewayError::InvalidApiKey);
        }
        if self.revoked_at.is_some_and(|t| t <= now) {
            return Err(GatewayError::RevokedApiKey);
        }
        if self.expires_at.is_some_and(|t| t <= now) {
            return Err(GatewayError::ExpiredApiKey);
        }
        if self.tenant_status != "active" {
            return Err(GatewayError::TenantSuspended);
        }
        if let (Some(allowed), Some(model)) = (&self.allowed_models, model) {
            if !allowed.iter().any(|m| m == model) {
                return Err(GatewayError::ModelNotAllowed(model.to_string()));
            }
        }
        Ok(self.principal())
    }
}

/// Extract the presented key from the request headers.
///
/// `Authorization: Bearer <key>` (scheme case-insensitive) or `x-api-key: <key>`; both may be
/// sent only with the same key.
///
/// # Errors
/// [`GatewayError::MissingApiKey`] when neither header is present;
/// [`GatewayError::MalformedAuthorization`] for another scheme or non-text header;
/// [`GatewayError::ConflictingCredentials`] when the two headers carry different values.
pub fn presented_key(req: &RequestHeader) -> Result<String, GatewayError> {
    if let Some(value) = req.headers.get(http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| GatewayError::MalformedAuthorization)?
            .trim();
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(GatewayError::MalformedAuthorization)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(GatewayError::MalformedAuthorization);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(GatewayError::MissingApiKey);
        }
        if let Some(other) = req.headers.get("x-api-key") {
            if other.to_str().ok().map(str::trim) != Some(token) {
                return Err(GatewayError::ConflictingCredentials);
            }
        }
        return Ok(token.to_string());
    }
    if let Some(value) = req.headers.get("x-api-key") {
        let token = value
            .to_str()
            .map_err(|_| GatewayError::InvalidApiKey)?
            .trim();
        if token.is_empty() {
            return Err(GatewayError::MissingApiKey);
        }
        return Ok(token.to_string());
    }
    Err(GatewayError::MissingApiKey)
}

struct CacheEntry {
    at: Instant,
    record: Option<Arc<KeyRecord>>,
}

/// Key lookups against PostgreSQL behind a TTL cache (positive and negative entries).
///
/// The pool is created on first use, inside the runtime that serves requests (pingora creates
/// its runtimes inside `run_forever`; an sqlx pool must live on the runtime that drives it).
pub struct Authenticator {
    database_url: String,
    max_connections: u32,
    pool: OnceCell<PgPool>,
    cache: Mutex<HashMap<String, CacheEntry>>,
    ttl: Duration,
    capacity: usize,
}

impl Authenticator {
    /// An authenticator that will connect to `database_url` on first use.
    pub fn new(database_url: &str, config: &AuthConfig) -> Self {
        Authenticator {
            database_url: database_url.to_string(),
            max_connections: config.db_max_connections,
            pool: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
            ttl: Duration::from_millis(config.cache_ttl_ms),
            capacity: config.cache_capacity.max(1),
        }
    }

    async fn pool(&self) -> Result<&PgPool, sqlx::Error> {
        self.pool
            .get_or_try_init(|| async {
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy(&self.database_url)
            })
            .await
    }

    /// Authenticate `secret` and authorize it for `model` (`None`: no model involved).
    ///
    /// # Errors
    /// 401-class errors for unknown, malformed, revoked or expired keys; 403-class for a
    /// suspended tenant or a model outside the key's allow-list; [`GatewayError::AuthUnavailable`]
    /// when PostgreSQL cannot be reached (fails closed; not cached).
    pub async fn authenticate(
        &self,
        secret: &str,
        model: Option<&str>,
    ) -> Result<Principal, Rejection> {
        if !keys::is_well_formed(secret) {
            return Err(GatewayError::InvalidApiKey.into());
        }
        let hash = keys::hash_key(secret);
        let record = match self.cached(&hash) {
            Some(record) => record,
            None => {
                let record = self.lookup(&hash).await.map_err(|e| {
                    tracing::error!(error = %e, "API key lookup failed");
                    Rejection::from(GatewayError::AuthUnavailable)
                })?;
                let record = record.map(Arc::new);
                self.remember(hash.clone(), record.clone());
                record
            }
        };
        match record {
            Some(record) => record
                .authorize(&hash, model, Utc::now())
                .map_err(|error| Rejection {
                    principal: (error != GatewayError::InvalidApiKey).then(|| record.principal()),
                    error,
                }),
            None => Err(GatewayError::InvalidApiKey.into()),
        }
    }

    fn cached(&self, hash: &str) -> Option<Option<Arc<KeyRecord>>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(hash)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.record.clone())
    }

    fn remember(&self, hash: String, record: Option<Arc<KeyRecord>>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.capacity {
            let ttl = self.ttl;
            cache.retain(|_, e| e.at.elapsed() < ttl);
            if cache.len() >= self.capacity {
                cache.clear();
            }
        }
        cache.insert(
            hash,
            CacheEntry {
                at: Instant::now(),
                record,
            },
        );
    }

    async fn lookup(&self, hash: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
        let pool = self.pool().await?;
        sqlx::query_as::<_, KeyRecord>(
            "SELECT k.id AS key_id, k.tenant_id, k.secret_sha256, k.allowed_models, \
                    k.expires_at, k.revoked_at, t.status AS tenant_status \
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.secret_sha256 = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            key_id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            secret_sha256: keys::hash_key("k"),
            allowed_models: None,
            expires_at: None,
            revoked_at: None,
            tenant_status: "active".into(),
        }
    }

    #[test]
    fn authorize_rules() {
        let now = Utc::now();
        let h = keys::hash_key("k");
        let r = record();
        assert_eq!(
            r.authorize(&h, Some("m"), now).unwrap().api_key_id,
            r.key_id
        );
        assert_eq!(
            r.authorize(&keys::hash_key("other"), Some("m"), now),
            Err(GatewayError::InvalidApiKey)
        );
        let revoked = KeyRecord {
            revoked_at: Some(now - chrono::Duration::seconds(1)),
            ..record()
        };
        assert_eq!(
            revoked.authorize(&h, None, now),
            Err(GatewayError::RevokedApiKey)
        );
        let expired = KeyRecord {
            expires_at: Some(now),
            ..record()
        };
        assert_eq!(
            expired.authorize(&h, None, now),
            Err(GatewayError::ExpiredApiKey)
        );
        let suspended = KeyRecord {
            tenant_status: "suspended".into(),
            ..record()
        };
        assert_eq!(
            suspended.authorize(&h, None, now),
            Err(GatewayError::TenantSuspended)
        );
        let limited = KeyRecord {
            allowed_models: Some(vec!["a".into(), "b".into()]),
            ..record()
        };
        assert!(limited.authorize(&h, Some("b"), now).is_ok());
        assert!(limited.authorize(&h, None, now).is_ok());
        assert_eq!(
            limited.authorize(&h, Some("c"), now),
            Err(GatewayError::ModelNotAllowed("c".into()))
        );
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn presented_key_headers() {
        assert_eq!(presented_key(&req(&[])), Err(GatewayError::MissingApiKey));
        assert_eq!(
            presented_key(&req(&[("authorization", "Bearer abc")])).unwrap(),
            "abc"
        );
        assert_eq!(
            presented_key(&req(&[("authorization", "bearer  abc ")])).unwrap(),
            "abc"
        );
        assert_eq!(presented_key(&req(&[("x-api-key", "xyz")])).unwrap(), "xyz");
        assert_eq!(
            presented_key(&req(&[("authorization", "Basic Zm9vOmJhcg==")])),
            Err(GatewayError::MalformedAuthorization)
        );
        assert_eq!(
            presented_key(&req(&[("authorization", "Bearer")])),
            Err(GatewayError::MalformedAuthorization)
        );
        assert_eq!(
            presented_key(&req(&[
                ("authorization", "Bearer abc"),
                ("x-api-key", "xyz")
            ])),
            Err(GatewayError::ConflictingCredentials)
        );
        assert_eq!(
            presented_key(&req(&[
                ("authorization", "Bearer abc"),
                ("x-api-key", " abc")
            ]))
            .unwrap(),
            "abc"
        );
    }

    #[tokio::test]
    async fn malformed_keys_never_reach_the_database() {
        // The URL points nowhere: a lookup would fail with AuthUnavailable.
        let a = Authenticator::new("postgres://nobody@127.0.0.1:1/x", &AuthConfig::default());
        assert_eq!(
            a.authenticate("not-a-key", None).await,
            Err(GatewayError::InvalidApiKey.into())
        );
        let good = keys::generate_key().unwrap().secret;
        assert_eq!(
            a.authenticate(&good, None).await,
            Err(GatewayError::AuthUnavailable.into())
        );
        // A failed lookup is not cached.
        assert!(a.cached(&keys::hash_key(&good)).is_none());
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let cfg = AuthConfig {
            cache_ttl_ms: 50,
            cache_capacity: 2,
            ..AuthConfig::default()
        };
        let a = Authenticator::new("postgres://x@127.0.0.1:1/x", &cfg);
        a.remember("h1".into(), None);
        assert_eq!(a.cached("h1").map(|r| r.is_none()), Some(true));
        a.remember("h2".into(), Some(Arc::new(record())));
        a.remember("h3".into(), None);
        assert!(a.cache.lock().unwrap().len() <= 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(a.cached("h3").is_none());
    }
}
