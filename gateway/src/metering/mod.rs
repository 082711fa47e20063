//! The metering pipeline: usage events go from the request path into the local spool
//! ([`spool`]) and a background service reads the spool and writes them to PostgreSQL in
//! batches (`maas_billing::insert_usage_events`), then trims the spool.
//!
//! - The request path never waits on the database: [`UsageSender`] only appends to the spool
//!   (one `pwrite`). A billable request is recorded twice: [`UsageSender::record_billable`]
//!   before the response header goes to the client, [`UsageSender::send`] in the logging phase.
//! - While the spool is full ([`crate::config::MeteringConfig::spool_max_bytes`]),
//!   [`UsageSender::admit`] applies `metering.spool_full`: refuse billable requests (503) or
//!   serve them and count their events in [`MeteringStats::dropped`] (with a log line).
//! - Requests the gateway refused itself are not usage events: [`Refusals`] counts them per
//!   tenant, outcome and minute and [`RefusalWriter`] adds the counts to `refused_requests`
//!   every `metering.refused_flush_interval_ms`.
//! - The writer ([`UsageWriter`], a pingora `BackgroundService`) sends a batch when it holds
//!   `metering.batch_size` events or `metering.flush_interval_ms` after the batch's first event.
//! - A batch that fails is retried with exponential backoff (100 ms doubling to 10 s), never
//!   dropped; the insert is idempotent on the request id, so a retry counts nothing twice. A
//!   batch rejected for its data (SQLSTATE class 22 or 23) is retried row by row, and only the
//!   rows that PostgreSQL itself refuses are logged in full and skipped, so one bad row cannot
//!   stop metering.
//! - Segments are trimmed only after the batch holding their last events is committed; at
//!   start the writer first replays what earlier runs left in the spool.
//! - After SIGTERM the writer flushes at once instead of waiting for full batches, and syncs
//!   the spool. pingora keeps the runtimes running for `grace_period_s` after SIGTERM and then
//!   drops their tasks, so the drain happens within the grace period; what the writer cannot
//!   write by then (PostgreSQL down) stays in the spool for the next start.
//! - The writer's pool is created inside the writer's own runtime (pingora gives each service
//!   its own tokio runtime inside `run_forever`). It also keeps `usage_events` partitions
//!   created `metering.partition_months_ahead` months ahead (at start, then hourly).

mod refusals;
mod sender;
pub mod spool;
mod writer;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use crate::config::MeteringConfig;

pub use refusals::{RefusalWriter, Refusals};
pub use sender::{Admission, UsageSender};
pub use spool::Spool;
pub use writer::{SpoolSyncer, UsageWriter};

/// Counters of the metering pipeline, shared between the request path and the writer.
#[derive(Debug, Default)]
pub struct MeteringStats {
    /// Final events appended to the spool.
    pub sent: AtomicU64,
    /// Events written (rows inserted, duplicates excluded).
    pub inserted: AtomicU64,
    /// Events refused by PostgreSQL for their data and skipped (logged in full).
    pub rejected: AtomicU64,
    /// Failed insert attempts (each is retried).
    pub failed_attempts: AtomicU64,
    /// Events not metered: the spool was full under `spool_full = "serve"` (or for a request
    /// that was never billable), or the spool write failed.
    pub dropped: AtomicU64,
    /// Requests answered 503 because the spool was full (`spool_full = "reject"`).
    pub refused: AtomicU64,
    /// Batches the writer committed (or skipped row by row) in PostgreSQL.
    pub batches: AtomicU64,
    /// Events in those batches (inserted, duplicates and rejected alike): `sent - committed`
    /// is what this process spooled and has not yet written.
    pub committed: AtomicU64,
    /// `started_at` (Unix microseconds) of the oldest event of the batch being written; 0
    /// while the writer waits for events.
    pub writing_oldest_unix_us: AtomicI64,
}

/// Build the pipeline over an open spool: the sender for the proxy, the writer service that
/// drains the spool into `database_url`, and the spool's fsync service.
pub fn pipeline(
    spool: Arc<Spool>,
    database_url: &str,
    config: &MeteringConfig,
) -> (UsageSender, UsageWriter, SpoolSyncer) {
    let stats = Arc::new(MeteringStats::default());
    (
        UsageSender::new(spool.clone(), config.spool_full, stats.clone()),
        UsageWriter::with_stats(spool.clone(), database_url, config, stats),
        SpoolSyncer::new(
            spool,
            Duration::from_millis(config.spool_fsync_interval_ms.max(1)),
        ),
    )
}
