//! JWT bearer tokens (RFC 7519): HS256 with a shared secret and RS256 with a PEM public key,
//! both from `[auth.jwt]` ([`crate::config::JwtConfig`]).
//!
//! Rules: the token is at most `max_token_bytes`; its header `alg` picks the key (HS256 only
//! the secret, RS256 only the public key), so an HMAC token can never be checked against an RSA
//! public key (algorithm confusion, CVE-2016-10555 style) and `alg: none` is refused (it is not
//! an algorithm jsonwebtoken parses). `exp` is required; `exp` and `nbf` are checked with
//! `leeway_s`; `iss` and `aud` when configured; the tenant is the string in `tenant_claim`.
//! A request carrying two different credentials (`Authorization` and `x-api-key`) is refused
//! ([`single_credential`]).
//!
//! Not yet wired into the data path (the proxy accepts API keys only); the two-credentials rule
//! is already enforced there by [`crate::auth::presented_key`].

use std::collections::HashSet;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;

/// Why a token or a pair of credentials was refused. The messages are safe for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than `max_token_bytes`.
    #[error("token too large")]
    TooLarge,
    /// Not a JWT, or an algorithm this gateway does not accept (including `none`).
    #[error("invalid token: unsupported or malformed header")]
    BadHeader,
    /// The algorithm is known but no key for it is configured.
    #[error("invalid token: algorithm not accepted")]
    AlgorithmNotAccepted,
    /// Signature, `exp`, `nbf`, `iss` or `aud` check failed.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The tenant claim is missing or not a non-empty string.
    #[error("invalid token: no tenant claim")]
    NoTenant,
    /// `Authorization` and `x-api-key` carry different credentials.
    #[error("two different credentials: send either Authorization or x-api-key, not both")]
    ConflictingCredentials,
}

impl JwtError {
    /// HTTP status: 400 for conflicting credentials, 401 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            JwtError::ConflictingCredentials => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtIdentity {
    /// Value of the tenant claim (a tenant name or id, as the issuer wrote it).
    pub tenant: String,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

/// Verifies tokens against the configured keys; built once from [`JwtConfig`].
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    tenant_claim: String,
    max_token_bytes: usize,
}

impl JwtVerifier {
    /// A verifier for `config`; `Ok(None)` when neither key is configured (JWT off).
    ///
    /// # Errors
    /// When `rs256_public_key_pem` is not an RSA public key in PEM, or the secret is empty.
    pub fn new(config: &JwtConfig) -> anyhow::Result<Option<Self>> {
        let hs256 = match config.hs256_secret.as_deref() {
            Some("") => anyhow::bail!("auth.jwt.hs256_secret is empty"),
            Some(s) => Some(
                DecodingKey::from_secret(s.as_bytes())
                    .map_err(|e| anyhow::anyhow!("auth.jwt.hs256_secret: {e}"))?,
            ),
            None => None,
        };
        let rs256 = match config.rs256_public_key_pem.as_deref() {
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                anyhow::anyhow!("auth.jwt.rs256_public_key_pem is not an RSA public key: {e}")
            })?),
            None => None,
        };
        if hs256.is_none() && rs256.is_none() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier {
            hs256,
            rs256,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            tenant_claim: config.tenant_claim.clone(),
            max_token_bytes: config.max_token_bytes,
        }))
    }

    /// Verify `token` (the text after `Bearer `) and return who it names.
    ///
    /// # Errors
    /// [`JwtError`] for every refusal; see the module documentation for the rules.
    pub fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let header = decode_header(token).map_err(|_| JwtError::BadHeader)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or(JwtError::AlgorithmNotAccepted)?;
        let mut validation = Validation::new(header.alg);
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
        let data = decode::<Map<String, Value>>(token, key, &validation).map_err(|e| {
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
        Ok(JwtIdentity {
            tenant,
            subject,
            claims,
        })
    }
}

/// The one credential of a request, given the `Authorization: Bearer` token and the
/// `x-api-key` value (each trimmed, `None` when absent or empty).
///
/// # Errors
/// [`JwtError::ConflictingCredentials`] when both are present and differ (the same value in
/// both is accepted, as some clients send both).
pub fn single_credential<'a>(
    bearer: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Result<Option<&'a str>, JwtError> {
    match (bearer, x_api_key) {
        (Some(a), Some(b)) if a != b => Err(JwtError::ConflictingCredentials),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;

    /// Test-only RSA key pair (generated for these tests; protects nothing).
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCXgw/AQaFVoyy6\nWMn1MJwdgsfgqKW4X2KRHcLhqg9OTxzLM7THcWRBoGBORby+TKeuq062N3wc977N\nUrCpD6TONKGdSCPM44wcovXcM35vQ+fYlypNrVcNgygdZXh+bHAl+19gOHh0ZUio\niFzH6EGrcnLzc3aX0LJcPjITYUH1Rt8yMAEH1sOUq+naEWsn2tk5P+5/dYwL0AMc\nnFpnDAO4hz3fER7uys3zbipCpRXqGiaW6O8G8wh3dlHOcEJebYUMTEJHuikKOVBl\nsIH91EwmPLD1LGPWWGhbzmkv2LL9ittyEx5Q/IT8hZX/wgsMXgTFlVkON9eJuOy2\nws7bE8JTAgMBAAECggEAAum2J9AbNfZJKdwDJf+lQLv+88bKSN0sm/WihYwrdyn2\nN8Hqu9rmPozCzT5x/oaiwqzwenhenn/03yWz18xBMuW4Jbn5VjsZuoM3juA+kg0Q\nLA3b9lpazhuzbb1Br8yN620FzGfJiRNZbkQQ5JcGjDFLHHsf0JNmmndnpw+7oOeQ\nU89NrZJuv1aqAuyUwaUuRVPrn7zXhyyp10AMQmo0CQDaTn96tnFY/xd2JHUTmdgK\nYNHkFiJDjMB5ZW/K5qblMAQCf34EEC/VE3EoPTnxyNvXg+j30/SH6tL8+AgGWBUe\nqAuskspmhvKt1W1H/csQmOFReqTluSHwOQCVMRN7gQKBgQDS04ccCPC7EX4ZJp5t\ne3+QFLTQHkczCOWrwwRy9RMREqMLUB5LmRknunSBHbWZqukPfCe2fJ+zhZuO4/H+\nFZ78R8FVvNwt7GgTM0ONNeh2CzjnLK8x7yox4KEC619fq+HevuB5F+GLYhzAfMjy\nM/c+ADqEFT+3BiDozyxbvSUwUQKBgQC3+fXMb9dW+/v3Y0cri3R/FXg7tMtZAhBU\n7e72YtfxLw6ZFx53G/rn9j2tOWlg1Z0iTrZ4vQxI9EmqJZQkF64PFZG6QZ6uRnk2\nB7Yp70y/l9cDiQAXtYhywHql228XKFJI21v3nhakzv1mJoFXnHQbTX+8mWaUUUZ4\nVfN21+cjYwKBgALJLMXgEF5IcuQeMIW91gevXlxJqiMwgOhuIUbrmh7loiXqHxxc\nn4p42kVCgT3QllfQCi5NI0caAt42gOIcowcuY42ge0BYGV/3k3LwPWwh5dSYMJB2\nWpZiI36IYbA/8zIgT5MKD77pwvuAKp+YtDGrixpntXnTqOeqpSlpLG6hAoGBAIeI\n/V0L8++gGgMpv2/EACHzli0eR0SecZuv4gDf1shW64E69/W1xkWHMe7gwdJV7Lou\nlN0kIN3KIk7X+mgQjemM8VvvJdCsGHYGflwscDUhzoRLNKdC1G/9fx2bKB8+VEha\nWkl0zKfD2gicS2NY3mySzo0J0floWusiHwepjR2TAoGAdbbRqxV+kiCH+RvtQvbb\nvNI0lK8gs8ZJpQYHsZrNalVaW0IASR89IIgpIbLBfZ4mFgszNsEfoMGWiumf4ncz\naqHL+6hk/8D8CUOhC/HY7aIlTJLW3omKlm7tA3tVluBD//zSCUF1hXRWoHU9Q6jW\nQ6GE18tgAsNHAfsNZwCVsRA=\n-----END PRIVATE KEY-----";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAl4MPwEGhVaMsuljJ9TCc\nHYLH4KiluF9ikR3C4aoPTk8cyzO0x3FkQaBgTkW8vkynrqtOtjd8HPe+zVKwqQ+k\nzjShnUgjzOOMHKL13DN+b0Pn2JcqTa1XDYMoHWV4fmxwJftfYDh4dGVIqIhcx+hB\nq3Jy83N2l9CyXD4yE2FB9UbfMjABB9bDlKvp2hFrJ9rZOT/uf3WMC9ADHJxaZwwD\nuIc93xEe7srN824qQqUV6homlujvBvMId3ZRznBCXm2FDExCR7opCjlQZbCB/dRM\nJjyw9Sxj1lhoW85pL9iy/YrbchMeUPyE/IWV/8ILDF4ExZVZDjfXibjstsLO2xPC\nUwIDAQAB\n-----END PUBLIC KEY-----";
    const SECRET: &str = "hs256-test-secret-0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            hs256_secret: Some(SECRET.into()),
            rs256_public_key_pem: Some(RSA_PUBLIC.into()),
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

    fn hs(c: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            c,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn rs(c: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), c, &key).unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&config()).unwrap().unwrap()
    }

    #[test]
    fn accepts_valid_hs256_and_rs256() {
        let v = verifier();
        let id = v.verify(&hs(&claims(json!({})))).unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.subject.as_deref(), Some("user-1"));
        assert_eq!(v.verify(&rs(&claims(json!({})))).unwrap().tenant, "acme");
    }

    #[test]
    fn off_without_keys_and_bad_pem_is_an_error() {
        assert!(JwtVerifier::new(&JwtConfig::default()).unwrap().is_none());
        let bad = JwtConfig {
            rs256_public_key_pem: Some("not a pem".into()),
            ..JwtConfig::default()
        };
        assert!(JwtVerifier::new(&bad).is_err());
    }

    #[test]
    fn checks_time_issuer_audience_and_tenant() {
        let v = verifier();
        let now = get_current_timestamp();
        let e = |c: Value| v.verify(&rs(&claims(c))).unwrap_err();
        assert_eq!(e(json!({"exp": now - 60})), JwtError::Invalid("expired"));
        assert_eq!(
            e(json!({"nbf": now + 60})),
            JwtError::Invalid("not yet valid (nbf)")
        );
        assert!(matches!(e(json!({"exp": null})), JwtError::Invalid(_)));
        assert_eq!(
            e(json!({"iss": "https://evil.example"})),
            JwtError::Invalid("wrong issuer")
        );
        assert_eq!(
            e(json!({"aud": "other"})),
            JwtError::Invalid("wrong audience")
        );
        assert!(matches!(e(json!({"aud": null})), JwtError::Invalid(_)));
        assert_eq!(e(json!({"tenant": null})), JwtError::NoTenant);
        assert_eq!(e(json!({"tenant": 7})), JwtError::NoTenant);
        // Within the leeway.
        assert!(v.verify(&rs(&claims(json!({"exp": now - 2})))).is_ok());
        assert!(v.verify(&rs(&claims(json!({"nbf": now + 2})))).is_ok());
    }

    #[test]
    fn configurable_tenant_claim() {
        let v = JwtVerifier::new(&JwtConfig {
            tenant_claim: "org".into(),
            ..config()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            v.verify(&hs(&claims(json!({})))).unwrap_err(),
            JwtError::NoTenant
        );
        assert_eq!(
            v.verify(&hs(&claims(json!({"org": "globex"}))))
                .unwrap()
                .tenant,
            "globex"
        );
    }

    #[test]
    fn rejects_forgeries() {
        let v = verifier();
        // alg none.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert_eq!(v.verify(none).unwrap_err(), JwtError::BadHeader);
        // Algorithm confusion: HS256 signed with the RSA public key as the HMAC secret.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&confused).unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        let rs_only = JwtVerifier::new(&JwtConfig {
            hs256_secret: None,
            ..config()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            rs_only.verify(&confused).unwrap_err(),
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
            v.verify(&other).unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        // Tampered payload.
        let good = rs(&claims(json!({})));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_payload = rs(&claims(json!({"tenant": "globex"})));
        parts[1] = forged_payload.split('.').nth(1).unwrap();
        assert_eq!(
            v.verify(&parts.join(".")).unwrap_err(),
            JwtError::Invalid("bad signature")
        );
        // Other algorithms, garbage, size.
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs384).unwrap_err(),
            JwtError::AlgorithmNotAccepted
        );
        assert_eq!(v.verify("not.a.jwt").unwrap_err(), JwtError::BadHeader);
        assert_eq!(v.verify("").unwrap_err(), JwtError::BadHeader);
        let big = "a".repeat(8193);
        assert_eq!(v.verify(&big).unwrap_err(), JwtError::TooLarge);
    }

    #[test]
    fn one_credential_per_request() {
        assert_eq!(single_credential(Some("a"), None), Ok(Some("a")));
        assert_eq!(single_credential(None, Some("b")), Ok(Some("b")));
        assert_eq!(single_credential(Some("a"), Some("a")), Ok(Some("a")));
        assert_eq!(single_credential(None, None), Ok(None));
        let e = single_credential(Some("a"), Some("b")).unwrap_err();
        assert_eq!(e, JwtError::ConflictingCredentials);
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(JwtError::NoTenant.status(), http::StatusCode::UNAUTHORIZED);
    }
}
