//! Admin API for limits: the rules of a plan, a tenant or an API key ([`crate::limits`]),
//! read and replaced whole. A change is announced on Redis ([`crate::invalidation`]) so that every
//! gateway applies it within a second (a plan change drops every gateway's cached limits; a
//! tenant or key change only that tenant's).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::admin::{AdminState, AppError};
use crate::limits::{Level, LimitRule};

/// The whole set of rules of one owner.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitRules {
    /// At most one rule per level (and per model for level `model`).
    pub rules: Vec<LimitRule>,
}

/// Who owns a set of rules.
#[derive(Debug, Clone)]
enum Owner {
    Plan(String),
    Tenant(Uuid),
    Key(Uuid),
}

impl Owner {
    /// SQL condition selecting the owner's rows, with the owner bound as $1.
    fn column(&self) -> &'static str {
        match self {
            Owner::Plan(_) => "plan",
            Owner::Tenant(_) => "tenant_id",
            Owner::Key(_) => "api_key_id",
        }
    }
}

const RULE_COLUMNS: &str = "level, model, rate, period_s, burst, concurrency, \
                            monthly_inference_quota, monthly_budget_micro_usd";

async fn read(pool: &PgPool, owner: &Owner) -> Result<LimitRules, AppError> {
    let sql = format!(
        "SELECT {RULE_COLUMNS} FROM rate_limits WHERE {} = $1 ORDER BY level, model NULLS FIRST",
        owner.column()
    );
    let q = sqlx::query_as::<_, crate::limits::RuleRow>(&sql);
    let rows = match owner {
        Owner::Plan(p) => q.bind(p.clone()).fetch_all(pool).await?,
        Owner::Tenant(id) | Owner::Key(id) => q.bind(*id).fetch_all(pool).await?,
    };
    let rules = rows
        .into_iter()
        .filter_map(|r| r.into_rule().map(|(_, rule)| rule))
        .collect();
    Ok(LimitRules { rules })
}

fn check(owner: &Owner, rules: &LimitRules) -> Result<(), AppError> {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in rules.rules.iter().enumerate() {
        r.validate()
            .map_err(|e| AppError::BadRequest(format!("rules[{i}]: {e}")))?;
        if matches!(owner, Owner::Key(_)) && r.level != Level::Key {
            return Err(AppError::BadRequest(format!(
                "rules[{i}]: an API key's own rules must have level \"key\" (set tenant and model limits on the tenant or its plan)"
            )));
        }
        if !seen.insert((r.level, r.model.clone())) {
            return Err(AppError::BadRequest(format!(
                "rules[{i}]: a second rule for level \"{}\"{}",
                r.level.as_str(),
                r.model
                    .as_deref()
                    .map(|m| format!(" and model \"{m}\""))
                    .unwrap_or_default()
            )));
        }
    }
    Ok(())
}

async fn replace(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner,
    rules: &LimitRules,
) -> Result<(), AppError> {
    let delete = format!("DELETE FROM rate_limits WHERE {} = $1", owner.column());
    let q = sqlx::query(&delete);
    match owner {
        Owner::Plan(p) => q.bind(p.clone()).execute(&mut **tx).await?,
        Owner::Tenant(id) | Owner::Key(id) => q.bind(*id).execute(&mut **tx).await?,
    };
    for r in &rules.rules {
        let insert = format!(
            "INSERT INTO rate_limits (id, {}, {RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            owner.column()
        );
        let q = sqlx::query(&insert).bind(Uuid::now_v7());
        let q = match owner {
            Owner::Plan(p) => q.bind(p.clone()),
            Owner::Tenant(id) | Owner::Key(id) => q.bind(*id),
        };
        q.bind(r.level.as_str())
            .bind(&r.model)
            .bind(r.rate)
            .bind(r.period_s)
            .bind(r.burst)
            .bind(r.concurrency)
            .bind(r.monthly_inference_quota)
            .bind(r.monthly_budget_micro_usd)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Check that the owner exists; returns the tenant to announce (`None`: every tenant).
async fn owner_tenant(pool: &PgPool, owner: &Owner) -> Result<Option<Uuid>, AppError> {
    match owner {
        Owner::Plan(p) => {
            let found: Option<String> =
                sqlx::query_scalar("SELECT name FROM plans WHERE name = $1")
                    .bind(p)
                    .fetch_optional(pool)
                    .await?;
            found
                .map(|_| None)
                .ok_or_else(|| AppError::NotFound(format!("no plan '{p}'")))
        }
        Owner::Tenant(id) => {
            let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            found
                .map(Some)
                .ok_or_else(|| AppError::NotFound(format!("no tenant {id}")))
        }
        Owner::Key(id) => {
            let found: Option<Uuid> =
                sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            found
                .map(Some)
                .ok_or_else(|| AppError::NotFound(format!("no key {id}")))
        }
    }
}

async fn get_rules(state: &AdminState, owner: Owner) -> Result<Json<LimitRules>, AppError> {
    owner_tenant(&state.pool, &owner).await?;
    Ok(Json(read(&state.pool, &owner).await?))
}

async fn put_rules(
    state: &AdminState,
    owner: Owner,
    body: Result<Json<LimitRules>, JsonRejection>,
) -> Result<Json<LimitRules>, AppError> {
    let Json(rules) = body?;
    check(&owner, &rules)?;
    let tenant = owner_tenant(&state.pool, &owner).await?;
    let mut tx = state.pool.begin().await?;
    replace(&mut tx, &owner, &rules).await?;
    tx.commit().await?;
    tracing::info!(?owner, rules = rules.rules.len(), "admin: limits replaced");
    state.announce_change(tenant).await;
    Ok(Json(read(&state.pool, &owner).await?))
}

fn plan_owner(plan: String) -> Result<Owner, AppError> {
    if plan.is_empty() || plan.len() > crate::admin::MAX_NAME_LEN {
        return Err(AppError::BadRequest(
            "plan must be 1 to 200 characters".into(),
        ));
    }
    Ok(Owner::Plan(plan))
}

fn id_owner(what: &str, raw: &str, f: fn(Uuid) -> Owner) -> Result<Owner, AppError> {
    Uuid::parse_str(raw)
        .map(f)
        .map_err(|_| AppError::BadRequest(format!("{what} must be a UUID, got '{raw}'")))
}

/// The limits of a plan: the defaults of every tenant on it.
#[utoipa::path(
    get, path = "/admin/v1/plans/{plan}/limits",
    params(("plan" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan's rules", body = LimitRules),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such plan", body = crate::admin::ErrorBody)
    )
)]
pub async fn get_plan_limits(
    State(state): State<AdminState>,
    Path(plan): Path<String>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, plan_owner(plan)?).await
}

/// Replace the limits of a plan; applies on every gateway within a second.
#[utoipa::path(
    put, path = "/admin/v1/plans/{plan}/limits",
    params(("plan" = String, Path, description = "Plan name")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The plan's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such plan", body = crate::admin::ErrorBody)
    )
)]
pub async fn put_plan_limits(
    State(state): State<AdminState>,
    Path(plan): Path<String>,
    body: Result<Json<LimitRules>, JsonRejection>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(&state, plan_owner(plan)?, body).await
}

/// The limits set on a tenant (overriding its plan's).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/limits",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's own rules", body = LimitRules),
        (status = 400, description = "tenant_id is not a UUID", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such tenant", body = crate::admin::ErrorBody)
    )
)]
pub async fn get_tenant_limits(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, id_owner("tenant_id", &tenant_id, Owner::Tenant)?).await
}

/// Replace the limits set on a tenant; applies on every gateway within a second.
#[utoipa::path(
    put, path = "/admin/v1/tenants/{tenant_id}/limits",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The tenant's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such tenant", body = crate::admin::ErrorBody)
    )
)]
pub async fn put_tenant_limits(
    State(state): State<AdminState>,
    Path(tenant_id): Path<String>,
    body: Result<Json<LimitRules>, JsonRejection>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(
        &state,
        id_owner("tenant_id", &tenant_id, Owner::Tenant)?,
        body,
    )
    .await
}

/// The limits set on one API key (its own counter only).
#[utoipa::path(
    get, path = "/admin/v1/keys/{key_id}/limits",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key's own rules", body = LimitRules),
        (status = 400, description = "key_id is not a UUID", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such key", body = crate::admin::ErrorBody)
    )
)]
pub async fn get_key_limits(
    State(state): State<AdminState>,
    Path(key_id): Path<String>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, id_owner("key_id", &key_id, Owner::Key)?).await
}

/// Replace the limits of one API key (level `key` only); applies on every gateway within a
/// second.
#[utoipa::path(
    put, path = "/admin/v1/keys/{key_id}/limits",
    params(("key_id" = Uuid, Path, description = "Key id")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The key's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such key", body = crate::admin::ErrorBody)
    )
)]
pub async fn put_key_limits(
    State(state): State<AdminState>,
    Path(key_id): Path<String>,
    body: Result<Json<LimitRules>, JsonRejection>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(&state, id_owner("key_id", &key_id, Owner::Key)?, body).await
}
