//! `[dynamic_batching]` in `config.toml`: the settings of the dynamic batcher.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[dynamic_batching]` in `config.toml` (the settings of Triton's dynamic batcher).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// `max_queue_delay_us`: the longest a free instance holds a batch back for more requests,
    /// in microseconds, before it runs anyway: from the first request's arrival at an idle
    /// instance, or from the moment a busy instance became free (requests that queued while
    /// every instance was busy are never cut short of a full batch before the free instance
    /// has given late ones this delay to join). Default 0: run with what is queued. The rules
    /// are those of the engine's batcher (`decide`).
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// `preferred_batch_sizes`: batch sizes (rows) that run at once, without waiting out
    /// `max_queue_delay_us`, when a free instance's batch grows to one of them. Each between 1
    /// and `max_batch_size`. Default none.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u32>,
    /// `max_queue_size`: requests that may wait for a forward pass; one more is answered 503
    /// at once. Default 0: the server's `--queue-capacity`.
    #[serde(default)]
    pub max_queue_size: u32,
}

impl DynamicBatching {
    /// Batching needs `max_batch_size > 0`, and every preferred size is between 1 and it.
    pub(super) fn check(&self, max_batch_size: u32) -> Result<(), ConfigError> {
        if max_batch_size == 0 {
            return Err(ConfigError::Invalid(
                "[dynamic_batching] needs max_batch_size > 0 (the most rows per forward pass)"
                    .into(),
            ));
        }
        if let Some(bad) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&size| size == 0 || size > max_batch_size)
        {
            return Err(ConfigError::Invalid(format!(
                "[dynamic_batching] preferred_batch_sizes: {bad} is not between 1 and max_batch_size = {max_batch_size}"
            )));
        }
        Ok(())
    }
}
