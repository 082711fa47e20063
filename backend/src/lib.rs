//! `maas-backend`: the inference server of maas. It serves dense and TorchScript models from a
//! model repository over the KServe Open Inference Protocol v2 (REST, JSON and Triton's binary
//! tensor data extension; the wire types are `maas-protocol`'s), gathers requests into batches
//! per model version with a dynamic batcher, runs forward passes with libtorch on dedicated
//! instance threads (CPU or CUDA), reports usage in response headers for the gateway's
//! metering and metrics at `/metrics`, and loads and unloads models on request. Training new
//! versions and importing Keras models live in the `maas-train` crate, which uses the names
//! re-exported at this crate's root.
//!
//! Modules, in the order a request meets them (see ARCHITECTURE.md for the design):
//! - `http`: the OIP REST server (routes, extractors, the one error-to-status map, usage
//!   headers);
//! - `validation`: an infer request checked against the model and turned into typed input
//!   (a `ValidationError` otherwise);
//! - `repository`: models on disk, loaded into workers, found by name and version;
//! - `engine`: the batching queue, the instance threads and the models they run (dense,
//!   TorchScript, pipeline stages);
//! - `config`: a model's `config.toml`; `metrics`: the counters and their exposition;
//!   `device_memory`: the GPU memory the process uses (NVML), a process-wide metric;
//!   `cli`: the command line.
//!
//! Dependencies point one way: `cli` → `http` → `validation`, `repository` → `engine` →
//! `config` (and `metrics`); `validation` → `config`. No module uses one that uses it.
//!
//! The crate root re-exports what other crates use: the model configuration, the dense model
//! and its tensor names (the training crate writes versions this server reads), the request
//! decoder (for property tests) and the command line.

#![warn(missing_docs)]

mod cli;
mod config;
mod device_memory;
mod engine;
mod http;
mod metrics;
mod repository;
mod validation;

#[cfg(test)]
mod testutil;

pub use cli::{init_tracing, Cli};
pub use config::{
    dense_classifier, Activation, ConfigError, DeviceSpec, DeviceUnavailable, LayerConfig,
    ModelConfig, Platform, Precision, TensorConfig, CONFIG_FILE,
};
pub use engine::{
    activate, bias_name, weight_name, DenseModel, ForwardError, LoadError, WEIGHTS_FILE,
};
pub use maas_protocol::Datatype;
pub use repository::version_numbers;
pub use validation::{parse_json_part, split_body, validate, ValidationError};
