//! The HTTP server: Open Inference Protocol v2 REST routes over the model repository.
//!
//! Routes, as in the protocol's REST specification (the version segment is optional):
//! - `GET /v2`: server metadata. `GET /v2/health/live`, `GET /v2/health/ready`: server health;
//!   ready means every model and version loaded and the server is not shutting down.
//! - `GET /v2/models/{model}/versions/{version}`: model metadata.
//! - `GET /v2/models/{model}/versions/{version}/ready`: model readiness.
//! - `GET /v2/models/{model}[/versions/{version}]/config`: the model's `config.toml` as JSON
//!   (Triton's model configuration extension).
//! - `POST /v2/models/{model}/versions/{version}/infer`: inference, JSON or with binary tensor
//!   data ([`crate::binary`]), answered with the usage headers of [`crate::usage`].
//! - `POST /v2/repository/index`, `POST /v2/repository/models/{model}/load` and `.../unload`:
//!   Triton's model repository extension ([`crate::repository`]).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//!
//! Every error, including unknown routes and malformed bodies, is JSON `{"error": "..."}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::binary::{binary_response, encode_f32, parse_json_part, split_body};
use crate::config::ModelConfig;
use crate::error::Error;
use crate::extract::{Body, PathParams};
use crate::oip::{
    InferRequest, InferResponse, ModelMetadata, ModelReady, ResponseOutput, ServerLive,
    ServerMetadata, ServerReady, TensorMetadata,
};
use crate::repository::{LoadedModel, ModelRepository, ModelState};
use crate::usage::Usage;
use crate::validation::validate;
use crate::worker::Worker;

/// The protocol extensions this server implements, as `GET /v2` reports them (Triton's names).
pub const EXTENSIONS: [&str; 3] = [
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
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/metrics", get(metrics))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
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
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
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
            ModelState::Unloaded => {}
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
    Ok(Json(metadata(&model)))
}

async fn version_metadata(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
) -> Result<Json<ModelMetadata>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(Some(&path.version))?;
    Ok(Json(metadata(&model)))
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

async fn model_config(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelConfig>, Error> {
    let model = state.repository.model(&path.model)?;
    Ok(Json(model.config().clone()))
}

async fn version_config(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
) -> Result<Json<ModelConfig>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(Some(&path.version))?;
    Ok(Json(model.config().clone()))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let models = state.repository.models();
    let mut versions = Vec::new();
    for (name, model) in &models {
        if let ModelState::Loaded(model) = model {
            for (number, worker) in model.ready_workers() {
                versions.push((name.as_str(), number, worker.metrics().as_ref()));
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(versions),
    )
        .into_response()
}

/// The body of `POST /v2/repository/index` (may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// Only ready models.
    #[serde(default)]
    ready: bool,
}

/// The body of `POST /v2/repository/models/{m}/load|unload` (may be empty). Load parameters
/// that override the configuration or files on disk (Triton's `config`, `file:*`) are not
/// supported and refused.
#[derive(Debug, Default, Deserialize)]
struct ControlRequest {
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Parses an optional JSON body: empty (or whitespace) is the default.
fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("request body is not the expected JSON: {e}")))
}

async fn repository_index(
    State(state): State<AppState>,
    Body(body): Body,
) -> Result<Json<Vec<crate::repository::IndexEntry>>, Error> {
    let request: IndexRequest = optional_json(&body)?;
    let repository = state.repository.clone();
    let entries = tokio::task::spawn_blocking(move || repository.index(request.ready))
        .await
        .map_err(|e| Error::Internal(format!("index task failed: {e}")))??;
    Ok(Json(entries))
}

async fn load_model(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    Body(body): Body,
) -> Result<Json<serde_json::Value>, Error> {
    let request: ControlRequest = optional_json(&body)?;
    if let Some(key) = request
        .parameters
        .iter()
        .flat_map(|p| p.keys())
        .find(|k| *k == "config" || k.starts_with("file:"))
    {
        return Err(Error::BadRequest(format!(
            "load parameter '{key}' is not supported: the model is loaded from its folder in the repository"
        )));
    }
    let repository = state.repository.clone();
    let name = path.model.clone();
    tokio::task::spawn_blocking(move || repository.load_model(&name))
        .await
        .map_err(|e| Error::Internal(format!("load task failed: {e}")))??;
    Ok(Json(serde_json::json!({})))
}

async fn unload_model(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    Body(body): Body,
) -> Result<Json<serde_json::Value>, Error> {
    let _: ControlRequest = optional_json(&body)?;
    let repository = state.repository.clone();
    let name = path.model.clone();
    // Unloading drops the model's threads when its last request finishes: off the runtime.
    tokio::task::spawn_blocking(move || repository.unload_model(&name))
        .await
        .map_err(|e| Error::Internal(format!("unload task failed: {e}")))??;
    Ok(Json(serde_json::json!({})))
}

async fn infer(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    run_infer(&state, &path.model, None, &headers, &body).await
}

async fn version_infer(
    State(state): State<AppState>,
    PathParams(path): PathParams<VersionPath>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    run_infer(&state, &path.model, Some(&path.version), &headers, &body).await
}

/// Resolves the model version (404/503 first), then infers on it and counts the outcome in the
/// version's metrics.
async fn run_infer(
    state: &AppState,
    model_name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Error> {
    let model = state.repository.model(model_name)?;
    let (number, worker) = model.version(version)?;
    let result = infer_version(&model, number, worker, headers, body).await;
    let counter = match &result {
        Ok(_) => &worker.metrics().success,
        Err(_) => &worker.metrics().failure,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result
}

/// Validates the body (400), runs the forward pass on the version's worker and answers with
/// the outputs (JSON or binary, as asked) and the usage headers.
async fn infer_version(
    model: &LoadedModel,
    number: u64,
    worker: &Worker,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Error> {
    let model_name = model.name();
    let (json, binary) = split_body(headers, body)?;
    let has_binary_header = headers.contains_key(&crate::binary::HEADER_CONTENT_LENGTH);
    let request: InferRequest = parse_json_part(json, has_binary_header)?;
    let request = validate(request, binary, model.config())?;
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
    let mut outputs = Vec::new();
    let mut binary_part = Vec::new();
    for requested in &request.outputs {
        if requested.name != output.name {
            continue;
        }
        let shape = std::iter::once(rows)
            .chain(output.dims.iter().copied())
            .collect();
        if requested.binary {
            let before = binary_part.len();
            encode_f32(&forward.data, &mut binary_part);
            let mut parameters = serde_json::Map::new();
            parameters.insert(
                "binary_data_size".into(),
                serde_json::Value::from(binary_part.len() - before),
            );
            outputs.push(ResponseOutput {
                name: output.name.clone(),
                datatype: output.datatype,
                shape,
                parameters: Some(parameters),
                data: None,
            });
        } else {
            outputs.push(ResponseOutput {
                name: output.name.clone(),
                datatype: output.datatype,
                shape,
                parameters: None,
                data: Some(forward.data.clone()),
            });
        }
    }
    let usage = Usage {
        inference_count: u64::try_from(rows).unwrap_or(0),
        compute: forward.compute,
        model_version: number,
    };
    tracing::debug!(
        model = model_name,
        version = number,
        rows,
        batch_rows = forward.batch_rows,
        queue_us = forward.queue.as_micros(),
        compute_us = usage.compute_us(),
        "infer"
    );
    let response = InferResponse {
        model_name: model_name.to_string(),
        model_version: number.to_string(),
        id: request.id,
        outputs,
    };
    if binary_part.is_empty() {
        return Ok((usage.headers(), Json(response)).into_response());
    }
    let json = serde_json::to_vec(&response)
        .map_err(|e| Error::Internal(format!("cannot encode the response: {e}")))?;
    Ok(binary_response(json, binary_part, usage.headers()))
}

async fn route_not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed(format!("method {method} is not allowed for {}", uri.path()))
}
