//! Backend pools: which backend a request goes to.
//!
//! A gateway has one or more pools (`[[pools]]`, or the one pool of `[upstream] backends`
//! serving every model). For each pool:
//! - membership: its `backends` entries resolved with tokio's resolver, DNS names re-resolved
//!   on an interval (`discovery.rs`, on pingora-load-balancing's `ServiceDiscovery`);
//! - discovery: the models each backend reports READY in its repository index
//!   (`POST /v2/repository/index`), read at start and on an interval (`discovery.rs`);
//! - active health: pingora-load-balancing's HTTP check of `GET /v2/health/ready` with
//!   consecutive-result thresholds (`health.rs`);
//! - passive ejection after consecutive connect failures or 5xx, with a doubling cool-down
//!   (`ejection.rs`);
//! - the selection policy over the eligible backends: power of two choices on requests in
//!   flight, round-robin or weighted (`select.rs`).
//!
//! A backend is eligible for a model when it is healthy, not ejected and (with discovery)
//! reports the model READY. [`Pools`] (`registry.rs`) routes a model to the pools serving it;
//! [`PoolRefresher`] (`refresh.rs`) keeps them current; [`PoolSnapshot`] (`snapshot.rs`) is
//! the read-only state `GET /admin/v1/pools` shows. `pool.rs` holds one pool, `backend.rs` one
//! backend and the in-flight [`Lease`] a request holds on it.

mod backend;
mod discovery;
mod ejection;
mod health;
mod pool;
mod refresh;
mod registry;
mod select;
mod snapshot;

pub use backend::Lease;
pub use refresh::PoolRefresher;
pub use registry::{PickError, Pools};
pub use snapshot::{BackendSnapshot, PoolSnapshot};
