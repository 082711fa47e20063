//! The rows an inference call declares, read from the start of its body in `request_filter`
//! so that admission can reserve them (ARCHITECTURE.md, "Declared rows").
//!
//! pingora sends the request body to the backend only after `upstream_peer`; what is read
//! here is not lost because pingora's retry buffer keeps every body byte read, up to
//! [`RETRY_BUFFER`], and replays it to the backend before the rest of the body. So this never
//! reads past that buffer: a body whose Content-Length fits it may be read until the first
//! input's shape; any other (larger or chunked) gets exactly one read, which pingora bounds by
//! the same size. No tensor data beyond that one buffer is held. A client that sent
//! `Expect: 100-continue` (RFC 9110 section 10.1.1) waits for the backend's interim answer
//! before sending its body, so its body is not read here.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, EXPECT};
use pingora::proxy::Session;

use crate::oip::{declared_rows, Scan};

/// pingora's retry buffer (`BODY_BUF_LIMIT`, 64 KiB, in pingora-core
/// `protocols/http/v1/common.rs`); one body read returns at most as much.
const RETRY_BUFFER: usize = 64 * 1024;

/// The header of Triton's binary tensor data extension: the length of the JSON part that
/// starts the body.
const BINARY_HEADER_LENGTH: &str = "inference-header-content-length";

/// Rows declared by the inference call on `session`: the first dimension of its first input's
/// shape, from the JSON body or the JSON part of a binary body; `None` when they are not
/// within what may be read here (see the module notes) or not declared.
///
/// # Errors
/// When reading the body fails (the client went away, a malformed chunked body).
pub async fn read_declared_rows(session: &mut Session) -> pingora::Result<Option<u64>> {
    let headers = &session.req_header().headers;
    if headers.contains_key(EXPECT) {
        return Ok(None);
    }
    let number = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let json_len = number(BINARY_HEADER_LENGTH);
    let whole_body_fits = number(CONTENT_LENGTH.as_str()).is_some_and(|n| n <= RETRY_BUFFER);
    session.as_mut().enable_retry_buffering();
    // Most bodies declare their shape within the first read: that read is scanned as it came,
    // and copied only when a second one has to be appended to it.
    let mut prefix = Bytes::new();
    loop {
        let json = match json_len {
            Some(n) => &prefix[..n.min(prefix.len())],
            None => &prefix[..],
        };
        match declared_rows(json) {
            Scan::Rows(rows) => return Ok(Some(rows)),
            Scan::Undeclared => return Ok(None),
            Scan::Incomplete if json_len.is_some_and(|n| prefix.len() >= n) => return Ok(None),
            Scan::Incomplete if !prefix.is_empty() && !whole_body_fits => return Ok(None),
            Scan::Incomplete => {}
        }
        match session.as_mut().read_request_body().await? {
            Some(chunk) if prefix.is_empty() => prefix = chunk,
            Some(chunk) => {
                let mut joined = Vec::with_capacity(prefix.len() + chunk.len());
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(&chunk);
                prefix = Bytes::from(joined);
            }
            None => return Ok(None),
        }
    }
}
