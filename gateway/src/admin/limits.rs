//! Admin API for limits: the rules of a plan, a tenant or an API key ([`crate::limits`]),
//! read and replaced whole. The operator sets any of them; an admin of a tenant reads its
//! tenant's rules and reads and sets its own keys' rules, which may not exceed the limits that
//! govern the tenant's own counter ([`check_within_tenant`]). A change is announced on Redis ([`crate::invalidation`]) so that every
//! gateway applies it within a second (a plan change drops every gateway's cached limits; a
//! tenant or key change only that tenant's).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Caller, OperatorOnly, VisibleKey, VisibleTenant};
use super::error::{AppError, ErrorBody};
use super::extract::{AppJson, AppPath};
use super::state::AdminState;
use super::validate::name_problem;
use crate::store::{self, Level, LimitRule, RuleOwner as Owner, Specificity};

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

/// The rule that governs tenant `tenant_id`'s own counter (level `tenant`): its own rule, else
/// its plan's; `None` when neither sets one.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_counter_rule(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Option<LimitRule>, AppError> {
    Ok(store::request_rules(pool, tenant_id, None)
        .await?
        .into_iter()
        .filter(|(owner, r)| r.level == Level::Tenant && *owner != Specificity::Key)
        .max_by_key(|(owner, _)| *owner)
        .map(|(_, r)| r))
}

/// Check that no limit set in `key_rules` exceeds the same kind of limit of `tenant` (the rule
/// of the tenant's own counter): a rate (compared per second), a burst, a concurrency, a
/// monthly quota or a monthly budget above the tenant's is a 400 naming both. A limit the
/// tenant does not set is not bounded; a limit the key leaves unset is the tenant's anyway.
///
/// # Errors
/// [`AppError::BadRequest`].
pub fn check_within_tenant(
    key_rules: &[LimitRule],
    tenant: Option<&LimitRule>,
) -> Result<(), AppError> {
    let Some(t) = tenant else { return Ok(()) };
    let over = |i: usize, what: &str, key: String, tenant: String| {
        Err(AppError::BadRequest(format!(
            "rules[{i}]: {what} {key} exceeds the tenant's own limit of {tenant}; a tenant admin \
             may only set key limits within the tenant's"
        )))
    };
    for (i, k) in key_rules.iter().enumerate() {
        if let (Some(kr), Some(tr)) = (k.rate, t.rate) {
            // kr / kp > tr / tp, in integers.
            if i64::from(kr) * i64::from(t.period_s) > i64::from(tr) * i64::from(k.period_s) {
                return over(
                    i,
                    "rate",
                    format!("{kr} per {} s", k.period_s),
                    format!("{tr} per {} s", t.period_s),
                );
            }
        }
        if let (Some(kb), Some(_)) = (k.burst, t.rate) {
            let tb = t.burst.unwrap_or(1);
            if kb > tb {
                return over(i, "burst", kb.to_string(), tb.to_string());
            }
        }
        let pairs = [
            (
                "concurrency",
                k.concurrency.map(i64::from),
                t.concurrency.map(i64::from),
            ),
            (
                "monthly_inference_quota",
                k.monthly_inference_quota,
                t.monthly_inference_quota,
            ),
            (
                "monthly_budget_micro_usd",
                k.monthly_budget_micro_usd,
                t.monthly_budget_micro_usd,
            ),
        ];
        for (what, kv, tv) in pairs {
            if let (Some(kv), Some(tv)) = (kv, tv) {
                if kv > tv {
                    return over(i, what, kv.to_string(), tv.to_string());
                }
            }
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

/// The `{plan}` of a route: a name as [`name_problem`] checks it (400 saying what is wrong
/// otherwise).
#[derive(Debug, Clone)]
pub struct PlanName(pub String);

impl<'de> Deserialize<'de> for PlanName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PlanName, D::Error> {
        let plan = String::deserialize(d)?;
        match name_problem("plan", &plan) {
            Some(problem) => Err(serde::de::Error::custom(problem)),
            None => Ok(PlanName(plan)),
        }
    }
}

/// The limits of a plan: the defaults of every tenant on it.
#[utoipa::path(
    get, path = "/admin/v1/plans/{plan}/limits",
    params(("plan" = String, Path, description = "Plan name")),
    responses(
        (status = 200, description = "The plan's rules", body = LimitRules),
        (status = 400, description = "Not a valid plan name (blank, too long, control characters)", body = ErrorBody),
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
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "An admin of another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_tenant_limits(
    VisibleTenant(tenant_id): VisibleTenant,
    State(state): State<AdminState>,
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
        (status = 403, description = "A tenant admin's token (operator only)", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody)
    )
)]
pub async fn put_tenant_limits(
    _: OperatorOnly,
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
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin, and the key is not its tenant's", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn get_key_limits(
    VisibleKey { key_id, .. }: VisibleKey,
    State(state): State<AdminState>,
) -> Result<Json<LimitRules>, AppError> {
    get_rules(&state, Owner::Key(key_id)).await
}

/// Replace the limits of one API key (level `key` only); applies on every gateway within a
/// second. A tenant admin may set its own tenant's keys' limits, each at most the tenant's own
/// (400 otherwise).
#[utoipa::path(
    put, path = "/admin/v1/keys/{key_id}/limits",
    params(("key_id" = Uuid, Path, description = "Key id")),
    request_body = LimitRules,
    responses(
        (status = 200, description = "The key's rules, as stored", body = LimitRules),
        (status = 400, description = "A rule is invalid or above the tenant's own limits; the message names it", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "A tenant admin, and the key is not its tenant's", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody)
    ),
    security(("operator_token" = []), ("tenant_admin_token" = []))
)]
pub async fn put_key_limits(
    VisibleKey {
        key_id,
        tenant_id,
        caller,
    }: VisibleKey,
    State(state): State<AdminState>,
    AppJson(rules): AppJson<LimitRules>,
) -> Result<Json<LimitRules>, AppError> {
    if let Caller::TenantAdmin { .. } = caller {
        check(&Owner::Key(key_id), &rules)?;
        let tenant = tenant_counter_rule(&state.pool, tenant_id).await?;
        check_within_tenant(&rules.rules, tenant.as_ref())?;
    }
    put_rules(&state, Owner::Key(key_id), rules).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_rule(rate: Option<i32>, period_s: i32) -> LimitRule {
        LimitRule {
            level: Level::Key,
            model: None,
            rate,
            period_s,
            burst: None,
            concurrency: None,
            monthly_inference_quota: None,
            monthly_budget_micro_usd: None,
        }
    }

    #[test]
    fn key_limits_stay_within_the_tenant() {
        let tenant = LimitRule {
            level: Level::Tenant,
            burst: Some(5),
            concurrency: Some(4),
            monthly_inference_quota: Some(1000),
            ..key_rule(Some(10), 1)
        };
        // 600 per minute is 10 per second: equal is allowed.
        assert!(check_within_tenant(&[key_rule(Some(600), 60)], Some(&tenant)).is_ok());
        let e = check_within_tenant(&[key_rule(Some(11), 1)], Some(&tenant)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0]: rate 11 per 1 s exceeds the tenant's own limit of 10 per 1 s; a tenant \
             admin may only set key limits within the tenant's"
        );
        let over_quota = LimitRule {
            monthly_inference_quota: Some(1001),
            ..key_rule(None, 1)
        };
        assert!(
            check_within_tenant(std::slice::from_ref(&over_quota), Some(&tenant))
                .unwrap_err()
                .to_string()
                .starts_with("rules[0]: monthly_inference_quota 1001 exceeds")
        );
        let over_burst = LimitRule {
            burst: Some(6),
            ..key_rule(Some(1), 1)
        };
        assert!(check_within_tenant(&[over_burst], Some(&tenant)).is_err());
        // A kind the tenant leaves unlimited is not bounded; no tenant rule: nothing is.
        let budget = LimitRule {
            monthly_budget_micro_usd: Some(i64::MAX),
            ..key_rule(None, 1)
        };
        assert!(check_within_tenant(std::slice::from_ref(&budget), Some(&tenant)).is_ok());
        assert!(check_within_tenant(&[over_quota], None).is_ok());
    }
}
