//! The metering pipeline: usage events leave the request path on a channel and a background
//! service writes them to PostgreSQL in batches (`maas_billing::insert_usage_events`).
//!
//! - The request path never waits on the database: [`UsageSender::send`] only waits when the
//!   channel (`metering.channel_capacity` events) is full, i.e. PostgreSQL has been down long.
//! - The writer ([`UsageWriter`], a pingora `BackgroundService`) sends a batch when it holds
//!   `metering.batch_size` events or `metering.flush_interval_ms` after the batch's first event.
//! - A batch that fails is retried with exponential backoff (100 ms doubling to 10 s), never
//!   dropped; the insert is idempotent on `request_id`, so a retry counts nothing twice. A batch
//!   rejected for its data (SQLSTATE class 22 or 23) is retried row by row, and only the rows
//!   that PostgreSQL itself refuses are logged in full and skipped, so one bad row cannot stop
//!   metering.
//! - The writer's pool is created inside the writer's own runtime (pingora gives each service
//!   its own tokio runtime inside `run_forever`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use maas_billing::{insert_usage_events, UsageEvent};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::MeteringConfig;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Counters of the metering pipeline, shared between the request path and the writer.
#[derive(Debug, Default)]
pub struct MeteringStats {
    /// Events handed to the channel.
    pub sent: AtomicU64,
    /// Events written (rows inserted, duplicates excluded).
    pub inserted: AtomicU64,
    /// Events refused by PostgreSQL for their data and skipped (logged in full).
    pub rejected: AtomicU64,
    /// Failed insert attempts (each is retried).
    pub failed_attempts: AtomicU64,
}

/// The request path's end of the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct UsageSender {
    tx: mpsc::Sender<UsageEvent>,
    stats: Arc<MeteringStats>,
}

impl UsageSender {
    /// Queue one event. Returns at once unless the channel is full (then it waits for room:
    /// usage is never dropped on the request path).
    pub async fn send(&self, event: UsageEvent) {
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                tracing::warn!("metering channel full: waiting for the usage writer");
                if self.tx.send(event).await.is_err() {
                    tracing::error!("metering channel closed: usage event lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(event)) => {
                tracing::error!(request_id = %event.request_id, "metering channel closed: usage event lost");
            }
        }
    }

    /// Counters of the pipeline.
    pub fn stats(&self) -> &Arc<MeteringStats> {
        &self.stats
    }
}

/// The background service that writes usage events to PostgreSQL.
pub struct UsageWriter {
    rx: Mutex<Option<mpsc::Receiver<UsageEvent>>>,
    database_url: String,
    batch_size: usize,
    flush_interval: Duration,
    stats: Arc<MeteringStats>,
}

/// Create the channel: the sender for the proxy and the writer service that drains it.
pub fn pipeline(database_url: &str, config: &MeteringConfig) -> (UsageSender, UsageWriter) {
    let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
    let stats = Arc::new(MeteringStats::default());
    (
        UsageSender {
            tx,
            stats: stats.clone(),
        },
        UsageWriter {
            rx: Mutex::new(Some(rx)),
            database_url: database_url.to_string(),
            batch_size: config.batch_size.max(1),
            flush_interval: Duration::from_millis(config.flush_interval_ms.max(1)),
            stats,
        },
    )
}

impl UsageWriter {
    /// Receive and write until the channel closes (every sender dropped).
    ///
    /// After `shutdown` fires, batches are written as soon as they hold anything, so the
    /// grace period is spent draining rather than waiting for full batches.
    pub async fn run(
        &self,
        pool: PgPool,
        mut rx: mpsc::Receiver<UsageEvent>,
        mut shutdown: ShutdownWatch,
    ) {
        let mut batch: Vec<UsageEvent> = Vec::with_capacity(self.batch_size);
        let mut shutting_down = *shutdown.borrow();
        let mut closed = false;
        while !closed {
            if batch.is_empty() {
                tokio::select! {
                    n = rx.recv_many(&mut batch, self.batch_size) => {
                        if n == 0 {
                            break;
                        }
                    }
                    changed = shutdown.changed(), if !shutting_down => {
                        shutting_down = changed.is_err() || *shutdown.borrow();
                        continue;
                    }
                }
            }
            let deadline = if shutting_down {
                Instant::now()
            } else {
                Instant::now() + self.flush_interval
            };
            while batch.len() < self.batch_size {
                let room = self.batch_size - batch.len();
                tokio::select! {
                    biased;
                    n = rx.recv_many(&mut batch, room) => {
                        if n == 0 {
                            closed = true;
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.write(&pool, &batch).await;
            batch.clear();
        }
        if !batch.is_empty() {
            self.write(&pool, &batch).await;
        }
        tracing::info!(
            inserted = self.stats.inserted.load(Ordering::Relaxed),
            "usage writer stopped: channel closed"
        );
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
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("usage writer started twice");
            return;
        };
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
        self.run(pool, rx, shutdown).await;
    }
}
