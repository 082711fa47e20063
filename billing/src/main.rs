//! `maas-billing`: the billing command line.
//!
//! - `maas-billing migrate`: applies the project's migrations to `DATABASE_URL` (and creates the
//!   `usage_events` partitions of this month and the next two).
//! - `maas-billing usage --tenant T [--from RFC3339] [--to RFC3339]`: the tenant's usage as JSON.
//! - `maas-billing report --tenant T --from F --to T [--granularity hour|day] [--tz ZONE]
//!   [--by model,key]`: usage buckets as JSON lines, day boundaries in any IANA zone.
//! - `maas-billing invoice --tenant T --period 2026-11 [--json]`: the month's invoice.
//! - `maas-billing export --from F --to T --format csv|jsonl|cloudevents [--tenant T]
//!   [--output FILE]`: raw usage events.
//! - `maas-billing plan set|show|assign`: plan prices (micro-USD) and tenants' plans.
//!
//! Times (`--from`, `--to`) are RFC 3339 (`2026-11-01T00:00:00Z`) or a UTC date (`2026-11-01`).

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use clap::{Parser, Subcommand};
use maas_billing::export::{export_usage, ExportFormat};
use maas_billing::invoice::{build_invoice, format_usd};
use maas_billing::plans::{assign_plan, plan_prices, set_price, ModelPrice};
use maas_billing::report::{usage_report, Granularity, UsageQuery};
use maas_billing::Period;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

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
    /// Apply all migrations (idempotent) and create the usage partitions ahead.
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
    /// Usage buckets of a tenant as JSON lines.
    Report {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Start, inclusive (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End, exclusive (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
        /// hour or day.
        #[arg(long, default_value = "day")]
        granularity: Granularity,
        /// IANA time zone of the bucket boundaries.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Group by: model, key, or both (comma-separated).
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
    },
    /// The invoice of a tenant for a calendar month (UTC).
    Invoice {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export raw usage events.
    Export {
        /// Start, inclusive (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_time)]
        from: DateTime<Utc>,
        /// End, exclusive (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_time)]
        to: DateTime<Utc>,
        /// csv, jsonl or cloudevents.
        #[arg(long, default_value = "csv")]
        format: ExportFormat,
        /// Only this tenant (name).
        #[arg(long)]
        tenant: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Plans and prices.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
}

#[derive(Subcommand)]
enum PlanCommand {
    /// Create the plan if needed and set the price of one model (or `*`), micro-USD.
    Set {
        /// Plan name.
        #[arg(long)]
        plan: String,
        /// Model name, or `*` for every model without its own price.
        #[arg(long)]
        model: String,
        /// Micro-USD per billable request.
        #[arg(long, default_value_t = 0)]
        per_request: i64,
        /// Micro-USD per 1,000 inferences.
        #[arg(long, default_value_t = 0)]
        per_1k_inferences: i64,
        /// Micro-USD per compute second.
        #[arg(long, default_value_t = 0)]
        per_compute_second: i64,
        /// Billable requests included per month.
        #[arg(long, default_value_t = 0)]
        included_requests: i64,
        /// Inferences included per month.
        #[arg(long, default_value_t = 0)]
        included_inferences: i64,
        /// Compute microseconds included per month.
        #[arg(long, default_value_t = 0)]
        included_compute_us: i64,
    },
    /// Print a plan's prices as JSON.
    Show {
        /// Plan name.
        #[arg(long)]
        plan: String,
    },
    /// Put a tenant on a plan.
    Assign {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Plan name.
        #[arg(long)]
        plan: String,
    },
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t))
        .ok_or_else(|| format!("`{s}`: expected RFC 3339 (2026-11-01T00:00:00Z) or YYYY-MM-DD"))
}

async fn tenant_id(pool: &PgPool, name: &str) -> anyhow::Result<Uuid> {
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    id.with_context(|| format!("unknown tenant `{name}`"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        // `maas-billing export ... | head`: the reader went away; not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                    || c.downcast_ref::<maas_billing::BillingError>()
                        .is_some_and(|b| {
                            matches!(b, maas_billing::BillingError::Io(io)
                            if io.kind() == std::io::ErrorKind::BrokenPipe)
                        })
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line, the causes joined by ": " (anyhow's alternate form), and no backtrace.
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
            maas_billing::ensure_usage_partitions(&pool, Utc::now(), 2)
                .await
                .context("creating usage partitions")?;
        }
        Command::Usage { tenant, from, to } => {
            let now = Utc::now();
            let from = from.unwrap_or(Period::of(now).start());
            let to = to.unwrap_or(now + chrono::Duration::seconds(1));
            let summary = maas_billing::usage_summary(&pool, &tenant, from, to).await?;
            println!(
                "{}",
                serde_json::json!({"tenant": tenant, "from": from, "to": to, "usage": summary})
            );
        }
        Command::Report {
            tenant,
            from,
            to,
            granularity,
            tz,
            by,
        } => {
            for b in &by {
                anyhow::ensure!(
                    b == "model" || b == "key",
                    "--by `{b}`: expected model, key or model,key"
                );
            }
            let q = UsageQuery {
                tenant_id: tenant_id(&pool, &tenant).await?,
                from,
                to,
                granularity,
                time_zone: tz,
                by_model: by.iter().any(|b| b == "model"),
                by_key: by.iter().any(|b| b == "key"),
            };
            let mut out = std::io::stdout().lock();
            for bucket in usage_report(&pool, &q).await? {
                serde_json::to_writer(&mut out, &bucket)?;
                writeln!(out)?;
            }
        }
        Command::Invoice {
            tenant,
            period,
            json,
        } => {
            let invoice = build_invoice(&pool, &tenant, Period::parse(&period)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&invoice)?);
            } else {
                println!(
                    "invoice {} {} (plan {}), {} to {}, USD",
                    invoice.tenant, invoice.period, invoice.plan, invoice.from, invoice.to
                );
                println!(
                    "{:<24} {:>12} {:>14} {:>16} {:>16}",
                    "model", "requests", "inferences", "compute_us", "amount"
                );
                for l in &invoice.lines {
                    println!(
                        "{:<24} {:>12} {:>14} {:>16} {:>16}",
                        l.usage.model,
                        l.usage.requests,
                        l.usage.inference_count,
                        l.usage.compute_us,
                        format_usd(l.amount_micro_usd)
                    );
                }
                println!(
                    "{:<24} {:>61}",
                    "total",
                    format_usd(invoice.total_micro_usd)
                );
            }
        }
        Command::Export {
            from,
            to,
            format,
            tenant,
            output,
        } => {
            let tenant = match tenant {
                Some(name) => Some(tenant_id(&pool, &name).await?),
                None => None,
            };
            let n = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    export_usage(&pool, from, to, tenant, format, file).await?
                }
                None => {
                    export_usage(&pool, from, to, tenant, format, std::io::stdout().lock()).await?
                }
            };
            eprintln!("exported {n} usage events");
        }
        Command::Plan { command } => match command {
            PlanCommand::Set {
                plan,
                model,
                per_request,
                per_1k_inferences,
                per_compute_second,
                included_requests,
                included_inferences,
                included_compute_us,
            } => {
                set_price(
                    &pool,
                    &plan,
                    &ModelPrice {
                        model,
                        per_request_micro_usd: per_request,
                        per_1k_inferences_micro_usd: per_1k_inferences,
                        per_compute_second_micro_usd: per_compute_second,
                        included_requests,
                        included_inferences,
                        included_compute_us,
                    },
                )
                .await?;
            }
            PlanCommand::Show { plan } => {
                let prices = plan_prices(&pool, &plan).await?;
                println!("{}", serde_json::json!({"plan": plan, "prices": prices}));
            }
            PlanCommand::Assign { tenant, plan } => assign_plan(&pool, &tenant, &plan).await?,
        },
    }
    Ok(())
}
