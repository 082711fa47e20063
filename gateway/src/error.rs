//! Every error the gateway answers a client with, and the one place that maps it to an HTTP
//! status and a JSON body.
//!
//! Client mistakes are 4xx with `{"error": "<what was expected>"}` (ARCHITECTURE.md, "Decisions and why");
//! internal causes go to the log, never to the client.

use bytes::Bytes;
use http::StatusCode;

/// A request the gateway answers itself instead of forwarding (or could not forward).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No `Authorization: Bearer <key>` and no `x-api-key` header.
    #[error("missing API key: send Authorization: Bearer <key>")]
    MissingApiKey,
    /// An `Authorization` header with another scheme than `Bearer`, or not valid text.
    #[error("unsupported Authorization header: send Authorization: Bearer <key>")]
    MalformedAuthorization,
    /// The key is not one the gateway issued (unknown hash or wrong format).
    #[error("invalid API key")]
    InvalidApiKey,
    /// More than one credential header: a repeated `Authorization` or `x-api-key`, or both.
    #[error(
        "more than one credential: send exactly one Authorization: Bearer or x-api-key header"
    )]
    ConflictingCredentials,
    /// A JWT bearer token was refused (see [`crate::auth::jwt::JwtError`] for the messages), or it
    /// names a tenant that does not exist.
    #[error("{0}")]
    InvalidToken(String),
    /// The key was revoked (`api_keys.revoked_at`).
    #[error("API key revoked")]
    RevokedApiKey,
    /// The key is past `api_keys.expires_at`.
    #[error("API key expired")]
    ExpiredApiKey,
    /// The key's `allowed_models` (or the token's models claim) does not list the model.
    #[error("this credential may not call model '{0}'")]
    ModelNotAllowed(String),
    /// The key's tenant has `status = 'suspended'`.
    #[error("tenant suspended")]
    TenantSuspended,
    /// The path is not an Open Inference Protocol v2 route the gateway serves.
    #[error("no route for {0}: expected /v2/models/{{model}}[/versions/{{version}}]/..., /v2, /v2/repository/index or /v2/health/live|ready")]
    NotFound(String),
    /// No pool serves the model: no backend reports it READY and none is configured for it.
    /// The message names only the model asked for.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// Pools serve the model but none of their backends is healthy (active check passed, not
    /// ejected); answered with `Retry-After`.
    #[error("{}", no_healthy_backend(.0.as_deref()))]
    NoHealthyBackend(Option<String>),
    /// A rate limit, concurrency limit, quota or budget refused the request (the message names
    /// which and what it allows).
    #[error("{0}")]
    RateLimited(String),
    /// The shared rate limiter (Redis) failed and the policy is fail-closed.
    #[error("rate limiting is temporarily unavailable, retry later")]
    LimiterUnavailable,
    /// Key lookups cannot reach PostgreSQL; the gateway fails closed.
    #[error("authentication is temporarily unavailable, retry later")]
    AuthUnavailable,
    /// No backend of the pool accepted a connection, or it failed mid-request.
    #[error("no backend available for this request: {0}")]
    BadGateway(String),
    /// The backend did not answer in time.
    #[error("the backend did not answer in time")]
    GatewayTimeout,
    /// The request body is (or declares, by `Content-Length`) more bytes than `max_body_bytes`.
    #[error("request body is larger than the gateway accepts ({0} bytes)")]
    PayloadTooLarge(u64),
    /// The client sent something the HTTP layer could not read.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Another status pingora decided on (e.g. from a malformed upstream response).
    #[error("{}", .0.canonical_reason().unwrap_or("request failed").to_lowercase())]
    Http(StatusCode),
    /// A bug or an unexpected state; the cause is logged, not returned.
    #[error("internal error")]
    Internal,
}

fn no_healthy_backend(model: Option<&str>) -> String {
    match model {
        Some(m) => format!("no healthy backend is available for model '{m}', retry later"),
        None => "no healthy backend is available, retry later".into(),
    }
}

impl GatewayError {
    /// Stable machine-readable name of the error, for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::MissingApiKey => "missing_api_key",
            GatewayError::MalformedAuthorization => "malformed_authorization",
            GatewayError::ConflictingCredentials => "conflicting_credentials",
            GatewayError::InvalidApiKey => "invalid_api_key",
            GatewayError::InvalidToken(_) => "invalid_token",
            GatewayError::RevokedApiKey => "revoked_api_key",
            GatewayError::ExpiredApiKey => "expired_api_key",
            GatewayError::ModelNotAllowed(_) => "model_not_allowed",
            GatewayError::TenantSuspended => "tenant_suspended",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::UnknownModel(_) => "unknown_model",
            GatewayError::NoHealthyBackend(_) => "no_healthy_backend",
            GatewayError::AuthUnavailable => "auth_unavailable",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::LimiterUnavailable => "limiter_unavailable",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::GatewayTimeout => "gateway_timeout",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::PayloadTooLarge(_) => "payload_too_large",
            GatewayError::Http(_) => "http_error",
            GatewayError::Internal => "internal",
        }
    }

    /// The HTTP status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::MissingApiKey
            | GatewayError::MalformedAuthorization
            | GatewayError::InvalidApiKey
            | GatewayError::InvalidToken(_)
            | GatewayError::RevokedApiKey
            | GatewayError::ExpiredApiKey => StatusCode::UNAUTHORIZED,
            GatewayError::ModelNotAllowed(_) | GatewayError::TenantSuspended => {
                StatusCode::FORBIDDEN
            }
            GatewayError::NotFound(_) | GatewayError::UnknownModel(_) => StatusCode::NOT_FOUND,
            GatewayError::AuthUnavailable
            | GatewayError::LimiterUnavailable
            | GatewayError::NoHealthyBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadRequest(_) | GatewayError::ConflictingCredentials => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Http(code) => *code,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the response carries `WWW-Authenticate: Bearer` (RFC 6750 section 3: every 401).
    pub fn www_authenticate(&self) -> bool {
        self.status() == StatusCode::UNAUTHORIZED
    }

    /// The JSON body: `{"error": "<message>"}`.
    pub fn body(&self) -> Bytes {
        Bytes::from(serde_json::json!({ "error": self.to_string() }).to_string())
    }

    /// Map a status the gateway must answer with (e.g. from a pingora error) to an error.
    pub fn from_status(code: u16) -> Self {
        match code {
            400 => GatewayError::BadRequest("the request could not be read".into()),
            502 => GatewayError::BadGateway("the backend failed".into()),
            504 => GatewayError::GatewayTimeout,
            500 => GatewayError::Internal,
            _ => match StatusCode::from_u16(code) {
                Ok(status) if status.is_client_error() || status.is_server_error() => {
                    GatewayError::Http(status)
                }
                _ => GatewayError::Internal,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &GatewayError) -> serde_json::Value {
        serde_json::from_slice(&e.body()).unwrap()
    }

    #[test]
    fn auth_errors_are_401_with_challenge() {
        for e in [
            GatewayError::MissingApiKey,
            GatewayError::MalformedAuthorization,
            GatewayError::InvalidApiKey,
            GatewayError::RevokedApiKey,
            GatewayError::ExpiredApiKey,
        ] {
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{e:?}");
            assert!(e.www_authenticate());
        }
        assert!(!GatewayError::TenantSuspended.www_authenticate());
    }

    #[test]
    fn bodies_are_json_with_error() {
        assert_eq!(
            json(&GatewayError::MissingApiKey),
            serde_json::json!({"error": "missing API key: send Authorization: Bearer <key>"})
        );
        assert_eq!(
            json(&GatewayError::InvalidApiKey),
            serde_json::json!({"error": "invalid API key"})
        );
        let nf = json(&GatewayError::NotFound("/v1/x".into()));
        assert!(nf["error"]
            .as_str()
            .unwrap()
            .starts_with("no route for /v1/x"));
        assert_eq!(nf.as_object().unwrap().len(), 1);
    }

    #[test]
    fn statuses_and_types() {
        assert_eq!(
            GatewayError::ModelNotAllowed("m".into()).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            GatewayError::TenantSuspended.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            GatewayError::NotFound("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            GatewayError::BadGateway("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            GatewayError::ConflictingCredentials.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            GatewayError::AuthUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(GatewayError::from_status(502).status().as_u16(), 502);
        assert_eq!(GatewayError::from_status(504).status().as_u16(), 504);
        assert_eq!(GatewayError::from_status(400).status().as_u16(), 400);
        assert_eq!(GatewayError::from_status(503).status().as_u16(), 503);
        assert_eq!(GatewayError::from_status(413).status().as_u16(), 413);
        assert_eq!(GatewayError::from_status(200).status().as_u16(), 500);
        assert_eq!(
            json(&GatewayError::from_status(503)),
            serde_json::json!({"error": "service unavailable"})
        );
        assert_eq!(GatewayError::InvalidApiKey.error_type(), "invalid_api_key");
    }
}
