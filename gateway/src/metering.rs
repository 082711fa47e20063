//! The metering pipeline: usage events go from the request path into the local spool
//! ([`crate::spool`]) and a background service reads the spool and writes them to PostgreSQL in
//! batches (`maas_billing::insert_usage_events`), then trims the spool.
//!
//! - The request path never waits on the database: [`UsageSender`] only appends to the spool
//!   (one `pwrite`). A billable request is recorded twice: [`UsageSender::record_billable`]
//!   before the response header goes to the client, [`UsageSender::send`] in the logging phase.
//! - While the spool is full ([`crate::config::MeteringConfig::spool_max_bytes`]),
//!   [`UsageSender::admit`] applies `metering.spool_full`: refuse billable requests (503) or
//!   serve them and count their events in [`MeteringStats::dropped`] (with a log line).
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maas_billing::{ensure_usage_partitions, insert_usage_events, UsageEvent};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{MeteringConfig, SpoolFullPolicy};
use crate::spool::{RecordKind, Spool, SpoolReader};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// While a batch is filling, the writer looks at the spool this often instead of waking on
/// every append: under load that is one wake-up per poll rather than two per request (each a
/// wake across threads), and it delays no event beyond `flush_interval_ms`.
const FILL_POLL: Duration = Duration::from_millis(5);

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
}

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

    /// Counters of the pipeline.
    pub fn stats(&self) -> &Arc<MeteringStats> {
        &self.stats
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }
}

/// The background service that reads the spool and writes usage events to PostgreSQL.
pub struct UsageWriter {
    spool: Arc<Spool>,
    database_url: String,
    batch_size: usize,
    flush_interval: Duration,
    months_ahead: u32,
    stats: Arc<MeteringStats>,
}

/// The background service that syncs the spool on `metering.spool_fsync_interval_ms`.
pub struct SpoolSyncer {
    spool: Arc<Spool>,
    interval: Duration,
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
        UsageSender {
            spool: spool.clone(),
            policy: config.spool_full,
            stats: stats.clone(),
        },
        UsageWriter {
            spool: spool.clone(),
            database_url: database_url.to_string(),
            batch_size: config.batch_size.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            months_ahead: config.partition_months_ahead,
            stats,
        },
        SpoolSyncer {
            spool,
            interval: Duration::from_millis(config.spool_fsync_interval_ms.max(1)),
        },
    )
}

impl UsageWriter {
    /// A writer over `spool` with the given batching (for tools and tests; the gateway uses
    /// [`pipeline`]).
    pub fn new(spool: Arc<Spool>, database_url: &str, config: &MeteringConfig) -> Self {
        pipeline(spool, database_url, config).1
    }

    /// Counters of the pipeline.
    pub fn stats(&self) -> &Arc<MeteringStats> {
        &self.stats
    }

    /// Write everything the spool holds now (earlier runs' segments included), then trim it.
    /// Returns the number of rows newly inserted. For replay tools, tests and benchmarks.
    ///
    /// # Errors
    /// Reading the spool failed. Database errors are retried (this waits for PostgreSQL).
    pub async fn drain_once(
        &self,
        pool: &PgPool,
        reader: &mut SpoolReader,
    ) -> std::io::Result<u64> {
        let before = self.stats.inserted.load(Ordering::Relaxed);
        self.pump(pool, reader, None).await?;
        Ok(self.stats.inserted.load(Ordering::Relaxed) - before)
    }

    /// Read the spool and write until the process ends.
    ///
    /// After `shutdown` fires, batches are written as soon as they hold anything, so the grace
    /// period is spent draining.
    pub async fn run(&self, pool: PgPool, mut reader: SpoolReader, shutdown: ShutdownWatch) {
        if let Err(e) = self.pump(&pool, &mut reader, Some(shutdown)).await {
            tracing::error!(error = %e, "usage writer stopped");
        }
    }

    /// The writer's loop, as two concurrent halves joined in one task: the reader builds the
    /// next batch from the spool while the previous one is being written (at most one batch
    /// waits in between), and each batch carries the spool frontier at its end, trimmed once it
    /// is committed (batches commit in order).
    ///
    /// `shutdown`: `None` stops once the spool is read to its end (drain); `Some` runs until the
    /// process ends.
    async fn pump(
        &self,
        pool: &PgPool,
        reader: &mut SpoolReader,
        mut shutdown: Option<ShutdownWatch>,
    ) -> std::io::Result<()> {
        let until_idle = shutdown.is_none();
        let (tx, mut rx) = mpsc::channel::<(Vec<UsageEvent>, u64)>(1);
        let produce = async move {
            let mut shutting_down = shutdown.as_ref().is_some_and(|s| *s.borrow());
            loop {
                let mut batch: Vec<UsageEvent> = Vec::with_capacity(self.batch_size);
                // Up to batch_size, or what arrives within flush_interval of the first event.
                let mut deadline: Option<Instant> = None;
                loop {
                    let room = self.batch_size - batch.len();
                    match reader.read(&mut batch, room) {
                        Ok(0) if until_idle => {
                            if batch.is_empty() {
                                return Ok(());
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if until_idle => return Err(e),
                        Err(e) => {
                            tracing::error!(error = %e, "reading the usage spool failed; will retry");
                            tokio::time::sleep(BACKOFF_START).await;
                        }
                    }
                    if batch.len() >= self.batch_size || (shutting_down && !batch.is_empty()) {
                        break;
                    }
                    if !batch.is_empty() && deadline.is_none() {
                        deadline = Some(Instant::now() + self.flush_interval);
                    }
                    if until_idle {
                        continue;
                    }
                    // Idle: wait for the next append. Filling: poll until the deadline.
                    let now = Instant::now();
                    let wake =
                        deadline.map_or(now + Duration::from_secs(1), |d| d.min(now + FILL_POLL));
                    let watch = shutdown.as_mut().expect("set unless until_idle");
                    tokio::select! {
                        _ = self.spool.appended(), if deadline.is_none() => {}
                        _ = tokio::time::sleep_until(wake) => {
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                break;
                            }
                        }
                        changed = watch.changed(), if !shutting_down => {
                            shutting_down = changed.is_err() || *watch.borrow();
                        }
                    }
                }
                let frontier = reader.frontier();
                if tx.send((batch, frontier)).await.is_err() {
                    return Ok(());
                }
            }
        };
        let consume = async {
            while let Some((batch, frontier)) = rx.recv().await {
                self.write(pool, &batch).await;
                if let Err(e) = self.spool.trim_below(frontier) {
                    tracing::error!(error = %e, "trimming the usage spool failed");
                }
            }
        };
        let (result, ()) = tokio::join!(produce, consume);
        result
    }

    /// Keep `usage_events` partitions created ahead: at start, then hourly (every 30 s until
    /// the first success, e.g. while PostgreSQL is down).
    async fn maintain_partitions(pool: PgPool, months_ahead: u32) {
        loop {
            let wait = match ensure_usage_partitions(&pool, chrono::Utc::now(), months_ahead).await
            {
                Ok(_) => Duration::from_secs(3600),
                Err(e) => {
                    tracing::warn!(error = %e, "creating usage partitions ahead failed; will retry");
                    Duration::from_secs(30)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Write one batch, retrying until it is stored (see the module notes).
    async fn write(&self, pool: &PgPool, batch: &[UsageEvent]) {
        match self.insert_retrying(pool, batch).await {
            Ok(n) => {
                self.stats.inserted.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, events = batch.len(), "usage batch refused for its data; writing row by row");
                for event in batch {
                    match self
                        .insert_retrying(pool, std::slice::from_ref(event))
                        .await
                    {
                        Ok(n) => {
                            self.stats.inserted.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, event = ?event, "usage event refused by PostgreSQL; skipped");
                        }
                    }
                }
            }
        }
    }

    /// Insert `events`, retrying transient failures forever with backoff.
    /// Returns the error only when PostgreSQL refuses the data itself.
    async fn insert_retrying(
        &self,
        pool: &PgPool,
        events: &[UsageEvent],
    ) -> Result<u64, sqlx::Error> {
        let mut backoff = BACKOFF_START;
        loop {
            match insert_usage_events(pool, events).await {
                Ok(n) => return Ok(n),
                Err(e) if is_data_error(&e) => return Err(e),
                Err(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = events.len(), retry_in_ms = backoff.as_millis() as u64, "writing usage failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// SQLSTATE class 22 (data exception) or 23 (integrity constraint violation): retrying the
/// same rows cannot succeed.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

#[async_trait]
impl BackgroundService for UsageWriter {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Created here, on this service's runtime, which drives the pool's connections.
        let pool = match PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&self.database_url)
        {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "usage writer: bad database_url; usage is not written");
                return;
            }
        };
        tokio::spawn(Self::maintain_partitions(pool.clone(), self.months_ahead));
        let reader = self.spool.reader();
        self.run(pool, reader, shutdown).await;
    }
}

#[async_trait]
impl BackgroundService for SpoolSyncer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            // After SIGTERM: sync at once, then keep syncing on the interval through the grace
            // period (the writer may still be draining).
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed(), if !stopping => stopping = true,
            }
            let spool = self.spool.clone();
            match tokio::task::spawn_blocking(move || spool.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "syncing the usage spool failed"),
                Err(e) => tracing::error!(error = %e, "spool sync task failed"),
            }
        }
    }
}
