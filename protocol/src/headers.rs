//! Header names, all lower case (HTTP/1.1 field names are case-insensitive, RFC 9110 §5.1;
//! HTTP/2 requires lower case, RFC 9113 §8.2.1).

/// The request id, a UUIDv7: set by the gateway on the forwarded request and returned to the
/// client; the usage event's key.
pub const REQUEST_ID: &str = "x-request-id";

/// Backend response header: rows processed by the request, the batch dimension summed over
/// its inputs (Triton's "inference count"), a decimal integer.
pub const INFERENCE_COUNT: &str = "x-maas-inference-count";

/// Backend response header: compute time of the request's forward pass, in integer
/// microseconds, rounded up (so at least 1), a decimal integer.
pub const COMPUTE_US: &str = "x-maas-compute-us";

/// Backend response header: the model version that served the request (the version folder's
/// number), so the gateway can meter it even when the request named no version.
pub const MODEL_VERSION: &str = "x-maas-model-version";

/// W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `version-traceid-parentid-flags`,
/// e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. The gateway accepts it from
/// the client (or makes one) and forwards it to the backend with its own span as the parent;
/// both write the trace id in their request log lines.
pub const TRACEPARENT: &str = "traceparent";

/// Gateway request header: the opaque fairness key the backend's batcher queues the request
/// under, 32 hex digits (the first 128 bits of HMAC-SHA256 of the tenant id under a key only
/// the gateway holds, RFC 2104), so the backend tells tenants apart without knowing them.
/// Honoured only with a matching [`GATEWAY_SECRET`]; the gateway removes it from clients.
pub const FAIRNESS_KEY: &str = "x-maas-fairness-key";

/// Gateway request header: the priority level of the tenant's plan (`plans.priority`), a
/// decimal integer from 1 to 16, the weight of its fairness key in the batcher. Honoured only
/// with a matching [`GATEWAY_SECRET`]; the gateway removes it from clients.
pub const PRIORITY: &str = "x-maas-priority";

/// Gateway request header: the secret shared by the gateway and the backends
/// (`[upstream] fairness_secret`, the backend's `--gateway-secret`) that makes the backend
/// trust [`FAIRNESS_KEY`] and [`PRIORITY`]. The gateway removes it from clients.
pub const GATEWAY_SECRET: &str = "x-maas-gateway-secret";
