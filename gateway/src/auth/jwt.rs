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

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{JwtConfig, JwtKeyConfig};

/// Why a token was refused (every one is a 401). The messages are safe for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than `max_token_bytes`.
    #[error("invalid token: larger than the limit")]
    TooLarge,
    /// Not a JWT, or an algorithm this gateway does not accept (including `none`).
    #[error("invalid token: unsupported or malformed header")]
    BadHeader,
    /// No key is configured for the token's algorithm, or its `kid` names a key of another
    /// algorithm.
    #[error("invalid token: algorithm not accepted")]
    AlgorithmNotAccepted,
    /// The token's `kid` names no known key, even after re-reading the JWK Set.
    #[error("invalid token: unknown key id (kid)")]
    UnknownKid,
    /// Signature, `exp`, `nbf`, `iss` or `aud` check failed.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The tenant claim is missing or not a non-empty string.
    #[error("invalid token: no tenant claim")]
    NoTenant,
    /// The models claim is neither an array of strings nor a string.
    #[error("invalid token: the models claim must be an array of model names or a space-separated string")]
    BadModelsClaim,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// Value of the tenant claim (a tenant name or id, as the issuer wrote it).
    pub tenant: String,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// The models claim: the models this token may call; `None`: every model of the tenant.
    pub models: Option<Vec<String>>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// One verification key, pinned to one algorithm.
struct VerificationKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Where the JWK Set comes from.
enum JwksSource {
    File(PathBuf),
    Url(String, reqwest::Client),
}

/// The JWK Set's keys and when they were read.
#[derive(Default)]
struct JwksState {
    keys: Vec<Arc<VerificationKey>>,
    loaded_at: Option<Instant>,
}

struct CachedToken {
    identity: Arc<JwtIdentity>,
    until: Instant,
}

/// Verifies tokens against the configured keys; built once from [`JwtConfig`].
pub struct JwtVerifier {
    static_keys: Vec<Arc<VerificationKey>>,
    jwks_source: Option<JwksSource>,
    jwks: RwLock<JwksState>,
    /// Held while re-reading the JWK Set; holds the instant of the last attempt.
    jwks_refresh: tokio::sync::Mutex<Option<Instant>>,
    jwks_fetches: AtomicU64,
    jwks_refresh_after: Duration,
    jwks_min_interval: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    tenant_claim: String,
    models_claim: String,
    max_token_bytes: usize,
    cache: Mutex<HashMap<[u8; 32], CachedToken>>,
    cache_ttl: Duration,
    cache_capacity: usize,
}

fn parse_alg(name: &str) -> anyhow::Result<Algorithm> {
    name.parse::<Algorithm>()
        .map_err(|_| anyhow::anyhow!("unknown JWT algorithm '{name}' (expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"))
}

fn static_key(k: &JwtKeyConfig) -> anyhow::Result<VerificationKey> {
    use jsonwebtoken::AlgorithmFamily as F;
    let alg = parse_alg(&k.alg)?;
    let what = || format!("auth.jwt.keys (alg {}, kid {:?})", k.alg, k.kid);
    let key = match (alg.family(), &k.secret, &k.pem) {
        (F::Hmac, Some(secret), None) if !secret.is_empty() => {
            DecodingKey::from_secret(secret.as_bytes())
        }
        (F::Hmac, _, _) => anyhow::bail!(
            "{}: an HMAC key needs a non-empty `secret` and no `pem`",
            what()
        ),
        (_, None, Some(pem)) => {
            let pem = pem.as_bytes();
            match alg.family() {
                F::Rsa => DecodingKey::from_rsa_pem(pem),
                F::Ec => DecodingKey::from_ec_pem(pem),
                _ => DecodingKey::from_ed_pem(pem),
            }
        }
        _ => anyhow::bail!(
            "{}: a public-key algorithm needs `pem` and no `secret`",
            what()
        ),
    }
    .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    Ok(VerificationKey {
        kid: k.kid.clone(),
        alg,
        key,
    })
}

/// The algorithm a JWK is for: its `alg`, else the one its key type allows (RSA: RS256,
/// P-256: ES256, P-384: ES384, Ed25519: EdDSA). Symmetric (`oct`) keys are not taken from a
/// JWK Set.
fn jwk_alg(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    if let Some(a) = jwk.common.key_algorithm {
        return Algorithm::try_from(a).ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => {
            (okp.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

/// The usable keys of a JWK Set (others are skipped with a warning).
fn jwks_keys(set: &JwkSet) -> Vec<Arc<VerificationKey>> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone();
            let Some(alg) = jwk_alg(jwk) else {
                tracing::warn!(?kid, "JWK skipped: unsupported key type or algorithm");
                return None;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => Some(Arc::new(VerificationKey { kid, alg, key })),
                Err(e) => {
                    tracing::warn!(?kid, error = %e, "JWK skipped");
                    None
                }
            }
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let mut static_keys = Vec::new();
        if let Some(secret) = &config.hmac_secret {
            if secret.is_empty() {
                anyhow::bail!("auth.jwt.hmac_secret is empty");
            }
            for alg in ["HS256", "HS384", "HS512"] {
                static_keys.push(Arc::new(static_key(&JwtKeyConfig {
                    kid: None,
                    alg: alg.into(),
                    secret: Some(secret.clone()),
                    pem: None,
                })?));
            }
        }
        for k in &config.keys {
            static_keys.push(Arc::new(static_key(k)?));
        }
        let jwks_source = match (&config.jwks_file, &config.jwks_url) {
            (Some(_), Some(_)) => {
                anyhow::bail!("set auth.jwt.jwks_file or auth.jwt.jwks_url, not both")
            }
            (Some(path), None) => Some(JwksSource::File(path.clone())),
            (None, Some(url)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    anyhow::bail!("auth.jwt.jwks_url must be an http(s) URL");
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.jwks_fetch_timeout_ms.max(1)))
                    .build()?;
                Some(JwksSource::Url(url.clone(), client))
            }
            (None, None) => None,
        };
        if static_keys.is_empty() && jwks_source.is_none() {
            return Ok(None);
        }
        let mut jwks = JwksState::default();
        if let Some(JwksSource::File(path)) = &jwks_source {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("auth.jwt.jwks_file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "auth.jwt.jwks_file {} is not a JWK Set: {e}",
                    path.display()
                )
            })?;
            jwks.keys = jwks_keys(&set);
            jwks.loaded_at = Some(Instant::now());
        }
        Ok(Some(JwtVerifier {
            static_keys,
            jwks_source,
            jwks: RwLock::new(jwks),
            jwks_refresh: tokio::sync::Mutex::new(None),
            jwks_fetches: AtomicU64::new(0),
            jwks_refresh_after: Duration::from_secs(config.jwks_refresh_s),
            jwks_min_interval: Duration::from_millis(config.jwks_min_refresh_interval_ms),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            tenant_claim: config.tenant_claim.clone(),
            models_claim: config.models_claim.clone(),
            max_token_bytes: config.max_token_bytes,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
            cache_capacity: cache_capacity.max(1),
        }))
    }

    /// How many times the JWK Set was fetched or read since start (the `jwks_file` read at
    /// construction not counted).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::Relaxed)
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
            match self.check(token, &key) {
                Ok(identity) => {
                    let identity = Arc::new(identity);
                    self.remember(digest, &identity);
                    return Ok(identity);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Arc<JwtIdentity>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(digest)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.identity.clone())
    }

    fn remember(&self, digest: [u8; 32], identity: &Arc<JwtIdentity>) {
        let left = Duration::from_secs(identity.expires_at.saturating_sub(unix_now()));
        let ttl = self.cache_ttl.min(left);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_capacity {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= self.cache_capacity {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            CachedToken {
                identity: identity.clone(),
                until: now + ttl,
            },
        );
    }

    /// The keys a token with `alg` and `kid` may be checked against (re-reading the JWK Set
    /// when it is stale or the `kid` is unknown, within the refresh rate limit).
    async fn keys_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerificationKey>>, JwtError> {
        let stale = self.jwks_source.is_some()
            && self
                .jwks
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .loaded_at
                .is_none_or(|t| t.elapsed() >= self.jwks_refresh_after);
        if stale {
            self.refresh_jwks().await;
        }
        match self.select(alg, kid) {
            Err(JwtError::UnknownKid) if self.jwks_source.is_some() => {
                self.refresh_jwks().await;
                self.select(alg, kid)
            }
            other => other,
        }
    }

    fn select(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Vec<Arc<VerificationKey>>, JwtError> {
        let jwks = self.jwks.read().unwrap_or_else(|p| p.into_inner());
        let all = self.static_keys.iter().chain(jwks.keys.iter());
        match kid {
            Some(kid) => {
                let named: Vec<_> = all.filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if named.is_empty() {
                    return Err(JwtError::UnknownKid);
                }
                let usable: Vec<_> = named
                    .into_iter()
                    .filter(|k| k.alg == alg)
                    .cloned()
                    .collect();
                if usable.is_empty() {
                    return Err(JwtError::AlgorithmNotAccepted);
                }
                Ok(usable)
            }
            None => {
                let usable: Vec<_> = all.filter(|k| k.alg == alg).cloned().collect();
                if usable.is_empty() {
                    return Err(JwtError::AlgorithmNotAccepted);
                }
                Ok(usable)
            }
        }
    }

    /// Re-read the JWK Set unless another task just did, or the last attempt is more recent
    /// than `jwks_min_refresh_interval_ms`. A failed read keeps the previous keys.
    async fn refresh_jwks(&self) {
        let Some(source) = &self.jwks_source else {
            return;
        };
        let mut last_attempt = self.jwks_refresh.lock().await;
        if last_attempt.is_some_and(|t| t.elapsed() < self.jwks_min_interval) {
            return;
        }
        *last_attempt = Some(Instant::now());
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let set: Result<JwkSet, String> = match source {
            JwksSource::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            JwksSource::Url(url, client) => {
                let fetched = async {
                    client
                        .get(url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json::<JwkSet>()
                        .await
                };
                fetched.await.map_err(|e| e.to_string())
            }
        };
        match set {
            Ok(set) => {
                let keys = jwks_keys(&set);
                tracing::info!(keys = keys.len(), "JWK Set loaded");
                let mut jwks = self.jwks.write().unwrap_or_else(|p| p.into_inner());
                jwks.keys = keys;
                jwks.loaded_at = Some(Instant::now());
            }
            Err(error) => {
                tracing::warn!(%error, "JWK Set could not be read; keeping the previous keys")
            }
        }
    }

    fn check(&self, token: &str, key: &VerificationKey) -> Result<JwtIdentity, JwtError> {
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            JwtError::Invalid(match e.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid (nbf)",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "missing a required claim (exp, iss or aud)",
                ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
                _ => "malformed",
            })
        })?;
        let claims = data.claims;
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(JwtError::NoTenant)?
            .to_string();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let models = match claims.get(&self.models_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.split_whitespace().map(str::to_string).collect()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(JwtError::BadModelsClaim)?,
            ),
            Some(_) => return Err(JwtError::BadModelsClaim),
        };
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(JwtIdentity {
            tenant,
            subject,
            models,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;

    const RSA_PRIVATE: &str = include_str!("../../testdata/jwt/rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../testdata/jwt/rsa-public.pem");
    const ES256_PRIVATE: &str = include_str!("../../testdata/jwt/es256-private.pem");
    const ES256_PUBLIC: &str = include_str!("../../testdata/jwt/es256-public.pem");
    const ES384_PRIVATE: &str = include_str!("../../testdata/jwt/es384-private.pem");
    const ES384_PUBLIC: &str = include_str!("../../testdata/jwt/es384-public.pem");
    const ED_PRIVATE: &str = include_str!("../../testdata/jwt/ed25519-private.pem");
    const ED_PUBLIC: &str = include_str!("../../testdata/jwt/ed25519-public.pem");
    const SECRET: &str = "hs256-test-secret-0123456789abcdef";
    const TTL: Duration = Duration::from_secs(5);

    fn key(alg: &str, pem: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            kid: None,
            alg: alg.into(),
            secret: None,
            pem: Some(pem.into()),
        }
    }

    fn config() -> JwtConfig {
        let mut keys = vec![];
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            keys.push(key(alg, RSA_PUBLIC));
        }
        keys.push(key("ES256", ES256_PUBLIC));
        keys.push(key("ES384", ES384_PUBLIC));
        keys.push(key("EdDSA", ED_PUBLIC));
        JwtConfig {
            hmac_secret: Some(SECRET.into()),
            keys,
            issuer: Some("https://issuer.example".into()),
            audience: Some("maas".into()),
            leeway_s: 5,
            ..JwtConfig::default()
        }
    }

    fn claims(extra: Value) -> Value {
        let now = get_current_timestamp();
        let mut c = json!({
            "tenant": "acme", "sub": "user-1", "iss": "https://issuer.example", "aud": "maas",
            "exp": now + 600, "nbf": now - 10,
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    fn signing_key(alg: Algorithm) -> EncodingKey {
        use jsonwebtoken::AlgorithmFamily as F;
        match alg.family() {
            F::Hmac => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            F::Rsa => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            F::Ec if alg == Algorithm::ES256 => {
                EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap()
            }
            F::Ec => EncodingKey::from_ec_pem(ES384_PRIVATE.as_bytes()).unwrap(),
            F::Ed => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        }
    }

    fn sign(alg: Algorithm, kid: Option<&str>, c: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, c, &signing_key(alg)).unwrap()
    }

    fn rs(c: &Value) -> String {
        sign(Algorithm::RS256, None, c)
    }

    fn verifier_for(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::new(config, TTL, 100).unwrap().unwrap()
    }

    fn verifier() -> JwtVerifier {
        verifier_for(&config())
    }

    #[tokio::test]
    async fn accepts_every_supported_algorithm() {
        let v = verifier();
        for alg in [
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "EdDSA",
        ] {
            let alg: Algorithm = alg.parse().unwrap();
            let id = v.verify(&sign(alg, None, &claims(json!({})))).await;
            let id = id.unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(id.tenant, "acme", "{alg:?}");
            assert_eq!(id.subject.as_deref(), Some("user-1"));
            assert_eq!(id.models, None);
        }
    }

    #[test]
    fn off_without_keys_and_bad_keys_are_errors() {
        assert!(JwtVerifier::new(&JwtConfig::default(), TTL, 1)
            .unwrap()
            .is_none());
        let bad = |k: JwtKeyConfig| {
            let c = JwtConfig {
                keys: vec![k],
                ..JwtConfig::default()
            };
            JwtVerifier::new(&c, TTL, 1).err().map(|e| e.to_string())
        };
        assert!(bad(key("RS256", "not a pem")).is_some());
        assert!(bad(key("ES256", RSA_PUBLIC)).is_some());
        assert!(bad(key("none", RSA_PUBLIC))
            .unwrap()
            .contains("unknown JWT algorithm"));
        let hmac_with_pem = bad(key("HS256", RSA_PUBLIC)).unwrap();
        assert!(
            hmac_with_pem.contains("needs a non-empty `secret`"),
            "{hmac_with_pem}"
        );
        let empty = JwtConfig {
            hmac_secret: Some(String::new()),
            ..JwtConfig::default()
        };
        assert!(JwtVerifier::new(&empty, TTL, 1).is_err());
    }

    #[tokio::test]
    async fn checks_time_issuer_audience_tenant_and_models() {
        let v = verifier();
        let now = get_current_timestamp();
        let e = |c: Value| {
            let t = rs(&claims(c));
            let v = &v;
            async move { v.verify(&t).await.unwrap_err() }
        };
        assert_eq!(
            e(json!({"exp": now - 60})).await,
            JwtError::Invalid("expired")
        );
        assert_eq!(
            e(json!({"nbf": now + 60})).await,
            JwtError::Invalid("not yet valid (nbf)")
        );
        assert!(matches!(
            e(json!({"exp": null})).await,
            JwtError::Invalid(_)
        ));
        assert_eq!(
            e(json!({"iss": "https://evil.example"})).await,
            JwtError::Invalid("wrong issuer")
        );
        assert_eq!(
            e(json!({"aud": "other"})).await,
            JwtError::Invalid("wrong audience")
        );
        assert!(matches!(
            e(json!({"aud": null})).await,
            JwtError::Invalid(_)
        ));
        assert_eq!(e(json!({"tenant": null})).await, JwtError::NoTenant);
        assert_eq!(e(json!({"tenant": 7})).await, JwtError::NoTenant);
        assert_eq!(e(json!({"models": 7})).await, JwtError::BadModelsClaim);
        assert_eq!(
            e(json!({"models": ["a", 1]})).await,
            JwtError::BadModelsClaim
        );
        // Within the leeway.
        assert!(v
            .verify(&rs(&claims(json!({"exp": now - 2}))))
            .await
            .is_ok());
        assert!(v
            .verify(&rs(&claims(json!({"nbf": now + 2}))))
            .await
            .is_ok());
        // Model scopes, as an array or an OAuth-style string.
        let id = v
            .verify(&rs(&claims(json!({"models": ["digits", "seed"]}))))
            .await
            .unwrap();
        assert_eq!(
            id.models,
            Some(vec!["digits".to_string(), "seed".to_string()])
        );
        let id = v
            .verify(&rs(&claims(
                json!({"models": "digits  seed", "exp": now + 600}),
            )))
            .await
            .unwrap();
        assert_eq!(
            id.models,
            Some(vec!["digits".to_string(), "seed".to_string()])
        );
        assert_eq!(id.expires_at, now + 600);
    }

    #[tokio::test]
    async fn configurable_tenant_claim() {
        let v = verifier_for(&JwtConfig {
            tenant_claim: "org".into(),
            ..config()
        });
        assert_eq!(
            v.verify(&rs(&claims(json!({})))).await.unwrap_err(),
            JwtError::NoTenant
        );
        let t = rs(&claims(json!({"org": "globex"})));
        assert_eq!(v.verify(&t).await.unwrap().tenant, "globex");
    }

    #[tokio::test]
    async fn rejects_forgeries() {
        let v = verifier();
        // alg none.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert_eq!(v.verify(none).await.unwrap_err(), JwtError::BadHeader);
        // Algorithm confusion: HS256 signed with the RSA public key as the HMAC secret.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&confused).await.unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        let public_keys_only = verifier_for(&JwtConfig {
            hmac_secret: None,
            ..config()
        });
        assert_eq!(
            public_keys_only.verify(&confused).await.unwrap_err(),
            JwtError::AlgorithmNotAccepted
        );
        // Wrong HMAC secret.
        let other = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(b"another secret").unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&other).await.unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        // Tampered payload.
        let good = rs(&claims(json!({})));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_payload = rs(&claims(json!({"tenant": "globex"})));
        parts[1] = forged_payload.split('.').nth(1).unwrap();
        assert_eq!(
            v.verify(&parts.join(".")).await.unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        // An algorithm with no key configured.
        let rs_only = verifier_for(&JwtConfig {
            hmac_secret: None,
            keys: vec![key("RS256", RSA_PUBLIC)],
            ..config()
        });
        let ps = sign(Algorithm::PS256, None, &claims(json!({})));
        assert_eq!(
            rs_only.verify(&ps).await.unwrap_err(),
            JwtError::AlgorithmNotAccepted
        );
        // Garbage, size.
        assert_eq!(
            v.verify("not.a.jwt").await.unwrap_err(),
            JwtError::BadHeader
        );
        assert_eq!(v.verify("").await.unwrap_err(), JwtError::BadHeader);
        let big = "a".repeat(8193);
        assert_eq!(v.verify(&big).await.unwrap_err(), JwtError::TooLarge);
    }

    #[tokio::test]
    async fn kid_selects_the_key_and_pins_its_algorithm() {
        let mut a = key("RS256", RSA_PUBLIC);
        a.kid = Some("rsa-1".into());
        let mut b = key("ES256", ES256_PUBLIC);
        b.kid = Some("ec-1".into());
        let v = verifier_for(&JwtConfig {
            hmac_secret: None,
            keys: vec![a, b],
            ..config()
        });
        let c = claims(json!({}));
        assert!(v
            .verify(&sign(Algorithm::RS256, Some("rsa-1"), &c))
            .await
            .is_ok());
        assert!(v
            .verify(&sign(Algorithm::ES256, Some("ec-1"), &c))
            .await
            .is_ok());
        // The right algorithm under another key's kid.
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, Some("rsa-1"), &c))
                .await
                .unwrap_err(),
            JwtError::AlgorithmNotAccepted
        );
        assert_eq!(
            v.verify(&sign(Algorithm::RS256, Some("nope"), &c))
                .await
                .unwrap_err(),
            JwtError::UnknownKid
        );
        // No kid: tried against every key of its algorithm.
        assert!(v.verify(&sign(Algorithm::RS256, None, &c)).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_file_is_reread_on_unknown_kid_at_most_once_per_interval() {
        use jsonwebtoken::jwk::Jwk;
        let dir = std::env::temp_dir().join(format!("maas-jwks-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        let jwk = |alg: Algorithm, kid: &str| {
            let mut j = Jwk::from_encoding_key(&signing_key(alg), alg).unwrap();
            j.common.key_id = Some(kid.into());
            j
        };
        let write = |keys: Vec<Jwk>| {
            std::fs::write(&path, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
        };
        write(vec![jwk(Algorithm::RS256, "k1")]);
        let v = verifier_for(&JwtConfig {
            hmac_secret: None,
            keys: vec![],
            jwks_file: Some(path.clone()),
            jwks_min_refresh_interval_ms: 1000,
            ..config()
        });
        let c = claims(json!({}));
        // Signed up front: signing is slow in a debug build, and the test is about timing.
        let flood: Vec<String> = (0..50)
            .map(|i| sign(Algorithm::RS256, Some(&format!("made-up-{i}")), &c))
            .collect();
        let t2 = sign(Algorithm::ES256, Some("k2"), &c);
        let t3 = sign(Algorithm::RS256, Some("still-unknown"), &c);
        assert!(v
            .verify(&sign(Algorithm::RS256, Some("k1"), &c))
            .await
            .is_ok());
        assert_eq!(v.jwks_fetches(), 0);
        // The issuer rotates in an EC key.
        write(vec![
            jwk(Algorithm::RS256, "k1"),
            jwk(Algorithm::ES256, "k2"),
        ]);
        assert!(v.verify(&t2).await.is_ok());
        assert_eq!(v.jwks_fetches(), 1);
        // A flood of unknown kids: no further read within the interval.
        for t in &flood {
            assert_eq!(v.verify(t).await.unwrap_err(), JwtError::UnknownKid);
        }
        assert_eq!(v.jwks_fetches(), 1);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_eq!(v.verify(&t3).await.unwrap_err(), JwtError::UnknownKid);
        assert_eq!(v.jwks_fetches(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_until_exp() {
        let v = verifier();
        let now = get_current_timestamp();
        let t = rs(&claims(json!({"exp": now + 600})));
        let a = v.verify(&t).await.unwrap();
        let b = v.verify(&t).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second verification is a cache hit");
        // A token expiring now (inside the leeway) is accepted but not cached.
        let t = rs(&claims(json!({"exp": now})));
        assert!(v.verify(&t).await.is_ok());
        let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert!(v.cached(&digest).is_none());
    }
}
