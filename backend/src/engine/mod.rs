//! The inference engine: model instances loaded on libtorch and the runner that feeds them.
//!
//! - `dense` (with `safetensors`): a stack of fully connected layers from `model.safetensors`;
//!   `torchscript`: a `model.pt` module; `pipeline`: a dense model split into stages (GPipe,
//!   Huang et al. 2019), some of them in other processes. Each is a [`Forward`].
//! - `batcher`: the dynamic batching queue of one model version and its rules; `drr`: its
//!   per-key queues served by weighted deficit round robin; `fairness`: the key and priority
//!   a job is scheduled by; `job`: what a request hands to it; `worker`: the instance threads that take batches off the queue and
//!   run them.
//! - `transfer`: a batch from the host to the device and back, cast to and from the model's
//!   precision (pinned memory and non-blocking copies on CUDA).
//! - `error` and `forward`: why loading ([`LoadError`]) or a forward pass ([`ForwardError`])
//!   fails.
//!
//! The engine knows model configurations ([`crate::config`]) but not the repository on disk
//! nor HTTP: the repository builds instances and workers from it, and the HTTP server sends
//! jobs to the workers.

mod batcher;
mod dense;
mod drr;
mod error;
mod fairness;
mod forward;
mod job;
mod pipeline;
mod safetensors;
mod torchscript;
mod transfer;
mod worker;

pub use batcher::{BatchPolicy, QueueTimeouts};
pub use dense::{activate, bias_name, weight_name, DenseModel, WEIGHTS_FILE};
pub use error::{LoadError, RemoteStageError};
pub use fairness::{Fairness, FairnessKey, Priority};
pub use forward::{Forward, ForwardError};
pub use job::{ForwardOutput, InferJob, WorkerError};
pub use pipeline::{PipelineModel, PipelineVersion};
pub use torchscript::{TorchScriptModel, MODULE_FILE};
pub use worker::{Worker, WorkerOptions};
