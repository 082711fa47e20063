//! Extractors whose rejection is the API's own error (as in axum's `examples/error-handling`):
//! a malformed body, path or query string is a 400 [`AppError`] in the `{"error": "..."}`
//! shape that names what was expected, never axum's plain-text rejection.
//!
//! - [`AppJson`]: `invalid JSON body: ...` with serde's account of the first problem.
//! - [`AppPath`]: `<name> must be a UUID, got '<value>'` for an id; a type whose own message
//!   names its parameter (e.g. `maas_billing::Period`: ``period `2026-13`: expected YYYY-MM``)
//!   keeps that message.
//! - [`AppQuery`]: the query type's own message (the query types of `params.rs` name the
//!   parameter), or serde's (an unknown or repeated parameter).

use axum::extract::path::ErrorKind;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::AppError;

/// A JSON body of type `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(body)) => Ok(AppJson(body)),
            Err(e) => Err(AppError::BadRequest(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// The path parameters of the route, as `T` (a `Uuid` for one parameter, a struct naming the
/// parameters it reads for several).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppPath<T>(pub T);

impl<S, T> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(params)) => Ok(AppPath(params)),
            Err(e) => Err(path_error(e)),
        }
    }
}

/// How the `uuid` crate's serde support starts every parse error.
const UUID_ERROR: &str = "UUID parsing failed";

fn path_error(rejection: PathRejection) -> AppError {
    let PathRejection::FailedToDeserializePathParams(e) = rejection else {
        // A handler on a route without the parameters it reads: a bug, not the client's.
        return AppError::Internal(anyhow::anyhow!("path parameters: {rejection}"));
    };
    match e.into_kind() {
        ErrorKind::DeserializeError {
            key,
            value,
            message,
        } => AppError::BadRequest(if message.starts_with(UUID_ERROR) {
            format!("{key} must be a UUID, got '{value}'")
        } else if message.starts_with(key.as_str()) {
            message
        } else {
            format!("{key} `{value}`: {message}")
        }),
        // A type's own message (e.g. `Period`'s), raised after the text was read.
        ErrorKind::Message(message) => AppError::BadRequest(message),
        kind @ (ErrorKind::ParseErrorAtKey { .. }
        | ErrorKind::ParseErrorAtIndex { .. }
        | ErrorKind::ParseError { .. }
        | ErrorKind::InvalidUtf8InPathParam { .. }) => AppError::BadRequest(kind.to_string()),
        // The wrong number of parameters or an unsupported type: a bug in the handler.
        kind => AppError::Internal(anyhow::anyhow!("path parameters: {kind}")),
    }
}

/// The query string, as `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(AppQuery(params)),
            Err(e) => Err(query_error(e)),
        }
    }
}

fn query_error(rejection: QueryRejection) -> AppError {
    // axum prefixes "Failed to deserialize query string: "; the cause alone says what was
    // expected.
    let cause = match &rejection {
        QueryRejection::FailedToDeserializeQueryString(e) => {
            std::error::Error::source(e).map(ToString::to_string)
        }
        _ => None,
    };
    AppError::BadRequest(cause.unwrap_or_else(|| rejection.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;
    use serde::Deserialize;
    use uuid::Uuid;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        name: String,
    }

    #[derive(Debug, Deserialize)]
    struct PeriodParam {
        period: maas_billing::Period,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        n: Option<u32>,
    }

    async fn serve() -> String {
        let app = Router::new()
            .route(
                "/t/{tenant_id}",
                get(|AppPath(id): AppPath<Uuid>| async move { id.to_string() }),
            )
            .route(
                "/t/{tenant_id}/invoices/{period}",
                get(|AppPath(p): AppPath<PeriodParam>| async move { p.period.to_string() }),
            )
            .route("/json", post(|AppJson(_): AppJson<Body>| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    async fn error(resp: reqwest::Response) -> (u16, String) {
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.expect("a JSON error body");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    }

    #[tokio::test]
    async fn rejections_are_json_400s_that_name_the_parameter() {
        let base = serve().await;
        let c = reqwest::Client::new();
        let id = Uuid::now_v7();
        let ok = c.get(format!("{base}/t/{id}")).send().await.unwrap();
        assert_eq!(ok.text().await.unwrap(), id.to_string());
        let e = error(c.get(format!("{base}/t/acme")).send().await.unwrap()).await;
        assert_eq!(e, (400, "tenant_id must be a UUID, got 'acme'".to_string()));
        let ok = c
            .get(format!("{base}/t/{id}/invoices/2026-11"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.text().await.unwrap(), "2026-11");
        let (status, msg) = error(
            c.get(format!("{base}/t/{id}/invoices/2026-13"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(msg.starts_with("period `2026-13`"), "{msg}");
        let (status, msg) = error(
            c.post(format!("{base}/json"))
                .header("content-type", "application/json")
                .body("{\"nom\": 1}")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("invalid JSON body:") && msg.contains("name"),
            "{msg}"
        );
        let (status, _) = error(
            c.post(format!("{base}/json"))
                .body("{}")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "a body without a JSON content type");
    }

    async fn query(uri: &str) -> Result<Params, AppError> {
        let (mut parts, ()) = Request::builder().uri(uri).body(()).unwrap().into_parts();
        AppQuery::<Params>::from_request_parts(&mut parts, &())
            .await
            .map(|AppQuery(p)| p)
    }

    #[tokio::test]
    async fn query_rejections_give_serde_s_reason_alone() {
        assert_eq!(query("/x?n=3").await.unwrap().n, Some(3));
        assert_eq!(query("/x").await.unwrap().n, None);
        let e = query("/x?colour=blue").await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = query("/x?n=many").await.unwrap_err();
        assert!(e.to_string().starts_with("n: "), "{e}");
    }
}
