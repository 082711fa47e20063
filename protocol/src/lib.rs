//! `maas-protocol`: the wire contract between the maas gateway, the backend and the load
//! tester, and nothing else (no runtime, no I/O).
//!
//! - [`headers`]: the HTTP header names of the request id and of the usage a backend reports
//!   on every successful infer response (how the gateway meters a call without the backend
//!   knowing tenants; see ARCHITECTURE.md, "Metering").

#![warn(missing_docs)]

mod headers;

pub use headers::{COMPUTE_US, INFERENCE_COUNT, MODEL_VERSION, REQUEST_ID};
