//! Authentication (API keys and JWTs) and authorization, with short-lived in-process caches.
//!
//! A client sends `Authorization: Bearer <credential>` (RFC 6750 section 2.1) or
//! `x-api-key: <credential>` ([`presented_key`]). A credential that starts with `maas_` is an
//! API key ([`api_keys`] says its format): its SHA-256 is looked up in `api_keys` joined with
//! `tenants`. Anything else shaped like a JWT is verified by [`JwtVerifier`] when `[auth.jwt]`
//! configures keys, and its tenant claim is looked up in `tenants` (by name, or by id when it is
//! a UUID). Either way the answer is a [`Principal`] or a [`Rejection`].
//!
//! Every verdict from PostgreSQL (found or not) is cached for `auth.cache_ttl_ms`, so the
//! database sees at most one lookup per key or tenant per TTL, including for made-up keys.
//! While PostgreSQL cannot be reached, a verdict past its TTL is served for up to
//! `auth.stale_if_error_s` more ([`crate::cache`]); lookups go through a [`Breaker`], so an
//! outage costs one probe per `auth.db_retry_ms`, not a timeout per request. Only a credential
//! with no verdict at all is answered 503.
//! Changes made through the admin API are announced on Redis ([`crate::invalidation`]) and
//! evict the tenant's entries on every gateway at once; the TTL is the backstop when Redis is
//! down. `api_keys.last_used_at` is written lazily: the keys used since the last flush are
//! written in one `UPDATE` every `auth.last_used_flush_ms` ([`Authenticator::flush_last_used`]).

mod api_keys;
mod credential;
mod jwt;
mod principal;

pub use api_keys::{generate_key, hash_key, NewKey, TENANT_ADMIN_TOKEN};
pub use credential::presented_key;
pub use jwt::{JwtError, JwtVerifier};
pub use principal::{Principal, Rejection};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::breaker::{Breaker, LookupError};
use crate::cache::TtlCache;
use crate::config::AuthConfig;
use crate::error::GatewayError;
use crate::store::{self, KeyRecord, TenantRecord};

/// Credential checks against PostgreSQL (and the JWT verifier) behind TTL caches.
///
/// The pool is created on first use, inside the runtime that serves requests (pingora creates
/// its runtimes inside `run_forever`; an sqlx pool must live on the runtime that drives it).
pub struct Authenticator {
    database_url: String,
    max_connections: u32,
    pool: OnceCell<PgPool>,
    keys: TtlCache<KeyRecord>,
    tenants: TtlCache<TenantRecord>,
    jwt: Option<Arc<JwtVerifier>>,
    used: Mutex<HashSet<Uuid>>,
    breaker: Breaker,
}

impl Authenticator {
    /// An authenticator for API keys that will connect to `database_url` on first use.
    pub fn new(database_url: &str, config: &AuthConfig) -> Self {
        let ttl = Duration::from_millis(config.cache_ttl_ms);
        let stale = Duration::from_secs(config.stale_if_error_s);
        Authenticator {
            database_url: database_url.to_string(),
            max_connections: config.db_max_connections,
            pool: OnceCell::new(),
            keys: TtlCache::new(ttl, config.cache_capacity).with_stale_if_error(stale),
            tenants: TtlCache::new(ttl, config.cache_capacity).with_stale_if_error(stale),
            jwt: None,
            used: Mutex::new(HashSet::new()),
            breaker: Breaker::new(Duration::from_millis(config.db_retry_ms)),
        }
    }

    /// The same, also accepting JWTs verified by `jwt`.
    pub fn with_jwt(mut self, jwt: Option<Arc<JwtVerifier>>) -> Self {
        self.jwt = jwt;
        self
    }

    /// An authenticator for `config` (`[auth]`, with `[auth.jwt]` when it names keys).
    ///
    /// # Errors
    /// When the JWT configuration is invalid ([`JwtVerifier::new`]).
    pub fn from_config(database_url: &str, config: &AuthConfig) -> anyhow::Result<Self> {
        let jwt = JwtVerifier::new(
            &config.jwt,
            Duration::from_millis(config.cache_ttl_ms),
            config.cache_capacity,
        )?;
        Ok(Self::new(database_url, config).with_jwt(jwt.map(Arc::new)))
    }

    /// Lookups of the API key and tenant caches: `[("api_key", (hits, misses)), ("tenant",
    /// ...)]` (`TtlCache::lookups`).
    pub fn cache_lookups(&self) -> [(&'static str, (u64, u64)); 2] {
        [
            ("api_key", self.keys.lookups()),
            ("tenant", self.tenants.lookups()),
        ]
    }

    /// The JWT verifier, when JWTs are accepted.
    pub fn jwt(&self) -> Option<&Arc<JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// The data path's PostgreSQL pool (created on first use).
    ///
    /// # Errors
    /// When the pool cannot be created (a bad URL).
    pub async fn pool(&self) -> Result<&PgPool, sqlx::Error> {
        self.pool
            .get_or_try_init(|| async {
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy(&self.database_url)
            })
            .await
    }

    /// Authenticate `credential` (an API key or, when configured, a JWT) and authorize it for
    /// `model` (`None`: no model involved).
    ///
    /// # Errors
    /// 401-class errors for unknown, malformed, revoked or expired credentials; 403-class for a
    /// suspended tenant or a model outside the credential's scope;
    /// `GatewayError::AuthUnavailable` when PostgreSQL cannot be reached and no verdict, fresh
    /// or stale, is cached (fails closed; not cached).
    pub async fn authenticate_credential(
        &self,
        credential: &str,
        model: Option<&str>,
    ) -> Result<Principal, Rejection> {
        match &self.jwt {
            Some(jwt)
                if !credential.starts_with(api_keys::KEY_PREFIX)
                    && JwtVerifier::looks_like_jwt(credential) =>
            {
                self.authenticate_jwt(jwt, credential, model).await
            }
            _ => self.authenticate(credential, model).await,
        }
    }

    async fn authenticate_jwt(
        &self,
        jwt: &JwtVerifier,
        token: &str,
        model: Option<&str>,
    ) -> Result<Principal, Rejection> {
        let identity = jwt
            .verify(token)
            .await
            .map_err(|e| Rejection::from(GatewayError::InvalidToken(e.to_string())))?;
        let tenant = match self.tenants.get(&identity.tenant) {
            Some(t) => t,
            None => match self.breaker.run(self.lookup_tenant(&identity.tenant)).await {
                Ok(t) => {
                    let t = t.map(Arc::new);
                    self.tenants.insert(identity.tenant.clone(), t.clone());
                    t
                }
                Err(e) => stale_or_unavailable(&self.tenants, &identity.tenant, &e, "tenant")?,
            },
        };
        let Some(tenant) = tenant else {
            return Err(GatewayError::InvalidToken("invalid token: unknown tenant".into()).into());
        };
        let principal = Principal {
            tenant_id: tenant.id,
            api_key_id: None,
            priority: tenant.plan_priority,
        };
        let refuse = |error| Rejection {
            principal: Some(principal),
            error,
        };
        if tenant.status != "active" {
            return Err(refuse(GatewayError::TenantSuspended));
        }
        if let (Some(allowed), Some(model)) = (&identity.models, model) {
            if !allowed.iter().any(|m| m == model) {
                return Err(refuse(GatewayError::ModelNotAllowed(model.to_string())));
            }
        }
        Ok(principal)
    }

    /// Authenticate the API key `secret` and authorize it for `model` (`None`: no model
    /// involved). Errors as [`Authenticator::authenticate_credential`].
    pub async fn authenticate(
        &self,
        secret: &str,
        model: Option<&str>,
    ) -> Result<Principal, Rejection> {
        if !api_keys::is_well_formed(secret) {
            return Err(GatewayError::InvalidApiKey.into());
        }
        let hash = api_keys::hash_key(secret);
        let record = match self.keys.get(&hash) {
            Some(record) => record,
            None => match self.breaker.run(self.lookup(&hash)).await {
                Ok(record) => {
                    let record = record.map(Arc::new);
                    self.keys.insert(hash.clone(), record.clone());
                    record
                }
                Err(e) => stale_or_unavailable(&self.keys, &hash, &e, "API key")?,
            },
        };
        match record {
            Some(record) => match record.authorize(&hash, model, Utc::now()) {
                Ok(principal) => {
                    self.used
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(record.key_id);
                    Ok(principal)
                }
                Err(error) => Err(Rejection {
                    principal: (error != GatewayError::InvalidApiKey).then(|| record.principal()),
                    error,
                }),
            },
            None => Err(GatewayError::InvalidApiKey.into()),
        }
    }

    /// Forget every cached verdict about `tenant_id` (its keys and itself), and every negative
    /// verdict: called when an admin change is announced (`crate::invalidation`).
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        self.keys.evict(|k| k.tenant_id == tenant_id);
        self.tenants.evict(|t| t.id == tenant_id);
    }

    /// Mark every cached verdict outdated (after missing announcements, e.g. a Redis
    /// reconnect): each is looked up again, and served stale only while PostgreSQL is down.
    pub fn invalidate_all(&self) {
        self.keys.clear();
        self.tenants.clear();
    }

    /// Write `api_keys.last_used_at = now()` for the keys accepted since the last call, in one
    /// statement; returns how many keys were written. On failure the keys are kept for the next
    /// call.
    ///
    /// # Errors
    /// When PostgreSQL cannot be reached.
    pub async fn flush_last_used(&self) -> Result<u64, sqlx::Error> {
        let ids: Vec<Uuid> = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            used.drain().collect()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let pool = self.pool().await?;
        match store::touch_keys(pool, &ids).await {
            Ok(written) => Ok(written),
            Err(e) => {
                self.used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(ids);
                Err(e)
            }
        }
    }

    async fn lookup(&self, hash: &str) -> Result<Option<KeyRecord>, sqlx::Error> {
        store::key_by_hash(self.pool().await?, hash).await
    }

    async fn lookup_tenant(&self, name_or_id: &str) -> Result<Option<TenantRecord>, sqlx::Error> {
        let pool = self.pool().await?;
        match Uuid::parse_str(name_or_id) {
            Ok(id) => store::tenant_by_id(pool, id).await,
            Err(_) => store::tenant_by_name(pool, name_or_id).await,
        }
    }
}

/// The stale verdict under `key` after a failed lookup (`what` names it in the log), or 503.
fn stale_or_unavailable<T>(
    cache: &TtlCache<T>,
    key: &str,
    error: &LookupError,
    what: &str,
) -> Result<Option<Arc<T>>, Rejection> {
    match cache.get_stale(key) {
        Some(verdict) => {
            tracing::debug!(%error, "{what} lookup failed; serving the last answer");
            Ok(verdict)
        }
        None => {
            if matches!(error, LookupError::Database(_)) {
                tracing::error!(%error, "{what} lookup failed");
            }
            Err(GatewayError::AuthUnavailable.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::principal::tests::record;
    use super::*;

    #[tokio::test]
    async fn malformed_keys_never_reach_the_database() {
        // The URL points nowhere: a lookup would fail with AuthUnavailable.
        let a = Authenticator::new("postgres://nobody@127.0.0.1:1/x", &AuthConfig::default());
        assert_eq!(
            a.authenticate("not-a-key", None).await,
            Err(GatewayError::InvalidApiKey.into())
        );
        let good = api_keys::generate_key().unwrap().secret;
        assert_eq!(
            a.authenticate(&good, None).await,
            Err(GatewayError::AuthUnavailable.into())
        );
        // A failed lookup is not cached.
        assert!(a.keys.get(&api_keys::hash_key(&good)).is_none());
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let cfg = AuthConfig {
            cache_ttl_ms: 50,
            cache_capacity: 2,
            ..AuthConfig::default()
        };
        let a = Authenticator::new("postgres://x@127.0.0.1:1/x", &cfg);
        a.keys.insert("h1".into(), None);
        assert_eq!(a.keys.get("h1").map(|r| r.is_none()), Some(true));
        a.keys.insert("h2".into(), Some(Arc::new(record())));
        a.keys.insert("h3".into(), None);
        assert!(a.keys.len() <= 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(a.keys.get("h3").is_none());
    }

    #[test]
    fn invalidation_evicts_one_tenant_and_every_negative_entry() {
        let a = Authenticator::new("postgres://x@127.0.0.1:1/x", &AuthConfig::default());
        let (r1, r2) = (record(), record());
        a.keys.insert("k1".into(), Some(Arc::new(r1.clone())));
        a.keys.insert("k2".into(), Some(Arc::new(r2.clone())));
        a.keys.insert("unknown".into(), None);
        a.tenants.insert(
            "acme".into(),
            Some(Arc::new(TenantRecord {
                id: r1.tenant_id,
                status: "active".into(),
                plan_priority: 1,
            })),
        );
        a.invalidate_tenant(r1.tenant_id);
        assert!(a.keys.get("k1").is_none());
        assert!(a.keys.get("unknown").is_none());
        assert!(a.tenants.get("acme").is_none());
        assert_eq!(
            a.keys.get("k2").flatten().map(|r| r.key_id),
            Some(r2.key_id)
        );
        a.invalidate_all();
        assert!(a.keys.get("k2").is_none());
        assert!(a.keys.get_stale("k2").is_some(), "kept as a stale answer");
    }
}
