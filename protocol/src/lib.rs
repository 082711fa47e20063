//! `maas-protocol`: the wire contract between the maas gateway, the backend and the load
//! tester, and nothing else (serde types and byte layouts; no runtime, no I/O).
//!
//! - [`Datatype`] (module `datatype`): the tensor datatypes of the Open Inference Protocol v2,
//!   their wire names and element sizes.
//! - module `rest`: the JSON bodies of the protocol's REST API ([`InferRequest`],
//!   [`InferResponse`], [`ModelMetadata`], health, [`ErrorBody`]), as in
//!   kserve/open-inference-protocol `specification/protocol/inference_rest.md`.
//! - module `binary`: Triton's binary tensor data extension (a JSON header followed by raw
//!   tensor bytes, `Inference-Header-Content-Length`): [`split_body`], [`BinaryBody`],
//!   [`encode`] / [`decode`] of [`Element`]s.
//! - module `headers`: the HTTP header names of the request id and of the usage a backend
//!   reports on every successful infer response (how the gateway meters a call without the
//!   backend knowing tenants; see ARCHITECTURE.md, "The path of one request").

#![warn(missing_docs)]

mod binary;
mod datatype;
mod headers;
mod rest;

pub use binary::{
    decode, encode, split_body, BinaryBody, BinaryDataError, Element, BINARY_DATA,
    BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, HEADER_CONTENT_LENGTH,
};
pub use datatype::{Datatype, UnknownDatatype};
pub use headers::{
    COMPUTE_US, FAIRNESS_KEY, GATEWAY_SECRET, INFERENCE_COUNT, MODEL_VERSION, PRIORITY, REQUEST_ID,
    TRACEPARENT,
};
pub use rest::{
    ErrorBody, InferRequest, InferResponse, JsonData, ModelMetadata, ModelReady, RequestInput,
    RequestOutput, ResponseOutput, ServerLive, ServerMetadata, ServerReady, TensorMetadata,
};
