//! Assemble and run the pingora server: the proxy service, the usage spool with its writer and
//! fsync services, the metrics listener, and a readiness announcement on stdout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::limits::LimitResolver;
use crate::limits::{Limiter, RedisEndpoint};
use crate::metering;
use crate::metering::spool::{Spool, SpoolOptions};
use crate::metering::{RefusalWriter, Refusals};
use crate::metrics::{GatewayState, PoolState, RequestMetrics};
use crate::pools::{PoolRefresher, Pools};
use crate::proxy::{FairnessHeaders, Gateway};
use prometheus_client::registry::Registry;

/// Connect a small pool for one-off commands (migrations, key management), on the current
/// runtime.
pub async fn connect(config: &GatewayConfig) -> anyhow::Result<PgPool> {
    let url = config.database_url()?;
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", redact(url)))
}

/// Apply every migration (`maas_billing::MIGRATOR`); a no-op when they are all applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    maas_billing::MIGRATOR
        .run(pool)
        .await
        .context("running migrations")
}

/// Run the gateway until SIGINT (immediate exit) or SIGTERM (graceful: in-flight requests
/// finish within `grace_period_s`). Prints `maas-gateway listening on <addr>` on stdout once
/// the listener accepts connections.
///
/// Never returns on success (pingora exits the process).
pub fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let database_url = config.database_url()?.to_string();
    PgConnectOptions::from_str(&database_url).context("database_url is not a PostgreSQL URL")?;
    let listen = config.listen_addr()?;
    let pools = Arc::new(Pools::from_config(&config)?);
    let index_timeout = Duration::from_millis(config.upstream.connect_timeout_ms.max(500));

    if config.run_migrations {
        // A throwaway runtime: nothing created here outlives it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let pool = connect(&config).await?;
            migrate(&pool).await?;
            pool.close().await;
            anyhow::Ok(())
        })?;
    }

    {
        // The pools' members and models before the first request (a throwaway runtime and
        // client: nothing created here outlives it).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(pools.refresh_once(&reqwest::Client::new(), index_timeout));
    }

    // Fail with a clear message now rather than with a panic inside pingora's runtime.
    std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let tls = match config.tls_addr()? {
        Some(addr) => {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (tls.listen)"))?;
            Some((addr, TlsListener::load(&config)?))
        }
        None => None,
    };

    let conf = ServerConf {
        threads: config.threads,
        work_stealing: config.work_stealing,
        listener_tasks_per_fd: config.listener_tasks_per_fd,
        upstream_keepalive_pool_size: config.upstream_keepalive_pool_size,
        grace_period_seconds: Some(config.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(config.graceful_shutdown_timeout_s),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let auth = Arc::new(Authenticator::from_config(&database_url, &config.auth)?);
    let redis = config.redis_client()?;
    let spool_dir = config.spool_dir();
    let spool = Spool::open(SpoolOptions {
        dir: spool_dir.clone(),
        segment_bytes: config.metering.spool_segment_bytes,
        max_bytes: config.metering.spool_max_bytes,
    })
    .with_context(|| format!("opening the usage spool {}", spool_dir.display()))?;
    let (usage, writer, syncer) =
        metering::pipeline(spool.clone(), &database_url, &config.metering);
    let refusals = Refusals::default();
    let limits = Arc::new(
        LimitResolver::new(
            Duration::from_millis(config.auth.cache_ttl_ms),
            config.auth.cache_capacity,
        )
        .with_stale_if_error(
            Duration::from_secs(config.auth.stale_if_error_s),
            Duration::from_millis(config.auth.db_retry_ms),
        ),
    );
    let endpoint = match config.redis_urls().as_slice() {
        [] => None,
        urls => Some(RedisEndpoint::open(urls, config.redis_cluster).context("redis_url")?),
    };
    let limiter = Limiter::new(&config.limits, endpoint)?;
    let invalidate: Vec<Arc<dyn crate::invalidation::Invalidate>> =
        vec![auth.clone(), limits.clone(), Arc::new(limiter.clone())];
    let limiter_for_maintenance = limiter.clone();
    let auth_for_maintenance = auth.clone();
    let readiness = crate::metrics::Readiness::new();
    let request_metrics = if config.metrics.enabled {
        let mut registry = Registry::default();
        let requests = Arc::new(RequestMetrics::new(
            &mut registry,
            config.metrics.max_models,
        ));
        registry.register_collector(Box::new(GatewayState {
            limiter: limiter.clone(),
            spool,
            metering: writer.stats().clone(),
            auth: auth.clone(),
        }));
        registry.register_collector(Box::new(PoolState {
            pools: pools.clone(),
        }));
        // Its own thread and runtime; bound before the readiness line.
        crate::metrics::spawn(config.metrics_addr()?, registry, readiness.clone())?;
        Some(requests)
    } else {
        None
    };
    let gateway = Gateway::new(
        auth,
        limits,
        limiter,
        pools.clone(),
        Duration::from_millis(config.upstream.connect_timeout_ms),
        usage,
    )
    .with_observability(request_metrics, config.metrics.access_log)
    .with_refusals(refusals.clone())
    .with_max_body_bytes(config.max_body_bytes)
    .with_fairness(FairnessHeaders::new(
        &config.upstream.gateway_secret,
        &config.upstream.fairness_hmac_key,
    ));
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&listen.to_string());
    if config.h2c {
        // pingora peeks for the HTTP/2 preface on plaintext connections only; TLS ones
        // negotiate by ALPN.
        if let Some(app) = proxy.app_logic_mut() {
            let mut options = app.server_options.clone().unwrap_or_default();
            options.h2c = true;
            app.server_options = Some(options);
        }
    }
    let mut reload = None;
    if let Some((addr, listener)) = &tls {
        // No paths: the resolver serves the certificate (pingora ignores paths then).
        let mut settings =
            pingora::listeners::tls::TlsSettings::intermediate("", "").context("TLS settings")?;
        settings.set_cert_resolver(listener.resolver.clone());
        // ALPN h2 first, then http/1.1 (RFC 7301; RFC 9113 section 3.2).
        settings.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        reload = Some(crate::tls::CertificateReload::new(
            listener.resolver.clone(),
            listener.cert_path.clone(),
            listener.key_path.clone(),
            match config.tls.reload_interval_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
        ));
    }

    server.add_service(proxy);
    server.add_service(background_service(
        "pool refresh",
        PoolRefresher::new(pools.clone(), index_timeout),
    ));
    server.add_service(background_service("usage writer", writer));
    server.add_service(background_service(
        "refusal counts",
        RefusalWriter::new(
            refusals,
            &database_url,
            Duration::from_millis(config.metering.refused_flush_interval_ms),
        ),
    ));
    server.add_service(background_service("usage spool sync", syncer));
    if let Some(reload) = reload {
        server.add_service(background_service("TLS certificate reload", reload));
    }
    server.add_service(background_service(
        "announce",
        Announce {
            readiness,
            listen,
            tls: tls.as_ref().map(|(addr, _)| *addr),
        },
    ));
    server.add_service(background_service(
        "auth maintenance",
        AuthMaintenance {
            auth: auth_for_maintenance,
            limiter: limiter_for_maintenance,
            last_counts: std::sync::Mutex::new(LimiterCounts::default()),
            invalidate,
            redis,
            last_used_flush: Duration::from_millis(config.auth.last_used_flush_ms.max(1)),
        },
    ));
    // Its own thread and runtime (pingora owns the proxy's); bound before the readiness line.
    let _admin = crate::admin::spawn(&config, pools)?;
    let pool_names: Vec<String> = config
        .effective_pools()
        .into_iter()
        .map(|p| p.name)
        .collect();
    tracing::info!(%listen, pools = ?pool_names, spool = %spool_dir.display(), "starting maas-gateway");
    server.run_forever()
}

/// Keeps the authenticator's caches honest: applies invalidations announced on Redis
/// ((`invalidation`)) and writes `api_keys.last_used_at` every `last_used_flush`
/// (and once more at shutdown); logs the rate limiter's counters (fail-open decisions, Redis
/// errors) on the same interval when they moved (they are also in the metrics).
struct AuthMaintenance {
    auth: Arc<Authenticator>,
    limiter: Limiter,
    last_counts: std::sync::Mutex<LimiterCounts>,
    invalidate: Vec<Arc<dyn crate::invalidation::Invalidate>>,
    redis: Option<redis::Client>,
    last_used_flush: Duration,
}

/// The limiter's fallback counters at one instant, for the log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct LimiterCounts {
    fail_open: u64,
    fail_closed: u64,
    redis_errors: u64,
    cached_denials: u64,
}

impl LimiterCounts {
    fn of(limiter: &Limiter) -> LimiterCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let s = limiter.stats();
        LimiterCounts {
            fail_open: s.fail_open.load(Relaxed),
            fail_closed: s.fail_closed.load(Relaxed),
            redis_errors: s.redis_errors.load(Relaxed),
            cached_denials: s.cached_denials.load(Relaxed),
        }
    }
}

impl AuthMaintenance {
    /// One log line with the limiter's counters when any moved since the last one.
    fn log_limiter_stats(&self) {
        let now = LimiterCounts::of(&self.limiter);
        let mut last = self.last_counts.lock().unwrap_or_else(|p| p.into_inner());
        if now != *last {
            tracing::info!(
                fail_open_total = now.fail_open,
                fail_closed_total = now.fail_closed,
                redis_errors_total = now.redis_errors,
                cached_denials_total = now.cached_denials,
                "rate limiter counters"
            );
            *last = now;
        }
    }
}

#[async_trait]
impl BackgroundService for AuthMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.limiter.warm_up().await;
        if let Some(client) = self.redis.clone() {
            let targets = self.invalidate.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(crate::invalidation::listen(client, targets, async move {
                let _ = stop.changed().await;
            }));
        }
        let mut tick = tokio::time::interval(self.last_used_flush);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    let _ = self.auth.flush_last_used().await;
                    return;
                }
            }
            if let Err(e) = self.auth.flush_last_used().await {
                tracing::warn!(error = %e, "could not write api_keys.last_used_at; will retry");
            }
            self.log_limiter_stats();
        }
    }
}

/// The TLS listener's certificate, loaded and checked before the server starts.
struct TlsListener {
    resolver: Arc<crate::tls::ReloadingResolver>,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
}

impl TlsListener {
    /// Load `tls.cert_path` and `tls.key_path`; an expired, not yet valid or mismatched pair
    /// stops the start with a message saying which and when.
    fn load(config: &GatewayConfig) -> anyhow::Result<TlsListener> {
        let cert_path = std::path::PathBuf::from(config.tls.cert_path.as_deref().unwrap_or(""));
        let key_path = std::path::PathBuf::from(config.tls.key_path.as_deref().unwrap_or(""));
        let loaded = crate::tls::load(&cert_path, &key_path, chrono::Utc::now())
            .context("tls: cannot serve this certificate")?;
        tracing::info!(subject = %loaded.subject, not_after = %loaded.not_after, "TLS certificate loaded");
        Ok(TlsListener {
            resolver: Arc::new(crate::tls::ReloadingResolver::new(loaded.key)),
            cert_path,
            key_path,
        })
    }
}

/// Prints the readiness line once a TCP connection to the listener succeeds, then
/// `maas-gateway listening on <addr> (tls)` once the TLS listener accepts too.
/// Marks the gateway ready there, and draining when the graceful shutdown begins.
struct Announce {
    readiness: crate::metrics::Readiness,
    listen: SocketAddr,
    tls: Option<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Announce {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !accepts(self.listen).await {
            return;
        }
        say(&format!("maas-gateway listening on {}", self.listen));
        if let Some(tls) = self.tls {
            if accepts(tls).await {
                say(&format!("maas-gateway listening on {tls} (tls)"));
            }
        }
        self.readiness.mark_ready();
        // pingora broadcasts the shutdown when the graceful one begins (SIGTERM), before its
        // grace period: from then on `/readyz` says 503 while connections drain.
        let _ = shutdown.changed().await;
        self.readiness.mark_draining();
    }
}

/// One line on stdout, flushed.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Whether a TCP connection to `listen` succeeds within 60 s (logged when not).
async fn accepts(listen: SocketAddr) -> bool {
    let mut probe = listen;
    if probe.ip().is_unspecified() {
        probe.set_ip(match probe.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::net::TcpStream::connect(probe).await {
            Ok(_) => return true,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::error!(error = %e, %listen, "listener never accepted a connection");
                return false;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// `url` with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
