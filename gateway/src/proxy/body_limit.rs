//! The request body limit (`max_body_bytes`): a declared `Content-Length` over it is refused
//! before the body is read, and a body that streams past it (chunked, or longer than declared)
//! is cut off. Both are pingora `HTTPStatus(413)` errors, which `fail_to_proxy` answers as
//! [`crate::error::GatewayError::PayloadTooLarge`] and which close the client connection.
//!
//! Memory: pingora hands the body to the filters one read at a time and forwards each piece
//! before reading the next, so the gateway holds a few reads per request whatever the limit;
//! the limit bounds what reaches the backend.

use http::header;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType};

/// `Err(413)` when `request` declares a `Content-Length` over `limit` bytes; a malformed
/// `Content-Length` is left to pingora's HTTP/1 reader (400).
pub(super) fn check_declared(request: &RequestHeader, limit: u64) -> pingora::Result<()> {
    let declared = request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Error::e_explain(
            ErrorType::HTTPStatus(413),
            format!("Content-Length {n} is over max_body_bytes {limit}"),
        ),
        _ => Ok(()),
    }
}

/// `Err(413)` once `received` bytes of the body are over `limit`.
pub(super) fn check_streamed(received: u64, limit: u64) -> pingora::Result<()> {
    if received > limit {
        return Error::e_explain(
            ErrorType::HTTPStatus(413),
            format!("request body passed max_body_bytes {limit}"),
        );
    }
    Ok(())
}

/// Whether `error` is one of this module's refusals (or wraps one: pingora reports a body
/// filter's error as the proxy's, with it as the cause).
pub(super) fn is_refusal(error: &Error) -> bool {
    error.etype() == &ErrorType::HTTPStatus(413)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_length: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        if let Some(v) = content_length {
            req.insert_header(header::CONTENT_LENGTH, v).unwrap();
        }
        req
    }

    fn status(result: pingora::Result<()>) -> Option<u16> {
        result.err().map(|e| match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            other => panic!("not an HTTP status: {other:?}"),
        })
    }

    #[test]
    fn declared_length_over_the_limit_is_413() {
        assert_eq!(
            status(check_declared(&request(Some("1025")), 1024)),
            Some(413)
        );
        assert_eq!(status(check_declared(&request(Some("1024")), 1024)), None);
        assert_eq!(status(check_declared(&request(None), 1024)), None);
        assert_eq!(status(check_declared(&request(Some("x")), 1024)), None);
        assert_eq!(status(check_streamed(1025, 1024)), Some(413));
        assert_eq!(status(check_streamed(1024, 1024)), None);
        assert!(is_refusal(&check_streamed(1025, 1024).unwrap_err()));
    }
}
