//! Request extractors whose rejections are this server's [`Error`], so that axum's default
//! plain-text rejections never reach a client: every failure is JSON `{"error": "..."}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Path parameters (`{model}`, `{version}`), decoded into `T`.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(Error::BadRequest(format!(
                "invalid path: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The raw request body, within the server's body limit (axum's `DefaultBodyLimit`).
///
/// Kept as bytes so that a handler can first resolve the model (404 before 400) and then parse
/// with [`parse_json`].
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) => Err(body_error(&rejection)),
        }
    }
}

fn body_error(rejection: &BytesRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(
            "request body is larger than the server accepts (see --max-body-bytes)".into(),
        )
    } else {
        Error::BadRequest(format!(
            "cannot read the request body: {}",
            rejection.body_text()
        ))
    }
}

/// Parses a JSON body into `T`. The Content-Type header is not required (clients such as
/// `curl -d` send another); any body that is not valid JSON of the expected form is a 400 whose
/// message gives serde's reason and position. The same rules as the JSON part of an infer
/// request without binary data ([`crate::binary::parse_json_part`]).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    crate::binary::parse_json_part(body, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::InferRequest;

    #[test]
    fn malformed_json_is_a_bad_request() {
        let Err(Error::BadRequest(m)) = parse_json::<InferRequest>(b"{\"inputs\": [") else {
            panic!()
        };
        assert!(m.starts_with("request body is not valid JSON"), "{m}");
        let Err(Error::BadRequest(m)) = parse_json::<InferRequest>(b"{\"id\": \"x\"}") else {
            panic!()
        };
        assert!(m.contains("missing field `inputs`"), "{m}");
        let Err(Error::BadRequest(m)) = parse_json::<InferRequest>(b" [] ") else {
            panic!()
        };
        assert!(m.contains("must be a JSON object"), "{m}");
        let Err(Error::BadRequest(m)) = parse_json::<InferRequest>(b"") else {
            panic!()
        };
        assert!(m.contains("empty body"), "{m}");
    }
}
