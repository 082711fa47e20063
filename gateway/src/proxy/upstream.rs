//! The proxy's side of the backend pools: the peer of each try, what a try's outcome tells the
//! pool (passive ejection), when a failed try is retried, and the error a request that found no
//! backend is answered with.

use std::time::Duration;

use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::pools::{PickError, Pools};

/// Tries per request: the first and one retry on another backend.
const MAX_TRIES: usize = 2;

/// `Retry-After` seconds of a 503 for a model without a healthy backend.
const RETRY_AFTER_S: u64 = 1;

/// The error the request is answered with when `err` kept it from a backend; a 503 for a model
/// without a healthy backend sets its `Retry-After` in `ctx`.
pub(super) fn unroutable(err: &PickError, ctx: &mut RequestCtx) -> GatewayError {
    match err {
        PickError::UnknownModel => {
            GatewayError::UnknownModel(ctx.model.clone().unwrap_or_default())
        }
        PickError::NoHealthyBackend => {
            ctx.retry_after_s = Some(RETRY_AFTER_S);
            GatewayError::NoHealthyBackend(ctx.model.clone())
        }
    }
}

/// Whether `etype` says no connection to a backend could be made (nothing was sent).
pub(super) fn is_connect_error(etype: &ErrorType) -> bool {
    matches!(
        etype,
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
    )
}

/// The peer of the next try: a backend chosen by the pools for the request's model, other than
/// the one that just failed when possible; its lease goes into `ctx`.
///
/// # Errors
/// `HTTPStatus(404 | 503)` when none is eligible (`ctx.unroutable` holds the answer).
pub(super) fn next_peer(
    pools: &Pools,
    ctx: &mut RequestCtx,
    connect_timeout: Duration,
) -> pingora::Result<Box<HttpPeer>> {
    ctx.tries += 1;
    if let Some(previous) = ctx.backend.take() {
        ctx.failed_backend = Some(previous.addr());
    }
    match pools.pick(ctx.model.as_deref(), ctx.failed_backend) {
        Ok(lease) => {
            let mut peer = HttpPeer::new(lease.addr(), false, String::new());
            peer.options.connection_timeout = Some(connect_timeout);
            ctx.backend = Some(lease);
            Ok(Box::new(peer))
        }
        Err(e) => {
            let err = unroutable(&e, ctx);
            let status = err.status().as_u16();
            let message = err.to_string();
            ctx.unroutable = Some(err);
            Err(Error::explain(ErrorType::HTTPStatus(status), message))
        }
    }
}

/// Tell the pool the try failed with `e` (counts towards passive ejection); whether another
/// backend can take the retry.
fn failed_try(pools: &Pools, ctx: &RequestCtx, e: &Error) -> bool {
    let Some(lease) = &ctx.backend else {
        return false;
    };
    let refused = e.etype() == &ErrorType::ConnectRefused;
    lease.backend().record_failure(e.to_string(), refused);
    ctx.tries < MAX_TRIES && pools.has_other(ctx.model.as_deref(), lease.addr())
}

/// `fail_to_connect`: nothing was sent, so the request is retried once on another backend.
pub(super) fn connect_failed(pools: &Pools, ctx: &RequestCtx, e: &mut Error) {
    if failed_try(pools, ctx, e) {
        e.set_retry(true);
    }
}

/// `error_while_proxy`: the connection failed after it was made. A reset or close before any
/// response byte reached the client is retried once on another backend (OIP v2 calls have no
/// side effect at the backend; usage is counted here, once, by request id), as long as the
/// request body is still in pingora's retry buffer; otherwise pingora's default for reused
/// connections applies.
pub(super) fn proxy_failed(
    pools: &Pools,
    session: &Session,
    ctx: &RequestCtx,
    e: &mut Error,
    client_reused: bool,
) {
    // Only the backend's side counts: a client that went away says nothing about it.
    let upstream = e.esource() == &ErrorSource::Upstream;
    let connection_lost = upstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
    let retry_elsewhere = upstream && failed_try(pools, ctx, e) && connection_lost;
    if session.as_ref().retry_buffer_truncated() || session.response_written().is_some() {
        e.set_retry(false);
    } else if retry_elsewhere {
        e.set_retry(true);
    } else {
        e.retry.decide_reuse(client_reused);
    }
}

/// `response_filter`: a 5xx counts towards passive ejection, anything else resets it. A 503
/// does neither: it is the backend saying that one model is not ready (unloaded, failed) or
/// that it is draining, which discovery and the active check act on, and it must not take the
/// backend's other models out of rotation.
pub(super) fn answered(ctx: &RequestCtx, status: u16) {
    if let Some(lease) = &ctx.backend {
        if status == 503 {
            return;
        }
        if status >= 500 {
            lease
                .backend()
                .record_failure(format!("answered HTTP {status}"), false);
        } else {
            lease.backend().record_success();
        }
    }
}

/// `fail_to_proxy`: the error for a request whose tries all failed to connect when no
/// healthy backend is left for its model (the 503 with `Retry-After`), else `None`.
pub(super) fn exhausted(pools: &Pools, ctx: &mut RequestCtx, e: &Error) -> Option<GatewayError> {
    if is_connect_error(e.etype()) && pools.check(ctx.model.as_deref()).is_err() {
        return Some(unroutable(&PickError::NoHealthyBackend, ctx));
    }
    None
}
