//! `version_policy` and `[[warmup]]` in `config.toml`: which version folders load, and the
//! requests each runs before it is ready.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `version_policy` in `config.toml` (Triton's version policy): `"all"`, `{ latest = N }` or
/// `{ specific = [1, 3] }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    /// Every version folder (the default).
    #[default]
    All,
    /// The `N` highest version folders.
    Latest(u32),
    /// Exactly these versions; a listed version without a folder is a load error.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    pub(super) fn is_default(&self) -> bool {
        *self == VersionPolicy::All
    }

    /// The versions to load out of the version folders found (`found` ascending).
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::All => found.to_vec(),
            VersionPolicy::Latest(n) => {
                let keep = usize::try_from(*n).unwrap_or(usize::MAX).min(found.len());
                found[found.len() - keep..].to_vec()
            }
            VersionPolicy::Specific(list) => {
                let mut list = list.clone();
                list.sort_unstable();
                list.dedup();
                list
            }
        }
    }

    /// `latest` keeps at least one version; `specific` lists version numbers of at least 1.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        match self {
            VersionPolicy::Latest(0) => Err(ConfigError::Invalid(
                "version_policy: latest must be at least 1".into(),
            )),
            VersionPolicy::Specific(list) if list.is_empty() || list.contains(&0) => {
                Err(ConfigError::Invalid(
                    "version_policy: specific needs version numbers of at least 1".into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// One `[[warmup]]` entry: `count` forward passes of `batch_size` rows of zeros (or of a
/// constant `value`) through the whole serving path (batcher and instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// `batch_size`: rows per warmup request, at least 1 (and at most `max_batch_size` when
    /// that is positive).
    pub batch_size: u32,
    /// `count`: how many times to send it. Default 1.
    #[serde(default = "super::one")]
    pub count: u32,
    /// `value`: every input element. Default 0.
    #[serde(default)]
    pub value: f32,
}

impl Warmup {
    /// Entry `index`: a batch between 1 and `max_batch_size` (when positive), a finite value.
    pub(super) fn check(&self, index: usize, max_batch_size: u32) -> Result<(), ConfigError> {
        if self.batch_size == 0 || (max_batch_size > 0 && self.batch_size > max_batch_size) {
            return Err(ConfigError::Invalid(format!(
                "warmup[{index}]: batch_size {} is not between 1 and max_batch_size",
                self.batch_size
            )));
        }
        if !self.value.is_finite() {
            return Err(ConfigError::Invalid(format!(
                "warmup[{index}]: value must be finite"
            )));
        }
        Ok(())
    }
}
