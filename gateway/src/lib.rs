//! maas gateway: the data path in front of the inference backends (ARCHITECTURE.md has the
//! map).
//!
//! - `proxy`: the pingora `ProxyHttp`, phases in lifecycle order: route, authenticate (`auth`),
//!   admit (`limits`), forward to a backend of the pools (`pools`), meter (`metering`).
//! - `pools`: backend pools: membership (DNS), model discovery, active and passive health,
//!   selection policies, and their state snapshot.
//! - `auth`: API keys and JWTs, cached; `limits`: rules, rate/concurrency/quota/budget
//!   admission in Redis or in process; `metering`: the usage spool and its writer into
//!   PostgreSQL; `invalidation`: admin changes reach every gateway's caches over Redis pub/sub.
//! - `admin`: the admin API for operators and tenant admins (axum, its own listener);
//!   `store`: every SQL statement on the gateway's tables.
//! - `metrics`: Prometheus metrics (`prometheus-client`) on their own listener; `trace`: W3C
//!   `traceparent`; `access_log`: one JSON line per request.
//! - `tls`: the TLS listener's certificate, checked at start and reloaded on SIGHUP or a
//!   file change.
//! - [`serve`] assembles the pingora server from a [`config::GatewayConfig`]; `error` maps
//!   every refusal to its status and JSON body.

mod access_log;
mod admin;
mod auth;
mod breaker;
mod cache;
pub mod config;
mod error;
mod invalidation;
mod limits;
mod metering;
mod metrics;
mod oip;
mod pools;
mod proxy;
mod serve;
mod store;
mod tls;
mod trace;

pub use admin::create_key;
pub use auth::{hash_key, Authenticator, JwtError, JwtVerifier};
pub use metering::spool::{read_dir_events, RecordKind, SpoolOptions, SpoolReader};
pub use metering::{Spool, UsageWriter};
pub use pools::{BackendSnapshot, PoolSnapshot};
pub use serve::{connect, migrate, serve};
