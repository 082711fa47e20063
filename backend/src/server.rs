//! The HTTP server: Open Inference Protocol v2 REST routes over the model repository.
//!
//! Routes, as in the protocol's REST specification (the version segment is optional):
//! - `GET /v2`: server metadata. `GET /v2/health/live`, `GET /v2/health/ready`: server health;
//!   ready means every model and version loaded and the server is not shutting down.
//! - `GET /v2/models/{model}/versions/{version}`: model metadata.
//! - `GET /v2/models/{model}/versions/{version}/ready`: model readiness.
//! - `POST /v2/models/{model}/versions/{version}/infer`: inference, answered with the usage
//!   headers of [`crate::usage`].
//!
//! Every error, including unknown routes and malformed bodies, is JSON `{"error": "..."}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::error::Error;
use crate::extract::{parse_json, Body, PathParams};
use crate::oip::{
    InferRequest, InferResponse, ModelMetadata, ModelReady, ResponseOutput, ServerLive,
    ServerMetadata, ServerReady, TensorMetadata,
};
use crate::repository::{LoadedModel, ModelRepository, ModelState};
use crate::usage::Usage;
use crate::validation::validate;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The loaded models.
    pub repository: Arc<ModelRepository>,
    /// Set when shutdown began: the server stops being ready while it drains.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    /// State over a loaded repository, not shutting down.
    pub fn new(repository: Arc<ModelRepository>) -> AppState {
        AppState {
            repository,
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Server settings that shape the router.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

/// The router with every route, the JSON fallbacks and the body limit.
pub fn router(state: AppState, options: ServerOptions) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[derive(Debug, Deserialize)]
struct ModelPath {
    model: String,
}

#[derive(Debug, Deserialize)]
struct VersionPath {
    model: String,
    version: String,
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: Vec::new(),
    })
}

async fn live() -> Json<ServerLive> {
    Json(ServerLive { live: true })
}

async fn ready(State(state): State<AppState>) -> Response {
    let reason = if state.shutting_down.load(Ordering::Relaxed) {
        Some("the server is shutting down".to_string())
    } else {
        not_ready_reason(&state.repository)
    };
    match reason {
        None => Json(ServerReady {
            ready: true,
            error: None,
        })
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ServerReady {
                ready: false,
                error: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// Why the server is not ready: the models and versions that failed to load.
fn not_ready_reason(repository: &ModelRepository) -> Option<String> {
    if repository.all_ready() {
        return None;
    }
    let mut failed = Vec::new();
    for (name, state) in repository.models() {
        match state {
            ModelState::Failed(_) => failed.push(format!("model '{name}'")),
            ModelState::Loaded(model) => {
                for version in model.failed_versions() {
                    failed.push(format!("model '{name}' version {version}"));
                }
            }
        }
    }
    Some(format!("failed to load: {}", failed.join(", ")))
}

async fn model_metadata(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelMetadata>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(None)?;
    Ok(Json(metadata(model)))
}

async fn version_metadata(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
) -> Result<Json<ModelMetadata>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(Some(&path.version))?;
    Ok(Json(metadata(model)))
}

fn metadata(model: &LoadedModel) -> ModelMetadata {
    let config = model.config();
    let tensors = |list: &[crate::config::TensorConfig]| {
        list.iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype,
                shape: t.batched_shape(),
            })
            .collect()
    };
    ModelMetadata {
        name: model.name().to_string(),
        versions: model.ready_versions().iter().map(u64::to_string).collect(),
        platform: config.platform.as_str().to_string(),
        inputs: tensors(&config.inputs),
        outputs: tensors(&config.outputs),
    }
}

async fn model_ready(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelReady>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(None)?;
    Ok(Json(ModelReady {
        name: path.model,
        ready: true,
    }))
}

async fn version_ready(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
) -> Result<Json<ModelReady>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(Some(&path.version))?;
    Ok(Json(ModelReady {
        name: path.model,
        ready: true,
    }))
}

async fn infer(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    Body(body): Body,
) -> Result<Response, Error> {
    run_infer(&state, &path.model, None, &body).await
}

async fn version_infer(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
    Body(body): Body,
) -> Result<Response, Error> {
    run_infer(&state, &path.model, Some(&path.version), &body).await
}

/// Resolves the model version (404/503 first), validates the body (400), runs the forward pass
/// on the version's worker and answers with the outputs and the usage headers.
async fn run_infer(
    state: &AppState,
    model_name: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<Response, Error> {
    let model = state.repository.model(model_name)?;
    let (number, worker) = model.version(version)?;
    let request: InferRequest = parse_json(body)?;
    let request = validate(request, model.config())?;
    let rows = request.rows;
    let forward = worker.infer(rows, request.input).await?;

    let config = model.config();
    let [output] = config.outputs.as_slice() else {
        return Err(Error::Internal(format!(
            "model '{model_name}' has {} outputs",
            config.outputs.len()
        )));
    };
    let expected = rows
        .checked_mul(output.row_elements())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    if forward.data.len() != expected {
        return Err(Error::Internal(format!(
            "model '{model_name}' version {number} returned {} elements, expected {expected}",
            forward.data.len()
        )));
    }
    let outputs = if request.outputs.contains(&output.name) {
        vec![ResponseOutput {
            name: output.name.clone(),
            datatype: output.datatype,
            shape: std::iter::once(rows)
                .chain(output.dims.iter().copied())
                .collect(),
            data: forward.data,
        }]
    } else {
        Vec::new()
    };
    let usage = Usage {
        inference_count: u64::try_from(rows).unwrap_or(0),
        compute: forward.compute,
    };
    tracing::debug!(
        model = model_name,
        version = number,
        rows,
        compute_us = usage.compute_us(),
        "infer"
    );
    let response = InferResponse {
        model_name: model_name.to_string(),
        model_version: number.to_string(),
        id: request.id,
        outputs,
    };
    Ok((usage.headers(), Json(response)).into_response())
}

async fn route_not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed(format!("method {method} is not allowed for {}", uri.path()))
}
