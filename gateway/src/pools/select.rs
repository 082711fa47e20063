//! The selection policies ([`Policy`]) over the backends eligible for a request.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rand::Rng;

use super::backend::BackendState;
use crate::config::Policy;

/// The index in `eligible` of the backend `policy` chooses; `None` when `eligible` is empty.
/// `turn` is the pool's round-robin counter.
pub(super) fn choose(
    policy: Policy,
    eligible: &[&Arc<BackendState>],
    turn: &AtomicUsize,
) -> Option<usize> {
    let n = eligible.len();
    match n {
        0 => None,
        1 => Some(0),
        _ => Some(match policy {
            Policy::RoundRobin => turn.fetch_add(1, Relaxed) % n,
            Policy::P2c => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if eligible[b].in_flight() < eligible[a].in_flight() {
                    b
                } else {
                    a
                }
            }
            Policy::Weighted => {
                let total: usize = eligible.iter().map(|b| b.weight).sum();
                let mut x = rand::rng().random_range(0..total.max(1));
                eligible
                    .iter()
                    .position(|b| {
                        if x < b.weight {
                            true
                        } else {
                            x -= b.weight;
                            false
                        }
                    })
                    .unwrap_or(n - 1)
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EjectionConfig;
    use pingora::lb::Backend;

    fn backend(port: u16, weight: usize) -> Arc<BackendState> {
        let addr = format!("127.0.0.1:{port}");
        let lb = Backend::new_with_weight(&addr, weight).unwrap();
        Arc::new(BackendState::new(
            lb,
            addr.parse().unwrap(),
            addr,
            &EjectionConfig::default(),
        ))
    }

    #[test]
    fn round_robin_takes_turns() {
        let (a, b) = (backend(1, 1), backend(2, 1));
        let turn = AtomicUsize::new(0);
        let picks: Vec<_> = (0..4)
            .map(|_| choose(Policy::RoundRobin, &[&a, &b], &turn).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        assert_eq!(choose(Policy::RoundRobin, &[], &turn), None);
    }

    #[test]
    fn p2c_never_picks_the_busier_of_two() {
        let (a, b) = (backend(1, 1), backend(2, 1));
        let _busy: Vec<_> = (0..3).map(|_| a.lease()).collect();
        let turn = AtomicUsize::new(0);
        for _ in 0..200 {
            assert_eq!(choose(Policy::P2c, &[&a, &b], &turn), Some(1));
        }
        // Three backends, one idle: it wins whenever drawn, so it gets well over a third.
        let c = backend(3, 1);
        let _busy_b: Vec<_> = (0..3).map(|_| b.lease()).collect();
        let idle = (0..3000)
            .filter(|_| choose(Policy::P2c, &[&a, &b, &c], &turn) == Some(2))
            .count();
        // Drawn in a pair with probability 2/3 (exactly, for pairs of distinct backends).
        assert!((1800..2200).contains(&idle), "{idle}");
    }

    #[test]
    fn weighted_follows_the_weights() {
        let (a, b) = (backend(1, 1), backend(2, 3));
        let turn = AtomicUsize::new(0);
        let heavy = (0..4000)
            .filter(|_| choose(Policy::Weighted, &[&a, &b], &turn) == Some(1))
            .count();
        assert!((2800..3200).contains(&heavy), "{heavy}");
    }
}
