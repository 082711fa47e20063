//! Triton's model repository extension: `POST /v2/repository/index`,
//! `POST /v2/repository/models/{model}/load` and `.../unload`, over the repository's
//! index, load and unload (blocking work, run off the async runtime).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::extract::{ModelPath, OptionalJson, PathParams};
use super::{AppState, Error};
use crate::repository::{IndexEntry, RepositoryError};

/// The body of `POST /v2/repository/index` (may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IndexRequest {
    /// Only ready models.
    #[serde(default)]
    ready: bool,
}

/// The body of `POST /v2/repository/models/{m}/load|unload` (may be empty). Load parameters
/// that override the configuration or files on disk (Triton's `config`, `file:*`) are not
/// supported and refused.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ControlRequest {
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

pub(super) async fn repository_index(
    State(state): State<AppState>,
    OptionalJson(request): OptionalJson<IndexRequest>,
) -> Result<Json<Vec<IndexEntry>>, Error> {
    let repository = state.repository.clone();
    let entries = blocking("index", move || repository.index(request.ready)).await?;
    Ok(Json(entries))
}

pub(super) async fn load_model(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    OptionalJson(request): OptionalJson<ControlRequest>,
) -> Result<Json<serde_json::Value>, Error> {
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
    blocking("load", move || repository.load_model(&path.model)).await?;
    Ok(Json(serde_json::json!({})))
}

pub(super) async fn unload_model(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    OptionalJson(_): OptionalJson<ControlRequest>,
) -> Result<Json<serde_json::Value>, Error> {
    let repository = state.repository.clone();
    // Unloading drops the model's threads when its last request finishes: off the runtime.
    blocking("unload", move || repository.unload_model(&path.model)).await?;
    Ok(Json(serde_json::json!({})))
}

/// Runs `work` (reading weights, starting and joining threads, listing folders) off the async
/// runtime; `what` names the task if it panics.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, RepositoryError> + Send + 'static,
) -> Result<T, Error> {
    let result = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("{what} task failed: {e}")))?;
    Ok(result?)
}
