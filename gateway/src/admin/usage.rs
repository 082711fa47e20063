//! Admin API for tenant admins and for reading usage (issue 6 item 6, issue 4 item 1): who is
//! calling ([`Caller`]), tenant admins (operator only), and a tenant's usage report, invoices and
//! usage exports (the operator, or an admin of that tenant).
//!
//! - `POST /admin/v1/tenants/{tenant_id}/admins`, `GET` the same, `POST
//!   /admin/v1/tenant-admins/{admin_id}/revoke`: operator only. A tenant admin's token
//!   (`maas_ta_` + 48 hex, [`crate::auth::api_keys::TENANT_ADMIN_TOKEN`]) is returned once, at creation;
//!   only its SHA-256 is stored (`tenant_admins`).
//! - `GET /admin/v1/tenants/{tenant_id}/usage`: [`maas_billing::report::usage_report`] (hour or
//!   day buckets in any IANA time zone, optionally per model and/or key).
//! - `GET /admin/v1/tenants/{tenant_id}/invoices/{period}`: [`maas_billing::invoice::build_invoice`]
//!   as JSON, money in integer micro-USD.
//! - `GET /admin/v1/tenants/{tenant_id}/usage/export`: [`maas_billing::export::UsageExport`]
//!   streamed page by page (constant memory, any size): CSV with a header row (`text/csv`), JSON
//!   lines or CloudEvents 1.0 structured events one per line (`application/x-ndjson`).
//!
//! The last three accept the operator token, or the token of a live admin of that tenant; an
//! admin of another tenant gets 403 whether or not the tenant exists, so the answer reveals
//! nothing about other tenants. Every query parameter is checked before anything is read, and a
//! bad one is a 400 that names it.

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use maas_billing::export::{ExportFormat, UsageExport};
use maas_billing::invoice::{build_invoice, Invoice};
use maas_billing::report::{
    is_known_time_zone, usage_report, Granularity, UsageBucket, UsageQuery,
};
use maas_billing::BillingError;
use maas_billing::Period;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::admin::{
    check_name, parse_id, revoke_row, tenant_rows, AdminState, AppError, ErrorBody,
};
use crate::auth::api_keys::{hash_key, TENANT_ADMIN_TOKEN};

// ---- who is calling ----

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, token trimmed), if
/// the header is there and well formed.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Who sent an admin API request, from its bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator token: every route, every tenant.
    Operator,
    /// A live (not revoked) tenant admin: its own tenant's usage, invoices and exports only.
    TenantAdmin {
        /// `tenant_admins.id`.
        admin_id: Uuid,
        /// The tenant it administers.
        tenant_id: Uuid,
    },
}

impl Caller {
    /// Resolve the caller of a request: the operator token (constant-time comparison, no
    /// database), else a well-formed tenant admin token looked up by its SHA-256 among the live
    /// admins.
    ///
    /// # Errors
    /// [`AppError::Unauthorized`] for no token, a malformed, unknown or revoked one;
    /// [`AppError::Internal`] when the lookup fails.
    pub async fn resolve(state: &AdminState, headers: &HeaderMap) -> Result<Caller, AppError> {
        if state.authorized(headers) {
            return Ok(Caller::Operator);
        }
        let token = bearer_token(headers)
            .filter(|t| TENANT_ADMIN_TOKEN.is_well_formed(t))
            .ok_or(AppError::Unauthorized)?;
        let row: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, tenant_id FROM tenant_admins \
             WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(hash_key(token))
        .fetch_optional(&state.pool)
        .await?;
        row.map(|(admin_id, tenant_id)| Caller::TenantAdmin {
            admin_id,
            tenant_id,
        })
        .ok_or(AppError::Unauthorized)
    }

    /// Whether this caller may read tenant `tenant_id`'s usage, invoices and exports.
    pub fn may_see(&self, tenant_id: Uuid) -> bool {
        match self {
            Caller::Operator => true,
            Caller::TenantAdmin { tenant_id: own, .. } => *own == tenant_id,
        }
    }

    /// [`Caller::may_see`] as a result: 403 for an admin of another tenant.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub fn check_tenant(&self, tenant_id: Uuid) -> Result<(), AppError> {
        match self {
            Caller::TenantAdmin { tenant_id: own, .. } if *own != tenant_id => {
                Err(AppError::Forbidden(format!(
                    "a tenant admin may read only its own tenant ({own}), not tenant {tenant_id}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Operator-only routes: 403 for a tenant admin.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub fn require_operator(&self) -> Result<(), AppError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::TenantAdmin { .. } => Err(AppError::Forbidden(
                "this route needs the operator token; a tenant admin may read only its own \
                 tenant's usage, invoices and exports"
                    .into(),
            )),
        }
    }
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        Caller::resolve(state, &parts.headers).await
    }
}

/// Adds the `tenant_admin_token` bearer scheme to the OpenAPI document.
pub struct TenantAdminAuth;

impl utoipa::Modify for TenantAdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "tenant_admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant admin's token (maas_ta_...): its own tenant's usage, invoices \
                         and exports only",
                    ))
                    .build(),
            ),
        );
    }
}

impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> Self {
        AppError::BadRequest(format!("invalid query string: {}", e.body_text()))
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
            BillingError::Database(e) => AppError::Internal(e.into()),
            BillingError::Io(e) => AppError::Internal(e.into()),
        }
    }
}

/// The routes that need the operator token (merged behind the operator check in
/// [`crate::admin::router`]).
pub fn operator_routes() -> Router<AdminState> {
    Router::new()
        .route(
            "/admin/v1/tenants/{tenant_id}/admins",
            post(create_tenant_admin).get(list_tenant_admins),
        )
        .route(
            "/admin/v1/tenant-admins/{admin_id}/revoke",
            post(revoke_tenant_admin),
        )
}

/// The routes open to the operator and to a tenant's admins (each checks its [`Caller`]).
pub fn tenant_routes() -> Router<AdminState> {
    Router::new()
        .route("/admin/v1/tenants/{tenant_id}/usage", get(get_usage))
        .route(
            "/admin/v1/tenants/{tenant_id}/usage/export",
            get(export_usage),
        )
        .route(
            "/admin/v1/tenants/{tenant_id}/invoices/{period}",
            get(get_invoice),
        )
}

// ---- tenant admins (operator only) ----

/// A tenant admin as listed: the display prefix only, never the token or its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TenantAdmin {
    /// Tenant admin id (UUIDv7).
    pub id: Uuid,
    /// The tenant it administers.
    pub tenant_id: Uuid,
    /// Name given at creation (e.g. the person's e-mail).
    pub name: String,
    /// Non-secret display prefix (first 15 characters of the token, `maas_ta_` + 7 hex).
    pub prefix: String,
    /// Creation time, UTC.
    pub created_at: DateTime<Utc>,
    /// Revocation time, UTC; `null` while the token is live.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Body of `POST /admin/v1/tenants/{tenant_id}/admins`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewTenantAdmin {
    /// Name of the admin, 1 to 200 characters.
    pub name: String,
}

/// A newly created tenant admin: the only time its token is ever returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedTenantAdmin {
    /// The whole token (`maas_ta_` + 48 hex digits). Store it now: it is not kept.
    pub token: String,
    /// The admin as later listings show it.
    #[serde(flatten)]
    pub admin: TenantAdmin,
}

const ADMIN_COLUMNS: &str = "id, tenant_id, name, prefix, created_at, revoked_at";

/// The name of tenant `id`, or 404.
async fn tenant_name(state: &AdminState, id: Uuid) -> Result<String, AppError> {
    sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no tenant {id}")))
}

/// Create an admin for a tenant; the response holds its token, shown this once.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{tenant_id}/admins", request_body = NewTenantAdmin,
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 201, description = "Created; `token` is shown only here", body = CreatedTenantAdmin),
        (status = 400, description = "Invalid body or tenant_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn create_tenant_admin(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
    body: Result<Json<NewTenantAdmin>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedTenantAdmin>), AppError> {
    let tenant_id = parse_id("tenant_id", &tenant_id)?;
    let Json(body) = body?;
    check_name("name", &body.name)?;
    tenant_name(&state, tenant_id).await?;
    let new = TENANT_ADMIN_TOKEN.generate()?;
    let admin = sqlx::query_as::<_, TenantAdmin>(&format!(
        "INSERT INTO tenant_admins (id, tenant_id, name, prefix, token_sha256) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {ADMIN_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(&body.name)
    .bind(&new.prefix)
    .bind(&new.secret_sha256)
    .fetch_one(&state.pool)
    .await?;
    tracing::info!(%tenant_id, admin_id = %admin.id, prefix = %admin.prefix, "admin: tenant admin created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenantAdmin {
            token: new.secret,
            admin,
        }),
    ))
}

/// List a tenant's admins (revoked ones included), oldest first; prefixes only.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/admins",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's admins", body = [TenantAdmin]),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn list_tenant_admins(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<Vec<TenantAdmin>>, AppError> {
    Ok(Json(
        tenant_rows(&state, &tenant_id, "tenant_admins", ADMIN_COLUMNS).await?,
    ))
}

/// Revoke a tenant admin: its token is refused (401) from the next request on. Idempotent
/// (revoking again keeps the first revocation time).
#[utoipa::path(
    post, path = "/admin/v1/tenant-admins/{admin_id}/revoke",
    params(("admin_id" = Uuid, Path, description = "Tenant admin id")),
    responses(
        (status = 200, description = "The tenant admin, revoked", body = TenantAdmin),
        (status = 400, description = "admin_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant admin", body = ErrorBody)
    )
)]
pub async fn revoke_tenant_admin(
    State(state): State<AdminState>,
    Path(admin_id): Path<String>,
) -> Result<Json<TenantAdmin>, AppError> {
    let admin: TenantAdmin = revoke_row(
        &state,
        "tenant_admins",
        ADMIN_COLUMNS,
        ("admin_id", "tenant admin"),
        &admin_id,
    )
    .await?;
    tracing::info!(admin_id = %admin.id, prefix = %admin.prefix, "admin: tenant admin revoked");
    Ok(Json(admin))
}

// ---- query parameters ----

/// An RFC 3339 timestamp parameter named `name`.
fn parse_time(name: &str, raw: Option<&str>) -> Result<DateTime<Utc>, AppError> {
    let expected = "an RFC 3339 timestamp such as 2026-11-01T00:00:00Z";
    let raw = raw.ok_or_else(|| AppError::BadRequest(format!("{name}: required, {expected}")))?;
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AppError::BadRequest(format!("{name} `{raw}`: expected {expected}")))
}

/// `from` and `to` of a time range, `from < to`.
fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
    let (from, to) = (parse_time("from", from)?, parse_time("to", to)?);
    if from >= to {
        return Err(AppError::BadRequest(
            "from must be before to (the range is [from, to))".into(),
        ));
    }
    Ok((from, to))
}

/// Longest time zone name accepted (the longest IANA name is 32 characters).
const MAX_TZ_LEN: usize = 64;

/// The `tz` parameter (default `UTC`): a name PostgreSQL's time zone database knows.
async fn parse_tz(state: &AdminState, raw: Option<&str>) -> Result<String, AppError> {
    let tz = raw.unwrap_or("UTC");
    let bad = || {
        AppError::BadRequest(format!(
            "tz `{tz}`: expected an IANA time zone name such as UTC or Europe/Paris"
        ))
    };
    let plausible = !tz.is_empty()
        && tz.len() <= MAX_TZ_LEN
        && tz
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !plausible || !is_known_time_zone(&state.pool, tz).await? {
        return Err(bad());
    }
    Ok(tz.to_string())
}

/// The `granularity` parameter (default `day`).
fn parse_granularity(raw: Option<&str>) -> Result<Granularity, AppError> {
    match raw.unwrap_or("day") {
        "hour" => Ok(Granularity::Hour),
        "day" => Ok(Granularity::Day),
        other => Err(AppError::BadRequest(format!(
            "granularity `{other}`: expected hour or day"
        ))),
    }
}

/// The `group_by` parameter: a comma-separated subset of `model` and `key` (absent or empty:
/// no grouping). Returns (by model, by key).
fn parse_group_by(raw: Option<&str>) -> Result<(bool, bool), AppError> {
    let (mut by_model, mut by_key) = (false, false);
    for part in raw.unwrap_or("").split(',').map(str::trim) {
        match part {
            "" => {}
            "model" => by_model = true,
            "key" => by_key = true,
            other => {
                return Err(AppError::BadRequest(format!(
                    "group_by `{other}`: expected a comma-separated list of model and key"
                )))
            }
        }
    }
    Ok((by_model, by_key))
}

/// The tenant of a tenant route, parsed, once `caller` may see it (403 before anything else,
/// so an admin of another tenant learns nothing about it).
fn visible_tenant(caller: &Caller, raw_id: &str) -> Result<Uuid, AppError> {
    let tenant_id = parse_id("tenant_id", raw_id)?;
    caller.check_tenant(tenant_id)?;
    Ok(tenant_id)
}

// ---- usage report ----

/// Query of `GET /admin/v1/tenants/{tenant_id}/usage`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Start of the range, inclusive, RFC 3339 (e.g. `2026-11-01T00:00:00Z`).
    #[param(required = true)]
    pub from: Option<String>,
    /// End of the range, exclusive, RFC 3339.
    #[param(required = true)]
    pub to: Option<String>,
    /// `hour` or `day` (default `day`).
    pub granularity: Option<String>,
    /// Comma-separated subset of `model` and `key` (default: no grouping).
    pub group_by: Option<String>,
    /// IANA time zone of the bucket boundaries (default `UTC`), e.g. `Europe/Paris`.
    pub tz: Option<String>,
}

/// A tenant's usage report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageReport {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Start of the range, inclusive (UTC).
    pub from: DateTime<Utc>,
    /// End of the range, exclusive (UTC).
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub granularity: Granularity,
    /// Time zone of the bucket boundaries.
    pub tz: String,
    /// What each bucket is split by: `model`, `key`, both or neither.
    pub group_by: Vec<String>,
    /// Buckets in time order (then model, then key); buckets without usage are left out, and
    /// the first and last are clipped to the range.
    pub buckets: Vec<UsageBucket>,
}

/// A tenant's usage over `[from, to)` in hour or day buckets, in UTC or an IANA time zone,
/// optionally per model and/or API key. Requests are counted by status: `requests` all of
/// them, `billable_requests` the 2xx ones (whose inferences and compute are counted).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/usage",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 400, description = "A parameter is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_usage(
    caller: Caller,
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageReport>, AppError> {
    let tenant_id = visible_tenant(&caller, &tenant_id)?;
    let Query(p) = params?;
    let (from, to) = parse_range(p.from.as_deref(), p.to.as_deref())?;
    let granularity = parse_granularity(p.granularity.as_deref())?;
    let (by_model, by_key) = parse_group_by(p.group_by.as_deref())?;
    let tz = parse_tz(&state, p.tz.as_deref()).await?;
    tenant_name(&state, tenant_id).await?;
    let buckets = usage_report(
        &state.pool,
        &UsageQuery {
            tenant_id,
            from,
            to,
            granularity,
            time_zone: tz.clone(),
            by_model,
            by_key,
        },
    )
    .await?;
    let group_by = [(by_model, "model"), (by_key, "key")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .collect();
    Ok(Json(UsageReport {
        tenant_id,
        from,
        to,
        granularity,
        tz,
        group_by,
        buckets,
    }))
}

// ---- invoices ----

/// A tenant's invoice for one calendar month (UTC): one line per model with billable usage,
/// priced with the tenant's plan; every amount is integer micro-USD (rounding rule:
/// `maas_billing::invoice`). The current month gives the invoice so far.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/invoices/{period}",
    params(
        ("tenant_id" = Uuid, Path, description = "Tenant id"),
        ("period" = String, Path, description = "Month, YYYY-MM (e.g. 2026-11)")
    ),
    responses(
        (status = 200, description = "The invoice", body = Invoice),
        (status = 400, description = "tenant_id or period is malformed", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant's plan is missing or has no price for a model it used", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_invoice(
    caller: Caller,
    State(state): State<AdminState>,
    Path((tenant_id, period)): Path<(String, String)>,
) -> Result<Json<Invoice>, AppError> {
    let tenant_id = visible_tenant(&caller, &tenant_id)?;
    let period = Period::parse(&period)?;
    let name = tenant_name(&state, tenant_id).await?;
    Ok(Json(build_invoice(&state.pool, &name, period).await?))
}

// ---- exports ----

/// Query of `GET /admin/v1/tenants/{tenant_id}/usage/export`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Start of the range, inclusive, RFC 3339 (e.g. `2026-11-01T00:00:00Z`).
    #[param(required = true)]
    pub from: Option<String>,
    /// End of the range, exclusive, RFC 3339.
    #[param(required = true)]
    pub to: Option<String>,
    /// `csv` (default), `jsonl` or `cloudevents`.
    pub format: Option<String>,
}

/// Content type and file extension of an export format.
fn media_type(format: ExportFormat) -> (&'static str, &'static str) {
    match format {
        // RFC 4180 section 3: the optional `header` parameter says a header row comes first.
        ExportFormat::Csv => ("text/csv; charset=utf-8; header=present", "csv"),
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
        // One structured-mode event per line (not a JSON array, which is what
        // application/cloudevents-batch+json would promise).
        ExportFormat::CloudEvents => ("application/x-ndjson", "cloudevents.jsonl"),
    }
}

/// A tenant's raw usage events in `[from, to)`, streamed: CSV with a header row (opens in a
/// spreadsheet), JSON lines (reads with `jq`), or CloudEvents 1.0 structured events, one per
/// line, whose `id` is the request id (so a consumer that deduplicates by event id counts each
/// request once). Rejected requests are included, with their status.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/usage/export",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"), ExportParams),
    responses(
        (status = 200, description = "The events, oldest first", content(
            (String = "text/csv"),
            (String = "application/x-ndjson")
        )),
        (status = 400, description = "A parameter is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn export_usage(
    caller: Caller,
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, AppError> {
    let tenant_id = visible_tenant(&caller, &tenant_id)?;
    let Query(p) = params?;
    let (from, to) = parse_range(p.from.as_deref(), p.to.as_deref())?;
    let format = match p.format.as_deref().unwrap_or("csv") {
        "csv" => ExportFormat::Csv,
        "jsonl" => ExportFormat::Jsonl,
        "cloudevents" => ExportFormat::CloudEvents,
        other => {
            return Err(AppError::BadRequest(format!(
                "format `{other}`: expected csv, jsonl or cloudevents"
            )))
        }
    };
    tenant_name(&state, tenant_id).await?;
    let mut export = UsageExport::new(state.pool.clone(), from, to, Some(tenant_id), format)?;
    // The first page is read before the status is sent, so that a failure there is a JSON
    // error; a failure on a later page ends the body early (the client sees a truncated body).
    let first = export.next_chunk().await?.unwrap_or_default();
    let rest = futures_util::stream::unfold(export, move |mut export| async move {
        match export.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), export)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(%tenant_id, error = %e, "admin: usage export failed mid-stream");
                Some((Err(e), export))
            }
        }
    });
    let body = futures_util::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest);
    let (content_type, extension) = media_type(format);
    let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let disposition = format!(
        "attachment; filename=\"usage-{tenant_id}-{}-{}.{extension}\"",
        stamp(from),
        stamp(to)
    );
    let mut resp = Body::from_stream(body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    tracing::info!(%tenant_id, from = %from.to_rfc3339_opts(SecondsFormat::Secs, true),
        to = %to.to_rfc3339_opts(SecondsFormat::Secs, true), ?format, "admin: usage export");
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bEaReR  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tenant_admins_see_only_their_tenant() {
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        let admin = Caller::TenantAdmin {
            admin_id: Uuid::now_v7(),
            tenant_id: own,
        };
        assert!(admin.may_see(own));
        assert!(!admin.may_see(other));
        assert!(admin.check_tenant(own).is_ok());
        let e = admin.check_tenant(other).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            admin.require_operator().unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(Caller::Operator.may_see(other));
        assert!(Caller::Operator.require_operator().is_ok());
    }

    #[test]
    fn parameters_are_checked_by_name() {
        let msg = |e: AppError| {
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            e.to_string()
        };
        assert!(msg(parse_time("from", None).unwrap_err()).starts_with("from: required"));
        assert!(msg(parse_time("to", Some("yesterday")).unwrap_err()).starts_with("to `yesterday`"));
        assert_eq!(
            parse_time("from", Some("2026-11-01T01:00:00+01:00")).unwrap(),
            "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let t = "2026-11-01T00:00:00Z";
        assert!(msg(parse_range(Some(t), Some(t)).unwrap_err()).contains("from must be before to"));
        assert!(msg(parse_granularity(Some("week")).unwrap_err()).starts_with("granularity `week`"));
        assert_eq!(parse_granularity(None).unwrap(), Granularity::Day);
        assert_eq!(parse_group_by(Some("key, model")).unwrap(), (true, true));
        assert_eq!(parse_group_by(Some("")).unwrap(), (false, false));
        assert_eq!(parse_group_by(None).unwrap(), (false, false));
        assert!(
            msg(parse_group_by(Some("model,region")).unwrap_err()).starts_with("group_by `region`")
        );
    }
}
