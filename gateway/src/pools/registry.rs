//! Every pool of the gateway ([`Pools`]): which pool and backend a request for a model goes
//! to, what models exist, and the state snapshot.

use std::net::SocketAddr;
use std::sync::Arc;

use super::backend::Lease;
use super::pool::{Pool, Serves};
use super::snapshot::PoolSnapshot;
use crate::config::GatewayConfig;

/// Why no backend was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickError {
    /// No pool serves the model (no backend reports it READY, none is configured for it).
    UnknownModel,
    /// Pools serve the model, but none of their backends is healthy and not ejected.
    NoHealthyBackend,
}

/// One row of the gateway's repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Model name.
    pub name: String,
    /// Whether a healthy backend serves it now.
    pub ready: bool,
}

/// The pools, in configuration order.
pub struct Pools {
    pools: Vec<Arc<Pool>>,
}

impl Pools {
    /// The pools of `config` (`[[pools]]`, or the `[upstream]` pool), with no members until
    /// the first refresh ([`Pools::refresh_once`]).
    ///
    /// # Errors
    /// When a pool's health check cannot be built.
    pub fn from_config(config: &GatewayConfig) -> anyhow::Result<Self> {
        let pools = config
            .effective_pools()
            .into_iter()
            .map(|c| Pool::new(c).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Pools { pools })
    }

    pub(super) fn all(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Whether `model` can be routed now: `Ok` when a backend is eligible.
    ///
    /// # Errors
    /// [`PickError::UnknownModel`] when no pool serves it; [`PickError::NoHealthyBackend`] when
    /// pools do but none of their backends is eligible.
    pub fn check(&self, model: Option<&str>) -> Result<(), PickError> {
        let serving = self.serving(model);
        if serving.is_empty() {
            return Err(PickError::UnknownModel);
        }
        if serving.iter().any(|p| p.has_eligible(model, None)) {
            Ok(())
        } else {
            Err(PickError::NoHealthyBackend)
        }
    }

    /// The pools serving `model` (every pool for `None`).
    fn serving(&self, model: Option<&str>) -> Vec<&Arc<Pool>> {
        self.pools
            .iter()
            .filter(|p| model.is_none_or(|m| p.serves(m) == Serves::Yes))
            .collect()
    }

    /// A backend for `model` (`None`: any, for health routes), other than `exclude` (the one
    /// that just failed) when another is eligible. The first pool serving the model with an
    /// eligible backend chooses by its policy.
    ///
    /// # Errors
    /// As [`Pools::check`].
    pub fn pick(
        &self,
        model: Option<&str>,
        exclude: Option<SocketAddr>,
    ) -> Result<Lease, PickError> {
        let serving = self.serving(model);
        if serving.is_empty() {
            return Err(PickError::UnknownModel);
        }
        let with_other = serving
            .iter()
            .find(|p| p.has_eligible(model, exclude))
            .or_else(|| serving.iter().find(|p| p.has_eligible(model, None)));
        with_other
            .and_then(|p| p.pick(model, exclude))
            .ok_or(PickError::NoHealthyBackend)
    }

    /// Whether a backend other than `exclude` is eligible for `model` (a retry has somewhere
    /// to go).
    pub fn has_other(&self, model: Option<&str>, exclude: SocketAddr) -> bool {
        self.serving(model)
            .iter()
            .any(|p| p.has_eligible(model, Some(exclude)))
    }

    /// Every model the pools serve, sorted by name, each once.
    pub fn models(&self) -> Vec<ModelEntry> {
        let mut out: std::collections::BTreeMap<String, bool> = Default::default();
        for pool in &self.pools {
            for (name, ready) in pool.models() {
                *out.entry(name).or_default() |= ready;
            }
        }
        out.into_iter()
            .map(|(name, ready)| ModelEntry { name, ready })
            .collect()
    }

    /// The state of every pool and backend now.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.pools.iter().map(|p| p.snapshot()).collect()
    }

    /// One refresh of everything: addresses, then repository indexes (no health check: a
    /// backend starts healthy, as in pingora-load-balancing). Run before serving, so the first
    /// requests find the models.
    pub async fn refresh_once(&self, client: &reqwest::Client, timeout: std::time::Duration) {
        for pool in &self.pools {
            pool.refresh_members().await;
            pool.discover_models(client, timeout).await;
        }
    }
}
