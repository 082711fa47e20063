//! One backend of a pool as the gateway sees it ([`BackendState`]): its address, the models it
//! reports READY, requests in flight through this gateway, passive-health state and last
//! error; and the [`Lease`] a request holds on it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use pingora::lb::Backend;

use super::ejection::{now_ms, Ejection};
use crate::config::EjectionConfig;

/// One backend address of a pool (a DNS name gives one per address it resolves to).
#[derive(Debug)]
pub struct BackendState {
    /// The address requests go to.
    pub addr: SocketAddr,
    /// The `backends` entry it came from (`host:port` as configured).
    pub entry: String,
    /// Weight under `policy = "weighted"`.
    pub weight: usize,
    /// The same backend as pingora-load-balancing's health registry knows it.
    pub(super) lb: Backend,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// READY models from the last repository index read; `None` before the first one.
    models: RwLock<Option<Arc<BTreeSet<String>>>>,
    pub(super) ejection: Ejection,
    ejection_config: EjectionConfig,
    last_error: Mutex<Option<String>>,
}

impl BackendState {
    /// A backend at `addr` from configured `entry`, not ejected, no models known yet.
    pub(super) fn new(
        lb: Backend,
        addr: SocketAddr,
        entry: String,
        ejection: &EjectionConfig,
    ) -> Self {
        BackendState {
            addr,
            entry,
            weight: lb.weight,
            lb,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            models: RwLock::new(None),
            ejection: Ejection::new(ejection),
            ejection_config: ejection.clone(),
            last_error: Mutex::new(None),
        }
    }

    /// Requests forwarded to it through this gateway and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Requests forwarded to it so far (each try counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// The READY models of its last index read (`None`: never read).
    pub fn models(&self) -> Option<Arc<BTreeSet<String>>> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the last index read listed `model` READY.
    pub fn reports_ready(&self, model: &str) -> bool {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|m| m.contains(model))
    }

    pub(super) fn set_models(&self, models: BTreeSet<String>) {
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(models));
    }

    /// The last error seen on it (connect, reset, 5xx, failed index read), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// A request to it got an answer below 500.
    pub fn record_success(&self) {
        self.ejection.success(&self.ejection_config);
    }

    /// A request to it failed (connect failure, reset, 5xx): counts towards passive ejection
    /// (`definitive`, a refused connection, ejects at once), and `error` becomes its last error.
    pub fn record_failure(&self, error: String, definitive: bool) {
        if let Some(cooldown) = self
            .ejection
            .failure(&self.ejection_config, now_ms(), definitive)
        {
            tracing::warn!(backend = %self.addr, ?cooldown, %error, "backend ejected");
        }
        self.set_error(error);
    }

    /// Count a new request on it.
    pub(super) fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        Lease(self.clone())
    }
}

/// A request's hold on the backend chosen for it: counts as in flight until dropped.
#[derive(Debug)]
pub struct Lease(Arc<BackendState>);

impl Lease {
    /// The backend.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
