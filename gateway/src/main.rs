//! `maas-gateway`: serve the data path, run migrations, issue API keys.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use maas_gateway::config::GatewayConfig;
use maas_gateway::{connect, create_key, migrate, serve};
use tracing_subscriber::EnvFilter;

/// Default configuration file, relative to the working directory; optional.
const DEFAULT_CONFIG: &str = "config/gateway.toml";

#[derive(Parser)]
#[command(
    name = "maas-gateway",
    version,
    about = "maas gateway: authentication, metering and routing in front of maas backends"
)]
struct Cli {
    /// Configuration file (TOML). Keys can be overridden with MAAS_GATEWAY_<KEY> variables
    /// (nested keys joined with `__`). When not given, config/gateway.toml is read if it exists.
    #[arg(long, global = true, env = "MAAS_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (applies migrations first when run_migrations is set).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print its secret (only) on stdout. Creates the tenant if missing.
    Create {
        /// Tenant name (created, active on the default plan, if it does not exist).
        #[arg(long)]
        tenant: String,
        /// Name of the key, for listings.
        #[arg(long, default_value = "default")]
        name: String,
        /// Models the key may call, comma-separated; every model when omitted.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
    },
}

fn main() {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve => "info,sqlx=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("maas-gateway: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => GatewayConfig::load(path, true)?,
        None => GatewayConfig::load(DEFAULT_CONFIG.as_ref(), false)?,
    };
    match cli.command {
        Command::Serve => serve(config),
        Command::Migrate => block_on(async {
            let pool = connect(&config).await?;
            migrate(&pool).await?;
            eprintln!("migrations applied");
            Ok(())
        }),
        Command::Keys {
            command:
                KeysCommand::Create {
                    tenant,
                    name,
                    models,
                },
        } => block_on(async {
            let pool = connect(&config).await?;
            if config.run_migrations {
                migrate(&pool).await?;
            }
            let models = models.map(|m| {
                m.into_iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
            let (_, key) = create_key(&pool, &tenant, &name, models)
                .await
                .context("creating the API key")?;
            println!("{}", key.secret);
            Ok(())
        }),
    }
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
