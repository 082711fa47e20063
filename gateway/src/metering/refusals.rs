//! Requests the gateway refused itself (401, 403, 404, 429, its own 503, ...) counted in
//! process per tenant (when known), outcome and UTC minute ([`Refusals`]), and added to
//! PostgreSQL's `refused_requests` (and the hourly rollup) every
//! `metering.refused_flush_interval_ms` by [`RefusalWriter`]: one statement per interval, a
//! few rows, whatever the flood rate. Never one row per refusal.
//!
//! The counts are memory only until written: a crash loses at most one interval of refusal
//! counts (never billable usage, which goes through the spool). While PostgreSQL is down they
//! stay in memory and are written on its return; the map holds one entry per tenant, outcome
//! and minute, so a flood of unknown keys is one entry per outcome per minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use maas_billing::{add_refused, RefusedCount};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

type Key = (Option<Uuid>, DateTime<Utc>, &'static str);

/// The in-process rollup of refused requests. Cheap to clone.
#[derive(Clone, Default)]
pub struct Refusals {
    counts: Arc<Mutex<HashMap<Key, i64>>>,
}

impl Refusals {
    /// Count one refused request of `tenant` (`None`: not identified) with `outcome` (the
    /// gateway's outcome label) at `at`.
    pub fn count(&self, tenant: Option<Uuid>, outcome: &'static str, at: DateTime<Utc>) {
        let minute = at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at);
        *self.lock().entry((tenant, minute, outcome)).or_insert(0) += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, i64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything counted so far, emptied.
    fn take(&self) -> HashMap<Key, i64> {
        std::mem::take(&mut *self.lock())
    }

    /// Put back counts that could not be written.
    fn restore(&self, counts: HashMap<Key, i64>) {
        let mut map = self.lock();
        for (key, n) in counts {
            *map.entry(key).or_insert(0) += n;
        }
    }
}

/// The rows of `counts` for [`add_refused`].
fn rows(counts: &HashMap<Key, i64>) -> Vec<RefusedCount> {
    counts
        .iter()
        .map(|(&(tenant_id, minute, outcome), &requests)| RefusedCount {
            tenant_id,
            minute,
            outcome: outcome.to_string(),
            requests,
        })
        .collect()
}

/// The background service that writes [`Refusals`] to PostgreSQL every `interval`, and once
/// more at shutdown.
pub struct RefusalWriter {
    refusals: Refusals,
    database_url: String,
    interval: Duration,
}

impl RefusalWriter {
    /// A writer of `refusals` into `database_url` every `interval`.
    pub fn new(refusals: Refusals, database_url: &str, interval: Duration) -> Self {
        RefusalWriter {
            refusals,
            database_url: database_url.to_string(),
            interval: interval.max(Duration::from_millis(1)),
        }
    }
}

#[async_trait]
impl BackgroundService for RefusalWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Created here, on this service's runtime, which drives the pool's connections.
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&self.database_url)
        {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "refusal writer: bad database_url");
                return;
            }
        };
        let mut failures: u64 = 0;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            let counts = self.refusals.take();
            if !counts.is_empty() {
                match add_refused(&pool, &rows(&counts)).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        // The 1st, 2nd, 4th, 8th, ... failure in a row: visible, not a flood.
                        if failures.is_power_of_two() {
                            tracing::warn!(error = %e, failures, "refusal counts not written; kept for the next try");
                        }
                        self.refusals.restore(counts);
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn counts_roll_up_per_tenant_outcome_and_minute() {
        let r = Refusals::default();
        let t = Uuid::now_v7();
        let at = |s| Utc.with_ymd_and_hms(2026, 12, 2, 7, 0, s).unwrap();
        for s in 0..50 {
            r.count(None, "unauthenticated", at(s));
        }
        r.count(Some(t), "rate_limited", at(1));
        r.count(Some(t), "rate_limited", at(59));
        let next = Utc.with_ymd_and_hms(2026, 12, 2, 7, 1, 0).unwrap();
        r.count(Some(t), "rate_limited", next);
        let taken = r.take();
        let mut got = rows(&taken);
        got.sort_by_key(|c| (c.tenant_id, c.minute));
        let rows: Vec<_> = got
            .iter()
            .map(|c| (c.tenant_id, c.minute, c.outcome.as_str(), c.requests))
            .collect();
        assert_eq!(
            rows,
            [
                (None, at(0), "unauthenticated", 50),
                (Some(t), at(0), "rate_limited", 2),
                (Some(t), next, "rate_limited", 1),
            ]
        );
        assert!(r.take().is_empty());
        r.restore(taken);
        assert_eq!(r.take().values().sum::<i64>(), 53);
    }
}
