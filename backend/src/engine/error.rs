//! Why a model instance cannot be loaded.

use maas_protocol::Datatype;

use crate::config::{ConfigError, DeviceUnavailable, PrecisionUnavailable};

/// Why the engine cannot load a model instance (a dense model's weights, a TorchScript module,
/// the stages of a pipeline). The messages name the tensor, stage or address at fault and say
/// what was expected; the repository adds the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The weights file cannot be opened or read.
    #[error("cannot read weights: {0}")]
    WeightsIo(#[from] std::io::Error),
    /// libtorch cannot read the weights file.
    #[error("cannot read weights: {0}")]
    WeightsLibtorch(#[source] tch::TchError),
    /// The weights file breaks the safetensors format
    /// (<https://github.com/huggingface/safetensors#format>).
    #[error("cannot read weights: {0}")]
    WeightsFormat(String),
    /// A tensor the configuration needs is not in the file.
    #[error("missing tensor '{name}' (expected FP32 {shape:?})")]
    MissingTensor {
        /// The tensor's name (`layers.0.weight`).
        name: String,
        /// The shape the configuration expects.
        shape: Vec<i64>,
    },
    /// A tensor is not FP32.
    #[error("tensor '{name}' is {found}, expected FP32 ({fp32})")]
    NotFp32 {
        /// The tensor's name.
        name: String,
        /// Its element type, as the file or libtorch names it (`F64`, `Double`).
        found: String,
        /// FP32 in the same naming (`F32`, `Float`).
        fp32: &'static str,
    },
    /// A tensor has another shape than the configuration says.
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// Its shape in the file.
        found: Vec<i64>,
        /// The shape the configuration expects.
        expected: Vec<i64>,
    },
    /// A bias tensor is in the file for a layer configured without bias.
    #[error("tensor '{name}' is present but layers[{layer}] has bias = false")]
    UnexpectedBias {
        /// The bias tensor's name.
        name: String,
        /// The layer's index.
        layer: usize,
    },
    /// The file holds tensors no configured layer uses (the file and the config disagree).
    #[error("tensors not used by any configured layer: {} (the config has {layers} layers)", .names.join(", "))]
    UnusedTensors {
        /// The unused tensors' names, sorted.
        names: Vec<String>,
        /// The configured layers.
        layers: usize,
    },
    /// A dense model without layers.
    #[error("a dense model needs at least one layer")]
    NoLayers,
    /// A layer's tensors cannot be moved to the device.
    #[error("cannot move layers.{layer} to {device:?}: {source}")]
    ToDevice {
        /// The layer's index.
        layer: usize,
        /// The device.
        device: tch::Device,
        /// libtorch's error.
        source: tch::TchError,
    },
    /// The configuration does not fit what is loaded from it (a layer range outside the
    /// model, a model that cannot be split into stages).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configured device is not on this machine.
    #[error(transparent)]
    Device(#[from] DeviceUnavailable),
    /// The configured device cannot run the model's `precision`.
    #[error(transparent)]
    Precision(#[from] PrecisionUnavailable),
    /// A TorchScript model's configuration lacks its input or output.
    #[error("a TorchScript model needs one [[inputs]] and one [[outputs]]")]
    TorchScriptTensors,
    /// The module's return value is not what `torchscript_output` says (found at load, by a
    /// forward pass of one row of zeros).
    #[error("the TorchScript module returns {found}; {hint}")]
    TorchScriptOutput {
        /// What it returned (`a tuple of 2 values`).
        found: String,
        /// What to change.
        hint: &'static str,
    },
    /// The TorchScript module failed the load-time forward pass of one row of zeros.
    #[error("the TorchScript module failed a forward pass of one row of zeros: {0}")]
    TorchScriptProbe(String),
    /// libtorch cannot load the TorchScript module.
    #[error("cannot load the TorchScript module: {0}")]
    TorchScript(#[source] tch::TchError),
    /// A pipeline was asked of a model without `[pipeline]`.
    #[error("the model has no [pipeline]")]
    NoPipeline,
    /// A pipeline stage failed to load.
    #[error("pipeline stage {index} (layers {first}..{end}): {source}")]
    Stage {
        /// The stage's index.
        index: usize,
        /// Its first layer.
        first: usize,
        /// One past its last layer.
        end: usize,
        /// Why.
        source: Box<LoadError>,
    },
    /// A stage's thread cannot be started.
    #[error("cannot start the stage thread: {0}")]
    StageThread(#[source] std::io::Error),
    /// A stage's thread ended before it reported its load.
    #[error("the stage thread stopped while loading")]
    StageStopped,
    /// Loading a stage panicked.
    #[error("loading the stage panicked")]
    StagePanicked,
    /// A stage in another process cannot be reached or does not serve what this stage needs.
    #[error(transparent)]
    RemoteStage(#[from] Box<RemoteStageError>),
}

/// Why a pipeline stage in another process (`maas-backend serve-stage`) cannot be used: the
/// answer to its metadata request, checked when the pipeline starts.
#[derive(Debug, thiserror::Error)]
pub enum RemoteStageError {
    /// The HTTP client of a remote stage cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// A remote stage does not answer its metadata request.
    #[error("stage at {address} does not answer {url}: {source}")]
    StageUnreachable {
        /// The stage's `host:port`.
        address: String,
        /// The metadata URL asked.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// A remote stage answers its metadata request with an error status.
    #[error("stage at {address} answered {status} to {url} (is `maas-backend serve-stage` running there with these layers and this version?): {message}")]
    StageRefused {
        /// The stage's `host:port`.
        address: String,
        /// The metadata URL asked.
        url: String,
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// The answer's `error`, or its body.
        message: String,
    },
    /// A remote stage's metadata is not OIP model metadata.
    #[error("stage at {address}: metadata is not OIP model metadata: {source}")]
    StageMetadata {
        /// The stage's `host:port`.
        address: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A remote stage serves other shapes than this stage's layers need.
    #[error("stage at {address} serves inputs {inputs:?} and outputs {outputs:?}, expected FP32 {want_in:?} in and {want_out:?} out")]
    StageShapes {
        /// The stage's `host:port`.
        address: String,
        /// Shape and datatype of its first input, if any.
        inputs: Option<(Vec<i64>, Datatype)>,
        /// Shape and datatype of its first output, if any.
        outputs: Option<(Vec<i64>, Datatype)>,
        /// The input shape expected.
        want_in: Vec<i64>,
        /// The output shape expected.
        want_out: Vec<i64>,
    },
}
