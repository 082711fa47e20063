//! Sign-in and sign-out. `POST /dashboard/sign-in` takes a tenant admin token or the operator
//! token from a form (so it never appears in a URL), and on success starts a session
//! (`admin_sessions`) and sets its cookie; a wrong token is a 401 page saying so; more than the
//! allowed wrong attempts from one address is a 429 page with `Retry-After`. `POST
//! /dashboard/sign-out` (with the session's CSRF token) revokes the session and clears the
//! cookie.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::super::auth::Caller;
use super::super::error::AppError;
use super::super::session::{self, SessionToken, SESSION_TTL};
use super::super::state::AdminState;
use super::signed_in::{same_origin, PageError, SignedIn};
use crate::store;

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignInForm {
    /// A tenant admin token (`maas_ta_...`) or the operator token.
    token: String,
}

/// A form with only the CSRF field.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: String,
}

fn sign_in_page(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in - maas" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
            }
            body {
                form.signin method="post" action="/dashboard/sign-in" {
                    h1 { "maas dashboard" }
                    p.muted { "Sign in with your tenant admin token (maas_ta_...) or the operator token." }
                    @if let Some(e) = error { p.error id="error" { (e) } }
                    label { "Token"
                        input type="password" name="token" id="token" autocomplete="off" required autofocus;
                    }
                    button type="submit" id="sign-in" { "Sign in" }
                }
            }
        }
    }
}

/// `GET /dashboard/sign-in`.
pub async fn form() -> Markup {
    sign_in_page(None)
}

/// `POST /dashboard/sign-in`.
pub async fn sign_in(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, PageError> {
    same_origin(&headers)?;
    if let Err(wait) = state.sign_in.check(peer.ip()) {
        let secs = wait.as_secs().max(1);
        tracing::warn!(%peer, "dashboard: sign-in attempts over the limit");
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            sign_in_page(Some(&format!(
                "Too many sign-in attempts from your address: try again in {secs} s."
            ))),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(resp);
    }
    let caller = match Caller::from_token(
        state.operator_token_ref(),
        &state.pool,
        form.token.trim(),
    )
    .await
    {
        Ok(c) => c,
        Err(AppError::Unauthorized) => {
            state.sign_in.failed(peer.ip());
            tracing::info!(%peer, "dashboard: wrong sign-in token");
            return Ok((
                StatusCode::UNAUTHORIZED,
                sign_in_page(Some(
                    "That is neither a live tenant admin token nor the operator token.",
                )),
            )
                .into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let token = SessionToken::generate()?;
    let expires_at = Utc::now() + SESSION_TTL;
    let (admin, operator) = match caller {
        Caller::Operator => (None, Some(state.operator_token_ref().sha256_hex())),
        Caller::TenantAdmin { admin_id, .. } => (Some(admin_id), None),
    };
    store::insert_session(
        &state.pool,
        &token.sha256(),
        admin,
        operator.as_deref(),
        expires_at,
    )
    .await?;
    // Now and then, forget sessions long over.
    if rand::random::<u8>() == 0 {
        let _ = store::delete_old_sessions(&state.pool).await;
    }
    tracing::info!(?caller, "dashboard: signed in");
    let mut resp = Redirect::to("/dashboard").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&token, session::is_tls(&headers)),
    );
    Ok(resp)
}

/// `POST /dashboard/sign-out`.
pub async fn sign_out(
    State(state): State<AdminState>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    signed.check_form(&headers, &form.csrf)?;
    store::revoke_session(&state.pool, &signed.session.sha256()).await?;
    tracing::info!(caller = ?signed.caller, "dashboard: signed out");
    let mut resp = Redirect::to("/dashboard/sign-in").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::clear_cookie(session::is_tls(&headers)),
    );
    Ok(resp)
}
