//! What the gateway answers itself: JSON errors with the request id and rate-limit headers,
//! the status of a pingora error, and reading the backend's integer usage headers.

use http::header;
use maas_protocol::REQUEST_ID;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::metrics::Outcome;

/// Write `err` to the client: status, `content-type: application/json`, `x-request-id`,
/// `WWW-Authenticate: Bearer` on 401, body `{"error": "..."}`.
pub(super) async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &GatewayError,
) -> pingora::Result<()> {
    ctx.error_type = Some(err.error_type());
    ctx.outcome = Some(Outcome::of_error(err, ctx.denied_by));
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
    drain_small_h2_body(session).await;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Largest request body read and dropped before an HTTP/2 refusal, in bytes.
const H2_DRAIN_LIMIT: u64 = 64 << 10;

/// Read the rest of a small request body (a declared `Content-Length` of at most
/// [`H2_DRAIN_LIMIT`]) on an HTTP/2 stream before the gateway answers it itself: pingora
/// resets a stream whose request body is still unread when the answer ends, and clients
/// (curl, nghttp2) then report a stream error instead of the refusal. HTTP/1.1 needs nothing
/// (the connection is closed or drained by pingora); larger bodies are not read.
async fn drain_small_h2_body(session: &mut Session) {
    let downstream = session.as_mut();
    if !downstream.is_http2() || downstream.is_body_done() {
        return;
    }
    let small = downstream
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n <= H2_DRAIN_LIMIT);
    if small {
        let _ = downstream.drain_request_body().await;
    }
}

/// Write a JSON answer of the gateway's own (`status`, `content-type: application/json`,
/// `x-request-id`) with `body`.
pub(super) async fn write_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: bytes::Bytes,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(REQUEST_ID, ctx.request_id.to_string())?;
    ctx.response_bytes += body.len() as u64;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) when a limit
/// applied to the request.
pub(super) fn insert_rate_headers(
    resp: &mut ResponseHeader,
    ctx: &RequestCtx,
) -> pingora::Result<()> {
    if let Some((policy, state)) = &ctx.rate_headers {
        resp.insert_header("ratelimit-policy", policy.as_str())?;
        resp.insert_header("ratelimit", state.as_str())?;
    }
    Ok(())
}

/// A non-negative integer response header (the backend's usage headers), if present and valid.
pub(super) fn header_i64(resp: &ResponseHeader, name: &str) -> Option<i64> {
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
pub(super) fn error_status(e: &Error) -> u16 {
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
