//! Why a model folder or version cannot be loaded, and why a repository request fails.

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::engine::{self, WorkerError};

/// A file (or folder) of the repository that could not be loaded, and why.
#[derive(Debug)]
pub struct LoadError {
    /// The file or folder at fault.
    pub path: PathBuf,
    /// What is wrong with it, saying what was expected.
    pub problem: LoadProblem,
}

impl LoadError {
    /// `problem` of the file or folder `path`.
    pub fn at(path: impl Into<PathBuf>, problem: impl Into<LoadProblem>) -> LoadError {
        LoadError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.problem)
    }
}

/// What is wrong with a file or folder of the repository.
#[derive(Debug, thiserror::Error)]
pub enum LoadProblem {
    /// The repository folder cannot be listed.
    #[error("cannot list the model repository: {0}")]
    ListRepository(#[source] std::io::Error),
    /// A model folder cannot be listed.
    #[error("cannot list the model folder: {0}")]
    ListModel(#[source] std::io::Error),
    /// A model folder has no version folders.
    #[error("no version folders (expected numbered folders 1, 2, ... holding model.safetensors)")]
    NoVersions,
    /// A version folder has no weights (or module) file.
    #[error("missing weights file")]
    MissingWeights,
    /// The model's `config.toml` cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine cannot load the version (weights, module, device, stages).
    #[error(transparent)]
    Engine(#[from] engine::LoadError),
    /// The version's threads cannot be started.
    #[error("cannot start the worker threads: {0}")]
    Threads(#[source] std::io::Error),
    /// A `[[warmup]]` entry's batch does not fit in memory.
    #[error("warmup[{index}]: batch too large")]
    WarmupTooLarge {
        /// The entry's index.
        index: usize,
    },
    /// A `[[warmup]]` request failed.
    #[error("warmup[{index}] failed: {source}")]
    Warmup {
        /// The entry's index.
        index: usize,
        /// Why.
        source: WorkerError,
    },
}

impl From<crate::config::DeviceUnavailable> for LoadProblem {
    fn from(e: crate::config::DeviceUnavailable) -> LoadProblem {
        LoadProblem::Engine(e.into())
    }
}

/// Why a request to the repository (find a model or version, load, unload, index) fails. The
/// HTTP server maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No model folder of this name (404).
    #[error("unknown model '{model}'")]
    ModelNotFound {
        /// The name asked for.
        model: String,
    },
    /// The model exists but has no such version (404).
    #[error(
        "model '{model}' has no version '{version}' (ready versions: {})",
        list(available)
    )]
    VersionNotFound {
        /// The model's name.
        model: String,
        /// The version asked for, as sent.
        version: String,
        /// The versions that can be called.
        available: Vec<u64>,
    },
    /// The model or version failed to load, was unloaded, or has no ready version (503); the
    /// message says which and why.
    #[error("{0}")]
    NotReady(String),
    /// A load request names no model folder of the repository (400).
    #[error("cannot load model '{model}': no model folder '{model}' in the repository {}", root.display())]
    NoModelFolder {
        /// The name asked for.
        model: String,
        /// The repository's folder.
        root: PathBuf,
    },
    /// A load request failed (400, as Triton answers a failed load).
    #[error("failed to load model '{model}': {reason}{}", if *kept { "; the version that was serving stays" } else { "" })]
    LoadFailed {
        /// The model's name.
        model: String,
        /// What failed, per version.
        reason: String,
        /// Whether the version that was serving stays.
        kept: bool,
    },
    /// Load or unload asked of a server that serves a fixed model, a pipeline stage (400).
    #[error("cannot {action} model '{model}': this server serves a fixed model (a pipeline stage); repository control is off")]
    Fixed {
        /// `load` or `unload`.
        action: &'static str,
        /// The model's name.
        model: String,
    },
    /// The repository folder cannot be listed (500).
    #[error("cannot list the repository: {0}")]
    List(#[source] LoadError),
}

/// `1, 2`, or `none`.
fn list(versions: &[u64]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
