//! The background end of the metering pipeline: [`UsageWriter`] reads the spool and writes
//! batches to PostgreSQL exactly once, then trims the spool; [`SpoolSyncer`] bounds what a
//! machine crash can lose with a periodic `fdatasync`.

use std::sync::atomic::Ordering;
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

use super::spool::{Spool, SpoolReader};
use super::MeteringStats;
use crate::config::MeteringConfig;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// While a batch is filling, the writer looks at the spool this often instead of waking on
/// every append: under load that is one wake-up per poll rather than two per request (each a
/// wake across threads), and it delays no event beyond `flush_interval_ms`.
const FILL_POLL: Duration = Duration::from_millis(5);

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

impl SpoolSyncer {
    /// A syncer of `spool` every `interval`.
    pub(super) fn new(spool: Arc<Spool>, interval: Duration) -> Self {
        SpoolSyncer { spool, interval }
    }
}

impl UsageWriter {
    /// A writer over `spool` with the given batching (for tools and tests; the gateway uses
    /// `metering::pipeline`).
    pub fn new(spool: Arc<Spool>, database_url: &str, config: &MeteringConfig) -> Self {
        Self::with_stats(
            spool,
            database_url,
            config,
            Arc::new(MeteringStats::default()),
        )
    }

    /// A writer counting into `stats` (shared with the sender of the same pipeline).
    pub(super) fn with_stats(
        spool: Arc<Spool>,
        database_url: &str,
        config: &MeteringConfig,
        stats: Arc<MeteringStats>,
    ) -> Self {
        UsageWriter {
            spool,
            database_url: database_url.to_string(),
            batch_size: config.batch_size.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            months_ahead: config.partition_months_ahead,
            stats,
        }
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
                let oldest = batch.iter().map(|e| e.started_at.timestamp_micros()).min();
                self.stats
                    .writing_oldest_unix_us
                    .store(oldest.unwrap_or(0), Ordering::Relaxed);
                self.write(pool, &batch).await;
                self.stats
                    .writing_oldest_unix_us
                    .store(0, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .committed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
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
