//! The body of an infer request before validation: split into its JSON part and binary part
//! (Triton's binary tensor data extension) and the JSON part parsed, with errors that say what
//! was expected.

use axum::http::HeaderMap;
use maas_protocol::HEADER_CONTENT_LENGTH;
use serde::de::DeserializeOwned;

use super::ValidationError;

/// Splits a request body into its JSON header and its binary part (empty without
/// `Inference-Header-Content-Length`).
///
/// [`ValidationError::BinaryData`] when the header is not a decimal integer, is negative, or
/// is larger than the body.
pub fn split_body<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), ValidationError> {
    let header = headers.get(HEADER_CONTENT_LENGTH).map(|v| v.as_bytes());
    Ok(maas_protocol::split_body(header, body)?)
}

/// Parses the JSON part of an infer request. Without `Inference-Header-Content-Length`
/// (`has_binary_header` false), bytes after the JSON value most likely are binary tensor data
/// sent without that header, and the error says so. The Content-Type header is not required
/// (clients such as `curl -d` send another).
pub fn parse_json_part<T: DeserializeOwned>(
    json: &[u8],
    has_binary_header: bool,
) -> Result<T, ValidationError> {
    if json.is_empty() {
        return Err(ValidationError::EmptyBody);
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ValidationError::NotAnObject);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = T::deserialize(&mut deserializer).map_err(|e| {
        if e.is_data() {
            ValidationError::Schema(e)
        } else {
            ValidationError::Syntax(e)
        }
    })?;
    if let Err(e) = deserializer.end() {
        return Err(if has_binary_header {
            ValidationError::AfterJsonPart(e)
        } else {
            ValidationError::AfterJsonBody(e)
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_protocol::InferRequest;

    #[test]
    fn trailing_bytes_are_explained() {
        let body = b"{\"inputs\": []}\x00\x00\x80\x3f";
        let m = parse_json_part::<InferRequest>(body, false)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("needs the header Inference-Header-Content-Length"),
            "{m}"
        );
        let m = parse_json_part::<InferRequest>(b"{\"inputs\": [", true)
            .unwrap_err()
            .to_string();
        assert!(m.contains("not valid JSON"), "{m}");
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        let parse_json = |body: &[u8]| parse_json_part::<InferRequest>(body, false);
        let m = parse_json(b"{\"inputs\": [").unwrap_err().to_string();
        assert!(m.starts_with("request body is not valid JSON"), "{m}");
        let m = parse_json(b"{\"id\": \"x\"}").unwrap_err().to_string();
        assert!(m.contains("missing field `inputs`"), "{m}");
        let m = parse_json(b" [] ").unwrap_err().to_string();
        assert!(m.contains("must be a JSON object"), "{m}");
        let m = parse_json(b"").unwrap_err().to_string();
        assert!(m.contains("empty body"), "{m}");
    }
}
