//! `maas-billing`: the billing command line.
//!
//! - `maas-billing migrate`: applies the project's migrations to `DATABASE_URL`.
//! - `maas-billing usage --tenant T [--from RFC3339] [--to RFC3339]`: the tenant's usage as JSON.

use anyhow::Context;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(name = "maas-billing", version, about = "maas usage and billing")]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply all migrations (idempotent).
    Migrate,
    /// Print a tenant's usage over a period as JSON (default: the current UTC month).
    Usage {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Start of the period, inclusive (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// End of the period, exclusive (RFC 3339).
        #[arg(long)]
        to: Option<DateTime<Utc>>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let url = cli
        .database_url
        .context("DATABASE_URL is not set (pass --database-url or set the variable)")?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .context("connecting to PostgreSQL")?;
    match cli.command {
        Command::Migrate => {
            maas_billing::MIGRATOR
                .run(&pool)
                .await
                .context("running migrations")?;
        }
        Command::Usage { tenant, from, to } => {
            let now = Utc::now();
            let month_start = Utc
                .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .single()
                .context("computing the month start")?;
            let from = from.unwrap_or(month_start);
            let to = to.unwrap_or(now + chrono::Duration::seconds(1));
            let summary = maas_billing::usage_summary(&pool, &tenant, from, to).await?;
            println!(
                "{}",
                serde_json::json!({"tenant": tenant, "from": from, "to": to, "usage": summary})
            );
        }
    }
    Ok(())
}
