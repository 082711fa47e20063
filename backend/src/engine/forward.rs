//! What a loaded model instance does, a forward pass on rows of FP32, and how that fails.

/// A model that runs forward passes on rows of FP32 (a dense model, a TorchScript module, a
/// dense model split into pipeline stages).
pub trait Forward: Send + 'static {
    /// Runs `rows` rows of row-major `input` and returns the output row-major, on the host.
    /// Errors: a [`ForwardError`]; [`ForwardError::is_unavailable`] when a part of the model in
    /// another process did not answer.
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError>;
    /// Output elements per row.
    fn out_features(&self) -> i64;
}

/// Why a forward pass failed. The input was validated before, so every variant but
/// [`ForwardError::StageUnavailable`] is a fault of the server (500); that one means a part of
/// the model served elsewhere is down (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// libtorch failed during a dense model's forward pass (its message).
    #[error("forward pass failed: {0}")]
    Libtorch(String),
    /// libtorch failed running a TorchScript module (its message).
    #[error("TorchScript forward failed: {0}")]
    TorchScript(String),
    /// A TorchScript module returned another shape than the configured output's.
    #[error("the TorchScript module returned shape {found:?}, expected {expected:?} (the configured output dims)")]
    OutputShape {
        /// The shape returned.
        found: Vec<i64>,
        /// `[rows, ...output dims]`.
        expected: Vec<i64>,
    },
    /// A TorchScript module's output cannot be read back as FP32 on the host.
    #[error("cannot read the TorchScript output: {0}")]
    ReadOutput(String),
    /// A forward pass returned another number of elements than its rows need.
    #[error("forward pass returned {found} elements for {rows} rows of {features}")]
    OutputLength {
        /// Elements returned.
        found: usize,
        /// Rows of the batch.
        rows: i64,
        /// Output elements per row.
        features: i64,
    },
    /// The forward pass panicked.
    #[error("forward pass panicked")]
    Panicked,
    /// A pipeline got input of the wrong length.
    #[error("pipeline input has {found} elements, expected {rows} rows of {width}")]
    PipelineInput {
        /// Elements given.
        found: usize,
        /// Rows of the batch.
        rows: i64,
        /// Input elements per row.
        width: usize,
    },
    /// A pipeline's stage threads are gone.
    #[error("the pipeline's stage threads stopped")]
    PipelineStopped,
    /// A pipeline stage panicked on a micro-batch.
    #[error("pipeline stage {0} panicked")]
    StagePanicked(usize),
    /// A local pipeline stage failed.
    #[error("pipeline stage {index}: {source}")]
    Stage {
        /// The stage's index.
        index: usize,
        /// Why.
        source: Box<ForwardError>,
    },
    /// A remote pipeline stage is down, timed out or answered an error (503).
    #[error("pipeline stage {index} at {address} failed: {reason}")]
    StageUnavailable {
        /// The stage's index.
        index: usize,
        /// Its `host:port`.
        address: String,
        /// What went wrong.
        reason: String,
    },
}

impl ForwardError {
    /// Whether a part of the model served elsewhere failed (the model is unavailable, 503),
    /// rather than the computation here (500).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ForwardError::StageUnavailable { .. })
    }
}

impl From<tch::TchError> for ForwardError {
    fn from(e: tch::TchError) -> ForwardError {
        ForwardError::Libtorch(e.to_string())
    }
}
