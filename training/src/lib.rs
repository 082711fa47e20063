//! `maas-train`: makes new versions of dense models in a `maas-backend` model repository, by
//! training on a CSV table or by importing a Keras HDF5 file. It is its own crate (and binary)
//! so that the serving binary links neither libhdf5 nor the trainer's dependencies; it takes
//! the model configuration, the dense model and the repository's version folders from
//! `maas-backend`'s crate root (see ARCHITECTURE.md).
//!
//! Modules (private; what other crates use is re-exported below): `train` runs a training
//! job from its options to a written version, built from `dataset` (the CSV table), `rng`
//! (seeded SplitMix64 streams), `net` (the network as a function of its parameters), `loss`,
//! `optim` (Adam, SGD), `parallel` (data-parallel gradients over devices), `checkpoint`
//! (resumable state per epoch) and `metrics` (what a run measured); `keras` imports a Keras
//! model; `version_writer` writes version folders and `config.toml` atomically; `cli` is the
//! command line.

#![warn(missing_docs)]

mod checkpoint;
mod cli;
mod dataset;
mod keras;
mod loss;
mod metrics;
mod net;
mod optim;
mod parallel;
mod rng;
mod train;
mod version_writer;

pub use cli::Cli;
pub use keras::{import_keras, read_keras_h5, ImportReport, KerasDense, KerasModel};
pub use loss::LossKind;
pub use metrics::{EpochMetrics, Metrics};
pub use optim::OptimizerKind;
pub use train::{train, TrainOptions, TrainReport};
