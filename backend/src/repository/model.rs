//! A model whose configuration was read: its versions, each loaded into a worker or failed,
//! and how one version is loaded (instances on their device, batching policy, warmup).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::layout::{parse_version, version_numbers};
use super::{LoadError, LoadProblem, RepositoryError, RepositoryOptions};
use crate::config::{ModelConfig, Platform, CONFIG_FILE};
use crate::engine::{
    BatchPolicy, DenseModel, Forward, PipelineModel, PipelineVersion, QueueTimeouts,
    TorchScriptModel, Worker, WorkerOptions, MODULE_FILE, WEIGHTS_FILE,
};
use crate::metrics::{PipelineMetrics, VersionMetrics};

/// A model whose configuration was read.
#[derive(Debug)]
pub struct LoadedModel {
    pub(super) name: String,
    config: ModelConfig,
    pub(super) versions: BTreeMap<u64, VersionState>,
}

/// The state of one version folder.
#[derive(Debug)]
pub enum VersionState {
    /// Loaded and served by its worker.
    Ready(Worker),
    /// Failed to load.
    Failed(LoadError),
}

impl LoadedModel {
    /// Reads `<dir>/config.toml` and loads the version folders its `version_policy` selects.
    pub(super) fn load(
        name: &str,
        dir: &Path,
        options: RepositoryOptions,
    ) -> Result<LoadedModel, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let mut config =
            ModelConfig::from_file(&config_path).map_err(|e| LoadError::at(&config_path, e))?;
        if config.max_batch_size == 0 && config.max_request_rows.is_none() {
            config.max_request_rows = Some(options.max_request_rows);
        }
        let found = version_numbers(dir)?;
        if found.is_empty() {
            return Err(LoadError::at(dir, LoadProblem::NoVersions));
        }
        let mut versions = BTreeMap::new();
        for number in config.version_policy.select(&found) {
            let file = match config.platform {
                Platform::Dense => WEIGHTS_FILE,
                Platform::Torchscript => MODULE_FILE,
            };
            let weights = dir.join(number.to_string()).join(file);
            let state = match load_version(name, number, &config, &weights, options) {
                Ok(worker) => {
                    tracing::info!(model = %name, version = number, "version loaded");
                    VersionState::Ready(worker)
                }
                Err(e) => {
                    tracing::error!(model = %name, version = number, error = %e, "version failed to load; skipped");
                    VersionState::Failed(e)
                }
            };
            versions.insert(number, state);
        }
        Ok(LoadedModel {
            name: name.to_string(),
            config,
            versions,
        })
    }

    /// A model with one version, already running on `worker` (a pipeline stage).
    pub fn ready(name: &str, config: ModelConfig, version: u64, worker: Worker) -> LoadedModel {
        LoadedModel {
            name: name.to_string(),
            config,
            versions: BTreeMap::from([(version, VersionState::Ready(worker))]),
        }
    }

    /// The model's name (its folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The versions that loaded, ascending.
    pub fn ready_versions(&self) -> Vec<u64> {
        self.versions_where(true)
    }

    /// The versions that loaded with their workers, ascending.
    pub fn ready_workers(&self) -> impl Iterator<Item = (u64, &Worker)> {
        self.versions.iter().filter_map(|(&n, v)| match v {
            VersionState::Ready(worker) => Some((n, worker)),
            VersionState::Failed(_) => None,
        })
    }

    /// The versions that failed to load, ascending.
    pub fn failed_versions(&self) -> Vec<u64> {
        self.versions_where(false)
    }

    /// The versions that loaded (`ready`) or failed, ascending.
    fn versions_where(&self, ready: bool) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|(_, v)| matches!(v, VersionState::Ready(_)) == ready)
            .map(|(&n, _)| n)
            .collect()
    }

    /// Whether every version loaded.
    pub(super) fn all_ready(&self) -> bool {
        self.versions
            .values()
            .all(|v| matches!(v, VersionState::Ready(_)))
    }

    /// `version N: <why>` for each version that failed to load, ascending.
    pub(super) fn failures(&self) -> Vec<String> {
        self.versions
            .iter()
            .filter_map(|(n, v)| match v {
                VersionState::Failed(e) => Some(format!("version {n}: {e}")),
                VersionState::Ready(_) => None,
            })
            .collect()
    }

    /// The worker of the requested version, or of the highest loaded version when `version`
    /// is `None`.
    ///
    /// [`RepositoryError::VersionNotFound`] for a version that is not a positive integer or has
    /// no folder; [`RepositoryError::NotReady`] for a version that failed to load, or when no
    /// version loaded.
    pub fn version(&self, version: Option<&str>) -> Result<(u64, &Worker), RepositoryError> {
        let Some(requested) = version else {
            let ready = self.versions.iter().rev().find_map(|(&n, v)| match v {
                VersionState::Ready(worker) => Some((n, worker)),
                VersionState::Failed(_) => None,
            });
            return ready.ok_or_else(|| {
                RepositoryError::NotReady(format!(
                    "model '{}' has no ready version ({})",
                    self.name,
                    self.failures().join("; ")
                ))
            });
        };
        let not_found = || RepositoryError::VersionNotFound {
            model: self.name.clone(),
            version: requested.to_string(),
            available: self.ready_versions(),
        };
        let number = parse_version(requested).ok_or_else(not_found)?;
        match self.versions.get(&number) {
            None => Err(not_found()),
            Some(VersionState::Ready(worker)) => Ok((number, worker)),
            Some(VersionState::Failed(e)) => Err(RepositoryError::NotReady(format!(
                "model '{}' version {number} is not ready: {e}",
                self.name
            ))),
        }
    }
}

/// Loads one version's weights once per instance (on the configured device; for a model with
/// `[pipeline]`, its stages on theirs) and starts its batcher and instance threads.
fn load_version(
    name: &str,
    number: u64,
    config: &ModelConfig,
    weights: &Path,
    options: RepositoryOptions,
) -> Result<Worker, LoadError> {
    let error = |problem: LoadProblem| LoadError::at(weights, problem);
    if !weights.is_file() {
        return Err(error(LoadProblem::MissingWeights));
    }
    let label = format!("{name}/{number}");
    let policy = batch_policy(config, options.worker);
    let metrics = Arc::new(VersionMetrics::default());
    let mut instances: Vec<Box<dyn Forward>> = Vec::new();
    if let Some(pipeline) = &config.pipeline {
        let stages = Arc::new(PipelineMetrics::new(pipeline.stages.len()));
        let _ = metrics.pipeline.set(stages.clone());
        for _ in 0..config.instances.count {
            let version = PipelineVersion {
                model: name,
                version: number,
                weights,
                intra_op_threads: policy.intra_op_threads,
            };
            let model = PipelineModel::start(config, version, stages.clone())
                .map_err(|e| error(e.into()))?;
            instances.push(Box::new(model));
        }
    } else {
        let device = config
            .instances
            .device
            .resolve()
            .map_err(|e| error(e.into()))?;
        for _ in 0..config.instances.count {
            let instance: Box<dyn Forward> = match config.platform {
                Platform::Dense => Box::new(
                    DenseModel::load(config, weights, device).map_err(|e| error(e.into()))?,
                ),
                Platform::Torchscript => Box::new(
                    TorchScriptModel::load(config, weights, device).map_err(|e| error(e.into()))?,
                ),
            };
            instances.push(instance);
        }
    }
    let worker = Worker::spawn(label, instances, policy, metrics)
        .map_err(|e| error(LoadProblem::Threads(e)))?;
    warm_up(&worker, config).map_err(error)?;
    Ok(worker)
}

/// Runs the model's `[[warmup]]` requests through the worker, waiting for each (blocking:
/// call outside the async runtime, or inside `spawn_blocking`).
fn warm_up(worker: &Worker, config: &ModelConfig) -> Result<(), LoadProblem> {
    let row = config.inputs.first().map_or(0, |i| i.row_elements());
    for (i, warmup) in config.warmup.iter().enumerate() {
        let rows = i64::from(warmup.batch_size);
        let len = rows
            .checked_mul(row)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(LoadProblem::WarmupTooLarge { index: i })?;
        for _ in 0..warmup.count {
            worker
                .infer_blocking(rows, vec![warmup.value; len])
                .map_err(|source| LoadProblem::Warmup { index: i, source })?;
        }
    }
    if !config.warmup.is_empty() {
        tracing::info!(worker = %worker.label(), requests = config.warmup.len(), "warmed up");
    }
    Ok(())
}

/// The batcher settings of a model: its `config.toml` over the server's defaults.
pub(super) fn batch_policy(config: &ModelConfig, defaults: WorkerOptions) -> BatchPolicy {
    let threads = config
        .instances
        .intra_op_threads
        .and_then(|t| i32::try_from(t).ok())
        .unwrap_or(defaults.intra_op_threads)
        .max(1);
    let queue = |configured: u32| match usize::try_from(configured) {
        Ok(n) if n > 0 => n,
        _ => defaults.queue_capacity.max(1),
    };
    match &config.dynamic_batching {
        Some(batching) if config.max_batch_size > 0 => BatchPolicy {
            batching: true,
            max_batch_size: i64::from(config.max_batch_size),
            max_queue_delay: Duration::from_micros(batching.max_queue_delay_us),
            preferred_batch_sizes: batching
                .preferred_batch_sizes
                .iter()
                .map(|&n| i64::from(n))
                .collect(),
            max_queue_size: queue(batching.max_queue_size),
            intra_op_threads: threads,
            queue_timeouts: QueueTimeouts::from_levels(|level| {
                Some(Duration::from_micros(batching.timeout_us(level)))
            }),
        },
        _ => BatchPolicy::unbatched(queue(0), threads),
    }
}
