//! What became of a request, as the `outcome` label of `maas_gateway_requests_total`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::error::GatewayError;
use crate::limits::LimitKind;

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forwarded, and the backend answered 1xx-3xx.
    Ok,
    /// Forwarded, and the backend answered 4xx (a bad tensor, an unknown model).
    BackendRefused,
    /// No or an invalid credential (401).
    Unauthenticated,
    /// A credential that may not call the model, or a suspended tenant (403).
    Forbidden,
    /// A rate or concurrency limit refused (429).
    RateLimited,
    /// The monthly inference quota is exhausted (429).
    Quota,
    /// The monthly budget is exhausted (429).
    Budget,
    /// No route for the path (404), or a request the gateway could not read (400).
    BadRequest,
    /// The gateway could not decide (PostgreSQL or, fail-closed, Redis unreachable; the usage
    /// spool full): 503.
    Unavailable,
    /// No backend for the model: no pool's backend serves it (404), none of its backends is
    /// healthy (503), or every connection attempt failed or timed out.
    NoBackend,
    /// The backend failed: 5xx from it, or it failed mid-request or timed out (502/504).
    BackendError,
    /// The client went away before the response was written.
    ClientGone,
    /// Anything else the gateway answered itself (500).
    Error,
}

impl Outcome {
    /// Every outcome, in label order.
    #[cfg(test)]
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Ok,
        Outcome::BackendRefused,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::Quota,
        Outcome::Budget,
        Outcome::BadRequest,
        Outcome::Unavailable,
        Outcome::NoBackend,
        Outcome::BackendError,
        Outcome::ClientGone,
        Outcome::Error,
    ];

    /// How many outcomes there are.
    pub const COUNT: usize = 13;

    /// This outcome's position in declaration order (0 .. [`Outcome::COUNT`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BackendRefused => "backend_refused",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::RateLimited => "rate_limited",
            Outcome::Quota => "quota",
            Outcome::Budget => "budget",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::NoBackend => "no_backend",
            Outcome::BackendError => "backend_error",
            Outcome::ClientGone => "client_gone",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a request the gateway answered itself with `err`; `limit` is the kind
    /// of limit that refused it, for a 429.
    pub fn of_error(err: &GatewayError, limit: Option<LimitKind>) -> Outcome {
        match err {
            GatewayError::MissingApiKey
            | GatewayError::MalformedAuthorization
            | GatewayError::InvalidApiKey
            | GatewayError::InvalidToken(_)
            | GatewayError::RevokedApiKey
            | GatewayError::ExpiredApiKey => Outcome::Unauthenticated,
            GatewayError::ModelNotAllowed(_) | GatewayError::TenantSuspended => Outcome::Forbidden,
            GatewayError::RateLimited(_) => match limit {
                Some(LimitKind::Quota) => Outcome::Quota,
                Some(LimitKind::Budget) => Outcome::Budget,
                _ => Outcome::RateLimited,
            },
            GatewayError::NotFound(_)
            | GatewayError::BadRequest(_)
            | GatewayError::PayloadTooLarge(_)
            | GatewayError::ConflictingCredentials => Outcome::BadRequest,
            GatewayError::AuthUnavailable | GatewayError::LimiterUnavailable => {
                Outcome::Unavailable
            }
            GatewayError::UnknownModel(_) | GatewayError::NoHealthyBackend(_) => Outcome::NoBackend,
            GatewayError::BadGateway(_) | GatewayError::GatewayTimeout => Outcome::BackendError,
            GatewayError::Http(code) if code.as_u16() == 503 => Outcome::Unavailable,
            GatewayError::Http(code) if code.is_client_error() => Outcome::BadRequest,
            GatewayError::Http(_) | GatewayError::Internal => Outcome::Error,
        }
    }

    /// The outcome of a forwarded request from the status the client got (0: none, the
    /// client went away).
    pub fn of_status(status: u16) -> Outcome {
        match status {
            0 => Outcome::ClientGone,
            100..=399 => Outcome::Ok,
            400..=499 => Outcome::BackendRefused,
            _ => Outcome::BackendError,
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The class of an HTTP status, as a label value: `1xx` ... `5xx`, or `none` (no response).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    /// How many classes there are (`none`, `1xx` ... `5xx`).
    pub const COUNT: usize = 6;

    /// This class's position: 0 for `none`, else the status's first digit.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The class of `status` (0 or out of range: `none`).
    pub fn of(status: u16) -> StatusClass {
        StatusClass(match status {
            100..=599 => (status / 100) as u8,
            _ => 0,
        })
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            0 => encoder.write_str("none"),
            c => write!(encoder, "{c}xx"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_errors_and_statuses() {
        let rate = GatewayError::RateLimited("x".into());
        assert_eq!(
            Outcome::of_error(&rate, Some(LimitKind::Rate)),
            Outcome::RateLimited
        );
        assert_eq!(
            Outcome::of_error(&rate, Some(LimitKind::Quota)),
            Outcome::Quota
        );
        assert_eq!(
            Outcome::of_error(&rate, Some(LimitKind::Budget)),
            Outcome::Budget
        );
        assert_eq!(
            Outcome::of_error(&GatewayError::MissingApiKey, None),
            Outcome::Unauthenticated
        );
        assert_eq!(
            Outcome::of_error(&GatewayError::ModelNotAllowed("m".into()), None),
            Outcome::Forbidden
        );
        assert_eq!(
            Outcome::of_error(&GatewayError::BadGateway("x".into()), None),
            Outcome::BackendError
        );
        assert_eq!(
            Outcome::of_error(
                &GatewayError::Http(http::StatusCode::SERVICE_UNAVAILABLE),
                None
            ),
            Outcome::Unavailable
        );
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
        assert_eq!(Outcome::of_status(404), Outcome::BackendRefused);
        assert_eq!(Outcome::of_status(503), Outcome::BackendError);
        assert_eq!(Outcome::of_status(0), Outcome::ClientGone);
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }
}
