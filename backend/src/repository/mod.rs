//! The model repository: models on disk, loaded into workers at startup and on request
//! (Triton's model repository extension: index, load, unload).
//!
//! The layout on disk is the same as Triton's model repository (module `layout`): a folder
//! per model with its `config.toml` ([`crate::config`]) and numbered version folders holding
//! `model.safetensors` (a dense model) or `model.pt` (a TorchScript model). The
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
//!
//! Modules: `layout` (folders and version numbers), `model` (a model's versions and how one is
//! loaded into a worker of [`crate::engine`]), `stage` (the fixed repository of
//! `serve-stage`), `error`.

mod error;
mod layout;
mod model;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_MAX_REQUEST_ROWS;
use crate::engine::WorkerOptions;
use layout::{is_model_name, model_folders};

pub use error::{LoadError, LoadProblem, RepositoryError};
pub use layout::version_numbers;
pub use model::{LoadedModel, VersionState};
pub use stage::load_stage;

/// How models are loaded.
#[derive(Debug, Clone, Copy)]
pub struct RepositoryOptions {
    /// Server-wide defaults of each version's worker threads; a model's `config.toml`
    /// (`[instances]`, `[dynamic_batching]`) overrides them.
    pub worker: WorkerOptions,
    /// The `max_request_rows` of a model with `max_batch_size = 0` whose `config.toml` sets
    /// none.
    pub max_request_rows: u32,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            worker: WorkerOptions::default(),
            max_request_rows: DEFAULT_MAX_REQUEST_ROWS,
        }
    }
}

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
    Failed(Arc<LoadError>),
    /// Unloaded on request (`POST /v2/repository/models/{m}/unload`).
    Unloaded,
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
    /// [`load_stage`]); `root` is where its files came from. Load and unload requests are
    /// refused with [`RepositoryError::Fixed`], and the index lists only `model`.
    fn fixed(root: &Path, options: RepositoryOptions, model: LoadedModel) -> ModelRepository {
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

    /// [`RepositoryError::Fixed`] for a repository built by [`ModelRepository::fixed`].
    fn refuse_control(&self, action: &'static str, name: &str) -> Result<(), RepositoryError> {
        if self.fixed {
            return Err(RepositoryError::Fixed {
                action,
                model: name.to_string(),
            });
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
            ModelState::Loaded(model) => model.all_ready(),
            ModelState::Failed(_) => false,
            ModelState::Unloaded => true,
        })
    }

    /// The loaded model `name`: [`RepositoryError::ModelNotFound`] when there is no such
    /// model, [`RepositoryError::NotReady`] when it failed to load or was unloaded.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, RepositoryError> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        match models.get(name) {
            None => Err(RepositoryError::ModelNotFound {
                model: name.to_string(),
            }),
            Some(ModelState::Failed(e)) => Err(RepositoryError::NotReady(format!(
                "model '{name}' is not ready: {e}"
            ))),
            Some(ModelState::Unloaded) => Err(RepositoryError::NotReady(format!(
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
    /// ([`RepositoryError::LoadFailed`]). A model that was not serving takes the new state
    /// even when it partly failed, so the index can report why.
    pub fn load_model(&self, name: &str) -> Result<(), RepositoryError> {
        self.refuse_control("load", name)?;
        let _control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        if !is_model_name(name) || !self.root.join(name).is_dir() {
            return Err(RepositoryError::NoModelFolder {
                model: name.to_string(),
                root: self.root.clone(),
            });
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
                Err(RepositoryError::LoadFailed {
                    model: name.to_string(),
                    reason,
                    kept: serving,
                })
            }
        }
    }

    /// Stops serving model `name`; requests in flight finish.
    /// [`RepositoryError::ModelNotFound`] when the model is not known.
    pub fn unload_model(&self, name: &str) -> Result<(), RepositoryError> {
        self.refuse_control("unload", name)?;
        let _control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = models.get_mut(name) else {
            return Err(RepositoryError::ModelNotFound {
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
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>, RepositoryError> {
        let on_disk = if self.fixed {
            Vec::new()
        } else {
            model_folders(&self.root).map_err(RepositoryError::List)?
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
            ModelState::Failed(Arc::new(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::layout::parse_version;
    use super::RepositoryError as Error;
    use super::*;
    use crate::config::{dense_classifier, ModelConfig, CONFIG_FILE};
    use crate::engine::{bias_name, weight_name, WEIGHTS_FILE};
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
        assert!(e
            .problem
            .to_string()
            .contains("cannot list the model repository"));
    }
}
