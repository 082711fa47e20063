//! Request extractors whose rejections are this server's [`Error`], so that axum's default
//! plain-text rejections never reach a client: every failure is JSON `{"error": "..."}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::Error;

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
/// it (the validation's `parse_json_part` for an infer request).
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

/// An optional JSON body (the repository extension's requests): empty or whitespace is
/// `T::default()`; anything else must be JSON of `T`, or the rejection is a 400 with serde's
/// reason, in the API's own error shape.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: Default + DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Body(body) = Body::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&body)
            .map(OptionalJson)
            .map_err(|e| Error::BadRequest(format!("request body is not the expected JSON: {e}")))
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

/// The path parameters of `/v2/models/{model}[/versions/{version}]/...` and
/// `/v2/repository/models/{model}/...`. The version is kept as sent, so that one that is not a
/// number gets the repository's 404 naming it; `None` on the routes without it.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ModelPath {
    /// The model's name.
    pub model: String,
    /// The version, as sent; absent on the routes without `/versions/{version}`.
    pub version: Option<String>,
}
