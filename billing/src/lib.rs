//! maas billing: the usage schema and store.
//!
//! - [`MIGRATOR`]: every migration of the project (`migrations/*.sql`, PostgreSQL), embedded.
//! - [`UsageEvent`]: one record per request seen by the gateway, keyed by its request id.
//! - [`insert_usage_events`]: writes a batch exactly once (`ON CONFLICT (request_id) DO NOTHING`).
//!
//! Money is integer micro-USD and time is UTC throughout (see DESIGN.md).

pub mod usage;

pub use usage::{insert_usage_events, usage_summary, UsageEvent, UsageSummary};

/// All sqlx migrations of the project, from the workspace's `migrations/` folder.
///
/// Run with `MIGRATOR.run(&pool).await`; applying them twice is a no-op.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
