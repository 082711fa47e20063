//! Which limits govern a request: for each counter ([`CounterId`]: the API key's own, the
//! tenant's, the tenant's for the model) the most specific rule (key > tenant > plan; for the
//! model level a rule naming the model beats a rule for every model at the same owner). A rule
//! is taken whole, not merged field by field. A level without a rule has no limit.

use std::fmt;

use maas_billing::plans::ModelPrice;
use maas_billing::RollupFilter;
use uuid::Uuid;

use crate::store::{Level, LimitRule, Specificity};

/// The counter a limit consumes from: one per level, named by its owner's ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CounterId {
    /// An API key's own counter (level `key`); the tenant is the key's.
    Key {
        /// The key's tenant.
        tenant: Uuid,
        /// The key.
        key: Uuid,
    },
    /// The tenant's counter, every key and model together (level `tenant`).
    Tenant(Uuid),
    /// The tenant's counter for one model (level `model`).
    TenantModel(Uuid, String),
}

impl CounterId {
    /// The level of the rules that govern this counter.
    pub fn level(&self) -> Level {
        match self {
            CounterId::Key { .. } => Level::Key,
            CounterId::Tenant(_) => Level::Tenant,
            CounterId::TenantModel(..) => Level::Model,
        }
    }

    /// The tenant whose usage the counter counts (for invalidation by tenant).
    pub fn tenant(&self) -> Uuid {
        match self {
            CounterId::Key { tenant, .. } | CounterId::Tenant(tenant) => *tenant,
            CounterId::TenantModel(tenant, _) => *tenant,
        }
    }

    /// The model of a per-model counter.
    pub fn model(&self) -> Option<&str> {
        match self {
            CounterId::TenantModel(_, model) => Some(model),
            _ => None,
        }
    }

    /// The hourly rollups whose sum is this counter's usage (a monthly counter's start value).
    pub fn rollup_filter(&self) -> RollupFilter<'_> {
        match self {
            CounterId::Key { key, .. } => RollupFilter {
                api_key_id: Some(*key),
                ..RollupFilter::default()
            },
            CounterId::Tenant(tenant) => RollupFilter {
                tenant_id: Some(*tenant),
                ..RollupFilter::default()
            },
            CounterId::TenantModel(tenant, model) => RollupFilter {
                tenant_id: Some(*tenant),
                model: Some(model),
                ..RollupFilter::default()
            },
        }
    }
}

impl fmt::Display for CounterId {
    /// `k:<key id>`, `t:<tenant id>` or `m:<tenant id>:<model>`: the counter's part of its
    /// Redis keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterId::Key { key, .. } => write!(f, "k:{key}"),
            CounterId::Tenant(tenant) => write!(f, "t:{tenant}"),
            CounterId::TenantModel(tenant, model) => write!(f, "m:{tenant}:{model}"),
        }
    }
}

/// The rules that govern one request, one per counter at most, and the prices for its budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLimits {
    /// Tenant the counters belong to.
    pub tenant_id: Uuid,
    /// Each governed counter and its rule.
    pub rules: Vec<(CounterId, LimitRule)>,
    /// The price of the model under the tenant's plan (zero when it has none, or when no
    /// budget applies and it was not looked up).
    pub prices: ModelPrice,
}

impl RequestLimits {
    /// Whether nothing limits the request.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Pick, for each counter, the most specific of `rules` (owner and rule) that applies to a
/// request of `tenant_id` by `key` (if any) for `model` (if any). Pure.
pub fn resolve(
    rules: &[(Specificity, LimitRule)],
    tenant_id: Uuid,
    key: Option<Uuid>,
    model: Option<&str>,
) -> Vec<(CounterId, LimitRule)> {
    let mut out = Vec::new();
    let best = |level: Level| {
        rules
            .iter()
            .filter(|(owner, r)| {
                r.level == level
                    && (*owner != Specificity::Key || key.is_some())
                    && (level != Level::Model || r.model.is_none() || r.model.as_deref() == model)
            })
            .max_by_key(|(owner, r)| (*owner, r.model.is_some()))
            .map(|(_, r)| r.clone())
    };
    if let Some(key) = key {
        if let Some(r) = best(Level::Key) {
            out.push((
                CounterId::Key {
                    tenant: tenant_id,
                    key,
                },
                r,
            ));
        }
    }
    if let Some(r) = best(Level::Tenant) {
        out.push((CounterId::Tenant(tenant_id), r));
    }
    if let Some(model) = model {
        if let Some(r) = best(Level::Model) {
            out.push((CounterId::TenantModel(tenant_id, model.to_string()), r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(level: Level, model: Option<&str>, rate: i32) -> LimitRule {
        LimitRule {
            model: model.map(str::to_string),
            rate: Some(rate),
            ..LimitRule::unlimited(level)
        }
    }

    #[test]
    fn most_specific_rule_wins_per_level() {
        let t = Uuid::now_v7();
        let k = Uuid::now_v7();
        let rules = vec![
            (Specificity::Plan, rule(Level::Key, None, 10)),
            (Specificity::Tenant, rule(Level::Key, None, 20)),
            (Specificity::Key, rule(Level::Key, None, 30)),
            (Specificity::Plan, rule(Level::Tenant, None, 100)),
            (Specificity::Plan, rule(Level::Model, None, 5)),
            (Specificity::Plan, rule(Level::Model, Some("digits"), 6)),
            (Specificity::Tenant, rule(Level::Model, None, 7)),
        ];
        let got = resolve(&rules, t, Some(k), Some("digits"));
        let rates: Vec<(Level, String, Option<i32>)> = got
            .into_iter()
            .map(|(c, r)| (c.level(), c.to_string(), r.rate))
            .collect();
        assert_eq!(
            rates,
            vec![
                (Level::Key, format!("k:{k}"), Some(30)),
                (Level::Tenant, format!("t:{t}"), Some(100)),
                // The tenant's rule for every model beats the plan's rule naming the model.
                (Level::Model, format!("m:{t}:digits"), Some(7)),
            ]
        );
        // A JWT (no key): no key level, and key-owned rules never apply.
        let got = resolve(&rules, t, None, Some("other"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, CounterId::Tenant(t));
        // At the same owner, the rule naming the model wins.
        let rules = vec![
            (Specificity::Plan, rule(Level::Model, None, 5)),
            (Specificity::Plan, rule(Level::Model, Some("digits"), 6)),
        ];
        assert_eq!(resolve(&rules, t, None, Some("digits"))[0].1.rate, Some(6));
        assert_eq!(resolve(&rules, t, None, Some("seed"))[0].1.rate, Some(5));
        assert!(resolve(&rules, t, None, None).is_empty());
    }

    #[test]
    fn every_counter_knows_its_tenant() {
        let (t, k) = (Uuid::now_v7(), Uuid::now_v7());
        let key = CounterId::Key { tenant: t, key: k };
        // The key counter's name holds no tenant id, and still belongs to the tenant.
        assert_eq!(key.to_string(), format!("k:{k}"));
        assert_eq!(key.tenant(), t);
        assert_eq!(key.rollup_filter().api_key_id, Some(k));
        let model = CounterId::TenantModel(t, "digits".into());
        assert_eq!(model.tenant(), t);
        assert_eq!(model.model(), Some("digits"));
        assert_eq!(model.rollup_filter().model, Some("digits"));
        assert_eq!(CounterId::Tenant(t).rollup_filter().tenant_id, Some(t));
    }
}
