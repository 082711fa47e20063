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
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
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
