//! The request path's end of the metering pipeline: appends usage events to the spool (one
//! `pwrite`, never a database wait) and applies the spool-full policy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use maas_billing::UsageEvent;

use super::spool::{RecordKind, Spool};
use super::MeteringStats;
use crate::config::SpoolFullPolicy;

/// What [`UsageSender::admit`] decided for a billable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Meter it as usual.
    Metered,
    /// The spool is full and the policy is `reject`: answer 503.
    Refuse,
    /// The spool is full and the policy is `serve`: serve it, drop (and count) its usage.
    Unmetered,
}

/// The request path's end of the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct UsageSender {
    spool: Arc<Spool>,
    policy: SpoolFullPolicy,
    stats: Arc<MeteringStats>,
}

impl UsageSender {
    /// A sender appending to `spool` under `policy`, counting into `stats`.
    pub(super) fn new(
        spool: Arc<Spool>,
        policy: SpoolFullPolicy,
        stats: Arc<MeteringStats>,
    ) -> Self {
        UsageSender {
            spool,
            policy,
            stats,
        }
    }

    /// Decide whether an authenticated (billable) request may go on, given the spool's room.
    pub fn admit(&self) -> Admission {
        if !self.spool.is_full() {
            return Admission::Metered;
        }
        match self.policy {
            SpoolFullPolicy::Reject => {
                let n = self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::error!(
                        refused = n + 1,
                        "usage spool full: refusing billable requests with 503"
                    );
                }
                Admission::Refuse
            }
            SpoolFullPolicy::Serve => Admission::Unmetered,
        }
    }

    /// Record the billable part of a request (the backend's usage) before its response header
    /// is sent. Appends regardless of the spool's size (the request was admitted). Returns
    /// whether the response may be served: true when recorded; when the write failed (logged
    /// and counted), true only under `spool_full = "serve"`.
    pub fn record_billable(&self, event: &UsageEvent) -> bool {
        match self.spool.append(RecordKind::Billable, event) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, request_id = %event.request_id, "usage spool write failed");
                self.drop_event(event, "usage spool write failed");
                self.policy == SpoolFullPolicy::Serve
            }
        }
    }

    /// Record a request's final usage event. `admission` is what [`UsageSender::admit`] said
    /// for it (`None`: never asked, e.g. a request refused before authentication; then the
    /// event is dropped and counted when the spool is full). Never waits on the database.
    pub async fn send(&self, event: UsageEvent, admission: Option<Admission>) {
        let keep = match admission {
            Some(Admission::Metered) => true,
            Some(Admission::Refuse) | None => !self.spool.is_full(),
            Some(Admission::Unmetered) => false,
        };
        if !keep {
            self.drop_event(&event, "usage spool full");
            return;
        }
        match self.spool.append(RecordKind::Final, &event) {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.drop_event(&event, "usage spool write failed");
                tracing::error!(error = %e, "usage spool write failed");
            }
        }
    }

    fn drop_event(&self, event: &UsageEvent, why: &'static str) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Logged at the 1st, 2nd, 4th, 8th, ... drop: visible without flooding the log.
        if n.is_power_of_two() {
            tracing::warn!(dropped_total = n, request_id = %event.request_id, why, "usage event dropped");
        }
    }
}
