//! What the client is told: `RateLimit-Policy` and `RateLimit` header values
//! (draft-ietf-httpapi-ratelimit-headers) for the items of an admitted request, and the
//! message, `Retry-After` and headers of a refusal.
//!
//! Each item is one policy (`"<name>";q=<quota>;w=<window s>`, with `qu` naming the unit when
//! it is not requests) and one state (`"<name>";r=<remaining>;t=<seconds to reset>`). Monthly
//! items count in the UTC calendar month; budgets are shown in whole micro-USD.

use chrono::{DateTime, Utc};
use maas_billing::Period;

use super::plan::{Item, Kind};
use super::{Denial, LimitKind};

/// Whole seconds of `us` microseconds, rounded up (negative counts as 0).
pub(super) fn secs_ceil(us: i64) -> i64 {
    (us.max(0) + 999_999) / 1_000_000
}

/// The item's `RateLimit-Policy` entry; `month_len`: seconds of the current month.
fn policy_item(item: &Item, month_len: i64) -> String {
    let name = &item.name;
    match &item.kind {
        Kind::Gcra { rate, period_s, .. } => format!("\"{name}\";q={rate};w={period_s}"),
        Kind::Concurrency { limit } => format!("\"{name}\";q={limit};qu=\"concurrent-requests\""),
        Kind::Quota { limit, .. } => {
            format!("\"{name}\";q={limit};w={month_len};qu=\"inference-units\"")
        }
        Kind::Budget { limit_milli, .. } => format!(
            "\"{name}\";q={};w={month_len};qu=\"micro-usd\"",
            limit_milli / 1000
        ),
    }
}

/// The item's `RateLimit` entry with `remaining` (budget: thousandths of micro-USD) and, for a
/// rate, `rate_reset_s`; monthly items reset at the month's end, `to_month_end` seconds away.
fn state_item(item: &Item, remaining: i64, rate_reset_s: i64, to_month_end: i64) -> String {
    let (name, r) = (&item.name, remaining.max(0));
    match &item.kind {
        Kind::Gcra { .. } => format!("\"{name}\";r={r};t={rate_reset_s}"),
        Kind::Concurrency { .. } => format!("\"{name}\";r={r}"),
        Kind::Quota { .. } => format!("\"{name}\";r={r};t={to_month_end}"),
        Kind::Budget { .. } => format!("\"{name}\";r={};t={to_month_end}", r / 1000),
    }
}

/// `RateLimit-Policy` and `RateLimit` for `items`, with `(remaining, reset_us)` per item.
pub(super) fn rate_limit_headers(
    items: &[Item],
    values: &[(i64, i64)],
    now: DateTime<Utc>,
) -> Option<(String, String)> {
    let period = Period::of(now);
    let (to_month_end, month_len) = (period.seconds_to_end(now), period.seconds());
    let mut policy = Vec::new();
    let mut state = Vec::new();
    for (item, (remaining, reset_us)) in items.iter().zip(values) {
        policy.push(policy_item(item, month_len));
        state.push(state_item(
            item,
            *remaining,
            secs_ceil(*reset_us),
            to_month_end,
        ));
    }
    (!policy.is_empty()).then(|| (policy.join(", "), state.join(", ")))
}

/// The refusal by `item`: its message (what the limit allows), `Retry-After` (a rate: when the
/// next request conforms, from `wait_us`; concurrency: 1 s; monthly: the month's end) and the
/// refusing item's headers with nothing remaining.
pub(super) fn denial(item: &Item, wait_us: i64, now: DateTime<Utc>) -> Denial {
    let month = Period::of(now);
    let (to_month_end, month_len) = (month.seconds_to_end(now), month.seconds());
    let name = &item.name;
    let (message, retry_after_s) = match &item.kind {
        Kind::Gcra {
            rate,
            period_s,
            burst,
            ..
        } => {
            let retry = secs_ceil(wait_us).max(1);
            (
                format!(
                    "rate limit exceeded: {name} allows {rate} requests per {period_s} s (burst {burst}); retry after {retry} s"
                ),
                retry,
            )
        }
        Kind::Concurrency { limit } => (
            format!("concurrency limit reached: {name} allows {limit} requests in flight"),
            1,
        ),
        Kind::Quota { limit, .. } => (
            format!(
                "monthly inference quota exhausted: {name} allows {limit} inference units in {month} (UTC)"
            ),
            to_month_end,
        ),
        Kind::Budget { limit_milli, .. } => (
            format!(
                "monthly budget exhausted: {name} allows {} micro-USD in {month} (UTC)",
                limit_milli / 1000
            ),
            to_month_end,
        ),
    };
    let limit = match item.kind {
        Kind::Gcra { .. } => LimitKind::Rate,
        Kind::Concurrency { .. } => LimitKind::Concurrency,
        Kind::Quota { .. } => LimitKind::Quota,
        Kind::Budget { .. } => LimitKind::Budget,
    };
    Denial {
        limit,
        message,
        retry_after_s: u64::try_from(retry_after_s.max(1)).unwrap_or(1),
        headers: Some((
            policy_item(item, month_len),
            state_item(item, 0, retry_after_s, to_month_end),
        )),
    }
}
