//! Admin API for limits: the rules of a plan, a tenant or an API key ([`crate::limits`]),
//! read and replaced whole. A change is announced on Redis ([`crate::invalidation`]) so that every
//! gateway applies it within a second (a plan change drops every gateway's cached limits; a
//! tenant or key change only that tenant's).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody};
use super::extract::{AppJson, AppPath};
use super::state::AdminState;
use super::validate::MAX_NAME_LEN;
use crate::store::{self, Level, LimitRule, RuleOwner as Owner};

/// The whole set of rules of one owner.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LimitRules {
    /// At most one rule per level (and per model for level `model`).
    pub rules: Vec<LimitRule>,
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

/// Check that the owner exists; returns the tenant to announce (`None`: every tenant).
async fn owner_tenant(pool: &PgPool, owner: &Owner) -> Result<Option<Uuid>, AppError> {
    store::owner_tenant(pool, owner).await?.ok_or_else(|| {
        AppError::NotFound(match owner {
            Owner::Plan(p) => format!("no plan '{p}'"),
            Owner::Tenant(id) => format!("no tenant {id}"),
            Owner::Key(id) => format!("no key {id}"),
        })
    })
}

async fn read(pool: &PgPool, owner: &Owner) -> Result<LimitRules, AppError> {
    Ok(LimitRules {
        rules: store::owner_rules(pool, owner).await?,
    })
}

async fn get_rules(state: &AdminState, owner: Owner) -> Result<Json<LimitRules>, AppError> {
    owner_tenant(&state.pool, &owner).await?;
    Ok(Json(read(&state.pool, &owner).await?))
}

async fn put_rules(
    state: &AdminState,
    owner: Owner,
    rules: LimitRules,
) -> Result<Json<LimitRules>, AppError> {
    check(&owner, &rules)?;
    let tenant = owner_tenant(&state.pool, &owner).await?;
    let mut tx = state.pool.begin().await?;
    store::replace_owner_rules(&mut tx, &owner, &rules.rules).await?;
    tx.commit().await?;
    tracing::info!(?owner, rules = rules.rules.len(), "admin: limits replaced");
    state.announce_change(tenant).await;
    Ok(Json(read(&state.pool, &owner).await?))
}

/// The `{plan}` of a route: 1 to 200 bytes (400 `plan must be 1 to 200 characters` otherwise).
#[derive(Debug, Clone)]
pub struct PlanName(String);

impl<'de> Deserialize<'de> for PlanName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PlanName, D::Error> {
        let plan = String::deserialize(d)?;
        if plan.is_empty() || plan.len() > MAX_NAME_LEN {
            return Err(serde::de::Error::custom(format!(
                "plan must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        Ok(PlanName(plan))
    }
}

/// The limits of a plan: the defaults of every tenant on it.
#[utoipa::path(
    get, path = "/admin/v1/plans/{plan}/limits",
    params(("plan" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan's rules", body = LimitRules),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody)
    )
)]
pub async fn get_plan_limits(
    State(state): State<AdminState>,
    AppPath(PlanName(plan)): AppPath<PlanName>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, Owner::Plan(plan)).await
}

/// Replace the limits of a plan; applies on every gateway within a second.
#[utoipa::path(
    put, path = "/admin/v1/plans/{plan}/limits",
    params(("plan" = String, Path, description = "Plan name")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The plan's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody)
    )
)]
pub async fn put_plan_limits(
    State(state): State<AdminState>,
    AppPath(PlanName(plan)): AppPath<PlanName>,
    AppJson(rules): AppJson<LimitRules>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(&state, Owner::Plan(plan), rules).await
}

/// The limits set on a tenant (overriding its plan's).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{tenant_id}/limits",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant's own rules", body = LimitRules),
        (status = 400, description = "tenant_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn get_tenant_limits(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, Owner::Tenant(tenant_id)).await
}

/// Replace the limits set on a tenant; applies on every gateway within a second.
#[utoipa::path(
    put, path = "/admin/v1/tenants/{tenant_id}/limits",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The tenant's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn put_tenant_limits(
    State(state): State<AdminState>,
    AppPath(tenant_id): AppPath<Uuid>,
    AppJson(rules): AppJson<LimitRules>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(&state, Owner::Tenant(tenant_id), rules).await
}

/// The limits set on one API key (its own counter only).
#[utoipa::path(
    get, path = "/admin/v1/keys/{key_id}/limits",
    params(("key_id" = Uuid, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key's own rules", body = LimitRules),
        (status = 400, description = "key_id is not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    )
)]
pub async fn get_key_limits(
    State(state): State<AdminState>,
    AppPath(key_id): AppPath<Uuid>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, Owner::Key(key_id)).await
}

/// Replace the limits of one API key (level `key` only); applies on every gateway within a
/// second.
#[utoipa::path(
    put, path = "/admin/v1/keys/{key_id}/limits",
    params(("key_id" = Uuid, Path, description = "Key id")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The key's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    )
)]
pub async fn put_key_limits(
    State(state): State<AdminState>,
    AppPath(key_id): AppPath<Uuid>,
    AppJson(rules): AppJson<LimitRules>,
) -> Result<Json<LimitRules>, AppError> {
    put_rules(&state, Owner::Key(key_id), rules).await
}
