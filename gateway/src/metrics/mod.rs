//! Prometheus metrics of the gateway, through `prometheus-client` (the Prometheus project's
//! Rust client: typed families, collectors read at scrape time, the text format 0.0.4).
//!
//! - per request ([`RequestMetrics`], observed once in the proxy's `logging` phase):
//!   `maas_gateway_requests_total{model,status_class,outcome}` and the latency histograms
//!   `maas_gateway_request_duration_seconds{model}` (total),
//!   `maas_gateway_overhead_duration_seconds` (the gateway's own time: routing,
//!   authentication, limits, metering) and `maas_gateway_upstream_duration_seconds{model}`;
//! - read at scrape time from the state the gateway keeps anyway ([`GatewayState`]): the
//!   limiter's decisions, Redis call latency, errors and fallbacks; the usage spool and
//!   writer; the authenticator's caches and JWK Set fetches;
//! - read at scrape time from the pools' snapshots ([`PoolState`]), per `pool` and `backend`:
//!   `maas_gateway_backend_healthy`, `_ejected`, `_in_flight`, `_ready_models`,
//!   `_requests_total`, `_ejections_total`.
//!
//! Tenant and API key are never labels (unbounded cardinality; spend belongs in PostgreSQL);
//! `model` is bounded by `metrics.max_models`. Served on their own listener by [`spawn`].
//!
//! Files: what became of a request (`outcome.rs`), the per-request families (`requests.rs`),
//! the scrape-time collectors (`state.rs`; `pools.rs`), the gateway's own readiness
//! (`health.rs`, served at `/livez` and `/readyz`), the listener (`server.rs`).

mod health;
mod outcome;
mod pools;
mod requests;
mod server;
mod state;

pub use health::Readiness;
pub use outcome::Outcome;
pub use pools::PoolState;
pub use requests::{RequestMetrics, RequestObservation};
pub use server::spawn;
pub use state::GatewayState;
