//! The model repository: models on disk, loaded into workers at startup.
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
//! Version folders are named by positive integers without leading zeros; other entries
//! (files, hidden folders, `.tmp-*` folders of a trainer still writing) are ignored. Every version
//! present is loaded; a request that names no version gets the highest version that loaded.
//!
//! A model or version that fails to load is logged with the file and the problem and kept as
//! *failed*: the server still starts and serves the others, the failed one answers 503 with the
//! reason, and the server is not ready (strict readiness, as Triton's `--strict-readiness`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tch::Device;

use crate::config::{ModelConfig, CONFIG_FILE};
use crate::dense::{DenseModel, WEIGHTS_FILE};
use crate::error::Error;
use crate::worker::{Worker, WorkerOptions};

/// How models are loaded.
#[derive(Debug, Clone, Copy)]
pub struct RepositoryOptions {
    /// The device the weights are loaded onto and forward passes run on.
    pub device: Device,
    /// Settings of each version's worker thread.
    pub worker: WorkerOptions,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            device: Device::Cpu,
            worker: WorkerOptions::default(),
        }
    }
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

/// The loaded model repository.
#[derive(Debug)]
pub struct ModelRepository {
    root: PathBuf,
    models: BTreeMap<String, ModelState>,
}

/// The state of one model folder.
#[derive(Debug)]
pub enum ModelState {
    /// The configuration was read; versions are loaded or failed one by one.
    Loaded(LoadedModel),
    /// The model folder cannot be used at all (bad or missing `config.toml`, no versions).
    Failed(LoadError),
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

impl ModelRepository {
    /// Scans `root` and loads every model and version in it.
    ///
    /// Errors only when `root` itself cannot be listed; problems inside model folders are
    /// logged and recorded (see the module documentation).
    pub fn load(root: &Path, options: RepositoryOptions) -> Result<ModelRepository, LoadError> {
        let entries = std::fs::read_dir(root).map_err(|e| LoadError {
            path: root.to_path_buf(),
            problem: format!("cannot list the model repository: {e}"),
        })?;
        let mut models = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoadError {
                path: root.to_path_buf(),
                problem: format!("cannot list the model repository: {e}"),
            })?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(path = %path.display(), "ignored: model folder name is not UTF-8");
                continue;
            };
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let state = match LoadedModel::load(&name, &path, options) {
                Ok(model) => ModelState::Loaded(model),
                Err(e) => {
                    tracing::error!(model = %name, error = %e, "model failed to load; skipped");
                    ModelState::Failed(e)
                }
            };
            models.insert(name, state);
        }
        Ok(ModelRepository {
            root: root.to_path_buf(),
            models,
        })
    }

    /// The folder the repository was loaded from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model folder found, with its state, by name.
    pub fn models(&self) -> &BTreeMap<String, ModelState> {
        &self.models
    }

    /// Whether every model and every version found loaded (the server's readiness).
    pub fn all_ready(&self) -> bool {
        self.models.values().all(|state| match state {
            ModelState::Loaded(model) => model
                .versions
                .values()
                .all(|v| matches!(v, VersionState::Ready(_))),
            ModelState::Failed(_) => false,
        })
    }

    /// The loaded model `name`: [`Error::ModelNotFound`] when there is no such folder,
    /// [`Error::NotReady`] when it failed to load.
    pub fn model(&self, name: &str) -> Result<&LoadedModel, Error> {
        match self.models.get(name) {
            None => Err(Error::ModelNotFound {
                model: name.to_string(),
            }),
            Some(ModelState::Failed(e)) => {
                Err(Error::NotReady(format!("model '{name}' is not ready: {e}")))
            }
            Some(ModelState::Loaded(model)) => Ok(model),
        }
    }
}

impl LoadedModel {
    /// Reads `<dir>/config.toml` and loads every version folder of the model.
    fn load(name: &str, dir: &Path, options: RepositoryOptions) -> Result<LoadedModel, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let config = ModelConfig::from_file(&config_path).map_err(|e| LoadError {
            path: config_path.clone(),
            problem: e.0,
        })?;
        let numbers = version_numbers(dir)?;
        if numbers.is_empty() {
            return Err(LoadError {
                path: dir.to_path_buf(),
                problem: "no version folders (expected numbered folders 1, 2, ... holding model.safetensors)".into(),
            });
        }
        let mut versions = BTreeMap::new();
        for number in numbers {
            let weights = dir.join(number.to_string()).join(WEIGHTS_FILE);
            let label = format!("{name}/{number}");
            let state = match load_version(&label, &config, &weights, options) {
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

    /// The versions that failed to load, ascending.
    pub fn failed_versions(&self) -> Vec<u64> {
        self.versions
            .iter()
            .filter(|(_, v)| matches!(v, VersionState::Failed(_)))
            .map(|(&n, _)| n)
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
                Error::NotReady(format!("model '{}' has no ready version", self.name))
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

/// Loads one version's weights and starts its worker.
fn load_version(
    label: &str,
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
    let model = DenseModel::load(config, weights, options.device).map_err(error)?;
    Worker::spawn(label.to_string(), model, options.worker)
        .map_err(|e| error(format!("cannot start the worker thread: {e}")))
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
    use tch::{Kind, Tensor};

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
