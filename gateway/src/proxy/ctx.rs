//! The per-request state the pingora phases share ([`RequestCtx`], pingora's `CTX`), and the
//! usage event it becomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use maas_billing::{CallKind, UsageEvent};
use uuid::Uuid;

use crate::auth::Principal;
use crate::limits::{LimitKind, Permit, RequestLimits};
use crate::metering::Admission;
use crate::metrics::{Outcome, RequestObservation};
use crate::pools::Lease;
use crate::trace::TraceContext;

/// Per-request state shared by the phases.
#[derive(Debug)]
pub struct RequestCtx {
    /// UUIDv7, the usage event's key and the client's `x-request-id`.
    pub request_id: Uuid,
    /// Wall-clock start (UTC), stored in the usage event: the request id's UUIDv7 timestamp
    /// (millisecond precision), so a request id always maps to the same `started_at` (the
    /// usage table is partitioned by it; see `maas_billing::insert_usage_events`).
    pub started_at: DateTime<Utc>,
    started: Instant,
    /// Model and version from the path, when the route names one.
    pub model: Option<String>,
    /// Model version from the path.
    pub model_version: Option<String>,
    /// What kind of call the path names (only inference calls are billable).
    pub call: CallKind,
    /// Rows the request declares (the first dimension of its first input's shape), when read
    /// before admission; reserved from quotas and budgets.
    pub declared_rows: Option<u64>,
    /// The status of the backend's response header, once it arrived.
    pub upstream_status: Option<u16>,
    /// Authenticated (or at least identified) caller.
    pub principal: Option<Principal>,
    /// From the backend's `x-maas-inference-count`.
    pub inference_count: i64,
    /// From the backend's `x-maas-compute-us`.
    pub compute_us: i64,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// Backends tried so far.
    pub tries: usize,
    /// The backend of the current try (counts as in flight until dropped).
    pub backend: Option<Lease>,
    /// The backend of the previous try, avoided by the retry.
    pub failed_backend: Option<std::net::SocketAddr>,
    /// Why no backend could be chosen for a try (answered by `fail_to_proxy`).
    pub unroutable: Option<crate::error::GatewayError>,
    /// Why the gateway answered itself, for the log.
    pub error_type: Option<&'static str>,
    /// The metering decision for an authenticated request (`None` before authentication).
    pub admission: Option<Admission>,
    /// The limiter's reservations, released in `logging`.
    pub permit: Option<Permit>,
    /// The limits the permit was admitted under (their prices settle a budget).
    pub limits: Option<Arc<RequestLimits>>,
    /// `RateLimit-Policy` and `RateLimit` values for the response.
    pub rate_headers: Option<(String, String)>,
    /// `Retry-After` seconds of a 429.
    pub retry_after_s: Option<u64>,
    /// The kind of limit that refused the request (a 429).
    pub denied_by: Option<LimitKind>,
    /// The outcome of a request the gateway answered itself.
    pub outcome: Option<Outcome>,
    /// The W3C trace context (accepted from the client or made in `request_filter`).
    pub trace: Option<TraceContext>,
    /// Time spent in the gateway's own phases on the response side (`response_filter`,
    /// metering in `logging`); the request side is `upstream_started - started`.
    pub response_overhead: Duration,
    /// When the first backend was chosen (`upstream_peer`).
    pub upstream_started: Option<Instant>,
    /// When the backend's response ended (its header, then the end of its body).
    pub upstream_done: Option<Instant>,
}

/// A UUIDv7 (RFC 9562 section 5.7: 48 bits of Unix milliseconds, then 74 random bits) and its
/// timestamp as a UTC time (millisecond precision). The random bits come from `rand`'s
/// thread-local generator (ChaCha, seeded once per thread from the OS), so a request costs no
/// `getrandom` system call, which `Uuid::now_v7` makes for every id. Ids of the same
/// millisecond are unique by their 74 random bits, not ordered among themselves.
fn new_request_id() -> (Uuid, DateTime<Utc>) {
    let now = Utc::now();
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
    let started_at = DateTime::<Utc>::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    (id, started_at)
}

impl RequestCtx {
    /// A fresh context: a new UUIDv7 request id, its timestamp as `started_at`, the clock started.
    pub(super) fn new() -> Self {
        let (request_id, started_at) = new_request_id();
        RequestCtx {
            request_id,
            started_at,
            started: Instant::now(),
            model: None,
            model_version: None,
            call: CallKind::Other,
            declared_rows: None,
            upstream_status: None,
            principal: None,
            inference_count: 0,
            compute_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            tries: 0,
            backend: None,
            failed_backend: None,
            unroutable: None,
            error_type: None,
            admission: None,
            permit: None,
            limits: None,
            rate_headers: None,
            retry_after_s: None,
            denied_by: None,
            outcome: None,
            trace: None,
            response_overhead: Duration::ZERO,
            upstream_started: None,
            upstream_done: None,
        }
    }

    /// The usage event of this request, answered with `http_status` (0: no response written,
    /// e.g. the client went away first).
    pub fn usage_event(&self, http_status: u16) -> UsageEvent {
        UsageEvent {
            request_id: self.request_id,
            started_at: self.started_at,
            tenant_id: self.principal.map(|p| p.tenant_id),
            api_key_id: self.principal.and_then(|p| p.api_key_id),
            model: self.model.clone(),
            model_version: self.model_version.clone(),
            http_status: i16::try_from(http_status).unwrap_or(i16::MAX),
            call: self.call,
            inference_count: self.inference_count,
            compute_us: self.compute_us,
            request_bytes: i64::try_from(self.request_bytes).unwrap_or(i64::MAX),
            response_bytes: i64::try_from(self.response_bytes).unwrap_or(i64::MAX),
            latency_us: i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// The outcome of a request the gateway refused itself, before choosing any backend (401,
    /// 403, 404, 429, its own 503, ...): counted in the refusal rollup, not a usage event.
    pub fn refused_by_gateway(&self) -> Option<Outcome> {
        match (self.upstream_started, self.error_type) {
            (None, Some(_)) => self.outcome,
            _ => None,
        }
    }

    /// What this request contributes to the metrics, answered with `status`.
    pub fn observation(&self, status: u16) -> RequestObservation<'_> {
        let now = Instant::now();
        let total = now.saturating_duration_since(self.started);
        let (overhead, upstream) = match self.upstream_started {
            Some(up) => (
                up.saturating_duration_since(self.started) + self.response_overhead,
                Some(
                    self.upstream_done
                        .unwrap_or(now)
                        .saturating_duration_since(up),
                ),
            ),
            // Answered by the gateway itself: all of it is the gateway's time.
            None => (total, None),
        };
        RequestObservation {
            model: self.model.as_deref(),
            status,
            outcome: self.outcome.unwrap_or_else(|| Outcome::of_status(status)),
            total,
            overhead,
            upstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_v7_carrying_started_at_and_unique() {
        let before = Utc::now().timestamp_millis();
        let ctx = RequestCtx::new();
        let after = Utc::now().timestamp_millis();
        assert_eq!(ctx.request_id.get_version_num(), 7);
        assert_eq!(ctx.request_id.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = ctx.request_id.get_timestamp().unwrap().to_unix();
        let id_millis = i64::try_from(secs).unwrap() * 1000 + i64::from(nanos / 1_000_000);
        assert_eq!(id_millis, ctx.started_at.timestamp_millis());
        assert!((before..=after).contains(&id_millis));
        let ids: std::collections::HashSet<Uuid> =
            (0..10_000).map(|_| new_request_id().0).collect();
        assert_eq!(ids.len(), 10_000);
    }
}
