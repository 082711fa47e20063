//! The fairness key and priority level of a request, read from the gateway's headers
//! ([`maas_protocol::FAIRNESS_KEY`], [`maas_protocol::PRIORITY`]) only when the request carries
//! the shared [`GatewaySecret`]; otherwise (a client calling the backend directly, or a
//! forged header) the request shares the default key at the default level.

use axum::http::HeaderMap;
use maas_protocol::{FAIRNESS_KEY, GATEWAY_SECRET, PRIORITY};

use crate::engine::{Fairness, FairnessKey, Priority};

/// The secret the gateway sends in [`maas_protocol::GATEWAY_SECRET`] (`--gateway-secret`).
#[derive(Clone)]
pub struct GatewaySecret(Vec<u8>);

impl std::fmt::Debug for GatewaySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewaySecret(..)")
    }
}

impl GatewaySecret {
    /// The secret `secret`; `None` when empty (no header is then trusted).
    pub fn new(secret: &str) -> Option<GatewaySecret> {
        (!secret.is_empty()).then(|| GatewaySecret(secret.as_bytes().to_vec()))
    }

    /// Whether `given` is the secret, compared in time independent of where they differ.
    fn matches(&self, given: &[u8]) -> bool {
        given.len() == self.0.len()
            && given
                .iter()
                .zip(&self.0)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The request's fairness: the gateway's key and level when `secret` is set and the request
/// carries it, each falling back to the default when absent or malformed; the defaults
/// otherwise.
pub(super) fn fairness_of(headers: &HeaderMap, secret: Option<&GatewaySecret>) -> Fairness {
    let trusted = secret.is_some_and(|secret| {
        headers
            .get(GATEWAY_SECRET)
            .is_some_and(|given| secret.matches(given.as_bytes()))
    });
    if !trusted {
        return Fairness::default();
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Fairness {
        key: text(FAIRNESS_KEY)
            .and_then(|v| v.parse::<FairnessKey>().ok())
            .unwrap_or_default(),
        priority: text(PRIORITY)
            .and_then(|v| v.parse::<Priority>().ok())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_the_gateway_secret_makes_the_headers_count() {
        let secret = GatewaySecret::new("s3cret");
        let key = "000000000000000000000000000000ff";
        let sent = [
            (FAIRNESS_KEY, key),
            (PRIORITY, "3"),
            (GATEWAY_SECRET, "s3cret"),
        ];
        let honoured = fairness_of(&headers(&sent), secret.as_ref());
        assert_eq!(honoured.key, FairnessKey::from_bits(0xff));
        assert_eq!(honoured.priority.level(), 3);
        // Forged: a wrong secret, no secret, or a backend with none configured.
        let forged = [
            (FAIRNESS_KEY, key),
            (PRIORITY, "3"),
            (GATEWAY_SECRET, "guess"),
        ];
        assert_eq!(
            fairness_of(&headers(&forged), secret.as_ref()),
            Fairness::default()
        );
        assert_eq!(
            fairness_of(&headers(&sent[..2]), secret.as_ref()),
            Fairness::default()
        );
        assert_eq!(fairness_of(&headers(&sent), None), Fairness::default());
        assert!(GatewaySecret::new("").is_none());
    }
}
