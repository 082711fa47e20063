//! What the client is told: `RateLimit-Policy` and `RateLimit` header values
//! (draft-ietf-httpapi-ratelimit-headers) for the items of an admitted request, and the
//! message, `Retry-After` and headers of a refusal.

use chrono::{DateTime, Utc};
use maas_billing::Period;

use super::plan::{Item, Kind};
use super::Denial;

pub(super) fn secs_ceil(us: i64) -> i64 {
    (us.max(0) + 999_999) / 1_000_000
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for `items`, with
/// `(remaining, reset_us)` per item.
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
        let r = (*remaining).max(0);
        match &item.kind {
            Kind::Gcra { rate, period_s, .. } => {
                policy.push(format!("\"{}\";q={rate};w={period_s}", item.name));
                state.push(format!(
                    "\"{}\";r={r};t={}",
                    item.name,
                    secs_ceil(*reset_us)
                ));
            }
            Kind::Concurrency { limit } => {
                policy.push(format!(
                    "\"{}\";q={limit};qu=\"concurrent-requests\"",
                    item.name
                ));
                state.push(format!("\"{}\";r={r}", item.name));
            }
            Kind::Quota { limit, .. } => {
                policy.push(format!(
                    "\"{}\";q={limit};w={month_len};qu=\"inference-units\"",
                    item.name
                ));
                state.push(format!("\"{}\";r={r};t={to_month_end}", item.name));
            }
            Kind::Budget { limit_milli, .. } => {
                policy.push(format!(
                    "\"{}\";q={};w={month_len};qu=\"micro-usd\"",
                    item.name,
                    limit_milli / 1000
                ));
                state.push(format!("\"{}\";r={};t={to_month_end}", item.name, r / 1000));
            }
        }
    }
    (!policy.is_empty()).then(|| (policy.join(", "), state.join(", ")))
}

pub(super) fn denial(item: &Item, wait_us: i64, now: DateTime<Utc>) -> Denial {
    let month = Period::of(now);
    let (to_month_end, month_len) = (month.seconds_to_end(now), month.seconds());
    let (message, retry_after_s, policy, state) = match &item.kind {
        Kind::Gcra {
            rate,
            period_s,
            burst,
            ..
        } => {
            let retry = secs_ceil(wait_us).max(1);
            (
                format!(
                    "rate limit exceeded: {} allows {rate} requests per {period_s} s (burst {burst}); retry after {retry} s",
                    item.name
                ),
                retry,
                format!("\"{}\";q={rate};w={period_s}", item.name),
                format!("\"{}\";r=0;t={retry}", item.name),
            )
        }
        Kind::Concurrency { limit } => (
            format!("concurrency limit reached: {} allows {limit} requests in flight", item.name),
            1,
            format!("\"{}\";q={limit};qu=\"concurrent-requests\"", item.name),
            format!("\"{}\";r=0", item.name),
        ),
        Kind::Quota { limit, .. } => (
            format!(
                "monthly inference quota exhausted: {} allows {limit} inference units in {month} (UTC)",
                item.name
            ),
            to_month_end,
            format!("\"{}\";q={limit};w={month_len};qu=\"inference-units\"", item.name),
            format!("\"{}\";r=0;t={to_month_end}", item.name),
        ),
        Kind::Budget { limit_milli, .. } => (
            format!(
                "monthly budget exhausted: {} allows {} micro-USD in {month} (UTC)",
                item.name,
                limit_milli / 1000
            ),
            to_month_end,
            format!("\"{}\";q={};w={month_len};qu=\"micro-usd\"", item.name, limit_milli / 1000),
            format!("\"{}\";r=0;t={to_month_end}", item.name),
        ),
    };
    Denial {
        message,
        retry_after_s: u64::try_from(retry_after_s.max(1)).unwrap_or(1),
        headers: Some((policy, state)),
    }
}
