//! The HTTP server's error: one enum, one place that maps it to a status code and the JSON body
//! `{"error": "..."}` (DESIGN.md: client mistakes are 4xx with a message saying what was
//! expected; a 500 hides its cause from the client and hands it to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::oip::ErrorBody;
use crate::worker::WorkerError;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the model (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No model folder of this name (404).
    #[error("unknown model '{model}'")]
    ModelNotFound {
        /// The name asked for.
        model: String,
    },
    /// The model exists but has no such version (404).
    #[error(
        "model '{model}' has no version '{version}' (ready versions: {})",
        list(available)
    )]
    VersionNotFound {
        /// The model's name.
        model: String,
        /// The version asked for, as sent.
        version: String,
        /// The versions that can be called.
        available: Vec<u64>,
    },
    /// No route for this path (404).
    #[error("{0}")]
    RouteNotFound(String),
    /// The path exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The server, model or version is not ready: failed to load or shutting down (503).
    #[error("{0}")]
    NotReady(String),
    /// Too many requests are queued for the model version (503).
    #[error("{0}")]
    Overloaded(String),
    /// A fault of the server, not of the request (500). The text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

fn list(versions: &[u64]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::ModelNotFound { .. }
            | Error::VersionNotFound { .. }
            | Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotReady(_) | Error::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine name of the error kind, for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::ModelNotFound { .. } => "model_not_found",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::RouteNotFound(_) => "route_not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::NotReady(_) => "not_ready",
            Error::Overloaded(_) => "overloaded",
            Error::Internal(_) => "internal",
        }
    }

    /// The message the client sees.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error; see the server log".into(),
            other => other.to_string(),
        }
    }
}

impl From<WorkerError> for Error {
    fn from(e: WorkerError) -> Error {
        match e {
            WorkerError::QueueFull(_) => Error::Overloaded(e.to_string()),
            WorkerError::Stopped(_) | WorkerError::Unavailable { .. } => {
                Error::NotReady(e.to_string())
            }
            WorkerError::Forward { .. } => Error::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error_type = self.error_type(), error = %self, "request failed");
        } else {
            tracing::debug!(error_type = self.error_type(), error = %self, "request rejected");
        }
        (
            status,
            Json(ErrorBody {
                error: self.client_message(),
            }),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let e = Error::VersionNotFound {
            model: "digits".into(),
            version: "9".into(),
            available: vec![1, 2],
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            e.client_message(),
            "model 'digits' has no version '9' (ready versions: 1, 2)"
        );
        let e = Error::Internal("libtorch exploded".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.client_message().contains("libtorch"));
        assert_eq!(
            Error::from(WorkerError::QueueFull("m/1".into())).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
