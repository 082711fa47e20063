//! Why an infer request is refused before it reaches a model: one enum with a stable
//! [`ValidationError::error_type`] per kind and a message that says what was expected, mapped
//! to an HTTP status once, by the HTTP server.

use maas_protocol::{BinaryDataError, Datatype, UnknownDatatype};
use serde_json::Value;

use super::data::DataError;
use super::element::BinaryElementError;

/// Why an infer request does not fit the model (a client error, 400), except
/// [`ValidationError::UnsupportedModel`] (the server's fault).
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The body does not split at its `Inference-Header-Content-Length`.
    #[error(transparent)]
    BinaryData(#[from] BinaryDataError),
    /// The body (or its JSON part) is empty.
    #[error("expected a JSON request body, got an empty body")]
    EmptyBody,
    /// The JSON part does not start with an object.
    #[error("request body must be a JSON object ({{\"inputs\": [...]}})")]
    NotAnObject,
    /// The JSON part is not valid JSON.
    #[error("request body is not valid JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    /// The JSON part is JSON but not an infer request (a missing or mistyped field).
    #[error("request body does not fit the infer request schema: {0}")]
    Schema(#[source] serde_json::Error),
    /// Bytes follow the JSON object inside the JSON part.
    #[error("the JSON part (Inference-Header-Content-Length bytes) has bytes after the JSON object: {0}")]
    AfterJsonPart(#[source] serde_json::Error),
    /// Bytes follow the JSON object of a body without `Inference-Header-Content-Length`.
    #[error("request body has bytes after the JSON object ({0}); binary tensor data needs the header Inference-Header-Content-Length")]
    AfterJsonBody(#[source] serde_json::Error),
    /// A boolean parameter (`binary_data_output`, `binary_data`) is not a boolean.
    #[error("{context}: parameter {key} must be true or false, got {value}")]
    BoolParameter {
        /// `request` or `output '<name>'`.
        context: String,
        /// The parameter's name.
        key: &'static str,
        /// What was sent.
        value: Value,
    },
    /// The request has no input.
    #[error("expected 1 input '{expected}', got none")]
    NoInput {
        /// The model's input.
        expected: String,
    },
    /// The request has more than one input.
    #[error("expected 1 input '{expected}', got more (second: '{second}')")]
    ExtraInput {
        /// The model's input.
        expected: String,
        /// The second input's name.
        second: String,
    },
    /// The input's name is not the model's.
    #[error("unknown input '{name}' (expected '{expected}')")]
    UnknownInput {
        /// The name sent.
        name: String,
        /// The model's input.
        expected: String,
    },
    /// The input does not fit the model's input.
    #[error("input '{name}': {problem}")]
    Input {
        /// The input's name.
        name: String,
        /// What is wrong with it.
        problem: InputError,
    },
    /// Binary data follows the JSON part but no input takes it.
    #[error("the body has {0} bytes after the JSON header (Inference-Header-Content-Length) but no input has the parameter binary_data_size")]
    UnusedBinary(usize),
    /// An output that the model does not have.
    #[error("unknown output '{name}' (expected one of {})", .known.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", "))]
    UnknownOutput {
        /// The name asked for.
        name: String,
        /// The model's outputs.
        known: Vec<String>,
    },
    /// An output asked for twice.
    #[error("output '{0}' is requested twice")]
    DuplicateOutput(String),
    /// The model does not have exactly one input (a configuration the server cannot validate
    /// requests for; its configuration rules exclude it).
    #[error("dense model with {0} inputs")]
    UnsupportedModel(usize),
}

/// What is wrong with the one input of a request.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The datatype is not a protocol name.
    #[error(transparent)]
    UnknownDatatype(#[from] UnknownDatatype),
    /// The datatype is not numeric (`BYTES`).
    #[error("datatype {0} is not supported (expected a numeric datatype: BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BF16)")]
    NotNumeric(Datatype),
    /// The shape is not `[batch, ...dims]`.
    #[error("expected shape {expected:?}, got {shape:?}")]
    Shape {
        /// `[-1, ...dims]`.
        expected: Vec<i64>,
        /// The shape sent.
        shape: Vec<i64>,
    },
    /// The batch dimension is below 1.
    #[error("expected shape {expected:?} with a batch of at least 1, got {shape:?}")]
    EmptyBatch {
        /// `[-1, ...dims]`.
        expected: Vec<i64>,
        /// The shape sent.
        shape: Vec<i64>,
    },
    /// The batch dimension is over the model's `max_batch_size`.
    #[error("batch {batch} is over the model's max_batch_size {max_batch_size} (shape {shape:?}); split the request")]
    OverMaxBatch {
        /// The batch sent.
        batch: i64,
        /// The model's `max_batch_size`.
        max_batch_size: u32,
        /// The shape sent.
        shape: Vec<i64>,
    },
    /// The batch dimension is over the most rows a request may send to a model without
    /// batching limits (`max_request_rows`, by default the server's `--max-request-rows`).
    #[error("batch {batch} is over the {limit} rows a request may send to this model (max_request_rows; shape {shape:?}); split the request")]
    OverMaxRequestRows {
        /// The batch sent.
        batch: i64,
        /// The model's `max_request_rows`.
        limit: u32,
        /// The shape sent.
        shape: Vec<i64>,
    },
    /// The shape's element count overflows.
    #[error("shape {0:?} has too many elements")]
    TooManyElements(Vec<i64>),
    /// The input has both `data` and `binary_data_size`.
    #[error("has both JSON data and binary_data_size; send one of them")]
    DataAndBinary,
    /// The input has neither `data` nor `binary_data_size`.
    #[error("has neither data nor the parameter binary_data_size")]
    NoData,
    /// `binary_data_size` is not a non-negative integer.
    #[error("binary_data_size must be a non-negative integer (bytes), got {0}")]
    BadBinaryDataSize(Value),
    /// `binary_data_size` does not match the shape and datatype.
    #[error("binary_data_size is {size} bytes, expected {expected} ({elements} elements of {datatype}, {element_size} bytes each, for shape {shape:?})")]
    BinarySize {
        /// `binary_data_size` as sent.
        size: usize,
        /// The bytes the shape and datatype need.
        expected: usize,
        /// Elements of the shape.
        elements: usize,
        /// The datatype.
        datatype: Datatype,
        /// Bytes per element.
        element_size: usize,
        /// The shape sent.
        shape: Vec<i64>,
    },
    /// The body's binary part is not `binary_data_size` long.
    #[error("binary_data_size is {size} bytes but the body has {available} bytes after the JSON header (Inference-Header-Content-Length)")]
    BinaryLength {
        /// `binary_data_size` as sent.
        size: usize,
        /// Bytes after the JSON part.
        available: usize,
    },
    /// A binary element is not a value the model can take.
    #[error(transparent)]
    BinaryElement(#[from] BinaryElementError),
    /// `BF16` sent as JSON.
    #[error("BF16 has no JSON form; send it as binary tensor data (binary_data_size)")]
    Bf16Json,
    /// The JSON `data` does not fit the shape and datatype.
    #[error(transparent)]
    Data(#[from] DataError),
}

impl ValidationError {
    /// A stable machine name of the error kind, for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            ValidationError::BinaryData(_) => "binary_data_header",
            ValidationError::EmptyBody | ValidationError::NotAnObject => "not_a_json_object",
            ValidationError::Syntax(_) => "json_syntax",
            ValidationError::Schema(_) => "json_schema",
            ValidationError::AfterJsonPart(_) | ValidationError::AfterJsonBody(_) => {
                "bytes_after_json"
            }
            ValidationError::BoolParameter { .. } => "parameter",
            ValidationError::NoInput { .. }
            | ValidationError::ExtraInput { .. }
            | ValidationError::UnknownInput { .. } => "input_name",
            ValidationError::Input { problem, .. } => problem.error_type(),
            ValidationError::UnusedBinary(_) => "binary_data_size",
            ValidationError::UnknownOutput { .. } | ValidationError::DuplicateOutput(_) => {
                "output_name"
            }
            ValidationError::UnsupportedModel(_) => "unsupported_model",
        }
    }

    /// The error of input `name`.
    pub(super) fn input(name: &str, problem: impl Into<InputError>) -> ValidationError {
        ValidationError::Input {
            name: name.to_string(),
            problem: problem.into(),
        }
    }
}

impl InputError {
    fn error_type(&self) -> &'static str {
        match self {
            InputError::UnknownDatatype(_) | InputError::NotNumeric(_) => "datatype",
            InputError::Shape { .. }
            | InputError::EmptyBatch { .. }
            | InputError::TooManyElements(_) => "shape",
            InputError::OverMaxBatch { .. } => "max_batch_size",
            InputError::OverMaxRequestRows { .. } => "max_request_rows",
            InputError::DataAndBinary
            | InputError::NoData
            | InputError::BadBinaryDataSize(_)
            | InputError::BinarySize { .. }
            | InputError::BinaryLength { .. } => "binary_data_size",
            InputError::BinaryElement(_) | InputError::Data(_) => "data",
            InputError::Bf16Json => "datatype",
        }
    }
}
