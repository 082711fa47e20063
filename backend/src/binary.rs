//! Triton's binary tensor data extension, HTTP side
//! (<https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md>).
//!
//! A request body may be a JSON header followed by raw tensor bytes; the request header
//! `Inference-Header-Content-Length` gives the JSON header's length in bytes. Inputs with the
//! parameter `binary_data_size` take their bytes from what follows, in the order of the inputs
//! (see [`crate::validation`]). Elements are little-endian and row-major.
//!
//! A response carries binary outputs the same way: the JSON header first, then each binary
//! output's bytes in the order of `outputs`, each output with the parameter
//! `binary_data_size`, and the response header `Inference-Header-Content-Length`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The header that gives the length of the JSON part of a body, in bytes.
pub const HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// Splits a request body into its JSON header and its binary part (empty without
/// `Inference-Header-Content-Length`).
///
/// 400 when the header is not a decimal integer, is negative, or is larger than the body.
pub fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), Error> {
    let Some(value) = headers.get(&HEADER_CONTENT_LENGTH) else {
        return Ok((body, &[]));
    };
    let text = value.to_str().unwrap_or("(not text)").trim();
    let length: i128 = text.parse().map_err(|_| {
        Error::BadRequest(format!(
            "header Inference-Header-Content-Length must be a decimal integer (the JSON part's length in bytes), got '{text}'"
        ))
    })?;
    if length < 0 {
        return Err(Error::BadRequest(format!(
            "header Inference-Header-Content-Length must not be negative, got {length}"
        )));
    }
    let length = usize::try_from(length)
        .ok()
        .filter(|&n| n <= body.len())
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "header Inference-Header-Content-Length is {length} but the body has only {} bytes",
                body.len()
            ))
        })?;
    Ok(body.split_at(length))
}

/// Parses the JSON part of an infer request. Without `Inference-Header-Content-Length`
/// (`has_binary_header` false), bytes after the JSON value most likely are binary tensor data
/// sent without that header, and the error says so.
pub fn parse_json_part<T: DeserializeOwned>(
    json: &[u8],
    has_binary_header: bool,
) -> Result<T, Error> {
    if json.is_empty() {
        return Err(Error::BadRequest(
            "expected a JSON request body, got an empty body".into(),
        ));
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::BadRequest(
            "request body must be a JSON object ({\"inputs\": [...]})".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = T::deserialize(&mut deserializer).map_err(|e| {
        let kind = if e.is_data() {
            "does not fit the infer request schema"
        } else {
            "is not valid JSON"
        };
        Error::BadRequest(format!("request body {kind}: {e}"))
    })?;
    if let Err(e) = deserializer.end() {
        let message = if has_binary_header {
            format!(
                "the JSON part (Inference-Header-Content-Length bytes) has bytes after the JSON object: {e}"
            )
        } else {
            format!(
                "request body has bytes after the JSON object ({e}); binary tensor data needs the header Inference-Header-Content-Length"
            )
        };
        return Err(Error::BadRequest(message));
    }
    Ok(value)
}

/// A response of a JSON header and binary output bytes: `Content-Type:
/// application/octet-stream` and `Inference-Header-Content-Length: json.len()`.
pub fn binary_response(json: Vec<u8>, binary: Vec<u8>, extra: HeaderMap) -> Response {
    let mut headers = extra;
    headers.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(json.len()));
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let mut body = json;
    body.extend_from_slice(&binary);
    (headers, body).into_response()
}

/// Appends `values` little-endian to `out` (an FP32 output in binary form).
pub fn encode_f32(values: &[f32], out: &mut Vec<u8>) {
    out.reserve(values.len() * 4);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::InferRequest;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_CONTENT_LENGTH, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn bad(result: Result<(&[u8], &[u8]), Error>) -> String {
        match result {
            Err(Error::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn splits_at_the_header_length() {
        let body = b"{\"a\":1}\x01\x02";
        assert_eq!(split_body(&HeaderMap::new(), body).unwrap().1, b"");
        let (json, binary) = split_body(&headers("7"), body).unwrap();
        assert_eq!(json, b"{\"a\":1}");
        assert_eq!(binary, b"\x01\x02");
        assert!(bad(split_body(&headers("-1"), body)).contains("must not be negative"));
        assert!(bad(split_body(&headers("ten"), body)).contains("decimal integer"));
        assert!(
            bad(split_body(&headers("99999999999999999999999999999"), body))
                .contains("but the body has only 9 bytes")
        );
        assert!(bad(split_body(&headers("1.5"), body)).contains("decimal integer"));
        assert!(bad(split_body(&headers("10"), body)).contains("only 9 bytes"));
    }

    #[test]
    fn trailing_bytes_are_explained() {
        let body = b"{\"inputs\": []}\x00\x00\x80\x3f";
        let Err(Error::BadRequest(m)) = parse_json_part::<InferRequest>(body, false) else {
            panic!()
        };
        assert!(
            m.contains("needs the header Inference-Header-Content-Length"),
            "{m}"
        );
        let Err(Error::BadRequest(m)) = parse_json_part::<InferRequest>(b"{\"inputs\": [", true)
        else {
            panic!()
        };
        assert!(m.contains("not valid JSON"), "{m}");
    }
}
