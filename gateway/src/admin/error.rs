//! The admin API's errors: [`AppError`], its status, and the one JSON shape every error is
//! answered with ([`ErrorBody`]). Internal causes go to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maas_billing::BillingError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An admin API error: the status and a message for the client; internal causes are logged
/// and answered as a bare `internal error`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No token, or one that is neither the operator token nor a live tenant admin's (401).
    #[error("missing or invalid admin token: send Authorization: Bearer <operator token or tenant admin token>")]
    Unauthorized,
    /// A valid token that may not do this, e.g. a tenant admin asking for another tenant (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed; the message says what was expected (400).
    #[error("{0}")]
    BadRequest(String),
    /// The tenant or key does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, e.g. a duplicate tenant name (409).
    #[error("{0}")]
    Conflict(String),
    /// A bug or an unavailable database; the cause goes to the log only (500).
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// 404 `no tenant <id>`.
    pub fn no_tenant(id: uuid::Uuid) -> Self {
        AppError::NotFound(format!("no tenant {id}"))
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        // SQLSTATE 22021 (character_not_in_repertoire) and 22P05 (untranslatable_character):
        // client text PostgreSQL cannot store, e.g. a NUL in a query parameter. The client's
        // mistake (400), whichever field carried it, not a server fault.
        // <https://www.postgresql.org/docs/current/errcodes-appendix.html>
        let unstorable = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "22021" || code == "22P05");
        if unstorable {
            return AppError::BadRequest(
                "text must be UTF-8 without NUL characters (\\u0000)".into(),
            );
        }
        AppError::Internal(e.into())
    }
}

impl From<BillingError> for AppError {
    fn from(e: BillingError) -> Self {
        match e {
            BillingError::Invalid(msg) => AppError::BadRequest(msg),
            BillingError::UnknownTenant(_) => AppError::NotFound(e.to_string()),
            BillingError::UnknownPlan(_) | BillingError::NoPrice { .. } => {
                AppError::Conflict(e.to_string())
            }
            BillingError::Database(e) => AppError::from(e),
            BillingError::Io(e) => AppError::Internal(e.into()),
        }
    }
}

/// The JSON body of every admin API error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what was expected.
    pub error: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "admin API internal error");
        }
        let status = self.status();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"maas-admin\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = AppError::Internal(anyhow::anyhow!("password=hunter2"));
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = AppError::Unauthorized.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
