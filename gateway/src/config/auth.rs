//! `[auth]` and `[auth.jwt]`: API key lookups and JWT verification keys and claims.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[auth]`: API key lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// How long a key lookup (found or not found) is cached in process, milliseconds.
    /// A revoked key keeps working for at most this long. Default 5000.
    pub cache_ttl_ms: u64,
    /// Most cached key lookups; beyond this expired entries are evicted, then all. Default 100000.
    pub cache_capacity: usize,
    /// Connections of the proxy's PostgreSQL pool (key lookups). Default 8.
    pub db_max_connections: u32,
    /// Stale-if-error (RFC 5861): while PostgreSQL cannot be reached, a key, tenant, limit or
    /// price lookup past its TTL keeps its last answer for up to this many seconds; only a
    /// credential never seen (or seen longer ago) is answered 503. Revocations and
    /// suspensions announced on Redis still drop their entries. Default 900 (15 minutes).
    pub stale_if_error_s: u64,
    /// After a failed lookup, PostgreSQL is not asked again for this many milliseconds (the
    /// stale answers serve meanwhile), then one request probes. Default 1000.
    pub db_retry_ms: u64,
    /// `api_keys.last_used_at` is written for the keys used in each interval of this many
    /// milliseconds, in one statement (not per request). Default 60000.
    pub last_used_flush_ms: u64,
    /// JWT verification ([`crate::JwtVerifier`]); off while no key source is set.
    pub jwt: JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_ms: 5000,
            cache_capacity: 100_000,
            db_max_connections: 8,
            stale_if_error_s: 900,
            db_retry_ms: 1000,
            last_used_flush_ms: 60_000,
            jwt: JwtConfig::default(),
        }
    }
}

/// `[auth.jwt]`: keys and claim rules for JWT bearer tokens (RFC 7519), see [`crate::JwtVerifier`].
///
/// JWT is on when at least one key source is set: `hmac_secret`, `keys`, `jwks_file` or
/// `jwks_url`. `Debug` prints secrets as `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// Shared secret (UTF-8 bytes) for HS256, HS384 and HS512 tokens without a `kid`; the
    /// environment-friendly shorthand for one HMAC entry in `keys`. Unset: none.
    pub hmac_secret: Option<String>,
    /// Verification keys, each pinned to one algorithm.
    pub keys: Vec<JwtKeyConfig>,
    /// A JWK Set (RFC 7517) in a local file, read at start and re-read like a URL.
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set fetched over HTTP(S) (e.g. an identity provider's `jwks_uri`), cached.
    pub jwks_url: Option<String>,
    /// The JWK Set is re-read after this many seconds (lazily, on the next token). Default 300.
    pub jwks_refresh_s: u64,
    /// A token whose `kid` is unknown triggers a re-read, at most once per this many
    /// milliseconds (so a flood of made-up `kid`s cannot flood the identity provider).
    /// Default 10000.
    pub jwks_min_refresh_interval_ms: u64,
    /// Timeout of one JWK Set fetch, milliseconds. Default 2000.
    pub jwks_fetch_timeout_ms: u64,
    /// Required `iss`; unset: not checked.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences); unset: not checked.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, seconds. Default 30.
    pub leeway_s: u64,
    /// Claim holding the tenant: its name, or its id (a UUID). Default `tenant`.
    pub tenant_claim: String,
    /// Claim holding the models the token may call: an array of names or one space-separated
    /// string (OAuth `scope` style). Absent from a token: every model of the tenant.
    /// Default `models`.
    pub models_claim: String,
    /// Longest accepted token, bytes; longer ones are refused before parsing. Default 8192.
    pub max_token_bytes: usize,
}

/// One entry of `[[auth.jwt.keys]]`: a verification key pinned to one algorithm.
///
/// A token is checked against a key only when its header `alg` equals the key's `alg` (and its
/// `kid` the key's `kid`, when the key has one), so an HMAC token is never checked against a
/// public key (algorithm confusion).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JwtKeyConfig {
    /// Key id matched against the token header's `kid`; unset: matches tokens without `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// One of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA.
    pub alg: String,
    /// The shared secret for HS* (UTF-8 bytes).
    #[serde(default)]
    pub secret: Option<String>,
    /// The public key for the others, PEM (`-----BEGIN PUBLIC KEY-----`, or
    /// `-----BEGIN RSA PUBLIC KEY-----` for RSA).
    #[serde(default)]
    pub pem: Option<String>,
}

impl std::fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("pem", &self.pem.is_some())
            .finish()
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "***"))
            .field("keys", &self.keys)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("tenant_claim", &self.tenant_claim)
            .field("models_claim", &self.models_claim)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hmac_secret: None,
            keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            jwks_min_refresh_interval_ms: 10_000,
            jwks_fetch_timeout_ms: 2000,
            issuer: None,
            audience: None,
            leeway_s: 30,
            tenant_claim: "tenant".into(),
            models_claim: "models".into(),
            max_token_bytes: 8192,
        }
    }
}
