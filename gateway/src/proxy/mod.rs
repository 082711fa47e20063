//! The data path: a pingora `ProxyHttp` that routes, authenticates, forwards to the backend
//! pool and meters every request.
//!
//! Phases (pingora `proxy_trait.rs`, lifecycle order):
//! - `new_ctx`: request id (UUIDv7) and start time, once the request header has been read;
//! - `request_filter`: W3C `traceparent` accepted or made ([`crate::trace`]) → route
//!   ([`route`]) → key ([`crate::auth`]) → allow-list → a pool serves the model with a
//!   healthy backend ([`crate::pools`]; 404 / 503 otherwise) → limits;
//!   refusals are answered here as JSON ([`crate::error`]); `GET /v2` and
//!   `POST /v2/repository/index` are answered here too (`local`);
//! - `upstream_peer`: a backend of the pools chosen by the pool's policy (`upstream`);
//!   `fail_to_connect`, and `error_while_proxy` for a reset before any response byte, retry
//!   once on another backend, and count towards its passive ejection;
//! - `upstream_request_filter`: strip the client's credentials and fairness headers, set
//!   `x-request-id`, the gateway's `traceparent` and the tenant's fairness key (`fairness`);
//! - `response_filter`: `x-request-id`, usage headers `x-maas-inference-count` and
//!   `x-maas-compute-us` from the backend; for an authenticated request, the billable usage
//!   event goes to the spool here, before the client sees the response header;
//! - `early_request_filter`: a declared `Content-Length` over `max_body_bytes` is 413 before
//!   anything else reads the body (`body_limit`);
//! - body filters: request and response body bytes; a streamed body over `max_body_bytes` is
//!   cut off with 413;
//! - `fail_to_proxy`: JSON errors (502 when no backend answers, 503 when none is healthy);
//! - `logging`: one final [`UsageEvent`] per request into the spool (it supersedes the billable
//!   record; see `metering::spool`), then the request is counted in [`crate::metrics`] and
//!   written to the access log (each when on).

mod body_limit;
mod ctx;
mod declared;
mod fairness;
mod local;
mod respond;
mod route;
mod upstream;

pub use ctx::RequestCtx;
pub use fairness::FairnessHeaders;
pub use route::{parse_route, Route};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use maas_billing::CallKind;
use maas_protocol::{COMPUTE_US, INFERENCE_COUNT, MODEL_VERSION, REQUEST_ID, TRACEPARENT};

use self::respond::{error_status, header_i64, insert_rate_headers, write_error};
use crate::access_log::AccessLogLine;
use crate::auth::{presented_key, Authenticator, Principal};
use crate::config::AccessLogFormat;
use crate::error::GatewayError;
use crate::limits::{self, Demand, LimitResolver, Limiter};
use crate::metering::{Admission, Refusals, UsageSender};
use crate::metrics::{Outcome, RequestMetrics};
use crate::pools::Pools;
use crate::trace::TraceContext;

/// The gateway's `ProxyHttp` implementation.
pub struct Gateway {
    auth: Arc<Authenticator>,
    limits: Arc<LimitResolver>,
    limiter: Limiter,
    pools: Arc<Pools>,
    connect_timeout: Duration,
    usage: UsageSender,
    refusals: Refusals,
    metrics: Option<Arc<RequestMetrics>>,
    access_log: AccessLogFormat,
    max_body_bytes: u64,
    fairness: Option<FairnessHeaders>,
}

impl Gateway {
    /// A gateway forwarding to the backends of `pools`, authenticating with `auth`, admitting with `limits`
    /// and `limiter`, metering into `usage`.
    pub fn new(
        auth: Arc<Authenticator>,
        limits: Arc<LimitResolver>,
        limiter: Limiter,
        pools: Arc<Pools>,
        connect_timeout: Duration,
        usage: UsageSender,
    ) -> Self {
        Gateway {
            auth,
            limits,
            limiter,
            pools,
            connect_timeout,
            usage,
            refusals: Refusals::default(),
            metrics: None,
            access_log: AccessLogFormat::Off,
            max_body_bytes: u64::MAX,
            fairness: None,
        }
    }

    /// The same, counting every request into `metrics` (`None`: metrics off) and writing the
    /// access log in `access_log`'s format.
    pub fn with_observability(
        mut self,
        metrics: Option<Arc<RequestMetrics>>,
        access_log: AccessLogFormat,
    ) -> Self {
        self.metrics = metrics;
        self.access_log = access_log;
        self
    }

    /// The same, counting the requests it refuses itself into `refusals` (written by a
    /// `metering::RefusalWriter`) instead of spooling a usage event for each.
    pub fn with_refusals(mut self, refusals: Refusals) -> Self {
        self.refusals = refusals;
        self
    }

    /// The same, refusing request bodies over `limit` bytes with 413 (`early_request_filter`
    /// for a declared `Content-Length`, `request_body_filter` as a body streams). Default: no
    /// limit.
    pub fn with_max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The same, telling the backends each tenant's fairness key with the shared secret
    /// (`None`: no fairness headers; a client's are removed either way).
    pub fn with_fairness(mut self, fairness: Option<FairnessHeaders>) -> Self {
        self.fairness = fairness;
        self
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
        let demand = match ctx.call {
            CallKind::Inference => Demand::Inference {
                rows: ctx.declared_rows,
            },
            _ => Demand::Unbilled,
        };
        match self
            .limiter
            .admit(pool, ctx.request_id, &limits, demand)
            .await
        {
            limits::Admission::Unlimited => Ok(()),
            limits::Admission::Admitted(permit) => {
                ctx.rate_headers = permit.headers.clone();
                ctx.permit = Some(permit);
                ctx.limits = Some(limits);
                Ok(())
            }
            limits::Admission::Denied(denial) => {
                ctx.denied_by = Some(denial.limit);
                ctx.rate_headers = denial.headers;
                ctx.retry_after_s = Some(denial.retry_after_s);
                Err(GatewayError::RateLimited(denial.message))
            }
            limits::Admission::Unavailable => Err(GatewayError::LimiterUnavailable),
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

    /// Count the finished request in the metrics and write its access log line (each when on).
    fn observe(&self, ctx: &RequestCtx, status: u16) {
        if self.metrics.is_none() && self.access_log == AccessLogFormat::Off {
            return;
        }
        let o = ctx.observation(status);
        if let Some(metrics) = &self.metrics {
            metrics.observe(&o);
        }
        if self.access_log == AccessLogFormat::Json {
            let trace_id = ctx.trace.map(|t| t.trace_id_hex()).unwrap_or_default();
            let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            AccessLogLine {
                request_id: ctx.request_id,
                trace_id: &trace_id,
                tenant_id: ctx.principal.map(|p| p.tenant_id),
                key_id: ctx.principal.and_then(|p| p.api_key_id),
                model: ctx.model.as_deref(),
                model_version: ctx.model_version.as_deref(),
                status,
                outcome: o.outcome.as_str(),
                latency_us: us(o.total),
                overhead_us: us(o.overhead),
                upstream_us: o.upstream.map(us),
            }
            .write();
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::new()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        body_limit::check_declared(session.req_header(), self.max_body_bytes)
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        let traceparent = session.req_header().headers.get(TRACEPARENT);
        ctx.trace = Some(TraceContext::accept(
            traceparent.and_then(|v| v.to_str().ok()),
        ));
        let path = session.req_header().uri.path();
        let route = match parse_route(path) {
            Ok(route) => route,
            Err(e) => return self.reject(session, ctx, &e).await,
        };
        ctx.call = route::call_kind(&route, path);
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
                let answered = match &route {
                    Route::ServerMetadata => Some(local::server_metadata(session, ctx).await),
                    Route::RepositoryIndex => Some(
                        local::repository_index(session, ctx, &self.pools, &self.auth, &secret)
                            .await,
                    ),
                    _ => None,
                };
                match answered {
                    Some(Ok(written)) => return written.map(|()| true),
                    Some(Err(e)) => return self.reject(session, ctx, &e).await,
                    None => {}
                }
                if let Err(e) = self.pools.check(ctx.model.as_deref()) {
                    let err = upstream::unroutable(&e, ctx);
                    return self.reject(session, ctx, &err).await;
                }
                let admission = self.usage.admit();
                ctx.admission = Some(admission);
                if admission == Admission::Refuse {
                    let full = GatewayError::Http(http::StatusCode::SERVICE_UNAVAILABLE);
                    return self.reject(session, ctx, &full).await;
                }
                if ctx.call == CallKind::Inference {
                    ctx.declared_rows = declared::read_declared_rows(session).await?;
                }
                // A client that leaves after sending its request does not abort the backend's
                // work: the response is read to its end, metered and the limits held until then.
                session.as_mut().set_abort_on_close(false);
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
        body_limit::check_streamed(ctx.request_bytes, self.max_body_bytes)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        ctx.upstream_started.get_or_insert_with(Instant::now);
        upstream::next_peer(&self.pools, ctx, self.connect_timeout)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Connecting failed, so nothing was sent: safe to try another backend, once.
        tracing::debug!(request_id = %ctx.request_id, %peer, error = %e, "backend connect failed");
        upstream::connect_failed(&self.pools, ctx, &mut e);
        e
    }

    /// pingora's default retries a failure on a reused upstream connection (the backend closed
    /// it while it sat in the pool) only for idempotent methods. OIP v2 calls have no side
    /// effect at the backend (inference is a pure function of the request; usage is counted
    /// here, once, by request id), so `POST .../infer` is retried the same way, and a reset
    /// before any response byte is retried once on another backend, as long as the request
    /// body is still in pingora's retry buffer.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        upstream::proxy_failed(&self.pools, session, ctx, &mut e, client_reused);
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
        fairness::set_fairness_headers(
            upstream_request,
            self.fairness.as_ref(),
            ctx.principal.map(|p| (p.tenant_id, p.priority)),
        )?;
        if let Some(trace) = &ctx.trace {
            upstream_request.insert_header(TRACEPARENT, trace.traceparent())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        let entered = Instant::now();
        ctx.upstream_done = Some(entered);
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        upstream::answered(ctx, upstream_response.status.as_u16());
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
        ctx.response_overhead += entered.elapsed();
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<Option<Duration>> {
        if let Some(b) = body {
            ctx.response_bytes += b.len() as u64;
        }
        if end_of_stream && ctx.upstream_done.is_some() {
            ctx.upstream_done = Some(Instant::now());
        }
        Ok(None)
    }

    /// A body over `max_body_bytes` is the client's doing, answered 413 and counted in the
    /// metrics: no error line per request (a flood of them would flood the log).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        body_limit::is_refusal(error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let unroutable = ctx
            .unroutable
            .take()
            .or_else(|| upstream::exhausted(&self.pools, ctx, e));
        let code = unroutable
            .as_ref()
            .map_or_else(|| error_status(e), |u| u.status().as_u16());
        if code > 0 && session.response_written().is_none() {
            let err = match (unroutable, code) {
                (Some(err), _) => err,
                (None, 502) => GatewayError::BadGateway(match e.etype() {
                    ErrorType::ConnectTimedout => "connecting to the backend timed out".into(),
                    ErrorType::ConnectRefused => "the backend refused the connection".into(),
                    _ if e.esource() == &ErrorSource::Upstream => {
                        "the backend failed to answer".into()
                    }
                    _ => "the backend failed".into(),
                }),
                (None, 413) => GatewayError::PayloadTooLarge(self.max_body_bytes),
                (None, code) => GatewayError::from_status(code),
            };
            if let Err(write_err) = write_error(session, ctx, &err).await {
                tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send the error response");
            }
        }
        if upstream::is_connect_error(e.etype()) {
            ctx.outcome = Some(Outcome::NoBackend);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let entered = Instant::now();
        // A client gone before the response header reached it: what the backend answered.
        let status = session
            .response_written()
            .map(|resp| resp.status.as_u16())
            .or(ctx.upstream_status)
            .unwrap_or(0);
        let event = ctx.usage_event(status);
        if let (Some(permit), Some(limits)) = (ctx.permit.take(), ctx.limits.take()) {
            let success = (200..300).contains(&status) && ctx.call.is_billable();
            self.limiter.finish(
                permit,
                success,
                ctx.inference_count,
                ctx.compute_us,
                &limits.prices,
            );
        }
        tracing::debug!(
            request_id = %ctx.request_id,
            trace_id = ctx.trace.map(|t| t.trace_id_hex()),
            status,
            error_type = ctx.error_type,
            error = e.map(|e| e.to_string()),
            latency_us = event.latency_us,
            "request done"
        );
        match ctx.refused_by_gateway() {
            Some(outcome) => {
                let tenant = ctx.principal.map(|p| p.tenant_id);
                self.refusals
                    .count(tenant, outcome.as_str(), ctx.started_at);
            }
            None => self.usage.send(event, ctx.admission).await,
        }
        ctx.response_overhead += entered.elapsed();
        self.observe(ctx, status);
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
