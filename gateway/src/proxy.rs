//! The data path: a pingora `ProxyHttp` that routes, authenticates, forwards to the backend
//! pool and meters every request.
//!
//! Phases (pingora `proxy_trait.rs`, lifecycle order):
//! - `new_ctx`: request id (UUIDv7) and start time, once the request header has been read;
//! - `request_filter`: route ([`crate::route`]) → key ([`crate::auth`]) → allow-list;
//!   refusals are answered here as JSON ([`crate::error`]);
//! - `upstream_peer`: next backend, round-robin; `fail_to_connect` retries on the next one;
//! - `upstream_request_filter`: strip the client's credentials, set `x-request-id`;
//! - `response_filter`: `x-request-id`, usage headers `x-maas-inference-count` and
//!   `x-maas-compute-us` from the backend; for an authenticated request, the billable usage
//!   event goes to the spool here, before the client sees the response header;
//! - body filters: request and response body bytes;
//! - `fail_to_proxy`: JSON errors (502 when no backend answers);
//! - `logging`: one final [`UsageEvent`] per request into the spool (it supersedes the billable
//!   record; see [`crate::spool`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header;
use maas_billing::UsageEvent;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use uuid::Uuid;

use maas_protocol::{COMPUTE_US, INFERENCE_COUNT, MODEL_VERSION, REQUEST_ID};

use crate::auth::{presented_key, Authenticator, Principal};
use crate::error::GatewayError;
use crate::limiter::{self, Limiter, Permit};
use crate::limits::{LimitResolver, Prices};
use crate::metering::{Admission, UsageSender};
use crate::route::{parse_route, Route};
use crate::upstream::BackendPool;

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
    /// Why the gateway answered itself, for the log.
    pub error_type: Option<&'static str>,
    /// The metering decision for an authenticated request (`None` before authentication).
    pub admission: Option<Admission>,
    /// The limiter's reservations, released in `logging`.
    pub permit: Option<Permit>,
    /// Prices of the model for the tenant (budget settlement).
    pub prices: Prices,
    /// `RateLimit-Policy` and `RateLimit` values for the response.
    pub rate_headers: Option<(String, String)>,
    /// `Retry-After` seconds of a 429.
    pub retry_after_s: Option<u64>,
}

impl RequestCtx {
    fn new() -> Self {
        let request_id = Uuid::now_v7();
        let started_at = request_id
            .get_timestamp()
            .and_then(|ts| {
                let (secs, nanos) = ts.to_unix();
                DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
            })
            .unwrap_or_else(Utc::now);
        RequestCtx {
            request_id,
            started_at,
            started: Instant::now(),
            model: None,
            model_version: None,
            principal: None,
            inference_count: 0,
            compute_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            tries: 0,
            error_type: None,
            admission: None,
            permit: None,
            prices: Prices::default(),
            rate_headers: None,
            retry_after_s: None,
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
            inference_count: self.inference_count,
            compute_us: self.compute_us,
            request_bytes: i64::try_from(self.request_bytes).unwrap_or(i64::MAX),
            response_bytes: i64::try_from(self.response_bytes).unwrap_or(i64::MAX),
            latency_us: i64::try_from(self.started.elapsed().as_micros()).unwrap_or(i64::MAX),
        }
    }
}

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    auth: Arc<Authenticator>,
    limits: Arc<LimitResolver>,
    limiter: Limiter,
    backends: BackendPool,
    connect_timeout: Duration,
    usage: UsageSender,
}

impl Gateway {
    /// A gateway forwarding to `backends`, authenticating with `auth`, admitting with `limits`
    /// and `limiter`, metering into `usage`.
    pub fn new(
        auth: Arc<Authenticator>,
        limits: Arc<LimitResolver>,
        limiter: Limiter,
        backends: BackendPool,
        connect_timeout: Duration,
        usage: UsageSender,
    ) -> Self {
        Gateway {
            auth,
            limits,
            limiter,
            backends,
            connect_timeout,
            usage,
        }
    }

    /// Apply the rate limits, concurrency limits, quotas and budgets of `principal` for the
    /// request's model; the permit (or the refusal's headers) goes into `ctx`.
    async fn admit(&self, principal: Principal, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let pool = self.auth.pool().await.map_err(|e| {
            tracing::error!(error = %e, "no database pool for limits");
            GatewayError::AuthUnavailable
        })?;
        let limits = self
            .limits
            .limits(
                pool,
                principal.tenant_id,
                principal.api_key_id,
                ctx.model.as_deref(),
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "limit lookup failed");
                GatewayError::AuthUnavailable
            })?;
        match self.limiter.admit(pool, ctx.request_id, &limits).await {
            limiter::Admission::Unlimited => Ok(()),
            limiter::Admission::Admitted(permit) => {
                ctx.rate_headers = permit.headers.clone();
                ctx.prices = limits.prices;
                ctx.permit = Some(permit);
                Ok(())
            }
            limiter::Admission::Denied(denial) => {
                ctx.rate_headers = denial.headers;
                ctx.retry_after_s = Some(denial.retry_after_s);
                Err(GatewayError::RateLimited(denial.message))
            }
            limiter::Admission::Unavailable => Err(GatewayError::LimiterUnavailable),
        }
    }

    /// Answer the request with `err` as JSON. Returns `Ok(true)` (response sent) for
    /// `request_filter`.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: &GatewayError,
    ) -> pingora::Result<bool> {
        write_error(session, ctx, err).await?;
        Ok(true)
    }
}

/// Write `err` to the client: status, `content-type: application/json`, `x-request-id`,
/// `WWW-Authenticate: Bearer` on 401, body `{"error": "..."}`.
async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &GatewayError,
) -> pingora::Result<()> {
    ctx.error_type = Some(err.error_type());
    let body = err.body();
    let mut resp = ResponseHeader::build(err.status(), Some(5))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(REQUEST_ID, ctx.request_id.to_string())?;
    if err.www_authenticate() {
        resp.insert_header(header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if let Some(s) = ctx.retry_after_s {
        resp.insert_header(header::RETRY_AFTER, s.to_string())?;
    }
    insert_rate_headers(&mut resp, ctx)?;
    ctx.response_bytes += body.len() as u64;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) when a limit
/// applied to the request.
fn insert_rate_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some((policy, state)) = &ctx.rate_headers {
        resp.insert_header("ratelimit-policy", policy.as_str())?;
        resp.insert_header("ratelimit", state.as_str())?;
    }
    Ok(())
}

fn header_i64(resp: &ResponseHeader, name: &str) -> Option<i64> {
    resp.headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
}

/// Status the gateway answers with for a pingora error (mirrors pingora's default
/// `fail_to_proxy`, with upstream timeouts as 504). 0: the client is gone, answer nothing.
fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                _ => 502,
            },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let route = match parse_route(session.req_header().uri.path()) {
            Ok(route) => route,
            Err(e) => return self.reject(session, ctx, &e).await,
        };
        if let Route::Model { model, version } = &route {
            ctx.model = Some(model.clone());
            ctx.model_version = version.clone();
        }
        if !route.needs_auth() {
            return Ok(false);
        }
        let secret = match presented_key(session.req_header()) {
            Ok(secret) => secret,
            Err(e) => return self.reject(session, ctx, &e).await,
        };
        match self
            .auth
            .authenticate_credential(&secret, ctx.model.as_deref())
            .await
        {
            Ok(principal) => {
                ctx.principal = Some(principal);
                let admission = self.usage.admit();
                ctx.admission = Some(admission);
                if admission == Admission::Refuse {
                    let full = GatewayError::Http(http::StatusCode::SERVICE_UNAVAILABLE);
                    return self.reject(session, ctx, &full).await;
                }
                match self.admit(principal, ctx).await {
                    Ok(()) => Ok(false),
                    Err(e) => self.reject(session, ctx, &e).await,
                }
            }
            Err(rejection) => {
                ctx.principal = rejection.principal;
                self.reject(session, ctx, &rejection.error).await
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let Some(b) = body {
            ctx.request_bytes += b.len() as u64;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.tries += 1;
        let addr = self.backends.next();
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Connecting failed, so nothing was sent: safe to try the next backend, once each.
        if ctx.tries < self.backends.len() {
            tracing::debug!(request_id = %ctx.request_id, %peer, "backend connect failed; trying the next one");
            e.set_retry(true);
        }
        e
    }

    /// pingora's default retries a failure on a reused upstream connection (the backend closed
    /// it while it sat in the pool) only for idempotent methods. OIP v2 calls have no side
    /// effect at the backend (inference is a pure function of the request; usage is counted
    /// here, once, by request id), so `POST .../infer` is retried the same way, as long as the
    /// request body is still in pingora's retry buffer.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        upstream_request.remove_header(&header::AUTHORIZATION);
        upstream_request.remove_header("x-api-key");
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.to_string())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        if let Some(n) = header_i64(upstream_response, INFERENCE_COUNT) {
            ctx.inference_count = n;
        }
        if let Some(us) = header_i64(upstream_response, COMPUTE_US) {
            ctx.compute_us = us;
        }
        if ctx.model_version.is_none() {
            // The version the backend chose when the path named none (a number: it is the
            // version folder's name; anything else is ignored).
            if let Some(v) = header_i64(upstream_response, MODEL_VERSION) {
                ctx.model_version = Some(v.to_string());
            }
        }
        upstream_response.insert_header(REQUEST_ID, ctx.request_id.to_string())?;
        insert_rate_headers(upstream_response, ctx)?;
        if ctx.admission == Some(Admission::Metered) {
            // Spooled before the client sees the header: a crash from here on loses nothing.
            let event = ctx.usage_event(upstream_response.status.as_u16());
            if !self.usage.record_billable(&event) {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "usage could not be recorded",
                ));
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.response_bytes += b.len() as u64;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = error_status(e);
        if code > 0 && session.response_written().is_none() {
            let err = match code {
                502 => GatewayError::BadGateway(match e.etype() {
                    ErrorType::ConnectTimedout => "connecting to the backend timed out".into(),
                    ErrorType::ConnectRefused => "the backend refused the connection".into(),
                    _ if e.esource() == &ErrorSource::Upstream => {
                        "the backend failed to answer".into()
                    }
                    _ => "the backend failed".into(),
                }),
                code => GatewayError::from_status(code),
            };
            if let Err(write_err) = write_error(session, ctx, &err).await {
                tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        let event = ctx.usage_event(status);
        if let Some(permit) = ctx.permit.take() {
            let success = (200..300).contains(&status);
            self.limiter.finish(
                permit,
                success,
                ctx.inference_count,
                ctx.compute_us,
                &ctx.prices,
            );
        }
        tracing::debug!(
            request_id = %ctx.request_id,
            status,
            error_type = ctx.error_type,
            error = e.map(|e| e.to_string()),
            latency_us = event.latency_us,
            "request done"
        );
        self.usage.send(event, ctx.admission).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_headers_parse_as_non_negative_integers() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header(INFERENCE_COUNT, "12").unwrap();
        resp.insert_header(COMPUTE_US, " 3400 ").unwrap();
        assert_eq!(header_i64(&resp, INFERENCE_COUNT), Some(12));
        assert_eq!(header_i64(&resp, COMPUTE_US), Some(3400));
        resp.insert_header(COMPUTE_US, "-1").unwrap();
        assert_eq!(header_i64(&resp, COMPUTE_US), None);
        resp.insert_header(COMPUTE_US, "x").unwrap();
        assert_eq!(header_i64(&resp, COMPUTE_US), None);
        assert_eq!(header_i64(&resp, "absent"), None);
    }

    #[test]
    fn pingora_errors_map_to_statuses() {
        let up = Error::explain(ErrorType::ConnectRefused, "x").into_up();
        assert_eq!(error_status(&up), 502);
        let timeout = Error::explain(ErrorType::ReadTimedout, "x").into_up();
        assert_eq!(error_status(&timeout), 504);
        let gone = Error::explain(ErrorType::ConnectionClosed, "x").into_down();
        assert_eq!(error_status(&gone), 0);
        let bad = Error::explain(ErrorType::InvalidHTTPHeader, "x").into_down();
        assert_eq!(error_status(&bad), 400);
        let status = Error::explain(ErrorType::HTTPStatus(413), "x");
        assert_eq!(error_status(&status), 413);
        assert_eq!(error_status(&Error::new(ErrorType::InternalError)), 500);
    }

    #[test]
    fn usage_event_from_ctx() {
        let mut ctx = RequestCtx::new();
        ctx.model = Some("m".into());
        ctx.inference_count = 4;
        ctx.compute_us = 100;
        ctx.response_bytes = 10;
        let ev = ctx.usage_event(200);
        assert_eq!(ev.request_id, ctx.request_id);
        assert_eq!(ev.http_status, 200);
        assert_eq!(ev.tenant_id, None);
        assert_eq!(ev.model.as_deref(), Some("m"));
        assert_eq!(ev.inference_count, 4);
        assert_eq!(ev.response_bytes, 10);
        assert!(ev.latency_us >= 0);
        assert_eq!(ctx.request_id.get_version_num(), 7);
    }
}
