//! Who is signed in to the dashboard ([`SignedIn`], from the session cookie), the checks of a
//! state-changing form (CSRF token and same origin), and the error page ([`PageError`]).

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, DOCTYPE};
use uuid::Uuid;

use super::super::auth::Caller;
use super::super::error::AppError;
use super::super::session::{cookie_token, SessionToken};
use super::super::state::AdminState;

/// A request with a live dashboard session: who it is, and the session (for its CSRF token).
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The operator or a tenant admin.
    pub caller: Caller,
    /// The session token of the cookie.
    pub session: SessionToken,
}

impl SignedIn {
    /// 403 page unless this session may see tenant `tenant_id`'s pages.
    ///
    /// # Errors
    /// [`PageError`] 403.
    pub fn tenant(&self, tenant_id: Uuid) -> Result<(), PageError> {
        Ok(self.caller.check_tenant(tenant_id)?)
    }

    /// 403 page unless this is the operator.
    ///
    /// # Errors
    /// [`PageError`] 403.
    pub fn operator(&self) -> Result<(), PageError> {
        Ok(self.caller.require_operator()?)
    }

    /// Check a state-changing form of this session: its `csrf` field is the session's CSRF
    /// token, and the request comes from this origin (`Origin` equal to this `Host`, and no
    /// cross-site `Sec-Fetch-Site`).
    ///
    /// # Errors
    /// [`PageError`] 403 naming what failed.
    pub fn check_form(&self, headers: &HeaderMap, csrf: &str) -> Result<(), PageError> {
        same_origin(headers)?;
        if !self.session.csrf_matches(csrf) {
            return Err(AppError::Forbidden(
                "this form's CSRF token does not match the session: reload the page and try again"
                    .into(),
            )
            .into());
        }
        Ok(())
    }
}

/// 403 unless the request is same-origin: `Origin`, when sent, is this `Host` (over http or
/// https), and `Sec-Fetch-Site`, when sent, is `same-origin` or `none`.
///
/// # Errors
/// [`PageError`] 403.
pub fn same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = get(header::HOST.as_str()).unwrap_or_default();
    if let Some(origin) = get(header::ORIGIN.as_str()) {
        let ok = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| o == host);
        if !ok {
            return Err(
                AppError::Forbidden(format!("cross-origin form from {origin} refused")).into(),
            );
        }
    }
    if let Some(site) = get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(AppError::Forbidden(format!("{site} form refused")).into());
        }
    }
    Ok(())
}

impl FromRequestParts<AdminState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/dashboard/sign-in").into_response();
        let session = cookie_token(&parts.headers).ok_or_else(to_sign_in)?;
        match Caller::from_session(state.operator_token_ref(), &state.pool, &session).await {
            Ok(caller) => Ok(SignedIn { caller, session }),
            Err(AppError::Unauthorized) => Err(to_sign_in()),
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

/// `GET /dashboard`: the signed-in caller's first page (a tenant admin's overview, the
/// operator's tenant list), or the sign-in form.
pub async fn home(State(state): State<AdminState>, req: axum::extract::Request) -> Response {
    let (mut parts, _) = req.into_parts();
    match SignedIn::from_request_parts(&mut parts, &state).await {
        Ok(s) => Redirect::to(&match s.caller {
            Caller::Operator => "/dashboard/operator".to_string(),
            Caller::TenantAdmin { tenant_id, .. } => {
                format!("/dashboard/tenants/{tenant_id}/overview")
            }
        })
        .into_response(),
        Err(r) => r,
    }
}

/// An error answered as an HTML page with the error's status and message (internal causes
/// are logged, as for the API).
#[derive(Debug)]
pub struct PageError(pub AppError);

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        PageError(e)
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError(AppError::Internal(e))
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError(e.into())
    }
}

impl From<maas_billing::BillingError> for PageError {
    fn from(e: maas_billing::BillingError) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let AppError::Internal(cause) = &self.0 {
            tracing::error!(error = format!("{cause:#}"), "dashboard internal error");
        }
        let status: StatusCode = self.0.status();
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "maas: " (status.as_u16()) }
                    link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                }
                body {
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p.error id="error" { (self.0.to_string()) }
                        p { a href="/dashboard" { "Back to the dashboard" } }
                    }
                }
            }
        };
        (status, page).into_response()
    }
}
