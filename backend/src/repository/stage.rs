//! The repository of `maas-backend serve-stage`: layers of one version of a dense model (one
//! pipeline stage), served alone under the stage's name.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::layout::version_numbers;
use super::model::batch_policy;
use super::{LoadError, LoadProblem, LoadedModel, ModelRepository, RepositoryOptions};
use crate::config::{stage_config, stage_model_name, DeviceSpec, ModelConfig, CONFIG_FILE};
use crate::engine::{DenseModel, Worker, WEIGHTS_FILE};
use crate::metrics::VersionMetrics;

/// Loads layers `range` of version `version` (default: the highest version folder) of the
/// dense model `model` in the repository `root` onto `device`, reading only those layers'
/// weights, and returns a repository that serves it alone under [`stage_model_name`] (what
/// `maas-backend serve-stage` serves). The model's own `[pipeline]`, batching and instances
/// are not used.
///
/// Errors name the file at fault: no such model or version, a config that is not dense, a
/// range outside its layers, weights that do not match, a device that is not present.
pub fn load_stage(
    root: &Path,
    model: &str,
    version: Option<u64>,
    range: Range<usize>,
    device: DeviceSpec,
    options: RepositoryOptions,
) -> Result<ModelRepository, LoadError> {
    let dir = root.join(model);
    let config_path = dir.join(CONFIG_FILE);
    let at_config = |problem: LoadProblem| LoadError::at(&config_path, problem);
    let config = ModelConfig::from_file(&config_path).map_err(|e| at_config(e.into()))?;
    let version = match version {
        Some(v) => v,
        None => version_numbers(&dir)?
            .last()
            .copied()
            .ok_or_else(|| LoadError::at(&dir, LoadProblem::NoVersions))?,
    };
    let weights = dir.join(version.to_string()).join(WEIGHTS_FILE);
    let at_weights = |problem: LoadProblem| LoadError::at(&weights, problem);
    let stage = stage_config(&config, range.clone(), device).map_err(|e| at_config(e.into()))?;
    let torch_device = device.resolve().map_err(|e| at_config(e.into()))?;
    let dense = DenseModel::load_range(&config, &weights, range.clone(), torch_device)
        .map_err(|e| at_weights(e.into()))?;
    let name = stage_model_name(model, &range);
    let worker = Worker::spawn(
        format!("{name}/{version}"),
        vec![Box::new(dense)],
        batch_policy(&stage, options.worker),
        Arc::new(VersionMetrics::default()),
    )
    .map_err(|e| at_weights(LoadProblem::Threads(e)))?;
    tracing::info!(model, version, first = range.start, end = range.end, %device, "stage loaded");
    let loaded = LoadedModel::ready(&name, stage, version, worker);
    Ok(ModelRepository::fixed(root, options, loaded))
}
