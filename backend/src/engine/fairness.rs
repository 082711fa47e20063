//! Who a job is queued for, as far as the backend may know: an opaque fairness key and a
//! priority level, both set by the gateway (ARCHITECTURE.md, "Tenant-fair batching").
//!
//! The backend knows no tenants: the key is a keyed hash of the tenant id (HMAC-SHA256,
//! RFC 2104, computed by the gateway with a secret the backend never sees), so the backend can
//! tell two tenants' requests apart without learning who either is. Requests without a key
//! (from anything but the gateway) share [`FairnessKey::DEFAULT`].

use std::fmt;
use std::str::FromStr;

/// An opaque per-tenant key: the first 128 bits of the gateway's HMAC-SHA256 of the tenant
/// id, sent as 32 lowercase or uppercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FairnessKey(u128);

impl FairnessKey {
    /// The key shared by every request that carries none (or an untrusted one).
    pub const DEFAULT: FairnessKey = FairnessKey(0);

    /// The key of these 128 bits.
    #[cfg(test)]
    pub fn from_bits(bits: u128) -> FairnessKey {
        FairnessKey(bits)
    }
}

impl fmt::Display for FairnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a header value is not a fairness key or a priority level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FairnessParseError {
    /// Not exactly 32 hex digits.
    #[error("a fairness key is 32 hex digits")]
    Key,
    /// Not an integer in `1..=16`.
    #[error("a priority level is an integer from 1 to {}", Priority::MAX.0)]
    Priority,
}

impl FromStr for FairnessKey {
    type Err = FairnessParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FairnessParseError::Key);
        }
        u128::from_str_radix(s, 16)
            .map(FairnessKey)
            .map_err(|_| FairnessParseError::Key)
    }
}

/// A priority level from the tenant's plan (`plans.priority`): `1..=16`, higher is served
/// more. It is the key's weight in the batcher's deficit round robin: a key of level `p` is
/// given `p` rows per round, so under contention it gets `p` times the rows of a level-1 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(u8);

impl Priority {
    /// The level of requests without one, and of every plan by default.
    pub const DEFAULT: Priority = Priority(1);
    /// The highest level.
    pub const MAX: Priority = Priority(16);

    /// The level `level`, if it is in `1..=16`.
    pub fn new(level: u8) -> Option<Priority> {
        (1..=Self::MAX.0)
            .contains(&level)
            .then_some(Priority(level))
    }

    /// The level as a number, `1..=16`.
    pub const fn level(self) -> u8 {
        self.0
    }

    /// The key's weight in deficit round robin: rows per round.
    pub fn weight(self) -> i64 {
        i64::from(self.0)
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl FromStr for Priority {
    type Err = FairnessParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u8>()
            .ok()
            .and_then(Priority::new)
            .ok_or(FairnessParseError::Priority)
    }
}

/// What the batcher schedules a job by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fairness {
    /// Whose queue the job joins.
    pub key: FairnessKey,
    /// The key's weight.
    pub priority: Priority,
}

impl Default for FairnessKey {
    fn default() -> Self {
        FairnessKey::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_levels_parse_only_in_their_shape() {
        let key: FairnessKey = "0123456789abcdef0123456789ABCDEF".parse().unwrap();
        assert_eq!(key.to_string(), "0123456789abcdef0123456789abcdef");
        assert_eq!("abc".parse::<FairnessKey>(), Err(FairnessParseError::Key));
        assert_eq!(
            "+123456789abcdef0123456789abcdef".parse::<FairnessKey>(),
            Err(FairnessParseError::Key)
        );
        assert_eq!("3".parse::<Priority>().map(Priority::level), Ok(3));
        assert!("0".parse::<Priority>().is_err());
        assert!("17".parse::<Priority>().is_err());
    }
}
