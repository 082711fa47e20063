//! The in-process limiter: governor's GCRA (the Generic Cell Rate Algorithm, ITU-T I.371)
//! for rates, in-process counters for concurrency, quotas and budgets. It decides alone with
//! `[limits] backend = "local"` (one gateway), and stands in for Redis under fail-open with
//! every limit divided among the gateways.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use governor::middleware::StateInformationMiddleware;
use governor::{clock::Clock, clock::DefaultClock, Quota, RateLimiter};
use sqlx::PgPool;

use super::headers::{denial, rate_limit_headers};
use super::monthly::month_total;
use super::plan::{Item, Kind};
use super::release::{Release, ReleaseOp};
use super::{lock, Admission, Inner, Permit};

type Gcra = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;

#[derive(Default)]
pub(super) struct LocalState {
    /// Per item key: its (T, burst) and governor's limiter.
    pub(super) gcra: HashMap<String, ((i64, i64), Arc<Gcra>)>,
    /// Per item key: slots in use.
    pub(super) concurrency: HashMap<String, i64>,
    /// Per item key: the month's quota or budget total (local backend only).
    pub(super) counters: HashMap<String, i64>,
}

impl Inner {
    /// The local decision: governor for rates, in-process counters for the rest, under one lock.
    /// `divide` splits every limit among that many gateways (fail-open); `counters` enforces
    /// quotas and budgets (local backend; not in fail-open).
    pub(super) async fn admit_local(
        self: &Arc<Self>,
        pool: &PgPool,
        request_id: String,
        items: Vec<Item>,
        divide: i64,
        counters: bool,
    ) -> Admission {
        let now_utc = Utc::now();
        if counters {
            // Start the month's counters from PostgreSQL once.
            for item in &items {
                if !matches!(item.kind, Kind::Quota { .. } | Kind::Budget { .. }) {
                    continue;
                }
                if lock(&self.local).counters.contains_key(&item.key) {
                    continue;
                }
                match month_total(pool, item).await {
                    Ok(total) => {
                        lock(&self.local)
                            .counters
                            .entry(item.key.clone())
                            .or_insert(total.unwrap_or(0));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, key = %item.key, "could not read the month's usage; counting from zero")
                    }
                }
            }
        }
        let mut state = lock(&self.local);
        // Check the counters first (no side effect), then the rates (governor consumes as it
        // checks), then apply the counters.
        let mut values = vec![(0i64, 0i64); items.len()];
        for (i, item) in items.iter().enumerate() {
            match &item.kind {
                Kind::Concurrency { limit } => {
                    let limit = (limit / divide).max(1);
                    let used = *state.concurrency.get(&item.key).unwrap_or(&0);
                    if used >= limit {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit - used - 1, 0);
                }
                Kind::Quota { limit, estimate } if counters => {
                    let used = *state.counters.get(&item.key).unwrap_or(&0);
                    if used + estimate > *limit {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit - used - estimate, 0);
                }
                Kind::Budget {
                    limit_milli,
                    estimate_milli,
                } if counters => {
                    let used = *state.counters.get(&item.key).unwrap_or(&0);
                    if used + estimate_milli > *limit_milli {
                        return Admission::Denied(denial(item, 0, now_utc));
                    }
                    values[i] = (limit_milli - used - estimate_milli, 0);
                }
                _ => {}
            }
        }
        for (i, item) in items.iter().enumerate() {
            if let Kind::Gcra { t_us, burst, .. } = item.kind {
                let t_us = t_us * divide;
                let burst = (burst / divide).max(1);
                let limiter = state
                    .gcra
                    .entry(item.key.clone())
                    .and_modify(|(params, l)| {
                        if *params != (t_us, burst) {
                            *params = (t_us, burst);
                            *l = Arc::new(gcra(t_us, burst));
                        }
                    })
                    .or_insert_with(|| ((t_us, burst), Arc::new(gcra(t_us, burst))))
                    .1
                    .clone();
                match limiter.check() {
                    Ok(snapshot) => {
                        let remaining = i64::from(snapshot.remaining_burst_capacity());
                        values[i] = (remaining, (burst - remaining) * t_us);
                    }
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        return Admission::Denied(denial(item, wait.as_micros() as i64, now_utc));
                    }
                }
            }
        }
        for item in &items {
            match &item.kind {
                Kind::Concurrency { .. } => {
                    *state.concurrency.entry(item.key.clone()).or_insert(0) += 1
                }
                Kind::Quota { estimate, .. } if counters => {
                    *state.counters.entry(item.key.clone()).or_insert(0) += estimate
                }
                Kind::Budget { estimate_milli, .. } if counters => {
                    *state.counters.entry(item.key.clone()).or_insert(0) += estimate_milli
                }
                _ => {}
            }
        }
        drop(state);
        let headers = rate_limit_headers(&items, &values, now_utc);
        Admission::Admitted(Permit {
            inner: self.clone(),
            request_id,
            items,
            local: true,
            headers,
            finished: false,
        })
    }

    /// Apply `releases` (slots freed, reservations settled) to the in-process counters.
    pub(super) fn release_local(&self, releases: &[Release]) {
        let mut state = lock(&self.local);
        for r in releases {
            match r.op {
                ReleaseOp::Slot { .. } => {
                    if let Some(n) = state.concurrency.get_mut(&r.key) {
                        *n = (*n - 1).max(0);
                    }
                }
                ReleaseOp::Settle { delta } => {
                    if let Some(n) = state.counters.get_mut(&r.key) {
                        *n += delta;
                    }
                }
            }
        }
    }
}

fn gcra(t_us: i64, burst: i64) -> Gcra {
    let period = Duration::from_micros(t_us.max(1) as u64);
    let burst =
        NonZeroU32::new(u32::try_from(burst.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}
