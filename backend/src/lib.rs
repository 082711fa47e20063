//! `maas-backend`: the inference server of maas. It serves dense models from a model repository
//! over the KServe Open Inference Protocol v2 (REST, JSON), runs their forward passes with
//! libtorch on a worker thread per model version, reports usage in response headers for the
//! gateway's metering, and trains new versions from CSV tables.
//!
//! Modules, in the order a request meets them: [`server`] (routes) → [`extract`] (body, path)
//! → [`oip`] (protocol types) → [`validation`] (request → typed input, with [`datatype`]) →
//! [`repository`] (model → version → [`worker`]) → [`dense`] (forward pass) → [`usage`]
//! (headers); [`error`] maps every failure to a status and a JSON body. [`config`] is a model's
//! `config.toml`; [`train`] and [`dataset`] make new versions; [`cli`] is the command line.

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod dataset;
pub mod datatype;
pub mod dense;
pub mod error;
pub mod extract;
pub mod oip;
pub mod repository;
pub mod server;
pub mod train;
pub mod usage;
pub mod validation;
pub mod worker;

#[cfg(test)]
mod testutil;
