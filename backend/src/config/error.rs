//! Why a model's `config.toml` cannot be used.

/// Why a `config.toml` cannot be used. The message says what was expected; the caller adds the
/// file name (the repository's load error does).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// The text is not TOML of the configuration's form: a syntax error, an unknown key (a
    /// misspelt key is caught, not ignored), a value of the wrong type or an unknown name
    /// (platform, activation, datatype). The message is the TOML parser's.
    #[error("{0}")]
    Syntax(String),
    /// A device is not `"cpu"`, `"cuda"` or `"cuda:N"`.
    #[error("invalid device '{0}' (expected \"cpu\", \"cuda\" or \"cuda:N\")")]
    InvalidDevice(String),
    /// A range of layers (a pipeline stage) that is empty or goes past the model's layers.
    #[error("layers {start}..{end} are not a non-empty range of the model's {layers} layers")]
    LayerRange {
        /// The first layer of the range.
        start: usize,
        /// One past the last layer of the range.
        end: usize,
        /// The model's number of layers.
        layers: usize,
    },
    /// The values parse but break a rule of the configuration; the message names the key (as
    /// `layers[1]`, `[dynamic_batching] preferred_batch_sizes`, `pipeline.stages[0]`) and says
    /// what was expected.
    #[error("{0}")]
    Invalid(String),
}
