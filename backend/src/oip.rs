//! Types of the KServe Open Inference Protocol v2, REST/JSON form (the protocol Triton and
//! KServe speak): <https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md>.
//!
//! These are the shapes of the JSON on the wire and nothing more; checking a request against a
//! model is [`crate::validation`]'s work.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::datatype::Datatype;

/// `GET /v2`: server metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLive {
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReady {
    pub ready: bool,
    /// Why the server is not ready; absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// `GET /v2/models/{model}[/versions/{version}]`: model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    /// The versions that can be called, ascending, as strings (`["1", "2"]`).
    pub versions: Vec<String>,
    /// The model's platform (`"dense"`).
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// One input or output in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: Datatype,
    /// `[-1, ...dims]`: `-1` is the batch dimension, which may have any size.
    pub shape: Vec<i64>,
}

/// `POST /v2/models/{model}[/versions/{version}]/infer`: an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// An identifier the client chose; echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Request parameters; none are interpreted yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInput {
    pub name: String,
    /// `[batch, ...dims]`.
    pub shape: Vec<i64>,
    /// A protocol datatype name; kept as text so that an unknown name gets a precise error.
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major, as a flat or nested JSON array.
    pub data: Value,
}

/// One requested output of an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// The answer to an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of an infer response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: Datatype,
    /// `[batch, ...dims]`.
    pub shape: Vec<i64>,
    /// The elements, row-major, flat.
    pub data: Vec<f32>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
