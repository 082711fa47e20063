//! `[instances]` in `config.toml`: how many copies of each version run, and where.

use serde::{Deserialize, Serialize};

use super::{ConfigError, DeviceSpec};

/// `[instances]` in `config.toml`: copies of the model that run forward passes in parallel,
/// each on its own thread (Triton's `instance_group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    /// `count`: copies per version, each with its own weights and thread. Default 1.
    #[serde(default = "super::one")]
    pub count: u32,
    /// `device`: `"cpu"` (the default) or `"cuda:N"` (`"cuda"` is `cuda:0`). A CUDA device that
    /// is not present makes the version fail to load with a message saying so.
    #[serde(default)]
    pub device: DeviceSpec,
    /// `intra_op_threads`: libtorch threads per forward pass of each instance; default the
    /// server's `--intra-op-threads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intra_op_threads: Option<u32>,
}

impl Default for Instances {
    fn default() -> Self {
        Instances {
            count: 1,
            device: DeviceSpec::Cpu,
            intra_op_threads: None,
        }
    }
}

impl Instances {
    pub(super) fn is_default(&self) -> bool {
        *self == Instances::default()
    }

    /// At least one instance, and at least one thread when threads are given.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.count == 0 {
            return Err(ConfigError::Invalid(
                "[instances] count must be at least 1".into(),
            ));
        }
        if self.intra_op_threads == Some(0) {
            return Err(ConfigError::Invalid(
                "[instances] intra_op_threads must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
