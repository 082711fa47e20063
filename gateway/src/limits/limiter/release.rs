//! Releases in Redis, off the request path and without a round trip of their own when the
//! tenant sends again: a finished request's concurrency slot (`ZREM` of its lease) and its
//! quota and budget settlements (`INCRBY` of used minus reserved) wait here, per tenant. The
//! next admission script call of the same tenant carries them and applies them before it
//! checks (`redis` module), so a request that arrives after another finished sees its slot
//! free, as with a release of its own. Releases no admission picked up within
//! [`RELEASE_FLUSH`] (or more than [`RELEASE_BATCH`] of them) go in one pipeline per tenant
//! (one Redis Cluster slot each; one pipeline for all on a single server).
//!
//! A slot is thus held at most [`RELEASE_FLUSH`] past its request (never less: the limit is
//! kept), a settlement applied as late. A release lost with Redis (an error or a timeout) is
//! bounded by its lease (`concurrency_lease_s`), as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{lock, Inner};

/// How long a release waits for an admission of its tenant to carry it before it is sent on
/// its own: short against a request (a slot is held this much longer at most), long against
/// a round trip (a burst of finished requests goes in one pipeline).
pub(super) const RELEASE_FLUSH: Duration = Duration::from_millis(2);

/// Pending releases that trigger a flush at once.
pub(super) const RELEASE_BATCH: usize = 512;

/// What a release does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReleaseOp {
    /// Free the concurrency slot (lease) of `request_id`: `ZREM`.
    Slot { request_id: String },
    /// Settle a quota (inference units) or budget (thousandths of micro-USD) reservation:
    /// `INCRBY delta` (used minus reserved).
    Settle { delta: i64 },
}

/// One release of a finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Release {
    /// The Redis key (the item's).
    pub(super) key: String,
    /// What is done to it.
    pub(super) op: ReleaseOp,
}

impl Release {
    /// Whether applying it twice is the same as once (a slot's `ZREM`), so that it may be sent
    /// again after a call whose outcome is unknown.
    fn idempotent(&self) -> bool {
        matches!(self.op, ReleaseOp::Slot { .. })
    }
}

/// Releases waiting, per tenant.
#[derive(Debug, Default)]
pub(super) struct PendingReleases {
    by_tenant: HashMap<Uuid, Vec<Release>>,
    /// Releases in `by_tenant`.
    len: usize,
    /// Whether a flush is scheduled.
    flush_scheduled: bool,
}

impl Inner {
    /// Queue `releases` of `tenant`'s finished request; schedules a flush (on the calling
    /// runtime) unless one is, or flushes now past [`RELEASE_BATCH`].
    pub(super) fn queue_releases(self: &Arc<Self>, tenant: Uuid, releases: Vec<Release>) {
        if releases.is_empty() {
            return;
        }
        let delay = {
            let mut pending = lock(&self.pending);
            pending.len += releases.len();
            pending
                .by_tenant
                .entry(tenant)
                .or_default()
                .extend(releases);
            if pending.len >= RELEASE_BATCH {
                Some(Duration::ZERO)
            } else if pending.flush_scheduled {
                None
            } else {
                Some(RELEASE_FLUSH)
            }
        };
        if let Some(delay) = delay {
            self.schedule_flush(delay);
        }
    }

    /// `tenant`'s pending releases, taken for its admission call.
    pub(super) fn take_releases(&self, tenant: Uuid) -> Vec<Release> {
        let mut pending = lock(&self.pending);
        let taken = pending.by_tenant.remove(&tenant).unwrap_or_default();
        pending.len -= taken.len();
        taken
    }

    /// Put back the releases of a call that failed: only those that may be applied twice (the
    /// call may have run); a lost settlement keeps its reservation, a lost slot its lease.
    pub(super) fn requeue_releases(self: &Arc<Self>, tenant: Uuid, releases: Vec<Release>) {
        let again: Vec<Release> = releases.into_iter().filter(Release::idempotent).collect();
        self.queue_releases(tenant, again);
    }

    /// Releases waiting (tests).
    #[cfg(test)]
    pub(super) fn pending_releases(&self) -> usize {
        lock(&self.pending).len
    }

    fn schedule_flush(self: &Arc<Self>, delay: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime (a permit dropped outside one): the next admission of the tenant, or
            // the next flush scheduled, takes them.
            return;
        };
        lock(&self.pending).flush_scheduled = true;
        let me = self.clone();
        handle.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            me.flush_releases().await;
        });
    }

    /// Send every pending release: one pipeline per tenant on a cluster (one slot each), one
    /// for all on a single server; bounded by ten times `redis_timeout_ms`.
    pub(super) async fn flush_releases(self: &Arc<Self>) {
        let batches: Vec<(Uuid, Vec<Release>)> = {
            let mut pending = lock(&self.pending);
            pending.flush_scheduled = false;
            pending.len = 0;
            pending.by_tenant.drain().collect()
        };
        // Redis down: dropped; a slot's lease bounds it, a reservation stays as it is.
        if batches.is_empty() || !self.redis_available() {
            return;
        }
        let Some(mut conn) = self.connection().await else {
            return;
        };
        let timeout = Duration::from_millis(self.config.redis_timeout_ms.max(1) * 10);
        let pipes: Vec<redis::Pipeline> = if conn.is_cluster() {
            batches.iter().map(|(_, r)| pipeline(r.iter())).collect()
        } else {
            vec![pipeline(batches.iter().flat_map(|(_, r)| r.iter()))]
        };
        for pipe in pipes {
            match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.redis_failed(&e.to_string()),
                Err(_) => self.redis_failed("release timed out"),
            }
        }
    }
}

/// One pipeline of `releases`, replies ignored.
fn pipeline<'a>(releases: impl Iterator<Item = &'a Release>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for r in releases {
        match &r.op {
            ReleaseOp::Slot { request_id } => pipe.cmd("ZREM").arg(&r.key).arg(request_id),
            ReleaseOp::Settle { delta } => pipe.cmd("INCRBY").arg(&r.key).arg(*delta),
        }
        .ignore();
    }
    pipe
}
