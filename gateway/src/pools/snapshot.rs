//! A read-only picture of the pools ([`PoolSnapshot`], [`BackendSnapshot`]): what
//! `GET /admin/v1/pools` answers, and what gauges can be collected from (every field is a value
//! read at the time of the snapshot, nothing is held).

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Policy;

/// One pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PoolSnapshot {
    /// The pool's name.
    pub name: String,
    /// How it chooses a backend.
    pub policy: Policy,
    /// Whether it reads its backends' repository indexes.
    pub discover: bool,
    /// Its static model list, if configured.
    pub models: Option<Vec<String>>,
    /// Its backends (one per resolved address).
    pub backends: Vec<BackendSnapshot>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BackendSnapshot {
    /// `ip:port` requests go to.
    pub address: String,
    /// The configured `backends` entry it was resolved from (`host:port`).
    pub entry: String,
    /// Weight under the `weighted` policy.
    pub weight: usize,
    /// Whether it passes the active health check (`GET /v2/health/ready`).
    pub healthy: bool,
    /// Milliseconds it stays passively ejected; absent when it is not.
    pub ejected_for_ms: Option<u64>,
    /// Models its last repository index read reported READY; absent before the first read (or
    /// without discovery).
    pub models: Option<Vec<String>>,
    /// Requests in flight to it through this gateway.
    pub in_flight: usize,
    /// Requests (tries) sent to it through this gateway since start.
    pub requests: u64,
    /// Passive ejections since start.
    pub ejections: u64,
    /// The last error seen on it (connect failure, reset, 5xx, failed index read).
    pub last_error: Option<String>,
}
