//! The backend pool: plain-HTTP OIP v2 servers chosen round-robin.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fixed set of backends, chosen in turn (round-robin by an atomic counter).
#[derive(Debug)]
pub struct BackendPool {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl BackendPool {
    /// A pool over `backends`.
    ///
    /// # Panics
    /// When `backends` is empty (the configuration is validated before this).
    pub fn new(backends: Vec<SocketAddr>) -> Self {
        assert!(!backends.is_empty(), "a backend pool needs a backend");
        BackendPool {
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The next backend in turn.
    pub fn next(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.backends[i % self.backends.len()]
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let pool = BackendPool::new(vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| pool.next()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
        assert_eq!(pool.len(), 2);
    }
}
