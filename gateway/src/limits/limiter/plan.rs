//! Planning: a request's limits turned into the items the limiter checks, each with its Redis
//! key. GCRA's emission interval T and tolerance tau follow the Generic Cell Rate Algorithm
//! (ITU-T I.371, as in redis-cell).

use maas_billing::Period;

use super::Demand;
use crate::config::LimitsConfig;
use crate::limits::rules::{CounterId, RequestLimits};

/// Prefix of every Redis key the limiter writes.
pub const KEY_PREFIX: &str = "maas:rl:";

/// The Redis key of `counter`'s limit `suffix`: `maas:rl:{<tenant id>}:<counter>:<suffix>`,
/// e.g. `maas:rl:{6f1c...}:k:<key id>:gcra`. The braces are a Redis Cluster hash tag (Redis
/// Cluster specification, "Hash tags"): only the tenant id is hashed, so every key one
/// admission script touches (all the counters of one request belong to one tenant) lives in
/// one slot, as a cluster requires of a script's keys.
pub fn redis_key(counter: &CounterId, suffix: &str) -> String {
    format!("{KEY_PREFIX}{{{}}}:{counter}:{suffix}", counter.tenant())
}

/// What one item limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// GCRA: `rate` per `period_s`, `burst` at once; T and tau in microseconds.
    Gcra {
        rate: i64,
        period_s: i64,
        burst: i64,
        t_us: i64,
        tau_us: i64,
    },
    /// Requests in flight.
    Concurrency { limit: i64 },
    /// Inference units this month; reservation per request.
    Quota { limit: i64, estimate: i64 },
    /// Thousandths of a micro-USD this month; reservation per request.
    Budget {
        limit_milli: i64,
        estimate_milli: i64,
    },
}

/// One limit of one counter, for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    /// Header item name, e.g. `key-rps`.
    pub(super) name: String,
    /// Redis key (also the local map key): [`redis_key`] of the counter and the limit's suffix.
    pub(super) key: String,
    /// The counter, for the monthly rebuild and invalidation by tenant.
    pub(super) counter: CounterId,
    /// What the item limits.
    pub(super) kind: Kind,
}

impl Item {
    /// What the item reserves for its request: quota units, budget thousandths of micro-USD,
    /// 0 for rates and concurrency.
    pub(super) fn reserved(&self) -> i64 {
        match self.kind {
            Kind::Quota { estimate, .. } => estimate,
            Kind::Budget { estimate_milli, .. } => estimate_milli,
            Kind::Gcra { .. } | Kind::Concurrency { .. } => 0,
        }
    }
}

/// The items of a request under `limits`: one per limit of each governed counter, in the order
/// the admission script checks them; monthly counters are keyed by `period`. Quotas and
/// budgets reserve what `demand` declares: an inference call's rows (or
/// `quota_estimate_units` when unknown) and their list price; nothing for an unbilled call.
pub(super) fn plan(
    limits: &RequestLimits,
    config: &LimitsConfig,
    period: Period,
    demand: Demand,
) -> Vec<Item> {
    let units = match demand {
        Demand::Inference { rows: Some(rows) } => i64::try_from(rows).unwrap_or(i64::MAX),
        Demand::Inference { rows: None } => config.quota_estimate_units,
        Demand::Unbilled => 0,
    };
    let requests = i64::from(demand != Demand::Unbilled);
    let mut out = Vec::new();
    for (counter, rule) in &limits.rules {
        let item = |suffix: &str, name: &str, kind: Kind| Item {
            name: format!("{}-{name}", counter.level().as_str()),
            key: redis_key(counter, suffix),
            counter: counter.clone(),
            kind,
        };
        if let Some(rate) = rule.rate {
            let rate = i64::from(rate.max(1));
            let period_s = i64::from(rule.period_s.max(1));
            let burst = i64::from(rule.burst.unwrap_or(1).max(1));
            // Rounded up, so that no more than rate x time + burst are ever admitted.
            let t_us = (period_s * 1_000_000 + rate - 1) / rate;
            out.push(item(
                "gcra",
                "rps",
                Kind::Gcra {
                    rate,
                    period_s,
                    burst,
                    t_us,
                    tau_us: t_us * (burst - 1),
                },
            ));
        }
        if let Some(limit) = rule.concurrency {
            out.push(item(
                "conc",
                "concurrency",
                Kind::Concurrency {
                    limit: i64::from(limit),
                },
            ));
        }
        if let Some(limit) = rule.monthly_inference_quota {
            out.push(item(
                &format!("q:{period}"),
                "quota",
                Kind::Quota {
                    limit,
                    estimate: units,
                },
            ));
        }
        if let Some(limit) = rule.monthly_budget_micro_usd {
            out.push(item(
                &format!("b:{period}"),
                "budget",
                Kind::Budget {
                    limit_milli: limit.saturating_mul(1000),
                    estimate_milli: limits.prices.list_cost_milli(requests, units, 0),
                },
            ));
        }
    }
    out
}
