//! The background service that keeps every pool current ([`PoolRefresher`]): per pool, DNS
//! every `dns_interval_ms`, the active health check every `health.interval_ms`, the repository
//! indexes every `discovery_interval_ms`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::{interval, MissedTickBehavior};

use super::pool::Pool;
use super::registry::Pools;

/// Runs the refresh loops of every pool until shutdown.
pub struct PoolRefresher {
    pools: Arc<Pools>,
    index_timeout: Duration,
}

impl PoolRefresher {
    /// Refreshes `pools`; an index read times out after `index_timeout`.
    pub fn new(pools: Arc<Pools>, index_timeout: Duration) -> Self {
        PoolRefresher {
            pools,
            index_timeout,
        }
    }
}

async fn run(pool: Arc<Pool>, client: reqwest::Client, index_timeout: Duration) {
    let every = |ms: u64| {
        let mut t = interval(Duration::from_millis(ms.max(1)));
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    };
    let mut dns = every(pool.config.dns_interval_ms);
    let mut health = every(pool.config.health.interval_ms);
    let mut index = every(pool.config.discovery_interval_ms);
    // The first ticks are immediate; members and models were read before serving.
    dns.tick().await;
    index.tick().await;
    loop {
        tokio::select! {
            _ = dns.tick() => pool.refresh_members().await,
            _ = health.tick() => pool.check_health().await,
            _ = index.tick() => pool.discover_models(&client, index_timeout).await,
        }
    }
}

#[async_trait]
impl BackgroundService for PoolRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for pool in self.pools.all() {
            tasks.spawn(run(pool.clone(), client.clone(), self.index_timeout));
        }
        let _ = shutdown.changed().await;
        tasks.abort_all();
    }
}
