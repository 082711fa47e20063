//! What a pool's backends are and what they serve: the addresses of its `backends` entries
//! (DNS names re-resolved with tokio's resolver, behind pingora-load-balancing's
//! `ServiceDiscovery` trait), and the models each reports READY in its repository index
//! (`POST /v2/repository/index`, the OIP model repository extension, Triton's format).
//!
//! The index is read on an interval only, never on an event: the gateway does not forward the
//! repository's control calls (`POST /v2/repository/models/{m}/load` and `.../unload` through
//! it are a 404, see `proxy::route`), so it sees no load or unload to react to. An operator
//! loads and unloads on the backends themselves, and a pool's `discovery_interval_ms` bounds
//! how long the gateway's routing lags behind: a model loaded becomes routable, and one
//! unloaded stops being routed, at the next read of that backend's index.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use serde::Deserialize;

use crate::config::BackendEntry;

/// Resolves a pool's `backends` entries to addresses: an IP literal is itself, a name every
/// A/AAAA record it has now. An entry that does not resolve contributes nothing this time (and
/// is logged); the others still count.
pub(super) struct Resolve {
    pub(super) entries: Vec<BackendEntry>,
    pub(super) pool: String,
}

/// The `backends` entry (`host:port` as configured) a [`Backend`] was resolved from, in its
/// `ext`.
#[derive(Debug, Clone)]
pub(super) struct Entry(pub(super) String);

impl Resolve {
    /// Every address, each with its [`Entry`] in `ext`.
    pub(super) async fn resolve(&self) -> BTreeSet<Backend> {
        let mut out = BTreeSet::new();
        for entry in &self.entries {
            match tokio::net::lookup_host(entry.address()).await {
                Ok(addrs) => {
                    for addr in addrs {
                        let mut backend = Backend {
                            addr: PingoraAddr::Inet(addr),
                            weight: entry.weight(),
                            ext: Default::default(),
                        };
                        backend.ext.insert(Entry(entry.address().to_string()));
                        out.insert(backend);
                    }
                }
                Err(e) => {
                    tracing::warn!(pool = %self.pool, backend = entry.address(), error = %e, "backend address does not resolve")
                }
            }
        }
        out
    }
}

#[async_trait]
impl ServiceDiscovery for Resolve {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.resolve().await, HashMap::new()))
    }
}

/// One row of a repository index (Triton's format; only the fields read here).
#[derive(Debug, Deserialize)]
struct IndexRow {
    name: String,
    #[serde(default)]
    state: String,
}

/// The models `addr` reports READY, from `POST http://addr/v2/repository/index`.
///
/// # Errors
/// A message for the snapshot's `last_error`: no answer within `timeout`, a status other than
/// 200, or a body that is not an index.
pub(super) async fn read_index(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<BTreeSet<String>, String> {
    let resp = client
        .post(format!("http://{addr}/v2/repository/index"))
        .json(&serde_json::json!({}))
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| format!("repository index: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("repository index: HTTP {}", resp.status().as_u16()));
    }
    let rows: Vec<IndexRow> = resp
        .json()
        .await
        .map_err(|e| format!("repository index is not an OIP index: {e}"))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.state == "READY")
        .map(|r| r.name)
        .collect())
}
