//! `[pipeline]` in `config.toml`: a dense model split into stages (pipeline parallelism as in
//! GPipe, Huang et al. 2019, <https://arxiv.org/abs/1811.06965>), the rules its stages follow,
//! and the configuration and name under which one stage is served by `maas-backend serve-stage`.

use std::ops::Range;

use maas_protocol::Datatype;
use serde::{Deserialize, Serialize};

use super::{
    ConfigError, DeviceSpec, Instances, LayerConfig, ModelConfig, Platform, TensorConfig,
    VersionPolicy,
};

/// The input tensor's name of a stage model (activations in, FP32 `[rows, in]`).
pub const STAGE_INPUT: &str = "input";
/// The output tensor's name of a stage model (activations out, FP32 `[rows, out]`).
pub const STAGE_OUTPUT: &str = "output";

/// `[pipeline]` in `config.toml`: a dense model split into stages. Example:
///
/// ```toml
/// [pipeline]
/// micro_batches = 4
/// [[pipeline.stages]]
/// layers = [0, 4]
/// device = "cpu"
/// [[pipeline.stages]]
/// layers = [4, 8]
/// address = "127.0.0.1:8011"
/// ```
///
/// A forward batch of `B` rows is cut into `min(micro_batches, B)` micro-batches of
/// near-equal rows; stage `k` works on micro-batch `i` while stage `k + 1` works on `i - 1`.
/// With `S` equal stages, the share of stage time spent idle (the bubble) is
/// `(S - 1) / (micro_batches + S - 1)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `micro_batches`: how many micro-batches a forward batch is cut into (at most one per
    /// row). At least 1; default 4.
    #[serde(default = "default_micro_batches")]
    pub micro_batches: u32,
    /// `timeout_ms`: the longest one micro-batch may take at a remote stage (connect, send,
    /// compute, answer), in milliseconds, before the request fails with 503. Default 30000.
    #[serde(default = "default_stage_timeout_ms")]
    pub timeout_ms: u64,
    /// `[[pipeline.stages]]`: the stages in order; together their `layers` ranges cover every
    /// layer of the model exactly once, in order.
    pub stages: Vec<StageConfig>,
}

fn default_micro_batches() -> u32 {
    4
}

fn default_stage_timeout_ms() -> u64 {
    30_000
}

/// One `[[pipeline.stages]]` entry: a range of layers and where it runs (exactly one of
/// `device` and `address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// `layers`: `[first, end)`, a half-open range of layer indices (0-based, as in
    /// `layers.{i}.weight`), not empty; exactly two numbers.
    #[serde(deserialize_with = "two_indices")]
    pub layers: [usize; 2],
    /// `device`: run this stage in this process on `"cpu"` or `"cuda:N"`, on its own thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// `address`: `host:port` of a `maas-backend serve-stage` process serving exactly these
    /// layers of this model and version; activations go to it as binary tensors over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `[first, end]`: a list of exactly two layer indices (serde's fixed-size arrays would ignore
/// extra elements).
fn two_indices<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<[usize; 2], D::Error> {
    let list = Vec::<usize>::deserialize(deserializer)?;
    <[usize; 2]>::try_from(list.as_slice()).map_err(|_| {
        serde::de::Error::custom(format!(
            "layers must be [first, end] (two layer indices), got {} numbers",
            list.len()
        ))
    })
}

impl StageConfig {
    /// The layer indices of the stage, `first..end`.
    pub fn range(&self) -> Range<usize> {
        self.layers[0]..self.layers[1]
    }
}

impl Pipeline {
    /// At least one micro-batch, a positive timeout, and stages that are not empty, each with
    /// exactly one of `device` and `address`, covering `0..layers` in order without gap or
    /// overlap; `instances` keeps the default device (each stage names its own).
    pub(super) fn check(&self, layers: usize, instances: &Instances) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.micro_batches == 0 {
            return invalid("[pipeline] micro_batches must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return invalid("[pipeline] timeout_ms must be at least 1".into());
        }
        if self.stages.is_empty() {
            return invalid("[pipeline] needs at least one [[pipeline.stages]] entry".into());
        }
        if instances.device != DeviceSpec::Cpu {
            return invalid(
                "[instances] device does not apply to a model with [pipeline]; give each [[pipeline.stages]] entry its device".into(),
            );
        }
        let mut next = 0usize;
        for (i, stage) in self.stages.iter().enumerate() {
            let [first, end] = stage.layers;
            if first != next {
                let expected = if i == 0 {
                    "the first stage must start at layer 0".to_string()
                } else {
                    format!(
                        "stages must be contiguous: stages[{}] ends at {next}",
                        i - 1
                    )
                };
                return invalid(format!(
                    "pipeline.stages[{i}]: layers = [{first}, {end}] starts at {first}, but {expected}"
                ));
            }
            if end <= first {
                return invalid(format!(
                    "pipeline.stages[{i}]: layers = [{first}, {end}] is empty (a half-open range [first, end) with end > first)"
                ));
            }
            if end > layers {
                return invalid(format!(
                    "pipeline.stages[{i}]: layers = [{first}, {end}] goes past the model's {layers} layers"
                ));
            }
            match (&stage.device, &stage.address) {
                (Some(_), None) => {}
                (None, Some(address)) => {
                    if let Err(e) = check_address(address) {
                        return invalid(format!("pipeline.stages[{i}]: address '{address}': {e}"));
                    }
                }
                _ => {
                    return invalid(format!(
                        "pipeline.stages[{i}]: give exactly one of device (\"cpu\", \"cuda:N\": this process) and address (\"host:port\" of a maas-backend serve-stage)"
                    ))
                }
            }
            next = end;
        }
        if next != layers {
            return invalid(format!(
                "[pipeline] stages cover layers [0, {next}) but the model has {layers} layers; the last stage must end at {layers}"
            ));
        }
        Ok(())
    }
}

/// Checks that `address` is `host:port` with a non-empty host and a port from 1 to 65535.
fn check_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if host.is_empty() || host.contains('/') {
        return Err("expected host:port with a host name or IP address".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port '{port}' is not between 1 and 65535")),
    }
}

impl ModelConfig {
    /// The layers `range` of the model: [`ConfigError::LayerRange`] when the range is empty or
    /// goes past the model's layers.
    pub fn layer_range(&self, range: Range<usize>) -> Result<&[LayerConfig], ConfigError> {
        self.layers
            .get(range.clone())
            .filter(|l| !l.is_empty())
            .ok_or(ConfigError::LayerRange {
                start: range.start,
                end: range.end,
                layers: self.layers.len(),
            })
    }
}

/// The name under which `serve-stage` serves layers `range` of `model`:
/// `{model}.layers-{first}-{end}` (`dense8.layers-4-8`). The range is in the name so that a
/// front whose config expects other layers at that address gets 404 at load instead of wrong
/// answers.
pub fn stage_model_name(model: &str, range: &Range<usize>) -> String {
    format!("{model}.layers-{}-{}", range.start, range.end)
}

/// The configuration of a stage model: layers `range` of the dense model `config`, input
/// [`STAGE_INPUT`] with dims `[in of layer first]`, output [`STAGE_OUTPUT`] with dims
/// `[out of layer end - 1]`, on `device`, one instance, no batching (each micro-batch is its
/// own forward pass). Errors when `config` is not dense or the range is not in its layers.
pub fn stage_config(
    config: &ModelConfig,
    range: Range<usize>,
    device: DeviceSpec,
) -> Result<ModelConfig, ConfigError> {
    if config.platform != Platform::Dense {
        return Err(ConfigError::Invalid(format!(
            "only a dense model can be split into stages, this one is {}",
            config.platform.as_str()
        )));
    }
    let layers = config.layer_range(range)?;
    let tensor = |name: &str, features: i64| TensorConfig {
        name: name.to_string(),
        datatype: Datatype::Fp32,
        dims: vec![features],
    };
    let (Some(first), Some(last)) = (layers.first(), layers.last()) else {
        return Err(ConfigError::Invalid("empty layer range".into()));
    };
    let stage = ModelConfig {
        platform: Platform::Dense,
        max_batch_size: 0,
        max_request_rows: None,
        torchscript_output: super::TorchScriptOutput::Tensor,
        precision: config.precision,
        dynamic_batching: None,
        instances: Instances {
            count: 1,
            device,
            intra_op_threads: None,
        },
        version_policy: VersionPolicy::All,
        warmup: Vec::new(),
        inputs: vec![tensor(STAGE_INPUT, first.in_features)],
        outputs: vec![tensor(STAGE_OUTPUT, last.out_features)],
        layers: layers.to_vec(),
        pipeline: None,
    };
    stage.validate()?;
    Ok(stage)
}
