//! The JSON bodies of the KServe Open Inference Protocol v2, REST form (the protocol Triton and
//! KServe speak): <https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md>.
//!
//! These are the shapes of the JSON on the wire and nothing more (serde only); checking a
//! request against a model is the server's work (`maas-backend`'s validation).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Datatype, BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE};

/// `GET /v2`: server metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// The server's name (`maas-backend`).
    pub name: String,
    /// The server's version.
    pub version: String,
    /// Protocol extensions supported (`binary_tensor_data`, `model_repository`, ...).
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLive {
    /// Always `true` when the server answers.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReady {
    /// Whether every model loaded and the server is not shutting down.
    pub ready: bool,
    /// Why the server is not ready; absent when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v2/models/{model}[/versions/{version}]/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    /// The model's name.
    pub name: String,
    /// Whether the model (or version) can be called.
    pub ready: bool,
}

/// `GET /v2/models/{model}[/versions/{version}]`: model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// The versions that can be called, ascending, as strings (`["1", "2"]`).
    pub versions: Vec<String>,
    /// The model's platform (`"dense"`).
    pub platform: String,
    /// The model's inputs.
    pub inputs: Vec<TensorMetadata>,
    /// The model's outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// One input or output in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// The element type.
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
    /// Request parameters. Interpreted: `binary_data_output` (bool: return every output as
    /// binary tensor data unless an output says otherwise). Others are accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

impl InferRequest {
    /// A request for `inputs` with no id and no parameters, asking for every output.
    pub fn new(inputs: Vec<RequestInput>) -> InferRequest {
        InferRequest {
            id: None,
            parameters: None,
            inputs,
            outputs: None,
        }
    }

    /// The same request asking for every output as binary tensor data (the request parameter
    /// `binary_data_output`, what Triton's Python client sends when no output is named).
    pub fn binary_data_output(mut self) -> InferRequest {
        self.parameters
            .get_or_insert_with(Map::new)
            .insert(BINARY_DATA_OUTPUT.into(), Value::Bool(true));
        self
    }
}

/// One input tensor of an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInput {
    /// The input's name, as in the model metadata.
    pub name: String,
    /// `[batch, ...dims]`.
    pub shape: Vec<i64>,
    /// A protocol datatype name; kept as text so that an unknown name gets a precise error.
    pub datatype: String,
    /// Input parameters. Interpreted: `binary_data_size` (the number of bytes of this input in
    /// the binary part of the body, Triton's binary tensor data extension). Others are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major, as a flat or nested JSON array; absent when the input travels
    /// as binary data (`binary_data_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonData>,
}

/// The `data` of an input sent as JSON, kept as the JSON text it arrived as (a copy of that
/// part of the body), so that a server converts it straight into its tensor type in one pass.
///
/// A parsed JSON tree (`serde_json::Value`) costs about 32 bytes per element plus a vector per
/// nested row: for a body of short numbers (`0.5,`, 4 bytes each) that is 8-16 times the body,
/// where this is once the body. Serializes as the same JSON text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonData(Box<serde_json::value::RawValue>);

impl JsonData {
    /// The JSON text of `data`, exactly as sent (e.g. `[[0.1, 0.2], [0.3, 0.4]]`).
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl From<&Value> for JsonData {
    fn from(value: &Value) -> Self {
        // `Value`'s Display is its JSON text, which is always valid JSON.
        let text = value.to_string();
        JsonData(
            serde_json::value::RawValue::from_string(text)
                .expect("a serde_json::Value prints as valid JSON"),
        )
    }
}

impl PartialEq for JsonData {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl RequestInput {
    /// An input whose elements are the JSON `data` (a flat or nested array, row-major).
    pub fn json(name: impl Into<String>, shape: Vec<i64>, datatype: Datatype, data: Value) -> Self {
        RequestInput {
            name: name.into(),
            shape,
            datatype: datatype.to_string(),
            parameters: None,
            data: Some(JsonData::from(&data)),
        }
    }

    /// An input whose elements travel as binary tensor data: `binary_data_size` bytes of the
    /// body's binary part.
    pub fn binary(
        name: impl Into<String>,
        shape: Vec<i64>,
        datatype: Datatype,
        binary_data_size: usize,
    ) -> Self {
        RequestInput {
            name: name.into(),
            shape,
            datatype: datatype.to_string(),
            parameters: Some(size_parameter(binary_data_size)),
            data: None,
        }
    }
}

/// One requested output of an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    /// The output's name, as in the model metadata.
    pub name: String,
    /// Output parameters. Interpreted: `binary_data` (bool: return this output as binary
    /// tensor data). Others are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

impl RequestOutput {
    /// The output `name`, asked for as binary tensor data (the output parameter `binary_data`).
    pub fn binary(name: impl Into<String>) -> RequestOutput {
        let mut parameters = Map::new();
        parameters.insert(BINARY_DATA.into(), Value::Bool(true));
        RequestOutput {
            name: name.into(),
            parameters: Some(parameters),
        }
    }
}

/// The answer to an infer request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// The version that answered (the highest ready one when the request named none).
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The output tensors asked for.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of an infer response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutput {
    /// The output's name.
    pub name: String,
    /// The element type.
    pub datatype: Datatype,
    /// `[batch, ...dims]`.
    pub shape: Vec<i64>,
    /// `{"binary_data_size": n}` when the output travels as binary data after the JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    /// The elements, row-major, flat; absent for a binary output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

impl ResponseOutput {
    /// An output whose elements are in the JSON (`data`).
    pub fn json(
        name: impl Into<String>,
        datatype: Datatype,
        shape: Vec<i64>,
        data: Vec<f32>,
    ) -> Self {
        ResponseOutput {
            name: name.into(),
            datatype,
            shape,
            parameters: None,
            data: Some(data),
        }
    }

    /// An output whose elements travel as binary tensor data: `binary_data_size` bytes of the
    /// body's binary part.
    pub fn binary(
        name: impl Into<String>,
        datatype: Datatype,
        shape: Vec<i64>,
        binary_data_size: usize,
    ) -> Self {
        ResponseOutput {
            name: name.into(),
            datatype,
            shape,
            parameters: Some(size_parameter(binary_data_size)),
            data: None,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what was expected.
    pub error: String,
}

/// `{"binary_data_size": size}`: the parameters of a tensor in binary form.
fn size_parameter(size: usize) -> Map<String, Value> {
    let mut parameters = Map::new();
    parameters.insert(BINARY_DATA_SIZE.into(), Value::from(size));
    parameters
}
