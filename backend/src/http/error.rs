//! The HTTP server's error: one enum, one place that maps every failure (of validation, of the
//! repository, of a worker, of the HTTP layer itself) to a status code and the JSON body
//! `{"error": "..."}`. Client mistakes are 4xx with a message saying what was expected; a 500
//! hides its cause from the client and hands it to the log (axum's `error-handling` example).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use maas_protocol::ErrorBody;

use crate::engine::WorkerError;
use crate::repository::RepositoryError;
use crate::validation::ValidationError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The infer request does not fit the model (400; 500 for a model the server cannot
    /// validate requests for).
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The repository refused: no such model or version (404), not ready (503), a failed or
    /// refused load (400), an unlistable folder (500).
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The version's worker refused or failed: queue full (503), stopped (503), a part of the
    /// model elsewhere unavailable (503), the forward pass failed (500).
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A malformed path or a body that is not the expected JSON (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The client stopped sending its body mid-way for longer than the server waits (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// No route for this path (404).
    #[error("{0}")]
    RouteNotFound(String),
    /// The path exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A fault of the server, not of the request (500). The text goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Validation(ValidationError::UnsupportedModel(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Error::Validation(_) | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Repository(e) => match e {
                RepositoryError::ModelNotFound { .. } | RepositoryError::VersionNotFound { .. } => {
                    StatusCode::NOT_FOUND
                }
                RepositoryError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
                RepositoryError::NoModelFolder { .. }
                | RepositoryError::LoadFailed { .. }
                | RepositoryError::Fixed { .. } => StatusCode::BAD_REQUEST,
                RepositoryError::List(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Worker(e) => match e {
                WorkerError::QueueFull(_)
                | WorkerError::QueueTimeout { .. }
                | WorkerError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
                WorkerError::Forward { source, .. } if source.is_unavailable() => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                WorkerError::Forward { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine name of the error kind, for logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Validation(e) => e.error_type(),
            Error::Repository(e) => match e {
                RepositoryError::ModelNotFound { .. } => "model_not_found",
                RepositoryError::VersionNotFound { .. } => "version_not_found",
                RepositoryError::NotReady(_) => "not_ready",
                RepositoryError::NoModelFolder { .. } | RepositoryError::LoadFailed { .. } => {
                    "load_failed"
                }
                RepositoryError::Fixed { .. } => "repository_fixed",
                RepositoryError::List(_) => "internal",
            },
            Error::Worker(e) => match e {
                WorkerError::QueueFull(_) => "overloaded",
                WorkerError::QueueTimeout { .. } => "queue_timeout",
                WorkerError::Stopped(_) => "not_ready",
                WorkerError::Forward { source, .. } if source.is_unavailable() => "not_ready",
                WorkerError::Forward { .. } => "internal",
            },
            Error::BadRequest(_) => "bad_request",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::RequestTimeout(_) => "request_timeout",
            Error::RouteNotFound(_) => "route_not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Internal(_) => "internal",
        }
    }

    /// The message the client sees: the error itself, except for a 500, whose cause stays in
    /// the log.
    pub fn client_message(&self) -> String {
        if self.status().is_server_error() && self.status() != StatusCode::SERVICE_UNAVAILABLE {
            "internal error; see the server log".into()
        } else {
            self.to_string()
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        // A 500's cause is hidden from the client, so it goes to the log. A 503 (not ready,
        // overloaded) says everything to the client and its cause was logged once when it
        // arose (a failed load, a worker gone): logging it per request would let a flood of
        // requests flood the log.
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
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
        let e = Error::from(RepositoryError::VersionNotFound {
            model: "digits".into(),
            version: "9".into(),
            available: vec![1, 2],
        });
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
        let e = Error::from(WorkerError::QueueTimeout {
            label: "m/1".into(),
            priority: 2,
            timeout: std::time::Duration::from_millis(50),
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.error_type(), "queue_timeout");
        assert_eq!(
            e.client_message(),
            "m/1: waited longer than the queue timeout of priority level 2 (50 ms); retry later"
        );
    }
}
