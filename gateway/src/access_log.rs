//! The access log: one JSON object per request on stdout (`metrics.access_log = "json"`), as
//! web servers write theirs, for log pipelines that join it with the backend's log lines by
//! request id or trace id.

use std::io::Write as _;

use serde::Serialize;
use uuid::Uuid;

/// One access log line. Latencies in microseconds; `upstream_us` is absent when the request
/// was answered by the gateway itself.
#[derive(Debug, Serialize)]
pub struct AccessLogLine<'a> {
    /// The request id (UUIDv7), as in `x-request-id` and the usage event.
    pub request_id: Uuid,
    /// The W3C trace id (32 hex digits).
    pub trace_id: &'a str,
    /// The calling tenant, when identified.
    pub tenant_id: Option<Uuid>,
    /// The API key, when the credential was one.
    pub key_id: Option<Uuid>,
    /// The model the path named.
    pub model: Option<&'a str>,
    /// The model version, from the path or the backend's answer.
    pub model_version: Option<&'a str>,
    /// The status the client got (0: none, the client went away).
    pub status: u16,
    /// What became of the request (`maas_gateway_requests_total`'s outcome label).
    pub outcome: &'a str,
    /// Total latency.
    pub latency_us: u64,
    /// The gateway's own time (routing, authentication, limits, metering).
    pub overhead_us: u64,
    /// From choosing a backend to the end of its response.
    pub upstream_us: Option<u64>,
}

impl AccessLogLine<'_> {
    /// Write the line to stdout (one `write` of the whole line under the stdout lock).
    pub fn write(&self) {
        match serde_json::to_string(self) {
            Ok(mut line) => {
                line.push('\n');
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
            }
            Err(e) => tracing::error!(error = %e, "access log line"),
        }
    }
}
