//! Admin API for operators and tenant admins: tenants and API keys, limits, tenant admins,
//! usage, invoices and exports, on its own listener (axum).
//!
//! Every route is under `/admin/v1` and needs `Authorization: Bearer <token>`: the operator token
//! (`[admin] operator_token` or `MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN`, compared in constant time)
//! for everything, or a tenant admin's token ([`crate::admin::usage`]) for its own tenant's
//! usage, invoices and exports (any other route or tenant: 403). A missing, unknown or revoked
//! token is 401 with `WWW-Authenticate: Bearer`. The OpenAPI document generated from this file
//! and its siblings (utoipa) is served without a token at `/admin/v1/openapi.json`.
//!
//! The admin API writes PostgreSQL only; the data path sees a revoked key or a suspended tenant
//! once its cached lookup expires (`auth.cache_ttl_ms`).
//!
//! It runs on a std thread with its own tokio runtime and its own sqlx pool (pingora owns the
//! proxy's runtimes), started by [`spawn`] from [`crate::serve::serve`].

pub mod limits;
pub mod usage;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::admin::usage::TenantAdminAuth;
use crate::auth::api_keys;
use crate::config::GatewayConfig;

/// Most characters of a tenant or key name.
pub const MAX_NAME_LEN: usize = 200;

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

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(e.into())
    }
}

impl From<JsonRejection> for AppError {
    fn from(e: JsonRejection) -> Self {
        AppError::BadRequest(format!("invalid JSON body: {}", e.body_text()))
    }
}

/// The JSON body of every admin API error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what was expected.
    pub error: String,
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

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The admin API's own pool.
    pub pool: PgPool,
    /// SHA-256 of the operator token (compared in constant time, length-independent).
    token_sha256: [u8; 32],
    /// Where changes are announced to every gateway ([`crate::invalidation`]); `None`: the
    /// gateways' cache TTL alone bounds how long a change takes.
    redis: Option<redis::Client>,
}

impl AdminState {
    /// State for `pool` accepting `operator_token`.
    pub fn new(pool: PgPool, operator_token: &str) -> Self {
        AdminState {
            pool,
            token_sha256: Sha256::digest(operator_token.as_bytes()).into(),
            redis: None,
        }
    }

    /// The same, announcing changes on `redis`.
    pub fn with_redis(mut self, redis: Option<redis::Client>) -> Self {
        self.redis = redis;
        self
    }

    /// Tell every gateway to forget what it cached about `tenant_id` (logged on failure: the
    /// change then takes effect within the gateways' cache TTL).
    async fn announce(&self, tenant_id: Uuid) {
        self.announce_change(Some(tenant_id)).await;
    }

    /// The same for `Some(tenant)`, or for every tenant with `None`.
    pub(crate) async fn announce_change(&self, tenant_id: Option<Uuid>) {
        if let Some(client) = &self.redis {
            let msg = match tenant_id {
                Some(id) => crate::invalidation::Invalidation::tenant(id),
                None => crate::invalidation::Invalidation::everything(),
            };
            match crate::invalidation::publish(client, &msg, Duration::from_secs(1)).await {
                Ok(receivers) => tracing::debug!(?tenant_id, receivers, "invalidation announced"),
                Err(e) => {
                    tracing::warn!(?tenant_id, error = %e, "invalidation not announced; caches expire by TTL")
                }
            }
        }
    }

    /// Whether `headers` carry `Authorization: Bearer <operator token>`.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = crate::admin::usage::bearer_token(headers) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        presented.ct_eq(&self.token_sha256).into()
    }
}

/// Operator-only routes: the operator token passes; a tenant admin's token is 403; anything
/// else 401.
async fn require_operator(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    crate::admin::usage::Caller::resolve(&state, req.headers())
        .await?
        .require_operator()?;
    Ok(next.run(req).await)
}

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "maas gateway admin API",
        description = "Operator and tenant admin API: tenants, API keys, limits, tenant admins, usage, invoices and exports. Every operation needs `Authorization: Bearer <operator token>`; a tenant admin's token is accepted for its own tenant's usage, invoices and exports."
    ),
    paths(
        create_tenant,
        list_tenants,
        suspend_tenant,
        reactivate_tenant,
        create_key,
        list_keys,
        revoke_key,
        rotate_key,
        crate::admin::limits::get_plan_limits,
        crate::admin::limits::put_plan_limits,
        crate::admin::limits::get_tenant_limits,
        crate::admin::limits::put_tenant_limits,
        crate::admin::limits::get_key_limits,
        crate::admin::limits::put_key_limits,
        crate::admin::usage::create_tenant_admin,
        crate::admin::usage::list_tenant_admins,
        crate::admin::usage::revoke_tenant_admin,
        crate::admin::usage::get_usage,
        crate::admin::usage::get_invoice,
        crate::admin::usage::export_usage
    ),
    components(schemas(
        ErrorBody,
        Tenant,
        NewTenant,
        ApiKey,
        NewApiKey,
        CreatedApiKey,
        crate::admin::limits::LimitRules,
        crate::store::LimitRule,
        crate::store::Level,
        crate::admin::usage::TenantAdmin,
        crate::admin::usage::NewTenantAdmin,
        crate::admin::usage::CreatedTenantAdmin,
        crate::admin::usage::UsageReport,
        maas_billing::report::UsageBucket,
        maas_billing::report::Granularity,
        maas_billing::invoice::Invoice,
        maas_billing::invoice::InvoiceLine,
        maas_billing::invoice::ModelUsage,
        maas_billing::plans::ModelPrice
    )),
    modifiers(&BearerAuth, &TenantAdminAuth),
    security(("operator_token" = []))
)]
pub struct AdminApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The admin router: `/admin/v1/...` behind the operator token, plus the open
/// `/admin/v1/openapi.json`.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/admin/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/v1/tenants/{tenant_id}/suspend",
            post(suspend_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/reactivate",
            post(reactivate_tenant),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/keys",
            post(create_key).get(list_keys),
        )
        .route("/admin/v1/keys/{key_id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{key_id}/rotate", post(rotate_key))
        .route(
            "/admin/v1/plans/{plan}/limits",
            get(crate::admin::limits::get_plan_limits).put(crate::admin::limits::put_plan_limits),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/limits",
            get(crate::admin::limits::get_tenant_limits)
                .put(crate::admin::limits::put_tenant_limits),
        )
        .route(
            "/admin/v1/keys/{key_id}/limits",
            get(crate::admin::limits::get_key_limits).put(crate::admin::limits::put_key_limits),
        )
        .merge(crate::admin::usage::operator_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi_json))
        .merge(protected)
        .merge(crate::admin::usage::tenant_routes())
        .fallback(not_found)
        .with_state(state)
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(AdminApi::openapi())
}

async fn not_found() -> AppError {
    AppError::NotFound("no such admin route: see /admin/v1/openapi.json".into())
}

/// Start the admin API on its own thread and runtime when an operator token is configured;
/// `Ok(None)` (and a log line) when it is disabled.
///
/// The listener is bound before this returns, so a bind failure is an error here and clients
/// may connect as soon as it returns.
pub fn spawn(config: &GatewayConfig) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
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
                if let Err(e) = axum::serve(
                    listener,
                    router(AdminState::new(pool, &token).with_redis(redis)),
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

// ---- tenants ----

/// A tenant as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Tenant {
    /// Tenant id (UUIDv7).
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// `active` or `suspended` (a suspended tenant's calls are refused with 403).
    pub status: String,
    /// Pricing plan name.
    pub plan: String,
    /// Creation time, UTC.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /admin/v1/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTenant {
    /// Unique name, 1 to 200 characters.
    pub name: String,
    /// Pricing plan; default `default`.
    #[serde(default)]
    pub plan: Option<String>,
}

const TENANT_COLUMNS: &str = "id, name, status, plan, created_at";

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(AppError::BadRequest(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

pub(crate) fn parse_id(what: &str, raw: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(raw).map_err(|_| AppError::BadRequest(format!("{what} must be a UUID")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Create a tenant (active).
#[utoipa::path(
    post, path = "/admin/v1/tenants", request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 409, description = "A tenant with this name exists", body = ErrorBody)
    )
)]
async fn create_tenant(
    State(state): State<AdminState>,
    body: Result<Json<NewTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<Tenant>), AppError> {
    let Json(body) = body?;
    check_name("name", &body.name)?;
    let plan = body.plan.unwrap_or_else(|| "default".into());
    check_name("plan", &plan)?;
    let tenant = sqlx::query_as::<_, Tenant>(&format!(
        "INSERT INTO tenants (id, name, plan) VALUES ($1, $2, $3) RETURNING {TENANT_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&body.name)
    .bind(&plan)
    .fetch_one(&state.pool)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            AppError::Conflict(format!("a tenant named '{}' exists", body.name))
        } else {
            e.into()
        }
    })?;
    tracing::info!(tenant_id = %tenant.id, "admin: tenant created");
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// List every tenant, oldest first.
#[utoipa::path(
    get, path = "/admin/v1/tenants",
    responses(
        (status = 200, description = "All tenants", body = [Tenant]),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody)
    )
)]
async fn list_tenants(State(state): State<AdminState>) -> Result<Json<Vec<Tenant>>, AppError> {
    let tenants = sqlx::query_as::<_, Tenant>(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id"
    ))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(tenants))
}

async fn set_tenant_status(
    state: &AdminState,
    raw_id: &str,
    status: &str,
) -> Result<Json<Tenant>, AppError> {
    let id = parse_id("tenant_id", raw_id)?;
    let tenant = sqlx::query_as::<_, Tenant>(&format!(
        "UPDATE tenants SET status = $2 WHERE id = $1 RETURNING {TENANT_COLUMNS}"
    ))
    .bind(id)
    .bind(status)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("no tenant {id}")))?;
    tracing::info!(tenant_id = %id, status, "admin: tenant status set");
    state.announce(id).await;
    Ok(Json(tenant))
}

/// Suspend a tenant: its keys and tokens are refused (403) on every gateway within a second
/// (announced on Redis; without Redis, once the gateways' cache TTL expires).
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/suspend",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant, now suspended", body = Tenant),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
async fn suspend_tenant(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<Tenant>, AppError> {
    set_tenant_status(&state, &tenant_id, "suspended").await
}

/// Reactivate a suspended tenant.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/reactivate",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant, now active", body = Tenant),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
async fn reactivate_tenant(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<Tenant>, AppError> {
    set_tenant_status(&state, &tenant_id, "active").await
}

// ---- keys ----

/// An API key as listed: the display prefix only, never the secret or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ApiKey {
    /// Key id (UUIDv7).
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// Name given at creation.
    pub name: String,
    /// Non-secret display prefix (first 12 characters of the secret).
    pub prefix: String,
    /// Models this key may call; `null` for every model.
    pub allowed_models: Option<Vec<String>>,
    /// Creation time, UTC.
    pub created_at: DateTime<Utc>,
    /// Expiry, UTC; `null` for none.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time, UTC; `null` while the key is live.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Body of `POST /admin/v1/tenants/{tenant_id}/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    /// Name of the key, 1 to 200 characters.
    pub name: String,
    /// Models the key may call; absent or `null` for every model; never empty.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Expiry (RFC 3339), if any; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A newly created (or rotated) key: the only time the secret is ever returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    /// The whole secret (`maas_` + 48 hex digits). Store it now: it is not kept.
    pub secret: String,
    /// The key as later listings show it.
    #[serde(flatten)]
    pub key: ApiKey,
}

const KEY_COLUMNS: &str =
    "id, tenant_id, name, prefix, allowed_models, created_at, expires_at, revoked_at";

async fn insert_key(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    name: &str,
    allowed_models: Option<Vec<String>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<CreatedApiKey, AppError> {
    let new = api_keys::generate_key()?;
    let key = sqlx::query_as::<_, ApiKey>(&format!(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, allowed_models, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(name)
    .bind(&new.prefix)
    .bind(&new.secret_sha256)
    .bind(allowed_models)
    .bind(expires_at)
    .fetch_one(tx)
    .await?;
    Ok(CreatedApiKey {
        secret: new.secret,
        key,
    })
}

async fn tenant_exists(state: &AdminState, id: Uuid) -> Result<(), AppError> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| AppError::NotFound(format!("no tenant {id}")))
}

/// The rows of `table` (as `columns`) that belong to tenant `raw_id`, oldest first: 400 when
/// `raw_id` is not a UUID, 404 when there is no such tenant.
pub(crate) async fn tenant_rows<T>(
    state: &AdminState,
    raw_id: &str,
    table: &str,
    columns: &str,
) -> Result<Vec<T>, AppError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let tenant_id = parse_id("tenant_id", raw_id)?;
    tenant_exists(state, tenant_id).await?;
    Ok(sqlx::query_as::<_, T>(&format!(
        "SELECT {columns} FROM {table} WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant_id)
    .fetch_all(&state.pool)
    .await?)
}

/// Revoke row `raw_id` of `table` (idempotent: a revoked row keeps its first revocation time)
/// and return it as `columns`: 400 naming `id_name` when `raw_id` is not a UUID, 404
/// `no {what} {id}` when there is no such row.
pub(crate) async fn revoke_row<T>(
    state: &AdminState,
    table: &str,
    columns: &str,
    (id_name, what): (&str, &str),
    raw_id: &str,
) -> Result<T, AppError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let id = parse_id(id_name, raw_id)?;
    sqlx::query_as::<_, T>(&format!(
        "UPDATE {table} SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
         RETURNING {columns}"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("no {what} {id}")))
}

/// Create an API key for a tenant; the response holds the secret, shown this once.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/keys", request_body = NewApiKey,
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedApiKey),
        (status = 400, description = "Invalid body or tenant_id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
async fn create_key(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
    body: Result<Json<NewApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AppError> {
    let tenant_id = parse_id("tenant_id", &tenant_id)?;
    let Json(body) = body?;
    check_name("name", &body.name)?;
    if let Some(models) = &body.allowed_models {
        if models.is_empty() {
            return Err(AppError::BadRequest(
                "allowed_models must list at least one model, or be null for every model".into(),
            ));
        }
        for m in models {
            check_name("each allowed model", m)?;
        }
    }
    if body.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(AppError::BadRequest(
            "expires_at must be in the future".into(),
        ));
    }
    tenant_exists(&state, tenant_id).await?;
    let mut conn = state.pool.acquire().await?;
    let created = insert_key(
        &mut conn,
        tenant_id,
        &body.name,
        body.allowed_models,
        body.expires_at,
    )
    .await?;
    tracing::info!(%tenant_id, key_id = %created.key.id, prefix = %created.key.prefix, "admin: key created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// List a tenant's keys (revoked ones included), oldest first; prefixes only.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/keys",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's keys", body = [ApiKey]),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
async fn list_keys(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<Vec<ApiKey>>, AppError> {
    Ok(Json(
        tenant_rows(&state, &tenant_id, "api_keys", KEY_COLUMNS).await?,
    ))
}

/// Revoke a key (idempotent: revoking a revoked key keeps its first revocation time).
#[utoipa::path(
    post, path = "/admin/v1/keys/{key_id}/revoke",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, revoked", body = ApiKey),
        (status = 400, description = "key_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    )
)]
async fn revoke_key(
    State(state): State<AdminState>,
    Path(key_id): Path<String>,
) -> Result<Json<ApiKey>, AppError> {
    let key: ApiKey =
        revoke_row(&state, "api_keys", KEY_COLUMNS, ("key_id", "key"), &key_id).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "admin: key revoked");
    state.announce(key.tenant_id).await;
    Ok(Json(key))
}

/// Rotate a key: a new secret with the same tenant, name, models and expiry; the old key is
/// revoked in the same transaction.
#[utoipa::path(
    post, path = "/admin/v1/keys/{key_id}/rotate",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 201, description = "The new key; `secret` is shown only here", body = CreatedApiKey),
        (status = 400, description = "key_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 409, description = "The key is already revoked", body = ErrorBody)
    )
)]
async fn rotate_key(
    State(state): State<AdminState>,
    Path(key_id): Path<String>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AppError> {
    let key_id = parse_id("key_id", &key_id)?;
    let mut tx = state.pool.begin().await?;
    let old = sqlx::query_as::<_, ApiKey>(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE"
    ))
    .bind(key_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("no key {key_id}")))?;
    if old.revoked_at.is_some() {
        return Err(AppError::Conflict(format!(
            "key {key_id} is revoked; create a new key instead"
        )));
    }
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    let created = insert_key(
        &mut tx,
        old.tenant_id,
        &old.name,
        old.allowed_models,
        old.expires_at,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(old_key_id = %key_id, key_id = %created.key.id, "admin: key rotated");
    state.announce(old.tenant_id).await;
    Ok((StatusCode::CREATED, Json(created)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(token: &str) -> AdminState {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("lazy pool");
        AdminState::new(pool, token)
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[tokio::test]
    async fn operator_token_is_checked() {
        let s = state("op-token");
        assert!(s.authorized(&headers("Bearer op-token")));
        assert!(s.authorized(&headers("bearer op-token")));
        assert!(!s.authorized(&headers("Bearer op-toke")));
        assert!(!s.authorized(&headers("Bearer op-token2")));
        assert!(!s.authorized(&headers("Basic op-token")));
        assert!(!s.authorized(&headers("op-token")));
        assert!(!s.authorized(&HeaderMap::new()));
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = AdminApi::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/admin/v1/tenants",
            "/admin/v1/tenants/{tenant_id}/suspend",
            "/admin/v1/tenants/{tenant_id}/reactivate",
            "/admin/v1/tenants/{tenant_id}/keys",
            "/admin/v1/keys/{key_id}/revoke",
            "/admin/v1/keys/{key_id}/rotate",
            "/admin/v1/plans/{plan}/limits",
            "/admin/v1/tenants/{tenant_id}/limits",
            "/admin/v1/keys/{key_id}/limits",
            "/admin/v1/tenants/{tenant_id}/admins",
            "/admin/v1/tenant-admins/{admin_id}/revoke",
            "/admin/v1/tenants/{tenant_id}/usage",
            "/admin/v1/tenants/{tenant_id}/usage/export",
            "/admin/v1/tenants/{tenant_id}/invoices/{period}",
        ] {
            assert!(
                doc.paths.paths.contains_key(p),
                "{p} missing from {paths:?}"
            );
        }
    }

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
