//! Limit rules as stored in `rate_limits` (migration `20261129000004_rate_limits.sql`): the
//! rule type the admin API reads and writes, who owns a rule, and every statement on the table.
//!
//! A rule belongs to exactly one owner (a plan, a tenant or an API key) and governs one counter
//! ([`Level`]). Which rule wins for a request is decided in `limits::rules`, not here.

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::tenants::tenant_by_id;

/// The counter a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Each API key's own counter (JWT requests have no key and skip it).
    Key,
    /// The tenant's counter: every key and model together.
    Tenant,
    /// The tenant's counter for one model.
    Model,
}

impl Level {
    /// `key`, `tenant` or `model`, as stored and as used in header item names.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Key => "key",
            Level::Tenant => "tenant",
            Level::Model => "model",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "key" => Some(Level::Key),
            "tenant" => Some(Level::Tenant),
            "model" => Some(Level::Model),
            _ => None,
        }
    }
}

/// One rule: the limits of one counter (`None`: no limit of that kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitRule {
    /// Which counter.
    pub level: Level,
    /// For `level = model`: the model; `None`: every model, each counted apart.
    #[serde(default)]
    pub model: Option<String>,
    /// GCRA rate: requests per `period_s`.
    #[serde(default)]
    pub rate: Option<i32>,
    /// Period of `rate`, seconds (default 1).
    #[serde(default = "one")]
    pub period_s: i32,
    /// Requests that may arrive at once (default 1 when `rate` is set).
    #[serde(default)]
    pub burst: Option<i32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrency: Option<i32>,
    /// Inference units (rows) per calendar month (UTC).
    #[serde(default)]
    pub monthly_inference_quota: Option<i64>,
    /// List-price value of the month's usage (UTC), micro-USD, priced by the tenant's plan.
    #[serde(default)]
    pub monthly_budget_micro_usd: Option<i64>,
}

fn one() -> i32 {
    1
}

#[cfg(test)]
impl LimitRule {
    /// A rule of `level` with no limit set, for tests to build on.
    pub(crate) fn unlimited(level: Level) -> LimitRule {
        LimitRule {
            level,
            model: None,
            rate: None,
            period_s: 1,
            burst: None,
            concurrency: None,
            monthly_inference_quota: None,
            monthly_budget_micro_usd: None,
        }
    }
}

/// Why a rule a client sent cannot be stored; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A rate, period, burst or concurrency of zero or less.
    #[error("{field} must be a positive integer, got {value}")]
    NotPositive {
        /// The field.
        field: &'static str,
        /// What was sent.
        value: i32,
    },
    /// A negative monthly quota or budget.
    #[error("{field} must not be negative")]
    Negative {
        /// The field.
        field: &'static str,
    },
    /// A burst without a rate (the burst of what?).
    #[error("burst needs a rate")]
    BurstWithoutRate,
    /// A model on a rule whose level is not `model`.
    #[error("model may only be set on level \"model\"")]
    ModelOnOtherLevel,
    /// An empty model name.
    #[error("model must not be empty (omit it for every model)")]
    EmptyModel,
}

impl LimitRule {
    /// Check the values a client sent.
    ///
    /// # Errors
    /// A non-positive rate, period, burst or concurrency, a negative quota or budget, a burst
    /// without a rate, or a model on a level other than `model` ([`RuleError`]).
    pub fn validate(&self) -> Result<(), RuleError> {
        let positive = |field: &'static str, v: Option<i32>| match v {
            Some(value) if value <= 0 => Err(RuleError::NotPositive { field, value }),
            _ => Ok(()),
        };
        positive("rate", self.rate)?;
        positive("period_s", Some(self.period_s))?;
        positive("burst", self.burst)?;
        positive("concurrency", self.concurrency)?;
        for (field, v) in [
            ("monthly_inference_quota", self.monthly_inference_quota),
            ("monthly_budget_micro_usd", self.monthly_budget_micro_usd),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(RuleError::Negative { field });
            }
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err(RuleError::BurstWithoutRate);
        }
        if self.model.is_some() && self.level != Level::Model {
            return Err(RuleError::ModelOnOtherLevel);
        }
        if self.model.as_deref() == Some("") {
            return Err(RuleError::EmptyModel);
        }
        Ok(())
    }
}

/// Who owns a set of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOwner {
    /// A plan, by name: the default for every tenant on it.
    Plan(String),
    /// A tenant: overrides its plan.
    Tenant(Uuid),
    /// An API key: overrides its tenant and plan for the key's own counter.
    Key(Uuid),
}

impl RuleOwner {
    /// The `(plan, tenant_id, api_key_id)` columns of the owner's rows: one set, two NULL.
    fn columns(&self) -> (Option<&str>, Option<Uuid>, Option<Uuid>) {
        match self {
            RuleOwner::Plan(p) => (Some(p), None, None),
            RuleOwner::Tenant(id) => (None, Some(*id), None),
            RuleOwner::Key(id) => (None, None, Some(*id)),
        }
    }
}

/// How specific a rule's owner is, least to most: for each level the most specific rule wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    /// Owned by the tenant's plan.
    Plan,
    /// Owned by the tenant.
    Tenant,
    /// Owned by the API key.
    Key,
}

/// One `rate_limits` row as selected (`owner_rank`: 2 key, 1 tenant, 0 plan; absent: 0).
#[derive(sqlx::FromRow)]
struct RuleRow {
    #[sqlx(default)]
    owner_rank: i32,
    level: String,
    model: Option<String>,
    rate: Option<i32>,
    period_s: i32,
    burst: Option<i32>,
    concurrency: Option<i32>,
    monthly_inference_quota: Option<i64>,
    monthly_budget_micro_usd: Option<i64>,
}

impl RuleRow {
    fn into_rule(self) -> Option<(Specificity, LimitRule)> {
        let owner = match self.owner_rank {
            2 => Specificity::Key,
            1 => Specificity::Tenant,
            _ => Specificity::Plan,
        };
        Some((
            owner,
            LimitRule {
                level: Level::parse(&self.level)?,
                model: self.model,
                rate: self.rate,
                period_s: self.period_s,
                burst: self.burst,
                concurrency: self.concurrency,
                monthly_inference_quota: self.monthly_inference_quota,
                monthly_budget_micro_usd: self.monthly_budget_micro_usd,
            },
        ))
    }
}

/// Every rule that may apply to a request of `tenant_id` (its plan's, its own, and `key`'s),
/// with how specific its owner is.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn request_rules(
    pool: &PgPool,
    tenant_id: Uuid,
    key: Option<Uuid>,
) -> Result<Vec<(Specificity, LimitRule)>, sqlx::Error> {
    let rows: Vec<RuleRow> = sqlx::query_as(
        "SELECT CASE WHEN r.api_key_id IS NOT NULL THEN 2 \
                     WHEN r.tenant_id IS NOT NULL THEN 1 ELSE 0 END AS owner_rank, \
                r.level, r.model, r.rate, r.period_s, r.burst, r.concurrency, \
                r.monthly_inference_quota, r.monthly_budget_micro_usd \
         FROM rate_limits r JOIN tenants t ON t.id = $1 \
         WHERE r.plan = t.plan OR r.tenant_id = $1 OR r.api_key_id = $2",
    )
    .bind(tenant_id)
    .bind(key)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter_map(RuleRow::into_rule).collect())
}

/// The rules of `owner`, by level then model (the rule for every model first).
///
/// # Errors
/// When PostgreSQL fails.
pub async fn owner_rules(pool: &PgPool, owner: &RuleOwner) -> Result<Vec<LimitRule>, sqlx::Error> {
    let (plan, tenant, key) = owner.columns();
    let rows: Vec<RuleRow> = sqlx::query_as(
        "SELECT level, model, rate, period_s, burst, concurrency, \
                monthly_inference_quota, monthly_budget_micro_usd \
         FROM rate_limits \
         WHERE plan IS NOT DISTINCT FROM $1 AND tenant_id IS NOT DISTINCT FROM $2 \
           AND api_key_id IS NOT DISTINCT FROM $3 \
         ORDER BY level, model NULLS FIRST",
    )
    .bind(plan)
    .bind(tenant)
    .bind(key)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_rule().map(|(_, rule)| rule))
        .collect())
}

/// Replace the rules of `owner` with `rules`, inside `tx`.
///
/// # Errors
/// When PostgreSQL fails (e.g. a table constraint, a rule the caller did not validate).
pub async fn replace_owner_rules(
    tx: &mut Transaction<'_, Postgres>,
    owner: &RuleOwner,
    rules: &[LimitRule],
) -> Result<(), sqlx::Error> {
    let (plan, tenant, key) = owner.columns();
    sqlx::query(
        "DELETE FROM rate_limits \
         WHERE plan IS NOT DISTINCT FROM $1 AND tenant_id IS NOT DISTINCT FROM $2 \
           AND api_key_id IS NOT DISTINCT FROM $3",
    )
    .bind(plan)
    .bind(tenant)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    for r in rules {
        sqlx::query(
            "INSERT INTO rate_limits (id, plan, tenant_id, api_key_id, level, model, rate, \
                 period_s, burst, concurrency, monthly_inference_quota, monthly_budget_micro_usd) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(Uuid::now_v7())
        .bind(plan)
        .bind(tenant)
        .bind(key)
        .bind(r.level.as_str())
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

/// Copy the rules of key `from` onto key `to` (a rotated key keeps its limits), inside `tx`;
/// how many rules were copied.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn copy_key_rules(
    tx: &mut Transaction<'_, Postgres>,
    from: Uuid,
    to: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO rate_limits (id, api_key_id, level, model, rate, period_s, burst, \
             concurrency, monthly_inference_quota, monthly_budget_micro_usd) \
         SELECT gen_random_uuid(), $2, level, model, rate, period_s, burst, concurrency, \
             monthly_inference_quota, monthly_budget_micro_usd \
         FROM rate_limits WHERE api_key_id = $1",
    )
    .bind(from)
    .bind(to)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// The own rules of every key of tenant `tenant_id`, with the key they belong to.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn tenant_key_rules(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Vec<(Uuid, LimitRule)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct KeyRuleRow {
        api_key_id: Uuid,
        #[sqlx(flatten)]
        rule: RuleRow,
    }
    let rows: Vec<KeyRuleRow> = sqlx::query_as(
        "SELECT r.api_key_id, r.level, r.model, r.rate, r.period_s, r.burst, r.concurrency, \
                r.monthly_inference_quota, r.monthly_budget_micro_usd \
         FROM rate_limits r JOIN api_keys k ON k.id = r.api_key_id \
         WHERE k.tenant_id = $1 ORDER BY r.api_key_id, r.level",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.api_key_id, r.rule.into_rule()?.1)))
        .collect())
}

/// Whether `owner` exists, and the tenant a change of its rules concerns: `None` when it does
/// not exist, `Some(None)` for a plan (every tenant on it), `Some(Some(tenant))` for a tenant
/// or a key.
///
/// # Errors
/// When PostgreSQL fails.
pub async fn owner_tenant(
    pool: &PgPool,
    owner: &RuleOwner,
) -> Result<Option<Option<Uuid>>, sqlx::Error> {
    Ok(match owner {
        RuleOwner::Plan(p) => maas_billing::plans::plan_exists(pool, p)
            .await?
            .then_some(None),
        RuleOwner::Tenant(id) => tenant_by_id(pool, *id).await?.map(|t| Some(t.id)),
        RuleOwner::Key(id) => {
            sqlx::query_scalar::<_, Uuid>("SELECT tenant_id FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(Some)
        }
    })
}

#[cfg(test)]
mod tests {
    use maas_billing::plans::ModelPrice;

    use super::*;

    fn rule(level: Level, model: Option<&str>, rate: i32) -> LimitRule {
        LimitRule {
            model: model.map(str::to_string),
            rate: Some(rate),
            ..LimitRule::unlimited(level)
        }
    }

    #[test]
    fn validation_and_prices() {
        let mut r = rule(Level::Key, None, 10);
        assert_eq!(r.validate(), Ok(()));
        r.rate = Some(0);
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "rate must be a positive integer, got 0"
        );
        let mut r = rule(Level::Tenant, Some("m"), 1);
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "model may only be set on level \"model\""
        );
        r.model = None;
        r.rate = None;
        r.burst = Some(3);
        assert_eq!(r.validate(), Err(RuleError::BurstWithoutRate));
        assert_eq!(
            RuleError::BurstWithoutRate.to_string(),
            "burst needs a rate"
        );
        let p = ModelPrice {
            per_request_micro_usd: 10,
            per_1k_inferences_micro_usd: 2000,
            per_compute_second_micro_usd: 500,
            ..ModelPrice::default()
        };
        // 10 micro-USD + 3 rows x 2 micro-USD + 1.5 s x 500 micro-USD = 766 micro-USD.
        assert_eq!(p.list_cost_milli(1, 3, 1_500_000), 766_000);
    }
}
