//! JWT bearer tokens (RFC 7519), verified against keys from `[auth.jwt]`
//! ([`crate::config::JwtConfig`]): HMAC secrets, PEM public keys and JWK Sets (RFC 7517) from a
//! file or a URL.
//!
//! Algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 and EdDSA (jsonwebtoken,
//! RustCrypto backend). Rules, in order:
//! - a token longer than `max_token_bytes` is refused before any parsing;
//! - the header must parse and name one of the algorithms above (`alg: none` does not parse);
//! - every key is pinned to one algorithm, and a token is checked only against keys whose
//!   algorithm equals its header's `alg`, so an HMAC token is never checked against an RSA or
//!   EC public key used as a secret (algorithm confusion, CVE-2016-10555 style);
//! - a token with a `kid` is checked only against the key with that `kid`. An unknown `kid`
//!   makes the verifier re-read its JWK Set, at most once per `jwks_min_refresh_interval_ms`
//!   (a flood of made-up `kid`s costs the identity provider one fetch per interval), and is
//!   refused if still unknown; a token without `kid` is tried against every key of its `alg`;
//! - `exp` is required; `exp` and `nbf` are checked with `leeway_s`; `iss` and `aud` when
//!   configured;
//! - the tenant is the string in `tenant_claim` (a tenant name or id), the model scope the
//!   array (or space-separated string) in `models_claim`, when present.
//!
//! A verified token is cached by its SHA-256 until the earlier of its `exp` and the cache TTL,
//! so a request with a known token costs a hash and a map lookup.
//!
//! Here the verifier itself; the keys and which ones a token may use in `keys.rs`, the JWK Set
//! and its refresh in `jwks.rs`, the claim rules in `claims.rs`, the token cache in `cache.rs`.

mod cache;
mod claims;
mod error;
mod jwks;
mod keys;

pub use claims::JwtIdentity;
pub use error::JwtError;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{decode_header, Algorithm};
use sha2::{Digest, Sha256};

use crate::config::JwtConfig;
use cache::TokenCache;
use claims::ClaimRules;
use jwks::JwkSetKeys;
use keys::VerificationKey;

/// Verifies tokens against the configured keys; built once from [`JwtConfig`].
pub struct JwtVerifier {
    static_keys: Vec<Arc<VerificationKey>>,
    jwks: Option<JwkSetKeys>,
    claims: ClaimRules,
    max_token_bytes: usize,
    cache: TokenCache<JwtIdentity>,
}

impl JwtVerifier {
    /// A verifier for `config`; `Ok(None)` when no key source is configured (JWT off).
    /// Verified tokens are cached for at most `cache_ttl` (and never past their `exp`), at most
    /// `cache_capacity` of them. A `jwks_file` is read here; a `jwks_url` on the first token.
    ///
    /// # Errors
    /// An unknown algorithm name, a key that does not parse for its algorithm, an empty secret,
    /// an unreadable or invalid `jwks_file`, or a `jwks_url` that is not http(s).
    pub fn new(
        config: &JwtConfig,
        cache_ttl: Duration,
        cache_capacity: usize,
    ) -> anyhow::Result<Option<Self>> {
        let static_keys = keys::configured_keys(config)?;
        let jwks = JwkSetKeys::new(config)?;
        if static_keys.is_empty() && jwks.is_none() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier {
            static_keys,
            jwks,
            claims: ClaimRules::new(config),
            max_token_bytes: config.max_token_bytes,
            cache: TokenCache::new(cache_ttl, cache_capacity),
        }))
    }

    /// How many times the JWK Set was fetched or read since start (the `jwks_file` read at
    /// construction not counted).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks.as_ref().map_or(0, JwkSetKeys::fetches)
    }

    /// How many of those fetches or reads failed (the previous keys were kept).
    pub fn jwks_failures(&self) -> u64 {
        self.jwks.as_ref().map_or(0, JwkSetKeys::failures)
    }

    /// Whether `token` looks like a JWS compact serialization (three dot-separated parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// Verify `token` (the text after `Bearer `) and return who it names.
    ///
    /// # Errors
    /// [`JwtError`] for every refusal; see the module documentation for the rules.
    pub async fn verify(&self, token: &str) -> Result<Arc<JwtIdentity>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cached(&digest) {
            return Ok(identity);
        }
        let header = decode_header(token).map_err(|_| JwtError::BadHeader)?;
        let keys = self.keys_for(header.alg, header.kid.as_deref()).await?;
        let mut last = JwtError::Invalid("bad signature");
        for key in keys {
            match self.claims.check(token, &key) {
                Ok(identity) => {
                    let identity = Arc::new(identity);
                    self.cache.remember(digest, &identity, identity.expires_at);
                    return Ok(identity);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<JwtIdentity>> {
        self.cache.get(digest)
    }

    /// The keys a token with `alg` and `kid` may be checked against (re-reading the JWK Set
    /// when it is stale or the `kid` is unknown, within the refresh rate limit).
    async fn keys_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerificationKey>>, JwtError> {
        let Some(jwks) = &self.jwks else {
            return keys::select(self.static_keys.iter(), alg, kid);
        };
        if jwks.is_stale() {
            jwks.refresh().await;
        }
        let select = || keys::select(self.static_keys.iter().chain(jwks.keys().iter()), alg, kid);
        match select() {
            Err(JwtError::UnknownKid) => {
                jwks.refresh().await;
                select()
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
