//! `[dynamic_batching]` in `config.toml`: the settings of the dynamic batcher.

use std::collections::BTreeMap;
use std::fmt;

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
    /// `default_timeout_us`: the longest a request may wait in the queue (from its arrival to
    /// the start of its forward pass, batching delay included), in microseconds; one that
    /// waits longer is answered 503 and never runs. Triton's
    /// `default_queue_policy.default_timeout_microseconds` (model configuration,
    /// `ModelQueuePolicy`, with `timeout_action: REJECT`). Default 0: no timeout.
    #[serde(default)]
    pub default_timeout_us: u64,
    /// `priority_timeout_us`: the queue timeout of particular priority levels, overriding
    /// `default_timeout_us` (Triton's `priority_queue_policy`, level to
    /// `default_timeout_microseconds`), e.g. `priority_timeout_us = { 1 = 50000, 8 = 0 }`;
    /// levels 1 to 16, 0 = no timeout for that level. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priority_timeout_us: BTreeMap<PriorityLevel, u64>,
}

/// A key of `priority_timeout_us`: a priority level, `1..=16` (the batcher's levels,
/// `x-maas-priority`, the tenant's `plans.priority`). TOML table keys are strings, so it is
/// read from the key's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PriorityLevel(u8);

impl PriorityLevel {
    /// The highest level.
    pub const MAX: u8 = 16;

    /// The level as a number, `1..=16`.
    pub fn level(self) -> u8 {
        self.0
    }
}

impl TryFrom<String> for PriorityLevel {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.trim()
            .parse::<u8>()
            .ok()
            .filter(|level| (1..=Self::MAX).contains(level))
            .map(PriorityLevel)
            .ok_or_else(|| {
                format!(
                    "[dynamic_batching] priority_timeout_us: a key is a priority level from 1 to {}, got '{text}'",
                    Self::MAX
                )
            })
    }
}

impl From<PriorityLevel> for String {
    fn from(level: PriorityLevel) -> String {
        level.to_string()
    }
}

impl fmt::Display for PriorityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl DynamicBatching {
    /// The queue timeout of priority `level` in microseconds (0: none): its
    /// `priority_timeout_us` entry, else `default_timeout_us`.
    pub fn timeout_us(&self, level: u8) -> u64 {
        self.priority_timeout_us
            .get(&PriorityLevel(level))
            .copied()
            .unwrap_or(self.default_timeout_us)
    }
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
