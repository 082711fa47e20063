//! Admin API for operators and tenant admins: tenants and API keys, limits, tenant admins,
//! usage, invoices and exports, on its own listener (axum).
//!
//! Every route is under `/admin/v1` and needs `Authorization: Bearer <token>`: the operator token
//! (`[admin] operator_token` or `MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN`, compared in constant time)
//! for everything, or a tenant admin's token for its own tenant's self-service: its keys
//! (list, create, revoke, rotate, their limits within the tenant's), its limits, account
//! (plan, prices, quota and budget state), usage, invoices and exports (any other route or
//! tenant, or a tenant that does not exist: 403). A missing, unknown or revoked token is 401 with
//! `WWW-Authenticate: Bearer`. Without `Authorization`, a dashboard session cookie stands for
//! the token it was signed in with (`session/`; state-changing requests then need the
//! session's `X-CSRF-Token`). The web dashboard (`dashboard/`) is served at `/dashboard` on the
//! same listener. The OpenAPI document generated from the handlers (utoipa) is
//! served without a token at `/admin/v1/openapi.json`.
//!
//! The admin API writes PostgreSQL only (through [`crate::store`]); the data path sees a revoked
//! key or a suspended tenant once its cached lookup expires (`auth.cache_ttl_ms`), or at once
//! when the change is announced on Redis ([`crate::invalidation`]).
//!
//! It runs on a std thread with its own tokio runtime and its own sqlx pool (pingora owns the
//! proxy's runtimes), started by [`spawn`] from [`crate::serve::serve`].
//!
//! Modules: who is calling (`auth.rs`), the shared state (`state.rs`), errors and their one JSON
//! shape (`error.rs`), extractors whose rejection is that shape (`extract.rs`), name rules
//! (`validate.rs`), the usage routes' query parameters (`params.rs`), one file per resource
//! (`tenants.rs`, `keys.rs`, `limits.rs`, `plans.rs`, `account.rs`, `tenant_admins.rs`,
//! `usage.rs`, `pools.rs`), and the OpenAPI
//! document (`openapi.rs`). This file only assembles them.

mod account;
mod auth;
mod dashboard;
mod error;
mod extract;
mod keys;
mod limits;
mod openapi;
mod params;
mod plans;
mod pools;
mod session;
mod state;
mod tenant_admins;
mod tenants;
mod usage;
mod validate;

pub use keys::create_key;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use sqlx::postgres::PgPoolOptions;

use crate::config::GatewayConfig;
use crate::pools::Pools;
use error::AppError;
use state::AdminState;

/// The admin router: `/admin/v1/...`, the operator-only routes behind [`auth::require_operator`],
/// the routes open to tenant admins (each checks its caller), and the open
/// `/admin/v1/openapi.json`.
fn router(state: AdminState) -> Router {
    let operator_only = Router::new()
        .route(
            "/admin/v1/tenants",
            post(tenants::create_tenant).get(tenants::list_tenants),
        )
        .route(
            "/admin/v1/tenants/by-name/{name}",
            get(tenants::tenant_by_name),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/suspend",
            post(tenants::suspend_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/reactivate",
            post(tenants::reactivate_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/plan",
            put(plans::put_tenant_plan),
        )
        .route("/admin/v1/plans", get(plans::list_plans))
        .route(
            "/admin/v1/plans/{plan}",
            get(plans::get_plan).put(plans::put_plan),
        )
        .route(
            "/admin/v1/plans/{plan}/prices/{model}",
            put(plans::put_price),
        )
        .route(
            "/admin/v1/plans/{plan}/limits",
            get(limits::get_plan_limits).put(limits::put_plan_limits),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/admins",
            post(tenant_admins::create_tenant_admin).get(tenant_admins::list_tenant_admins),
        )
        .route(
            "/admin/v1/tenant-admins/{admin_id}/revoke",
            post(tenant_admins::revoke_tenant_admin),
        )
        .route("/admin/v1/pools", get(pools::list_pools))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    // Each of these checks its caller itself (VisibleTenant, VisibleKey, or Caller for the
    // operator-only method of a route whose other method a tenant admin may use).
    let tenant_visible = Router::new()
        .route(
            "/admin/v1/tenants/{tenant_id}/keys",
            post(keys::create_tenant_key).get(keys::list_keys),
        )
        .route("/admin/v1/keys/{key_id}/revoke", post(keys::revoke_key))
        .route("/admin/v1/keys/{key_id}/rotate", post(keys::rotate_key))
        .route(
            "/admin/v1/tenants/{tenant_id}/limits",
            get(limits::get_tenant_limits).put(limits::put_tenant_limits),
        )
        .route(
            "/admin/v1/keys/{key_id}/limits",
            get(limits::get_key_limits).put(limits::put_key_limits),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/account",
            get(account::get_account),
        )
        .route("/admin/v1/tenants/{tenant_id}/usage", get(usage::get_usage))
        .route(
            "/admin/v1/tenants/{tenant_id}/usage/export",
            get(usage::export_usage),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/invoices/{period}",
            get(usage::get_invoice),
        );
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi::openapi_json))
        .merge(operator_only)
        .merge(tenant_visible)
        .merge(dashboard::router(state.clone()))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such admin route: see /admin/v1/openapi.json".into())
}

/// Start the admin API on its own thread and runtime when an operator token is configured;
/// `Ok(None)` (and a log line) when it is disabled.
///
/// The listener is bound before this returns, so a bind failure is an error here and clients
/// may connect as soon as it returns.
pub fn spawn(
    config: &GatewayConfig,
    pools: Arc<Pools>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(token) = config.admin.token() else {
        tracing::info!(
            "admin API disabled: no admin.operator_token (MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN)"
        );
        return Ok(None);
    };
    let addr: SocketAddr = config.admin_addr()?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("admin API cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let url = config.database_url()?.to_string();
    let max_connections = config.admin.db_max_connections;
    let token = token.to_string();
    let redis = config.redis_client()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("maas-admin")
        .enable_all()
        .build()
        .context("building the admin API runtime")?;
    let handle = std::thread::Builder::new()
        .name("maas-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let pool = match PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy(&url)
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        tracing::error!(error = %e, "admin API: bad database_url");
                        return;
                    }
                };
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin API: listener");
                        return;
                    }
                };
                tracing::info!(%addr, "admin API listening");
                let app = router(
                    AdminState::new(pool, &token)
                        .with_redis(redis)
                        .with_pools(pools),
                );
                // The peer address bounds dashboard sign-in attempts per client.
                if let Err(e) = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .await
                {
                    tracing::error!(error = %e, "admin API stopped");
                }
            });
        })
        .context("spawning the admin API thread")?;
    Ok(Some(handle))
}
