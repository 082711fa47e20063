//! The format of the bearer secrets this gateway issues, API keys and tenant admin tokens
//! ([`SecretKind`]): generation, hashing, the well-formed check and the display prefix. Where
//! they are stored is `store`; who issues them is the admin API (`admin::keys`).
//!
//! A key is `maas_` followed by 48 lowercase hex digits: 24 bytes (192 bits) from the operating
//! system's random source. Only the SHA-256 of the whole key (hex, lowercase) is stored
//! (`api_keys.secret_sha256`), with a non-secret display prefix (the first 12 characters).
//! A tenant admin token is the same with the literal start `maas_ta_` (`tenant_admins`); the two
//! shapes never overlap (`_` is not a hex digit, and the lengths differ).

use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// Literal start of every API key.
pub const KEY_PREFIX: &str = "maas_";
/// Random bytes in a key (192 bits).
pub const KEY_RANDOM_BYTES: usize = 24;
/// Length of a key: prefix plus two hex digits per random byte (53).
#[cfg(test)]
pub const KEY_LEN: usize = KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES;
/// Length of the display prefix stored in `api_keys.prefix`.
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// A newly generated key: the secret (shown once) and what is stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The whole key, given to the client once and never stored.
    pub secret: String,
    /// First [`DISPLAY_PREFIX_LEN`] characters of the secret.
    pub prefix: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
}

/// A kind of bearer secret: its literal start, then [`KEY_RANDOM_BYTES`] random bytes as
/// lowercase hex. The display prefix is the literal start plus 7 hex digits (12 characters
/// for an API key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretKind {
    /// Literal start of every secret of this kind.
    pub prefix: &'static str,
}

/// API keys (`maas_` + 48 hex).
pub const API_KEY: SecretKind = SecretKind { prefix: KEY_PREFIX };
/// Tenant admin tokens (`maas_ta_` + 48 hex; `tenant_admins.token_sha256`).
pub const TENANT_ADMIN_TOKEN: SecretKind = SecretKind { prefix: "maas_ta_" };

/// Hex digits of the random part shown in a display prefix.
const DISPLAY_HEX_DIGITS: usize = DISPLAY_PREFIX_LEN - KEY_PREFIX.len();

impl SecretKind {
    /// Length of a secret of this kind: the literal start plus two hex digits per random byte.
    pub const fn secret_len(&self) -> usize {
        self.prefix.len() + 2 * KEY_RANDOM_BYTES
    }

    /// Generate a secret from the OS random source.
    ///
    /// # Errors
    /// When the OS random source fails (no fallback to a weaker generator).
    pub fn generate(&self) -> anyhow::Result<NewKey> {
        let mut bytes = [0u8; KEY_RANDOM_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| anyhow::anyhow!("OS random source failed: {e}"))?;
        let secret = format!("{}{}", self.prefix, hex::encode(bytes));
        Ok(NewKey {
            prefix: self.display_prefix(&secret).to_string(),
            secret_sha256: hash_key(&secret),
            secret,
        })
    }

    /// Whether `secret` has the shape of this kind (literal start + 48 lowercase hex). Checked
    /// before any lookup so that garbage never reaches the cache or the database.
    pub fn is_well_formed(&self, secret: &str) -> bool {
        secret.len() == self.secret_len()
            && secret.starts_with(self.prefix)
            && secret[self.prefix.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The non-secret display prefix of `secret`: the literal start plus 7 characters.
    pub fn display_prefix<'a>(&self, secret: &'a str) -> &'a str {
        &secret[..(self.prefix.len() + DISPLAY_HEX_DIGITS).min(secret.len())]
    }
}

/// Generate an API key from the OS random source ([`API_KEY`]).
///
/// # Errors
/// When the OS random source fails (no fallback to a weaker generator).
pub fn generate_key() -> anyhow::Result<NewKey> {
    API_KEY.generate()
}

/// SHA-256 of the key's UTF-8 bytes, 64 lowercase hex digits.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` has the shape of a key this gateway issues (`maas_` + 48 lowercase hex).
/// Checked before any lookup so that garbage never reaches the cache or the database.
pub fn is_well_formed(secret: &str) -> bool {
    API_KEY.is_well_formed(secret)
}

/// The non-secret display prefix of a key (its first [`DISPLAY_PREFIX_LEN`] characters).
#[cfg(test)]
pub fn display_prefix(secret: &str) -> &str {
    API_KEY.display_prefix(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate_key().unwrap();
        assert_eq!(k.secret.len(), 53);
        assert!(k.secret.starts_with("maas_"));
        assert!(is_well_formed(&k.secret));
        assert_eq!(k.prefix, &k.secret[..12]);
        assert_eq!(k.secret_sha256.len(), 64);
        assert!(k
            .secret_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(generate_key().unwrap().secret, k.secret);
    }

    #[test]
    fn hash_is_sha256_hex_lowercase() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let good = format!("maas_{}", "0123456789abcdef".repeat(3));
        assert!(is_well_formed(&good));
        assert!(!is_well_formed(&good.to_uppercase()));
        assert!(!is_well_formed(&good[..52]));
        assert!(!is_well_formed(&format!("{good}0")));
        assert!(!is_well_formed(&good.replace("maas_", "mass_")));
        assert!(!is_well_formed(&good.replacen('0', "g", 1)));
        assert!(!is_well_formed(""));
        assert!(!is_well_formed("maas_é"));
        assert_eq!(display_prefix("abc"), "abc");
    }

    #[test]
    fn tenant_admin_tokens_are_their_own_shape() {
        let t = TENANT_ADMIN_TOKEN.generate().unwrap();
        assert_eq!(t.secret.len(), 56);
        assert!(t.secret.starts_with("maas_ta_"));
        assert_eq!(t.prefix, &t.secret[..15]);
        assert_eq!(t.secret_sha256, hash_key(&t.secret));
        assert!(TENANT_ADMIN_TOKEN.is_well_formed(&t.secret));
        assert!(
            !is_well_formed(&t.secret),
            "a tenant admin token is no API key"
        );
        let k = generate_key().unwrap();
        assert!(!TENANT_ADMIN_TOKEN.is_well_formed(&k.secret));
        assert_eq!(API_KEY.secret_len(), KEY_LEN);
    }
}
