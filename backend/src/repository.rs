//! The model repository: models on disk, loaded into workers at startup and on request
//! (Triton's model repository extension: index, load, unload).
//!
//! Layout (the same as Triton's model repository):
//!
//! ```text
//! <repository>/
//!   <model>/
//!     config.toml            the model's configuration (crate::config)
//!     1/model.safetensors    version 1's weights (crate::dense)
//!     2/model.safetensors    version 2's weights
//! ```
//!
//! A TorchScript model (`platform = "torchscript"`) has `N/model.pt` instead
//! ([`crate::torchscript`]).
//!
//! Version folders are named by positive integers without leading zeros; other entries
//! (files, hidden folders, `.tmp-*` folders of a trainer still writing) are ignored. The
//! versions the model's `version_policy` selects are loaded (default: all); a request that
//! names no version gets the highest version that loaded. Each version runs its `[[warmup]]`
//! requests before it is ready.
//!
//! A model or version that fails to load at startup is logged with the file and the problem and
//! kept as *failed*: the server still starts and serves the others, the failed one answers 503
//! with the reason, and the server is not ready (strict readiness, as Triton's
//! `--strict-readiness`).
//!
//! Reloading ([`ModelRepository::load_model`]) builds the new model beside the old one and
//! swaps it in only when every selected version loaded: a failed load keeps the version that
//! was serving. Requests hold an `Arc` of the model they started on, so requests in flight
//! during a reload or unload finish on it; its threads stop when the last one is done.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, Platform, CONFIG_FILE};
use crate::dense::{DenseModel, WEIGHTS_FILE};
use crate::error::Error;
use crate::metrics::{PipelineMetrics, VersionMetrics};
use crate::pipeline::{PipelineModel, PipelineVersion};
use crate::torchscript::{TorchScriptModel, MODULE_FILE};
use crate::worker::{BatchPolicy, Forward, Worker, WorkerOptions};

/// How models are loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepositoryOptions {
    /// Server-wide defaults of each version's worker threads; a model's `config.toml`
    /// (`[instances]`, `[dynamic_batching]`) overrides them.
    pub worker: WorkerOptions,
}

/// A file (or folder) that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    /// The file or folder at fault.
    pub path: PathBuf,
    /// What is wrong with it, saying what was expected.
    pub problem: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for LoadError {}

/// The model repository: the models found on disk and their states.
#[derive(Debug)]
pub struct ModelRepository {
    root: PathBuf,
    options: RepositoryOptions,
    models: RwLock<BTreeMap<String, ModelState>>,
    /// Serializes load and unload, so that two reloads of one model do not interleave.
    control: Mutex<()>,
    /// Serves only the models it was built with ([`ModelRepository::fixed`]): no load, unload
    /// or folders from disk in the index.
    fixed: bool,
}

/// The state of one model folder.
#[derive(Debug, Clone)]
pub enum ModelState {
    /// The configuration was read; versions are loaded or failed one by one.
    Loaded(Arc<LoadedModel>),
    /// The model folder cannot be used at all (bad or missing `config.toml`, no versions).
    Failed(LoadError),
    /// Unloaded on request (`POST /v2/repository/models/{m}/unload`).
    Unloaded,
}

/// A model whose configuration was read.
#[derive(Debug)]
pub struct LoadedModel {
    name: String,
    config: ModelConfig,
    versions: BTreeMap<u64, VersionState>,
}

/// The state of one version folder.
#[derive(Debug)]
pub enum VersionState {
    /// Loaded and served by its worker.
    Ready(Worker),
    /// Failed to load.
    Failed(LoadError),
}

/// One row of the repository index (`POST /v2/repository/index`, Triton's format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The model's name.
    pub name: String,
    /// The version, absent for a model that has no loaded versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `READY`, `UNAVAILABLE` (failed or unloaded) or `UNLOADED` (on disk, never loaded).
    pub state: String,
    /// Why it is not ready; empty when it is.
    pub reason: String,
}

impl ModelRepository {
    /// Scans `root` and loads every model and version in it.
    ///
    /// Errors only when `root` itself cannot be listed; problems inside model folders are
    /// logged and recorded (see the module documentation).
    pub fn load(root: &Path, options: RepositoryOptions) -> Result<ModelRepository, LoadError> {
        let mut models = BTreeMap::new();
        for name in model_folders(root)? {
            let state = load_state(&name, &root.join(&name), options);
            models.insert(name, state);
        }
        Ok(ModelRepository {
            root: root.to_path_buf(),
            options,
            models: RwLock::new(models),
            control: Mutex::new(()),
            fixed: false,
        })
    }

    /// A repository that serves exactly `model`, already loaded (a pipeline stage, see
    /// [`crate::pipeline::load_stage`]); `root` is where its files came from. Load and unload
    /// requests are refused with [`Error::BadRequest`], and the index lists only `model`.
    pub fn fixed(root: &Path, options: RepositoryOptions, model: LoadedModel) -> ModelRepository {
        let mut models = BTreeMap::new();
        models.insert(model.name.clone(), ModelState::Loaded(Arc::new(model)));
        ModelRepository {
            root: root.to_path_buf(),
            options,
            models: RwLock::new(models),
            control: Mutex::new(()),
            fixed: true,
        }
    }

    /// [`Error::BadRequest`] for a repository built by [`ModelRepository::fixed`].
    fn refuse_control(&self, what: &str, name: &str) -> Result<(), Error> {
        if self.fixed {
            return Err(Error::BadRequest(format!(
                "cannot {what} model '{name}': this server serves a fixed model (a pipeline stage); repository control is off"
            )));
        }
        Ok(())
    }

    /// The folder the repository was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model known, with its state, by name (a snapshot).
    pub fn models(&self) -> BTreeMap<String, ModelState> {
        self.models
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether every model and every version loaded, unloaded models aside (the server's
    /// readiness).
    pub fn all_ready(&self) -> bool {
        self.models().values().all(|state| match state {
            ModelState::Loaded(model) => model
                .versions
                .values()
                .all(|v| matches!(v, VersionState::Ready(_))),
            ModelState::Failed(_) => false,
            ModelState::Unloaded => true,
        })
    }

    /// The loaded model `name`: [`Error::ModelNotFound`] when there is no such model,
    /// [`Error::NotReady`] when it failed to load or was unloaded.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, Error> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        match models.get(name) {
            None => Err(Error::ModelNotFound {
                model: name.to_string(),
            }),
            Some(ModelState::Failed(e)) => {
                Err(Error::NotReady(format!("model '{name}' is not ready: {e}")))
            }
            Some(ModelState::Unloaded) => Err(Error::NotReady(format!(
                "model '{name}' is unloaded (POST /v2/repository/models/{name}/load to load it)"
            ))),
            Some(ModelState::Loaded(model)) => Ok(model.clone()),
        }
    }

    /// Loads (or reloads) the model folder `name`. Blocking: reads weights, starts threads,
    /// runs warmup.
    ///
    /// The new model replaces the serving one only when every version its policy selects
    /// loaded; otherwise the serving one stays and the error says what failed
    /// ([`Error::BadRequest`], as Triton answers a failed load). A model that was not serving
    /// takes the new state even when it partly failed, so the index can report why.
    pub fn load_model(&self, name: &str) -> Result<(), Error> {
        self.refuse_control("load", name)?;
        let _control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        if !is_model_name(name) || !self.root.join(name).is_dir() {
            return Err(Error::BadRequest(format!(
                "cannot load model '{name}': no model folder '{name}' in the repository {}",
                self.root.display()
            )));
        }
        let state = load_state(name, &self.root.join(name), self.options);
        let failure = match &state {
            ModelState::Loaded(model) => {
                let failed = model.failures();
                (!failed.is_empty()).then(|| failed.join("; "))
            }
            ModelState::Failed(e) => Some(e.to_string()),
            ModelState::Unloaded => None,
        };
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let serving = matches!(models.get(name), Some(ModelState::Loaded(_)));
        match failure {
            None => {
                tracing::info!(model = %name, "model loaded");
                let old = models.insert(name.to_string(), state);
                drop(models);
                // The old model's threads stop when its last request is done.
                drop(old);
                Ok(())
            }
            Some(reason) => {
                if serving {
                    tracing::warn!(model = %name, %reason, "reload failed; the serving version stays");
                } else {
                    models.insert(name.to_string(), state);
                }
                drop(models);
                let kept = if serving {
                    "; the version that was serving stays"
                } else {
                    ""
                };
                Err(Error::BadRequest(format!(
                    "failed to load model '{name}': {reason}{kept}"
                )))
            }
        }
    }

    /// Stops serving model `name`; requests in flight finish. [`Error::ModelNotFound`] when
    /// the model is not known.
    pub fn unload_model(&self, name: &str) -> Result<(), Error> {
        self.refuse_control("unload", name)?;
        let _control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = models.get_mut(name) else {
            return Err(Error::ModelNotFound {
                model: name.to_string(),
            });
        };
        let old = std::mem::replace(state, ModelState::Unloaded);
        drop(models);
        drop(old);
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// The repository index: every model folder on disk now and every model known, with the
    /// state of each version (`ready_only`: only the ready ones).
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, Error> {
        let on_disk = if self.fixed {
            Vec::new()
        } else {
            model_folders(&self.root)
                .map_err(|e| Error::Internal(format!("cannot list the repository: {e}")))?
        };
        let models = self.models();
        let mut names: Vec<&String> = on_disk.iter().chain(models.keys()).collect();
        names.sort();
        names.dedup();
        let mut entries = Vec::new();
        let entry = |name: &str, version: Option<u64>, state: &str, reason: String| IndexEntry {
            name: name.to_string(),
            version: version.map(|v| v.to_string()),
            state: state.to_string(),
            reason,
        };
        for name in names {
            match models.get(name) {
                None => entries.push(entry(name, None, "UNLOADED", "not loaded".into())),
                Some(ModelState::Unloaded) => {
                    entries.push(entry(name, None, "UNAVAILABLE", "unloaded".into()))
                }
                Some(ModelState::Failed(e)) => {
                    entries.push(entry(name, None, "UNAVAILABLE", e.to_string()))
                }
                Some(ModelState::Loaded(model)) => {
                    for (&number, version) in &model.versions {
                        entries.push(match version {
                            VersionState::Ready(_) => {
                                entry(name, Some(number), "READY", String::new())
                            }
                            VersionState::Failed(e) => {
                                entry(name, Some(number), "UNAVAILABLE", e.to_string())
                            }
                        });
                    }
                }
            }
        }
        if ready_only {
            entries.retain(|e| e.state == "READY");
        }
        Ok(entries)
    }
}

/// Loads one model folder into its state, logging failures.
fn load_state(name: &str, dir: &Path, options: RepositoryOptions) -> ModelState {
    match LoadedModel::load(name, dir, options) {
        Ok(model) => ModelState::Loaded(Arc::new(model)),
        Err(e) => {
            tracing::error!(model = %name, error = %e, "model failed to load; skipped");
            ModelState::Failed(e)
        }
    }
}

/// Whether `name` can be a model folder name: not empty, not hidden, one path component.
fn is_model_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// The model folder names in `root`: UTF-8, not hidden, folders.
fn model_folders(root: &Path) -> Result<Vec<String>, LoadError> {
    let cannot = |e: std::io::Error| LoadError {
        path: root.to_path_buf(),
        problem: format!("cannot list the model repository: {e}"),
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %path.display(), "ignored: model folder name is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

impl LoadedModel {
    /// Reads `<dir>/config.toml` and loads the version folders its `version_policy` selects.
    fn load(name: &str, dir: &Path, options: RepositoryOptions) -> Result<LoadedModel, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let config = ModelConfig::from_file(&config_path).map_err(|e| LoadError {
            path: config_path.clone(),
            problem: e.0,
        })?;
        let found = version_numbers(dir)?;
        if found.is_empty() {
            return Err(LoadError {
                path: dir.to_path_buf(),
                problem: "no version folders (expected numbered folders 1, 2, ... holding model.safetensors)".into(),
            });
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
        self.versions
            .iter()
            .filter(|(_, v)| matches!(v, VersionState::Ready(_)))
            .map(|(&n, _)| n)
            .collect()
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
        self.versions
            .iter()
            .filter(|(_, v)| matches!(v, VersionState::Failed(_)))
            .map(|(&n, _)| n)
            .collect()
    }

    /// `version N: <why>` for each version that failed to load, ascending.
    fn failures(&self) -> Vec<String> {
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
    /// [`Error::VersionNotFound`] for a version that is not a positive integer or has no folder;
    /// [`Error::NotReady`] for a version that failed to load, or when no version loaded.
    pub fn version(&self, version: Option<&str>) -> Result<(u64, &Worker), Error> {
        let Some(requested) = version else {
            let ready = self.versions.iter().rev().find_map(|(&n, v)| match v {
                VersionState::Ready(worker) => Some((n, worker)),
                VersionState::Failed(_) => None,
            });
            return ready.ok_or_else(|| {
                Error::NotReady(format!(
                    "model '{}' has no ready version ({})",
                    self.name,
                    self.failures().join("; ")
                ))
            });
        };
        let not_found = || Error::VersionNotFound {
            model: self.name.clone(),
            version: requested.to_string(),
            available: self.ready_versions(),
        };
        let number = parse_version(requested).ok_or_else(not_found)?;
        match self.versions.get(&number) {
            None => Err(not_found()),
            Some(VersionState::Ready(worker)) => Ok((number, worker)),
            Some(VersionState::Failed(e)) => Err(Error::NotReady(format!(
                "model '{}' version {number} is not ready: {e}",
                self.name
            ))),
        }
    }
}

/// Loads one version's weights once per instance (on the configured device; for a model with
/// `[pipeline]`, its stages on theirs, see [`crate::pipeline`]) and starts its batcher and
/// instance threads.
fn load_version(
    name: &str,
    number: u64,
    config: &ModelConfig,
    weights: &Path,
    options: RepositoryOptions,
) -> Result<Worker, LoadError> {
    let error = |problem: String| LoadError {
        path: weights.to_path_buf(),
        problem,
    };
    if !weights.is_file() {
        return Err(error("missing weights file".into()));
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
            let model = PipelineModel::start(config, version, stages.clone()).map_err(error)?;
            instances.push(Box::new(model));
        }
    } else {
        let device = config.instances.device.resolve().map_err(error)?;
        for _ in 0..config.instances.count {
            instances.push(match config.platform {
                Platform::Dense => {
                    Box::new(DenseModel::load(config, weights, device).map_err(error)?)
                }
                Platform::Torchscript => {
                    Box::new(TorchScriptModel::load(config, weights, device).map_err(error)?)
                }
            });
        }
    }
    let worker = Worker::spawn(label, instances, policy, metrics)
        .map_err(|e| error(format!("cannot start the worker threads: {e}")))?;
    warm_up(&worker, config).map_err(error)?;
    Ok(worker)
}

/// Runs the model's `[[warmup]]` requests through the worker, waiting for each (blocking:
/// call outside the async runtime, or inside `spawn_blocking`).
fn warm_up(worker: &Worker, config: &ModelConfig) -> Result<(), String> {
    let row = config.inputs.first().map_or(0, |i| i.row_elements());
    for (i, warmup) in config.warmup.iter().enumerate() {
        let rows = i64::from(warmup.batch_size);
        let len = rows
            .checked_mul(row)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("warmup[{i}]: batch too large"))?;
        for _ in 0..warmup.count {
            worker
                .infer_blocking(rows, vec![warmup.value; len])
                .map_err(|e| format!("warmup[{i}] failed: {e}"))?;
        }
    }
    if !config.warmup.is_empty() {
        tracing::info!(worker = %worker.label(), requests = config.warmup.len(), "warmed up");
    }
    Ok(())
}

/// The batcher settings of a model: its `config.toml` over the server's defaults.
pub fn batch_policy(config: &ModelConfig, defaults: WorkerOptions) -> BatchPolicy {
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
        },
        _ => BatchPolicy::unbatched(queue(0), threads),
    }
}

/// The numbers of a model folder's version folders, ascending.
pub fn version_numbers(dir: &Path) -> Result<Vec<u64>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
        path: dir.to_path_buf(),
        problem: format!("cannot list the model folder: {e}"),
    })?;
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LoadError {
            path: dir.to_path_buf(),
            problem: format!("cannot list the model folder: {e}"),
        })?;
        if !entry.path().is_dir() {
            continue;
        }
        let Some(number) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        numbers.push(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A version number: a positive decimal integer without sign or leading zeros (`"1"`, `"12"`).
pub fn parse_version(text: &str) -> Option<u64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dense_classifier;
    use crate::dense::{bias_name, weight_name};
    use crate::testutil::TempDir;
    use tch::{Device, Kind, Tensor};

    fn write_version(model_dir: &Path, version: u64, config: &ModelConfig) {
        let dir = model_dir.join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let mut tensors = Vec::new();
        for (i, l) in config.layers.iter().enumerate() {
            tensors.push((
                weight_name(i),
                Tensor::zeros([l.out_features, l.in_features], (Kind::Float, Device::Cpu)),
            ));
            tensors.push((
                bias_name(i),
                Tensor::zeros([l.out_features], (Kind::Float, Device::Cpu)),
            ));
        }
        Tensor::write_safetensors(&tensors, dir.join(WEIGHTS_FILE)).unwrap();
    }

    #[test]
    fn version_names() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("12"), Some(12));
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "+1",
            "1a",
            "latest",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn loads_good_models_and_records_bad_ones() {
        let root = TempDir::new("repository");
        let config = dense_classifier(4, 3, 2);

        let good = root.path().join("good");
        std::fs::create_dir_all(&good).unwrap();
        std::fs::write(good.join(CONFIG_FILE), config.to_toml()).unwrap();
        write_version(&good, 1, &config);
        write_version(&good, 2, &config);
        std::fs::create_dir_all(good.join("notes")).unwrap();
        std::fs::create_dir_all(good.join(".tmp-3")).unwrap();

        // Version 3 has weights for another shape.
        let mixed = root.path().join("mixed");
        std::fs::create_dir_all(&mixed).unwrap();
        std::fs::write(mixed.join(CONFIG_FILE), config.to_toml()).unwrap();
        write_version(&mixed, 1, &config);
        write_version(&mixed, 3, &dense_classifier(5, 3, 2));

        let broken = root.path().join("broken");
        std::fs::create_dir_all(broken.join("1")).unwrap();
        std::fs::write(broken.join(CONFIG_FILE), "platform = \"dense\"\n").unwrap();

        let repo = ModelRepository::load(root.path(), RepositoryOptions::default()).unwrap();
        assert_eq!(repo.models().len(), 3);
        assert!(!repo.all_ready());

        let model = repo.model("good").unwrap();
        assert_eq!(model.ready_versions(), vec![1, 2]);
        assert_eq!(model.version(None).unwrap().0, 2);
        assert_eq!(model.version(Some("1")).unwrap().0, 1);
        assert!(matches!(
            model.version(Some("3")),
            Err(Error::VersionNotFound { .. })
        ));
        assert!(matches!(
            model.version(Some("x")),
            Err(Error::VersionNotFound { .. })
        ));

        let model = repo.model("mixed").unwrap();
        assert_eq!(model.ready_versions(), vec![1]);
        assert_eq!(model.version(None).unwrap().0, 1);
        let Err(Error::NotReady(message)) = model.version(Some("3")) else {
            panic!("version 3 should fail")
        };
        assert!(message.contains("model.safetensors"), "{message}");
        assert!(
            message.contains("layers.0.weight' has shape [3, 5], expected [3, 4]"),
            "{message}"
        );

        let Err(Error::NotReady(message)) = repo.model("broken") else {
            panic!("broken should fail")
        };
        assert!(message.contains("config.toml"), "{message}");
        assert!(matches!(
            repo.model("absent"),
            Err(Error::ModelNotFound { .. })
        ));
    }

    #[test]
    fn missing_root_is_an_error() {
        let root = TempDir::new("missing-root");
        let e = ModelRepository::load(&root.path().join("nope"), RepositoryOptions::default())
            .unwrap_err();
        assert!(e.problem.contains("cannot list the model repository"));
    }
}
