//! The routes that describe the server and its models: server metadata and health, model
//! metadata, readiness and configuration (Triton's model configuration extension), and the
//! Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maas_protocol::{
    ModelMetadata, ModelReady, ServerLive, ServerMetadata, ServerReady, TensorMetadata,
};

use super::extract::{ModelPath, PathParams};
use super::{AppState, Error, EXTENSIONS};
use crate::config::{ModelConfig, TensorConfig};
use crate::repository::{LoadedModel, ModelRepository, ModelState};

pub(super) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    })
}

pub(super) async fn live() -> Json<ServerLive> {
    Json(ServerLive { live: true })
}

pub(super) async fn ready(State(state): State<AppState>) -> Response {
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

pub(super) async fn model_metadata(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelMetadata>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(path.version.as_deref())?;
    Ok(Json(metadata(&model)))
}

fn metadata(model: &LoadedModel) -> ModelMetadata {
    let config = model.config();
    let tensors = |list: &[TensorConfig]| {
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

pub(super) async fn model_ready(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelReady>, Error> {
    let model = state.repository.model(&path.model)?;
    model.version(path.version.as_deref())?;
    Ok(Json(ModelReady {
        name: path.model,
        ready: true,
    }))
}

/// The model's configuration; with a version, only when that version can be called.
pub(super) async fn model_config(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
) -> Result<Json<ModelConfig>, Error> {
    let model = state.repository.model(&path.model)?;
    if let Some(version) = path.version.as_deref() {
        model.version(Some(version))?;
    }
    Ok(Json(model.config().clone()))
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let models = state.repository.models();
    let mut versions = Vec::new();
    for (name, model) in &models {
        if let ModelState::Loaded(model) = model {
            for (number, worker) in model.ready_workers() {
                versions.push((name.clone(), number, worker.metrics().clone()));
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        crate::metrics::render(
            versions,
            vec![Box::new(crate::device_memory::DeviceMemory::now())],
        ),
    )
        .into_response()
}
