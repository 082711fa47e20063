//! Verification keys, each pinned to one algorithm: from `[auth.jwt]` (an HMAC secret for
//! HS256/384/512, keys with a `secret` or a `pem`) and from a JWK Set (RFC 7517), and which of
//! them a token may be checked against.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::JwtError;
use crate::config::{JwtConfig, JwtKeyConfig};

/// One verification key, pinned to one algorithm.
pub(super) struct VerificationKey {
    /// `kid` of the key, if it has one.
    pub(super) kid: Option<String>,
    /// The one algorithm this key verifies.
    pub(super) alg: Algorithm,
    /// The key material.
    pub(super) key: DecodingKey,
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

/// The keys configured in `[auth.jwt]`: `hmac_secret` for each of HS256, HS384 and HS512, then
/// every entry of `keys`.
///
/// # Errors
/// An empty `hmac_secret`, an unknown algorithm name, or a key that does not parse for its
/// algorithm.
pub(super) fn configured_keys(config: &JwtConfig) -> anyhow::Result<Vec<Arc<VerificationKey>>> {
    let mut keys = Vec::new();
    if let Some(secret) = &config.hmac_secret {
        if secret.is_empty() {
            anyhow::bail!("auth.jwt.hmac_secret is empty");
        }
        for alg in ["HS256", "HS384", "HS512"] {
            keys.push(Arc::new(static_key(&JwtKeyConfig {
                kid: None,
                alg: alg.into(),
                secret: Some(secret.clone()),
                pem: None,
            })?));
        }
    }
    for k in &config.keys {
        keys.push(Arc::new(static_key(k)?));
    }
    Ok(keys)
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
pub(super) fn jwks_keys(set: &JwkSet) -> Vec<Arc<VerificationKey>> {
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

/// The keys among `keys` that a token with `alg` and `kid` may be checked against: with a
/// `kid`, the key of that `kid` if its algorithm is `alg`; without, every key of `alg`.
///
/// # Errors
/// [`JwtError::UnknownKid`] when no key has that `kid`; [`JwtError::AlgorithmNotAccepted`]
/// when none of the candidates is for `alg`.
pub(super) fn select<'a>(
    keys: impl Iterator<Item = &'a Arc<VerificationKey>>,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Vec<Arc<VerificationKey>>, JwtError> {
    let candidates: Vec<&Arc<VerificationKey>> = match kid {
        Some(kid) => {
            let named: Vec<_> = keys.filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                return Err(JwtError::UnknownKid);
            }
            named
        }
        None => keys.collect(),
    };
    let usable: Vec<_> = candidates
        .into_iter()
        .filter(|k| k.alg == alg)
        .cloned()
        .collect();
    if usable.is_empty() {
        return Err(JwtError::AlgorithmNotAccepted);
    }
    Ok(usable)
}
