//! The gateway's own health, served on the metrics listener beside `/metrics` (never through
//! the proxied `/v2/health/*`, which reports the backends): `GET /livez` answers 200 while the
//! process serves HTTP at all, `GET /readyz` answers 200 once the data listener accepts
//! connections and 503 again from the moment a graceful shutdown begins, so that a load
//! balancer or a Kubernetes readiness probe stops sending new connections while the gateway
//! drains (the `/livez` and `/readyz` names follow the Kubernetes API server's own endpoints).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Where the gateway is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The data listener has not accepted a connection yet: 503 `{"status":"starting"}`.
    Starting,
    /// Serving: 200 `{"status":"ready"}`.
    Ready,
    /// A graceful shutdown has begun: 503 `{"status":"draining"}`.
    Draining,
}

impl Phase {
    /// The word `/readyz` puts in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// The gateway's readiness, shared by the readiness announcer (which sets it) and the metrics
/// listener (which reports it). Cloning shares the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// A new readiness in [`Phase::Starting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The data listener accepts connections. Ignored once draining (a shutdown is final).
    pub fn mark_ready(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A graceful shutdown has begun.
    pub fn mark_draining(&self) {
        self.0.store(2, Ordering::Release);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_then_ready_then_draining_for_good() {
        let r = Readiness::new();
        let shared = r.clone();
        assert_eq!(r.phase(), Phase::Starting);
        shared.mark_ready();
        assert_eq!(r.phase(), Phase::Ready);
        shared.mark_draining();
        assert_eq!(r.phase(), Phase::Draining);
        r.mark_ready();
        assert_eq!(r.phase(), Phase::Draining);
        assert_eq!(Phase::Draining.as_str(), "draining");
    }
}
