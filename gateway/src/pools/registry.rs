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
        let mut serving = self.serving(model).peekable();
        if serving.peek().is_none() {
            return Err(PickError::UnknownModel);
        }
        if serving.any(|p| p.has_eligible(model, None)) {
            Ok(())
        } else {
            Err(PickError::NoHealthyBackend)
        }
    }

    /// The pools serving `model` (every pool for `None`), in configuration order; no
    /// allocation (this runs on every request).
    fn serving<'a>(
        &'a self,
        model: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Pool>> + Clone + 'a {
        self.pools
            .iter()
            .filter(move |p| model.is_none_or(|m| p.serves(m) == Serves::Yes))
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
        let mut serving = self.serving(model).peekable();
        if serving.peek().is_none() {
            return Err(PickError::UnknownModel);
        }
        let with_other = serving
            .clone()
            .find(|p| p.has_eligible(model, exclude))
            .or_else(|| serving.find(|p| p.has_eligible(model, None)));
        with_other
            .and_then(|p| p.pick(model, exclude))
            .ok_or(PickError::NoHealthyBackend)
    }

    /// Whether a backend other than `exclude` is eligible for `model` (a retry has somewhere
    /// to go).
    pub fn has_other(&self, model: Option<&str>, exclude: SocketAddr) -> bool {
        self.serving(model)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendEntry, PoolConfig};

    fn config(pools: Vec<PoolConfig>) -> GatewayConfig {
        GatewayConfig {
            pools,
            ..GatewayConfig::default()
        }
    }

    fn pool(name: &str, ports: &[u16], models: Option<&[&str]>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            backends: ports
                .iter()
                .map(|p| BackendEntry::Address(format!("127.0.0.1:{p}")))
                .collect(),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            discover: false,
            policy: crate::config::Policy::RoundRobin,
            ..PoolConfig::default()
        }
    }

    #[tokio::test]
    async fn routes_by_model_avoids_the_failed_backend_and_runs_out() {
        let pools = Pools::from_config(&config(vec![
            pool("a", &[1, 2], Some(&["m"])),
            pool("b", &[3], Some(&["x"])),
        ]))
        .unwrap();
        pools
            .refresh_once(
                &reqwest::Client::new(),
                std::time::Duration::from_millis(10),
            )
            .await;
        // "m" goes to pool a, "x" to pool b, anything else nowhere.
        let first = pools.pick(Some("m"), None).unwrap();
        assert!([1, 2].contains(&first.addr().port()));
        assert_eq!(pools.pick(Some("x"), None).unwrap().addr().port(), 3);
        assert_eq!(
            pools.pick(Some("y"), None).err(),
            Some(PickError::UnknownModel)
        );
        // The retry avoids the backend that failed, while another is eligible.
        for _ in 0..4 {
            let again = pools.pick(Some("m"), Some(first.addr())).unwrap();
            assert_ne!(again.addr(), first.addr());
        }
        assert_eq!(first.backend().in_flight(), 1);
        // Refused connections eject both backends of pool a: no healthy backend for "m",
        // while pool b still takes other models.
        let second = pools.pick(Some("m"), Some(first.addr())).unwrap();
        assert!(pools.has_other(Some("m"), first.addr()));
        first.backend().record_failure("refused".into(), true);
        second.backend().record_failure("refused".into(), true);
        assert_eq!(pools.check(Some("m")), Err(PickError::NoHealthyBackend));
        assert_eq!(
            pools.pick(Some("m"), None).err(),
            Some(PickError::NoHealthyBackend)
        );
        assert_eq!(pools.check(Some("x")), Ok(()));
        let snap = pools.snapshot();
        assert_eq!(snap[0].backends.len(), 2);
        assert!(snap[0]
            .backends
            .iter()
            .all(|b| b.ejected_for_ms.is_some() && b.ejections == 1));
        assert_eq!(snap[0].backends[0].last_error.as_deref(), Some("refused"));
        drop((first, second));
        assert!(pools.snapshot()[0]
            .backends
            .iter()
            .all(|b| b.in_flight == 0));
        // A static list with discovery off: its models are known to the index.
        let names: Vec<_> = pools
            .models()
            .into_iter()
            .map(|m| (m.name, m.ready))
            .collect();
        assert_eq!(
            names,
            vec![("m".to_string(), false), ("x".to_string(), true)]
        );
    }

    #[tokio::test]
    async fn a_model_no_pool_serves_is_unknown() {
        let mut p = pool("a", &[1], Some(&["m"]));
        p.discover = true;
        let pools = Pools::from_config(&config(vec![p])).unwrap();
        pools
            .refresh_once(
                &reqwest::Client::new(),
                std::time::Duration::from_millis(50),
            )
            .await;
        // Nothing listens on port 1: no index, so even the listed model is not served.
        assert_eq!(pools.check(Some("m")), Err(PickError::UnknownModel));
        assert_eq!(pools.check(Some("x")), Err(PickError::UnknownModel));
        let snap = pools.snapshot();
        assert_eq!(snap[0].backends[0].models, None);
        assert!(snap[0].backends[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("repository index")));
    }
}
