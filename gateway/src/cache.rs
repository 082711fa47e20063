//! A small TTL cache shared by the authenticator and the limit resolver, with
//! stale-if-error (RFC 5861 section 4): an entry past its TTL is still served, for up to a
//! bound, while the source of truth (PostgreSQL) cannot be reached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct CacheEntry<T> {
    at: Instant,
    /// False once [`TtlCache::clear`] marked it outdated: never fresh again, still usable
    /// as a stale answer.
    fresh: bool,
    record: Option<Arc<T>>,
}

/// A TTL map of lookups, positive (`Some`) and negative (`None`), bounded in size: when full,
/// entries too old even to be served stale are dropped, then everything.
pub struct TtlCache<T> {
    map: Mutex<HashMap<String, CacheEntry<T>>>,
    ttl: Duration,
    stale_if_error: Duration,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<T> TtlCache<T> {
    /// An empty cache whose entries live `ttl` (zero: nothing is cached), at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            ttl,
            stale_if_error: Duration::ZERO,
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The same, keeping each entry `bound` past its TTL for [`TtlCache::get_stale`].
    pub fn with_stale_if_error(mut self, bound: Duration) -> Self {
        self.stale_if_error = bound;
        self
    }

    /// How long an entry is kept: its TTL and the stale-if-error bound.
    fn kept(&self) -> Duration {
        self.ttl.saturating_add(self.stale_if_error)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(verdict)` while a fresh entry exists under `key`.
    pub fn get(&self, key: &str) -> Option<Option<Arc<T>>> {
        let found = self
            .lock()
            .get(key)
            .filter(|e| e.fresh && e.at.elapsed() < self.ttl)
            .map(|e| e.record.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// `Some(verdict)` while an entry under `key`, fresh or not, is within its TTL plus the
    /// stale-if-error bound: the last good answer, for when the source cannot be reached.
    pub fn get_stale(&self, key: &str) -> Option<Option<Arc<T>>> {
        let kept = self.kept();
        self.lock()
            .get(key)
            .filter(|e| e.at.elapsed() < kept)
            .map(|e| e.record.clone())
    }

    /// Lookups so far: `(hits, misses)` ([`TtlCache::get`] calls that found a fresh entry, and
    /// those that did not).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Remember `record` (`None`: known not to exist) under `key`.
    pub fn insert(&self, key: String, record: Option<Arc<T>>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            let kept = self.kept();
            map.retain(|_, e| e.at.elapsed() < kept);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(
            key,
            CacheEntry {
                at: Instant::now(),
                fresh: true,
                record,
            },
        );
    }

    /// Drop the positive entries `pred` selects, and every negative one.
    pub fn evict(&self, pred: impl Fn(&T) -> bool) {
        self.lock()
            .retain(|_, e| e.record.as_deref().is_some_and(|r| !pred(r)));
    }

    /// Mark every entry outdated (announcements may have been missed): none is fresh any
    /// more, each is still a stale answer for [`TtlCache::get_stale`].
    pub fn clear(&self) {
        for e in self.lock().values_mut() {
            e.fresh = false;
        }
    }

    /// Entries held, fresh or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_outlive_the_ttl_up_to_the_bound() {
        let c: TtlCache<u32> = TtlCache::new(Duration::from_millis(30), 10)
            .with_stale_if_error(Duration::from_millis(60));
        c.insert("a".into(), Some(Arc::new(1)));
        c.insert("gone".into(), None);
        assert_eq!(c.get("a").flatten().as_deref(), Some(&1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get("a").is_none(), "past the TTL: a miss");
        assert_eq!(c.get_stale("a").flatten().as_deref(), Some(&1));
        assert_eq!(
            c.get_stale("gone"),
            Some(None),
            "a negative answer is served stale too"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get_stale("a").is_none(), "past the bound: gone");
    }

    #[test]
    fn clear_keeps_stale_answers_and_evict_drops_them() {
        let c: TtlCache<u32> =
            TtlCache::new(Duration::from_secs(60), 10).with_stale_if_error(Duration::from_secs(60));
        c.insert("a".into(), Some(Arc::new(1)));
        c.insert("b".into(), Some(Arc::new(2)));
        c.clear();
        assert!(c.get("a").is_none());
        assert_eq!(c.get_stale("a").flatten().as_deref(), Some(&1));
        c.evict(|v| *v == 1);
        assert!(c.get_stale("a").is_none());
        assert_eq!(c.get_stale("b").flatten().as_deref(), Some(&2));
    }
}
