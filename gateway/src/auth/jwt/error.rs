//! Why a JWT was refused.

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
