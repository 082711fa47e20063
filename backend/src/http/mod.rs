//! The HTTP server: Open Inference Protocol v2 REST routes over the model repository.
//!
//! Routes, as in the protocol's REST specification (the version segment is optional):
//! - `GET /v2`: server metadata. `GET /v2/health/live`, `GET /v2/health/ready`: server health;
//!   ready means every model and version loaded and the server is not shutting down.
//! - `GET /v2/models/{model}/versions/{version}`: model metadata.
//! - `GET /v2/models/{model}/versions/{version}/ready`: model readiness.
//! - `GET /v2/models/{model}[/versions/{version}]/config`: the model's `config.toml` as JSON
//!   (Triton's model configuration extension).
//! - `POST /v2/models/{model}/versions/{version}/infer`: inference, JSON or with Triton's
//!   binary tensor data, answered with the usage headers (module `infer`, `usage`).
//! - `POST /v2/repository/index`, `POST /v2/repository/models/{model}/load` and `.../unload`:
//!   Triton's model repository extension (module `control`, over [`crate::repository`]).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//!
//! Every error, including unknown routes and malformed bodies, is JSON `{"error": "..."}`, and
//! one place maps errors to statuses (module `error`).

mod control;
mod error;
mod extract;
mod fairness;
mod infer;
mod metadata;
mod serve;
mod usage;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::time::Duration;

use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::repository::ModelRepository;
use error::Error;
use extract::BodyLimits;

pub use fairness::GatewaySecret;
pub use serve::serve_until_signal;

/// The protocol extensions this server implements, as `GET /v2` reports them (Triton's names).
const EXTENSIONS: [&str; 3] = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
];

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The loaded models.
    pub repository: Arc<ModelRepository>,
    /// Set when shutdown began: the server stops being ready while it drains.
    pub shutting_down: Arc<AtomicBool>,
    /// The secret that makes the gateway's fairness headers count (`None`: they never do).
    pub gateway_secret: Option<GatewaySecret>,
}

impl AppState {
    /// State over a loaded repository, not shutting down.
    pub fn new(repository: Arc<ModelRepository>) -> AppState {
        AppState {
            repository,
            shutting_down: Arc::new(AtomicBool::new(false)),
            gateway_secret: None,
        }
    }
}

/// Server settings: the body limit and the connection timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Largest request body accepted, in bytes; larger ones get 413 (a declared
    /// `Content-Length` over it before any of the body is read).
    pub max_body_bytes: usize,
    /// Longest time to receive a request's header, counted from when the connection is ready
    /// for it (accepted, or idle after the previous response): a connection that sends no
    /// complete header in time is closed. This is also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body (408 after it).
    pub body_idle_timeout: Duration,
}

/// The router with every route, the JSON fallbacks and the body limit.
fn router(state: AppState, options: ServerOptions) -> Router {
    Router::new()
        .route("/v2", get(metadata::server_metadata))
        .route("/v2/health/live", get(metadata::live))
        .route("/v2/health/ready", get(metadata::ready))
        .route("/v2/models/{model}", get(metadata::model_metadata))
        .route("/v2/models/{model}/ready", get(metadata::model_ready))
        .route("/v2/models/{model}/config", get(metadata::model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(metadata::model_config),
        )
        .route("/metrics", get(metadata::metrics))
        .route("/v2/repository/index", post(control::repository_index))
        .route(
            "/v2/repository/models/{model}/load",
            post(control::load_model),
        )
        .route(
            "/v2/repository/models/{model}/unload",
            post(control::unload_model),
        )
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(metadata::model_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(metadata::model_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer),
        )
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(BodyLimits {
            max_bytes: options.max_body_bytes,
            idle: options.body_idle_timeout,
        }))
        .with_state(state)
}

async fn route_not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed(format!("method {method} is not allowed for {}", uri.path()))
}
