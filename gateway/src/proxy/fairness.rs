//! What the gateway tells the backend's batcher about a request, without telling it who the
//! tenant is: an opaque fairness key (HMAC-SHA256 of the tenant id, RFC 2104, truncated to
//! 128 bits as RFC 2104 §5 allows) and the shared secret that makes the backend trust it
//! (ARCHITECTURE.md, "Tenant-fair batching"). Whatever a client sent under these header names
//! is removed first, so a client can neither forge a key nor learn the secret.

use hmac::{Hmac, Mac};
use http::HeaderValue;
use maas_protocol::{FAIRNESS_KEY, GATEWAY_SECRET, PRIORITY};
use pingora::http::RequestHeader;
use sha2::Sha256;
use uuid::Uuid;

/// The gateway's fairness settings (`[upstream] gateway_secret`, `fairness_hmac_key`); both set
/// or the headers are not sent.
#[derive(Clone)]
pub struct FairnessHeaders {
    /// Sent in `x-maas-gateway-secret`; the backends' `--gateway-secret`.
    secret: HeaderValue,
    /// The HMAC key, known to the gateway only.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for FairnessHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FairnessHeaders(..)")
    }
}

impl FairnessHeaders {
    /// The settings, `None` when either is empty (fairness headers off).
    pub fn new(secret: &str, hmac_key: &str) -> Option<FairnessHeaders> {
        if secret.is_empty() || hmac_key.is_empty() {
            return None;
        }
        let mac = Hmac::<Sha256>::new_from_slice(hmac_key.as_bytes()).ok()?;
        Some(FairnessHeaders {
            secret: HeaderValue::from_str(secret).ok()?,
            mac,
        })
    }

    /// The fairness key of `tenant`: 32 hex digits, the first 16 bytes of
    /// HMAC-SHA256(hmac_key, tenant id's 16 bytes).
    pub fn key_of(&self, tenant: Uuid) -> String {
        let mut mac = self.mac.clone();
        mac.update(tenant.as_bytes());
        let tag = mac.finalize().into_bytes();
        hex::encode(&tag[..16])
    }
}

/// Removes any fairness header the client sent, then, with `settings` and a known `tenant`
/// (its id and its plan's priority level, `plans.priority`), sets the tenant's fairness key,
/// its priority level and the shared secret.
pub(super) fn set_fairness_headers(
    request: &mut RequestHeader,
    settings: Option<&FairnessHeaders>,
    tenant: Option<(Uuid, i16)>,
) -> pingora::Result<()> {
    request.remove_header(FAIRNESS_KEY);
    request.remove_header(PRIORITY);
    request.remove_header(GATEWAY_SECRET);
    if let (Some(settings), Some((tenant, priority))) = (settings, tenant) {
        request.insert_header(FAIRNESS_KEY, settings.key_of(tenant))?;
        request.insert_header(PRIORITY, HeaderValue::from(priority))?;
        request.insert_header(GATEWAY_SECRET, settings.secret.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_keyed_hashes_and_client_headers_are_replaced() {
        let settings = FairnessHeaders::new("shared", "hmac key").unwrap();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let key = settings.key_of(a);
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(key, settings.key_of(a));
        assert_ne!(key, settings.key_of(b));
        // Another HMAC key gives another key: it is not a plain hash of the id.
        let other = FairnessHeaders::new("shared", "another").unwrap();
        assert_ne!(key, other.key_of(a));
        assert!(FairnessHeaders::new("", "k").is_none());

        let mut request = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        request.insert_header(FAIRNESS_KEY, "f".repeat(32)).unwrap();
        request.insert_header(PRIORITY, "16").unwrap();
        request.insert_header(GATEWAY_SECRET, "guess").unwrap();
        set_fairness_headers(&mut request, Some(&settings), Some((a, 2))).unwrap();
        assert_eq!(request.headers[FAIRNESS_KEY], key.as_str());
        assert_eq!(request.headers[GATEWAY_SECRET], "shared");
        assert_eq!(request.headers[PRIORITY], "2");
        // Without a tenant (or settings) nothing of the client's reaches the backend.
        set_fairness_headers(&mut request, Some(&settings), None).unwrap();
        assert!(request.headers.get(FAIRNESS_KEY).is_none());
        assert!(request.headers.get(GATEWAY_SECRET).is_none());
        assert!(request.headers.get(PRIORITY).is_none());
    }
}
