//! Usage headers on every successful infer response: how the gateway meters a call without
//! the backend knowing tenants (DESIGN.md). The header names are a contract with the gateway.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Rows processed by the request: the batch dimension (Triton's "inference count").
pub const INFERENCE_COUNT_HEADER: HeaderName = HeaderName::from_static("x-maas-inference-count");

/// Compute time of the request's forward pass, integer microseconds, rounded up (so at least 1).
pub const COMPUTE_US_HEADER: HeaderName = HeaderName::from_static("x-maas-compute-us");

/// The model version that served the request (the version folder's number), so the gateway
/// can meter it even when the request named no version.
pub const MODEL_VERSION_HEADER: HeaderName = HeaderName::from_static("x-maas-model-version");

/// What one infer request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Rows (batch dimension) of the request.
    pub inference_count: u64,
    /// Forward-pass compute time.
    pub compute: Duration,
    /// The version that served the request.
    pub model_version: u64,
}

impl Usage {
    /// Compute time in whole microseconds, rounded up; at least 1 so that a metered call is
    /// never free by rounding.
    pub fn compute_us(&self) -> u64 {
        let micros = self.compute.as_nanos().div_ceil(1000);
        u64::try_from(micros).unwrap_or(u64::MAX).max(1)
    }

    /// The usage headers for a response.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            INFERENCE_COUNT_HEADER,
            HeaderValue::from(self.inference_count),
        );
        headers.insert(COMPUTE_US_HEADER, HeaderValue::from(self.compute_us()));
        headers.insert(MODEL_VERSION_HEADER, HeaderValue::from(self.model_version));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_rounds_up() {
        let usage = Usage {
            inference_count: 5,
            compute: Duration::from_nanos(1),
            model_version: 3,
        };
        assert_eq!(usage.compute_us(), 1);
        let usage = Usage {
            inference_count: 5,
            compute: Duration::from_nanos(1_500),
            model_version: 3,
        };
        assert_eq!(usage.compute_us(), 2);
        let headers = usage.headers();
        assert_eq!(headers["x-maas-inference-count"], "5");
        assert_eq!(headers["x-maas-compute-us"], "2");
        assert_eq!(headers["x-maas-model-version"], "3");
    }
}
