//! One pool ([`Pool`]): its configuration, its backends (pingora-load-balancing `Backends`
//! for membership and active health, [`BackendState`] for the rest), and the refresh passes
//! that keep them current.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pingora::lb::Backends;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;

use super::backend::{BackendState, Lease};
use super::discovery::{read_index, Entry, Resolve};
use super::ejection::now_ms;
use super::health::readiness_check;
use super::select::choose;
use super::snapshot::{BackendSnapshot, PoolSnapshot};
use crate::config::PoolConfig;

/// A pool of backends.
pub struct Pool {
    /// Its configuration.
    pub config: PoolConfig,
    lb: Backends,
    members: RwLock<Arc<Vec<Arc<BackendState>>>>,
    turn: AtomicUsize,
}

/// Whether a pool serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Serves {
    /// No.
    No,
    /// Yes: some backend reports it READY, or the pool's configuration says every backend
    /// serves it.
    Yes,
}

impl Pool {
    /// A pool for `config` with no members until the first [`Pool::refresh_members`].
    ///
    /// # Errors
    /// When the health check cannot be built (it cannot, for a validated configuration).
    pub(super) fn new(config: PoolConfig) -> anyhow::Result<Self> {
        let mut lb = Backends::new(Box::new(Resolve {
            entries: config.backends.clone(),
            pool: config.name.clone(),
        }));
        let check = readiness_check(&config.health)
            .map_err(|e| anyhow::anyhow!("pool '{}': health check: {e}", config.name))?;
        lb.set_health_check(Box::new(check));
        Ok(Pool {
            config,
            lb,
            members: RwLock::new(Arc::new(Vec::new())),
            turn: AtomicUsize::new(0),
        })
    }

    /// The current backends.
    pub(super) fn members(&self) -> Arc<Vec<Arc<BackendState>>> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `backend` passes the active health check now (pingora-load-balancing's view).
    fn healthy(&self, backend: &BackendState) -> bool {
        self.lb.ready(&backend.lb)
    }

    /// Whether the pool serves `model` at all (healthy or not).
    pub(super) fn serves(&self, model: &str) -> Serves {
        if let Some(models) = &self.config.models {
            if !models.iter().any(|m| m == model) {
                return Serves::No;
            }
        }
        if !self.config.discover || self.members().iter().any(|b| b.reports_ready(model)) {
            Serves::Yes
        } else {
            Serves::No
        }
    }

    /// Whether `backend` may get a request for `model` (`None`: no model, e.g. a health
    /// route): healthy, not ejected, and serving the model.
    fn eligible(&self, backend: &BackendState, model: Option<&str>, now: u64) -> bool {
        self.healthy(backend)
            && !backend.ejection.is_ejected(now)
            && match model {
                Some(m) if self.config.discover => backend.reports_ready(m),
                _ => true,
            }
    }

    /// A backend for `model` chosen by the pool's policy among the eligible ones, other than
    /// `exclude` when another is eligible.
    pub(super) fn pick(&self, model: Option<&str>, exclude: Option<SocketAddr>) -> Option<Lease> {
        let members = self.members();
        let now = now_ms();
        let eligible: Vec<&Arc<BackendState>> = members
            .iter()
            .filter(|b| self.eligible(b, model, now))
            .collect();
        let others: Vec<&Arc<BackendState>> = eligible
            .iter()
            .copied()
            .filter(|b| Some(b.addr) != exclude)
            .collect();
        let from = if others.is_empty() {
            &eligible
        } else {
            &others
        };
        choose(self.config.policy, from, &self.turn).map(|i| from[i].lease())
    }

    /// Whether any backend other than `exclude` is eligible for `model`.
    pub(super) fn has_eligible(&self, model: Option<&str>, exclude: Option<SocketAddr>) -> bool {
        let now = now_ms();
        self.members()
            .iter()
            .any(|b| Some(b.addr) != exclude && self.eligible(b, model, now))
    }

    /// Re-resolve the backends' addresses; backends that remain keep their state.
    pub(super) async fn refresh_members(&self) {
        if let Err(e) = self.lb.update(|_| {}).await {
            tracing::warn!(pool = %self.config.name, error = %e, "backend discovery failed");
            return;
        }
        let current = self.lb.get_backend();
        let old: HashMap<SocketAddr, Arc<BackendState>> =
            self.members().iter().map(|b| (b.addr, b.clone())).collect();
        let mut next = Vec::with_capacity(current.len());
        for backend in current.iter() {
            let PingoraAddr::Inet(addr) = backend.addr else {
                continue;
            };
            let state = match old.get(&addr) {
                Some(s) if s.weight == backend.weight => s.clone(),
                _ => {
                    let entry = backend
                        .ext
                        .get::<Entry>()
                        .map_or_else(|| addr.to_string(), |e| e.0.clone());
                    Arc::new(BackendState::new(
                        backend.clone(),
                        addr,
                        entry,
                        &self.config.ejection,
                    ))
                }
            };
            next.push(state);
        }
        if next.len() != old.len() || next.iter().any(|b| !old.contains_key(&b.addr)) {
            tracing::info!(pool = %self.config.name, backends = ?next.iter().map(|b| b.addr).collect::<Vec<_>>(), "pool membership");
        }
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// One active health-check pass over every backend (concurrently).
    pub(super) async fn check_health(&self) {
        self.lb.run_health_check(true).await;
    }

    /// Read every backend's repository index (concurrently); a backend whose read fails keeps
    /// the models it last reported, and the failure becomes its last error.
    ///
    /// A pool without discovery and without a static model list (the `[upstream] backends`
    /// shorthand: it routes every model) still reads the indexes, only so that `GET /v2` and
    /// `POST /v2/repository/index` can list what its backends serve; there a failed read is no
    /// error (a backend need not implement the model-repository extension).
    pub(super) async fn discover_models(&self, client: &reqwest::Client, timeout: Duration) {
        let list_only = !self.config.discover;
        if list_only && self.config.models.is_some() {
            return;
        }
        let members = self.members();
        let reads = members.iter().map(|b| async move {
            match read_index(client, b.addr, timeout).await {
                Ok(models) => {
                    if b.models().as_deref() != Some(&models) {
                        tracing::info!(pool = %self.config.name, backend = %b.addr, ?models, "backend models");
                    }
                    b.set_models(models);
                }
                Err(e) if list_only => {
                    tracing::debug!(pool = %self.config.name, backend = %b.addr, error = %e, "no repository index to list");
                }
                Err(e) => b.set_error(e),
            }
        });
        futures_util::future::join_all(reads).await;
    }

    /// Every model some backend reports READY (within the static list, when there is one),
    /// or the static list itself without discovery; `ready`: some eligible backend serves it
    /// now.
    pub(super) fn models(&self) -> Vec<(String, bool)> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        let members = self.members();
        if self.config.discover || self.config.models.is_none() {
            for b in members.iter() {
                if let Some(m) = b.models() {
                    names.extend(
                        m.iter()
                            .filter(|n| {
                                self.config
                                    .models
                                    .as_ref()
                                    .is_none_or(|allowed| allowed.contains(n))
                            })
                            .cloned(),
                    );
                }
            }
        } else if let Some(m) = &self.config.models {
            names.extend(m.iter().cloned());
        }
        names
            .into_iter()
            .map(|n| {
                let ready = self.has_eligible(Some(&n), None);
                (n, ready)
            })
            .collect()
    }

    /// What `GET /admin/v1/pools` shows of this pool.
    pub(super) fn snapshot(&self) -> PoolSnapshot {
        let now = now_ms();
        PoolSnapshot {
            name: self.config.name.clone(),
            policy: self.config.policy,
            discover: self.config.discover,
            models: self.config.models.clone(),
            backends: self
                .members()
                .iter()
                .map(|b| BackendSnapshot {
                    address: b.addr.to_string(),
                    entry: b.entry.clone(),
                    weight: b.weight,
                    healthy: self.healthy(b),
                    ejected_for_ms: b
                        .ejection
                        .remaining(now)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    models: b.models().map(|m| m.iter().cloned().collect()),
                    in_flight: b.in_flight(),
                    requests: b.requests(),
                    ejections: b.ejection.count(),
                    last_error: b.last_error(),
                })
                .collect(),
        }
    }
}
