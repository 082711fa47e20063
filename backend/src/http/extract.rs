//! Request extractors whose rejections are this server's [`Error`], so that axum's default
//! plain-text rejections never reach a client: every failure is JSON `{"error": "..."}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use http_body_util::BodyExt;
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

/// How a request body may be read: at most `max_bytes` of data, and no more than `idle`
/// between two reads of it (a sender that stalls mid-body gets 408). Set on the router as an
/// extension; the [`Body`] extractor reads it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted, in bytes (413 beyond it).
    pub max_bytes: usize,
    /// Longest wait for the next piece of the body.
    pub idle: Duration,
}

/// The raw request body, within the server's [`BodyLimits`].
///
/// Kept as bytes so that a handler can first resolve the model (404 before 400) and then parse
/// it (the validation's `parse_json_part` for an infer request).
///
/// Memory: the body is copied into one buffer as it arrives and each piece hyper read is let go
/// at once, so a request holds about its body's size (at most twice the limit while the buffer
/// grows) whatever its framing. Collecting the pieces first (axum's `Bytes` extractor) keeps
/// every read buffer alive until the end: a chunked body of tiny chunks, each arriving in its
/// own read, then holds kilobytes per byte sent. A declared `Content-Length` over the limit is
/// refused before any of the body is read.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S> FromRequest<S> for Body
where
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limits = req
            .extensions()
            .get::<BodyLimits>()
            .copied()
            .ok_or_else(|| Error::Internal("the router sets no body limits".into()))?;
        read_body(req, limits).await.map(Body)
    }
}

/// Reads `req`'s body into one buffer within `limits` (see [`Body`]).
async fn read_body(req: Request, limits: BodyLimits) -> Result<Bytes, Error> {
    let too_large = || {
        Error::PayloadTooLarge(format!(
            "request body is larger than the server accepts ({} bytes, see --max-body-bytes)",
            limits.max_bytes
        ))
    };
    let declared = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Error::BadRequest("Content-Length must be a decimal number of bytes".into())
                })?,
        ),
    };
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return Err(too_large());
    }
    // Reserve what was declared (within the limit, checked above); a chunked body grows.
    let mut buffer = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = req.into_body();
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Err(_) => {
                return Err(Error::RequestTimeout(format!(
                    "no request body data for {} s",
                    limits.idle.as_secs_f64()
                )))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Error::BadRequest(format!(
                    "cannot read the request body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limits.max_bytes {
                return Err(too_large());
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buffer))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `read_body` over a body of `chunks` (each one frame) declaring `content_length`.
    fn read(
        chunks: Vec<Vec<u8>>,
        content_length: Option<&str>,
        max_bytes: usize,
    ) -> Result<Bytes, Error> {
        let frames = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let mut request = Request::builder().method("POST").uri("/");
        if let Some(value) = content_length {
            request = request.header(header::CONTENT_LENGTH, value);
        }
        let request = request
            .body(axum::body::Body::from_stream(frames))
            .expect("a valid request");
        let limits = BodyLimits {
            max_bytes,
            idle: Duration::from_secs(5),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(read_body(request, limits))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any framing of any bytes, any Content-Length text, any limit: the bytes exactly,
        /// or 413 when the body or its declared length is over the limit, or 400 for a
        /// Content-Length that is not a number; never a panic or another error.
        #[test]
        fn any_framing_reads_the_bytes_or_a_typed_refusal(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            declared in proptest::option::of(prop_oneof![
                (0u64..1200).prop_map(|n| n.to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                "[ -~]{0,8}",
            ]),
            max_bytes in 0usize..600,
        ) {
            let all = chunks.concat();
            let number = declared.as_deref().map(|d| d.trim().parse::<u64>());
            match read(chunks, declared.as_deref(), max_bytes) {
                Ok(bytes) => {
                    prop_assert_eq!(&bytes[..], &all[..]);
                    prop_assert!(all.len() <= max_bytes);
                    let within = match number {
                        None => true,
                        Some(Ok(n)) => n <= max_bytes as u64,
                        Some(Err(_)) => false,
                    };
                    prop_assert!(within, "{:?}", declared);
                }
                Err(Error::PayloadTooLarge(message)) => {
                    let declared_over = matches!(number, Some(Ok(n)) if n > max_bytes as u64);
                    prop_assert!(all.len() > max_bytes || declared_over);
                    prop_assert!(message.contains(&format!("({max_bytes} bytes")), "{}", message);
                }
                Err(Error::BadRequest(message)) => {
                    prop_assert!(matches!(number, Some(Err(_))), "{}", message);
                    prop_assert!(message.contains("Content-Length"), "{}", message);
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
