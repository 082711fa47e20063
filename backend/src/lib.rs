//! `maas-backend`: the inference server of maas. It serves dense and TorchScript models from a
//! model repository over the KServe Open Inference Protocol v2 (REST, JSON and Triton's binary
//! tensor data extension), gathers requests into batches per model version with a dynamic
//! batcher, runs forward passes with libtorch on dedicated instance threads (CPU or CUDA),
//! reports usage in response headers for the gateway's metering and metrics at `/metrics`,
//! and loads and unloads models on request. Training new versions and importing Keras models
//! live in the `maas-train` crate, which uses the names re-exported at this crate's root.
//!
//! Modules, in the order a request meets them: [`server`] (routes) → [`extract`] (body, path)
//! → [`binary`] (JSON header and binary part) → [`oip`] (protocol types) → [`validation`]
//! (request → typed input, with [`datatype`]) → [`repository`] (model → version → [`worker`]:
//! batching queue and instance threads) → [`dense`] or [`torchscript`] (forward pass) →
//! [`usage`] (headers) and [`metrics`]; [`pipeline`] runs a dense model split into stages; [`error`] maps every failure to a status and a JSON
//! body. [`config`] is a model's `config.toml`; [`bench`] makes and times benchmark models;
//! [`cli`] is the command line.

#![warn(missing_docs)]

pub mod bench;
pub mod binary;
pub mod cli;
pub mod config;
pub mod datatype;
pub mod dense;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod oip;
pub mod pipeline;
pub mod repository;
pub mod server;
pub mod torchscript;
pub mod usage;
pub mod validation;
pub mod worker;

#[cfg(test)]
mod testutil;

// What `maas-train` uses: the model configuration, the dense model and its weight names, and
// the version folders of the repository on disk.
pub use config::{dense_classifier, Activation, DeviceSpec, LayerConfig, ModelConfig, CONFIG_FILE};
pub use dense::{activate, bias_name, weight_name, DenseModel, WEIGHTS_FILE};
pub use repository::version_numbers;
