//! maas billing: the usage schema and store, pricing plans, invoices, reports and exports.
//!
//! - [`MIGRATOR`]: every migration of the project (`migrations/*.sql`, PostgreSQL), embedded.
//! - [`UsageEvent`]: one record per request seen by the gateway, keyed by its request id.
//! - [`insert_usage_events`]: writes a batch exactly once (`ON CONFLICT (request_id,
//!   started_at) DO NOTHING`) and updates the hourly rollup from exactly the new rows.
//! - [`plans`]: per-model prices (integer micro-USD) and included units.
//! - [`Period`]: the billing period, one calendar month (UTC).
//! - [`rollup_totals`]: billable usage summed from the hourly rollups.
//! - [`add_refused`]: requests the gateway refused, counted per tenant, outcome and minute.
//! - [`invoice`]: monthly invoices from the rollups (rounding rule documented there).
//! - [`report`]: usage per hour or day in any IANA time zone, by model and/or key.
//! - [`ranking`]: every tenant's usage and spend over a range, highest spend first.
//! - [`export`]: CSV, JSON lines and CloudEvents 1.0 exports of the raw events.
//!
//! Money is integer micro-USD and time is UTC throughout (see ARCHITECTURE.md).

pub mod export;
pub mod invoice;
mod period;
pub mod plans;
pub mod ranking;
mod refused;
pub mod report;
mod usage;

pub use period::Period;
pub use refused::{add_refused, refused_by_outcome, RefusedCount};
pub use usage::{
    create_usage_partition, ensure_usage_partitions, insert_usage_events, model_totals,
    rollup_totals, usage_summary, CallKind, ModelTotals, RollupFilter, RollupTotals, UsageEvent,
    UsageSummary,
};

/// All sqlx migrations of the project, from the workspace's `migrations/` folder.
///
/// Run with `MIGRATOR.run(&pool).await`; applying them twice is a no-op.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Errors of the billing layer, each with a message that says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// No tenant with this name.
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    /// No plan with this name.
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    /// Models with billable usage but no price (neither their own row nor `*`).
    #[error("plan `{plan}` has no price for model(s) {models:?} (add one, or a `*` row)")]
    NoPrice {
        /// The plan.
        plan: String,
        /// The unpriced models.
        models: Vec<String>,
    },
    /// A parameter out of its domain (the message says what was expected).
    #[error("{0}")]
    Invalid(String),
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing the output failed.
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
}
