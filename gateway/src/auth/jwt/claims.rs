//! What a token must claim (RFC 7519 section 4.1: `exp` always, `nbf` when present, `iss` and
//! `aud` when configured, each with `leeway_s`) and what it says ([`JwtIdentity`]: the tenant
//! claim, `sub`, the models claim).

use std::collections::HashSet;

use jsonwebtoken::{decode, Validation};
use serde_json::{Map, Value};

use super::error::JwtError;
use super::keys::VerificationKey;
use crate::config::JwtConfig;

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

/// The claim rules of `[auth.jwt]`.
pub(super) struct ClaimRules {
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    tenant_claim: String,
    models_claim: String,
}

impl ClaimRules {
    /// The rules `config` sets.
    pub(super) fn new(config: &JwtConfig) -> Self {
        ClaimRules {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            tenant_claim: config.tenant_claim.clone(),
            models_claim: config.models_claim.clone(),
        }
    }

    /// Check `token`'s signature with `key` and its claims against these rules.
    ///
    /// # Errors
    /// [`JwtError::Invalid`] naming the failed check, [`JwtError::NoTenant`],
    /// [`JwtError::BadModelsClaim`].
    pub(super) fn check(
        &self,
        token: &str,
        key: &VerificationKey,
    ) -> Result<JwtIdentity, JwtError> {
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
        self.identity(&data.claims)
    }

    /// Who the verified `claims` name.
    fn identity(&self, claims: &Map<String, Value>) -> Result<JwtIdentity, JwtError> {
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
