//! `maas-bench`: the benchmark suite's own tools, kept out of the shipped `maas-backend`
//! command. `make bench` (bench/run.sh) and `scripts/gpu-check.sh` call its binary.
//!
//! Modules:
//! - `model`: model repositories made for a benchmark (a dense model with random weights);
//! - `timing`: in-process timings with no HTTP and no batcher, the ceilings the HTTP figures of
//!   BENCHMARKS.md are compared against (the forward pass of a served model version, raw matrix
//!   products).
//!
//! `timing` reads what `model` writes only through the model repository on disk, as the server
//! does; neither module uses the other.

#![warn(missing_docs)]

pub mod model;
pub mod timing;

#[cfg(test)]
mod testutil;
