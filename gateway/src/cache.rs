//! A small TTL cache shared by the authenticator and the limit resolver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct CacheEntry<T> {
    at: Instant,
    record: Option<Arc<T>>,
}

/// A TTL map of lookups, positive (`Some`) and negative (`None`), bounded in size: when full,
/// expired entries are dropped, then everything.
pub struct TtlCache<T> {
    map: Mutex<HashMap<String, CacheEntry<T>>>,
    ttl: Duration,
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
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(verdict)` while a fresh entry exists under `key`.
    pub fn get(&self, key: &str) -> Option<Option<Arc<T>>> {
        let found = self
            .lock()
            .get(key)
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.record.clone());
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
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
            let ttl = self.ttl;
            map.retain(|_, e| e.at.elapsed() < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(
            key,
            CacheEntry {
                at: Instant::now(),
                record,
            },
        );
    }

    /// Drop the positive entries `pred` selects, and every negative one.
    pub fn evict(&self, pred: impl Fn(&T) -> bool) {
        self.lock()
            .retain(|_, e| e.record.as_deref().is_some_and(|r| !pred(r)));
    }

    /// Forget everything.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Entries held, fresh or not.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
