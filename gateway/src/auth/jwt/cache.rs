//! Verified tokens, by the SHA-256 of the token, until the earlier of the token's `exp` and the
//! cache TTL, so a request with a known token costs a hash and a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Cached<T> {
    value: Arc<T>,
    until: Instant,
}

/// A bounded map from a token's SHA-256 to what verifying it gave.
pub(super) struct TokenCache<T> {
    entries: Mutex<HashMap<[u8; 32], Cached<T>>>,
    ttl: Duration,
    capacity: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<T> TokenCache<T> {
    /// Entries live at most `ttl`; at most `capacity` of them (at least 1).
    pub(super) fn new(ttl: Duration, capacity: usize) -> Self {
        TokenCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The live entry for `digest`, if any.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Option<Arc<T>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(digest)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.value.clone())
    }

    /// Keep `value` for `digest` until the earlier of the TTL and `expires_at` (seconds since
    /// the Unix epoch); not at all when that is now or past. A full cache drops its expired
    /// entries, then everything if that is not enough.
    pub(super) fn remember(&self, digest: [u8; 32], value: &Arc<T>, expires_at: u64) {
        let left = Duration::from_secs(expires_at.saturating_sub(unix_now()));
        let ttl = self.ttl.min(left);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, c| c.until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Cached {
                value: value.clone(),
                until: now + ttl,
            },
        );
    }
}
