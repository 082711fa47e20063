//! The web dashboard at `/dashboard`, served by the admin listener: server-rendered HTML
//! (maud templates, compiled into the binary) with plain HTML forms, and charts drawn by
//! uPlot, vendored from its npm package with its licence (`assets/vendor/uplot/`) and
//! embedded like every other asset, so the dashboard works offline and needs no build step
//! beyond `cargo build`.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and connections from
//! this origin only; no inline script or style; no framing), `X-Content-Type-Options: nosniff`
//! and `Referrer-Policy: same-origin` (with `no-referrer`, browsers send `Origin: null` on form posts); pages are `Cache-Control: no-store`.
//!
//! Sign-in exchanges a token for a session cookie (`super::session`); each page then reads
//! the data the JSON API serves, in process, from the hourly rollups. A tenant admin sees its
//! own tenant's pages (`/dashboard/tenants/{id}/...`; another tenant's: 403); the operator sees
//! every tenant, plans and backend pools (`/dashboard/operator`).
//!
//! Files: the router and headers (this file), embedded assets (`assets.rs`), the signed-in
//! extractor and error page (`signed_in.rs`), the page shell (`layout.rs`), sign-in and
//! sign-out (`sign_in.rs`), one file per page (`overview.rs`, `usage.rs`, `keys.rs`,
//! `limits.rs`, `invoices.rs`, `operator.rs`), and chart data (`chart.rs`).

mod assets;
mod chart;
mod invoices;
mod keys;
mod layout;
mod limits;
mod operator;
mod overview;
mod sign_in;
mod signed_in;
mod usage;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use super::state::AdminState;

/// The Content-Security-Policy of every dashboard answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The dashboard's routes, to merge into the admin router.
pub fn router(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(signed_in::home))
        .route("/dashboard/", get(signed_in::home))
        .route(
            "/dashboard/sign-in",
            get(sign_in::form).post(sign_in::sign_in),
        )
        .route("/dashboard/sign-out", post(sign_in::sign_out))
        .route("/dashboard/assets/{*name}", get(assets::serve))
        .route(
            "/dashboard/tenants/{tenant_id}/overview",
            get(overview::page),
        )
        .route("/dashboard/tenants/{tenant_id}/usage", get(usage::page))
        .route(
            "/dashboard/tenants/{tenant_id}/usage.{ext}",
            get(usage::download),
        )
        .route(
            "/dashboard/tenants/{tenant_id}/keys",
            get(keys::page).post(keys::create),
        )
        .route(
            "/dashboard/tenants/{tenant_id}/keys/{key_id}/revoke",
            post(keys::revoke),
        )
        .route(
            "/dashboard/tenants/{tenant_id}/keys/{key_id}/rotate",
            post(keys::rotate),
        )
        .route("/dashboard/tenants/{tenant_id}/limits", get(limits::page))
        .route(
            "/dashboard/tenants/{tenant_id}/invoices",
            get(invoices::list),
        )
        .route(
            "/dashboard/tenants/{tenant_id}/invoices/{period}",
            get(invoices::one),
        )
        .route("/dashboard/operator", get(operator::page))
        .route(
            "/dashboard/operator/tenants/{tenant_id}/{action}",
            post(operator::set_status),
        )
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Adds the security headers to every dashboard answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/dashboard/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
