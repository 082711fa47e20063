//! Usage headers on every successful infer response: how the gateway meters a call without
//! the backend knowing tenants (see ARCHITECTURE.md, "The path of one request"). The header names are the
//! wire contract of `maas-protocol`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use maas_protocol::{COMPUTE_US, INFERENCE_COUNT, MODEL_VERSION};

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
            HeaderName::from_static(INFERENCE_COUNT),
            HeaderValue::from(self.inference_count),
        );
        headers.insert(
            HeaderName::from_static(COMPUTE_US),
            HeaderValue::from(self.compute_us()),
        );
        headers.insert(
            HeaderName::from_static(MODEL_VERSION),
            HeaderValue::from(self.model_version),
        );
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
