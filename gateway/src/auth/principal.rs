//! Who a request is once its credential has been accepted ([`Principal`]), why one is refused
//! ([`Rejection`]), and the rules that decide it for an API key ([`KeyRecord::authorize`]).

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::GatewayError;
use crate::store::KeyRecord;

/// Who a request is, once its credential has been accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// `tenants.id`.
    pub tenant_id: Uuid,
    /// `api_keys.id`; `None` for a JWT.
    pub api_key_id: Option<Uuid>,
    /// `plans.priority` of the tenant's plan (1..=16), sent to the backends as
    /// `x-maas-priority`.
    pub priority: i16,
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
            api_key_id: Some(self.key_id),
            priority: self.plan_priority,
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::auth::api_keys;

    /// A live key of an active tenant whose secret is `k`.
    pub(in crate::auth) fn record() -> KeyRecord {
        KeyRecord {
            key_id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            secret_sha256: api_keys::hash_key("k"),
            allowed_models: None,
            expires_at: None,
            revoked_at: None,
            tenant_status: "active".into(),
            plan_priority: 1,
        }
    }

    #[test]
    fn authorize_rules() {
        let now = Utc::now();
        let h = api_keys::hash_key("k");
        let r = record();
        assert_eq!(
            r.authorize(&h, Some("m"), now).unwrap().api_key_id,
            Some(r.key_id)
        );
        assert_eq!(
            r.authorize(&api_keys::hash_key("other"), Some("m"), now),
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
}
