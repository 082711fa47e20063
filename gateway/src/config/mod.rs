//! Gateway configuration: a TOML file overlaid by environment variables (figment).
//!
//! Sources, lowest precedence first:
//! 1. the defaults below ([`GatewayConfig::default`]);
//! 2. the TOML file (`config/gateway.toml` by default, `--config` to choose another);
//! 3. `DATABASE_URL` (the variable every sqlx tool reads) for `database_url`;
//! 4. `MAAS_GATEWAY_<KEY>` for every key, nested tables joined with `__`, e.g.
//!    `MAAS_GATEWAY_LISTEN=127.0.0.1:9090`, `MAAS_GATEWAY_UPSTREAM__BACKENDS='["127.0.0.1:9000"]'`,
//!    `MAAS_GATEWAY_METERING__BATCH_SIZE=1000`.
//!
//! The example file with every key commented is `config/gateway.toml` at the workspace root.

mod admin;
mod auth;
mod limits;
mod metering;
mod metrics;
mod pools;
mod tls;
mod upstream;

pub use admin::AdminConfig;
pub use auth::{AuthConfig, JwtConfig, JwtKeyConfig};
pub use limits::{LimiterBackend, LimitsConfig, RedisFailurePolicy};
pub use metering::{MeteringConfig, SpoolFullPolicy};
pub use metrics::{AccessLogFormat, MetricsConfig};
pub use pools::{BackendEntry, EjectionConfig, HealthConfig, Policy, PoolConfig};
pub use tls::TlsConfig;
pub use upstream::UpstreamConfig;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MAAS_GATEWAY_";

/// The whole gateway configuration (one TOML document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Address the data-path (pingora) listener binds, `host:port`. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Also accept HTTP/2 with prior knowledge (RFC 9113 section 3.3, "h2c") on the plaintext
    /// `listen`: a connection opening with the HTTP/2 preface is served as HTTP/2, any other
    /// as HTTP/1.1. (`Upgrade: h2c` is not offered; RFC 9113 deprecates it.) Default false.
    pub h2c: bool,
    /// PostgreSQL URL (`postgres://user:pass@host:port/db`) holding tenants, API keys and usage.
    /// No default: set it here, with `DATABASE_URL`, or with `MAAS_GATEWAY_DATABASE_URL`.
    pub database_url: Option<String>,
    /// Redis URL (`redis://host:port/db`): cache invalidation across gateway instances (and the
    /// rate limiter's shared state). Unset: each instance relies on its cache TTL alone.
    /// Also read from `REDIS_URL` (`MAAS_GATEWAY_REDIS_URL` wins over it). With
    /// `redis_cluster`, one or more comma-separated seed nodes of a Redis Cluster, e.g.
    /// `redis://10.0.0.1:6379,redis://10.0.0.2:6379`.
    pub redis_url: Option<String>,
    /// `redis_url` names a Redis Cluster: the limiter routes each admission script to the
    /// slot of its keys (they share the tenant's hash tag) and follows failovers;
    /// invalidations are published on the first seed node (cluster PUBLISH reaches every
    /// node's subscribers). Default false.
    pub redis_cluster: bool,
    /// Largest request body forwarded, in bytes: a `Content-Length` over it is answered 413
    /// before any of the body is read, and a chunked body is cut off with 413 once it passes
    /// it. Default 32 MiB (the backend's own default limit).
    pub max_body_bytes: u64,
    /// Worker threads of the proxy's tokio runtime (pingora `threads`). Default 2.
    pub threads: usize,
    /// The proxy's worker threads share one work-stealing tokio runtime (pingora
    /// `work_stealing`); false: each thread runs its own single-threaded runtime and keeps the
    /// connections it accepted. Default true (see `BENCHMARKS.md`, figure 2).
    pub work_stealing: bool,
    /// Accept tasks per listening socket (pingora `listener_tasks_per_fd`). Default 1.
    pub listener_tasks_per_fd: usize,
    /// Idle connections to backends kept for reuse, over all backends (pingora
    /// `upstream_keepalive_pool_size`). Default 128.
    pub upstream_keepalive_pool_size: usize,
    /// Apply the sqlx migrations (`migrations/*.sql`) before serving. Default true.
    pub run_migrations: bool,
    /// Seconds pingora keeps serving in-flight requests after SIGTERM before stopping its
    /// runtimes (pingora `grace_period_seconds`; its own default is 300). Default 5.
    /// SIGINT exits at once.
    pub grace_period_s: u64,
    /// Seconds pingora then waits for each runtime to finish its tasks
    /// (pingora `graceful_shutdown_timeout_seconds`). Default 5.
    pub graceful_shutdown_timeout_s: u64,
    /// The single pool of the simple case, and the connect timeout of every pool.
    pub upstream: UpstreamConfig,
    /// `[[pools]]`: named pools of backends (see [`PoolConfig`]). When empty (the default),
    /// `upstream.backends` is one pool serving every model ([`PoolConfig::legacy`]).
    pub pools: Vec<PoolConfig>,
    /// Usage metering pipeline.
    pub metering: MeteringConfig,
    /// API key authentication.
    pub auth: AuthConfig,
    /// Admin API (operators): its own listener, off unless an operator token is set.
    pub admin: AdminConfig,
    /// Rate limits, concurrency limits, quotas and budgets ((`limits::limiter`)).
    pub limits: LimitsConfig,
    /// Prometheus metrics listener and access log.
    pub metrics: MetricsConfig,
    /// TLS listener of the data path (see [`TlsConfig`]).
    pub tls: TlsConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            h2c: false,
            database_url: None,
            redis_url: None,
            redis_cluster: false,
            max_body_bytes: 32 << 20,
            threads: 2,
            work_stealing: true,
            listener_tasks_per_fd: 1,
            upstream_keepalive_pool_size: 128,
            run_migrations: true,
            grace_period_s: 5,
            graceful_shutdown_timeout_s: 5,
            upstream: UpstreamConfig::default(),
            pools: Vec::new(),
            metering: MeteringConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The figment every source is merged into; `file` is read only when it exists unless
    /// `require_file` is set. Exposed so tests can add their own providers.
    pub fn figment(file: &Path, require_file: bool) -> anyhow::Result<Figment> {
        if require_file && !file.exists() {
            bail!("config file {} does not exist", file.display());
        }
        Ok(
            Figment::from(Serialized::defaults(GatewayConfig::default()))
                .merge(Toml::file(file))
                .merge(Env::raw().only(&["DATABASE_URL", "REDIS_URL"]))
                .merge(Env::prefixed(ENV_PREFIX).split("__")),
        )
    }

    /// Load and validate the configuration from `file` and the environment.
    pub fn load(file: &Path, require_file: bool) -> anyhow::Result<Self> {
        let config: GatewayConfig = Self::figment(file, require_file)?
            .extract()
            .with_context(|| format!("reading configuration ({})", file.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Check values that deserialize but cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if self.threads == 0 {
            bail!("threads must be at least 1");
        }
        if self.listener_tasks_per_fd == 0 {
            bail!("listener_tasks_per_fd must be at least 1");
        }
        if self.upstream_keepalive_pool_size == 0 {
            bail!(
                "upstream_keepalive_pool_size must be at least 1 (idle backend connections kept)"
            );
        }
        if self.max_body_bytes == 0 {
            bail!("max_body_bytes must be at least 1");
        }
        if self.pools.is_empty() && self.upstream.backends.is_empty() {
            bail!("upstream.backends must name at least one backend (host:port)");
        }
        let pools = self.effective_pools();
        for (i, pool) in pools.iter().enumerate() {
            pool.validate()?;
            if pools[..i].iter().any(|p| p.name == pool.name) {
                bail!("two pools are named '{}'", pool.name);
            }
        }
        if self.upstream.connect_timeout_ms == 0 {
            bail!("upstream.connect_timeout_ms must be at least 1");
        }
        if self.metering.batch_size == 0 {
            bail!("metering.batch_size must be at least 1");
        }
        if self.metering.spool_segment_bytes < 4096 {
            bail!("metering.spool_segment_bytes must be at least 4096");
        }
        if self.metering.spool_max_bytes < self.metering.spool_segment_bytes {
            bail!("metering.spool_max_bytes must be at least metering.spool_segment_bytes");
        }
        if self.admin.token().is_some() {
            resolve_one(&self.admin.listen).context("admin.listen")?;
            if self.admin.db_max_connections == 0 {
                bail!("admin.db_max_connections must be at least 1");
            }
        }
        if self.limits.backend == LimiterBackend::Redis && self.redis_url.is_none() {
            bail!("limits.backend = \"redis\" needs redis_url (or REDIS_URL)");
        }
        let urls = self.redis_urls();
        if urls.len() > 1 && !self.redis_cluster {
            bail!("redis_url lists {} URLs: set redis_cluster = true for the seed nodes of a Redis Cluster, or give one URL", urls.len());
        }
        for url in urls {
            redis::Client::open(url)
                .map_err(|e| anyhow::anyhow!("redis_url: `{url}` is not a Redis URL: {e}"))?;
        }
        let up = &self.upstream;
        if up.gateway_secret.is_empty() != up.fairness_hmac_key.is_empty() {
            bail!("upstream.gateway_secret and upstream.fairness_hmac_key go together: set both (tenant-fair batching) or neither");
        }
        if http::HeaderValue::from_str(&up.gateway_secret).is_err() {
            bail!("upstream.gateway_secret must be visible ASCII (it is sent as a header value)");
        }
        if self.limits.gateway_instances == 0 {
            bail!("limits.gateway_instances must be at least 1");
        }
        if self.metrics.enabled {
            resolve_one(&self.metrics.listen).context("metrics.listen")?;
        }
        if self.auth.db_max_connections == 0 {
            bail!("auth.db_max_connections must be at least 1");
        }
        if let Some(tls) = self.tls_addr()? {
            if tls == self.listen_addr()? {
                bail!("tls.listen must differ from listen ({tls})");
            }
            for (key, value) in [
                ("tls.cert_path", &self.tls.cert_path),
                ("tls.key_path", &self.tls.key_path),
            ] {
                if value.as_deref().is_none_or(str::is_empty) {
                    bail!("tls.listen is set, so {key} must name a PEM file");
                }
            }
        }
        Ok(())
    }

    /// `listen` resolved to one socket address.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        resolve_one(&self.listen).context("listen")
    }

    /// `tls.listen` resolved to one socket address; `None` when TLS is off.
    pub fn tls_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.tls.listen.as_deref() {
            None | Some("") => Ok(None),
            Some(addr) => resolve_one(addr).context("tls.listen").map(Some),
        }
    }

    /// The pools served: `pools`, or the one [`PoolConfig::legacy`] pool of
    /// `upstream.backends` when `pools` is empty.
    pub fn effective_pools(&self) -> Vec<PoolConfig> {
        if self.pools.is_empty() {
            vec![PoolConfig::legacy(&self.upstream.backends)]
        } else {
            self.pools.clone()
        }
    }

    /// A Redis client for `redis_url` (no connection is made yet); `None` when unset.
    ///
    /// # Errors
    /// When the URL does not parse as a Redis URL.
    pub fn redis_client(&self) -> anyhow::Result<Option<redis::Client>> {
        match self.redis_urls().first() {
            None => Ok(None),
            Some(url) => redis::Client::open(*url)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("redis_url is not a Redis URL: {e}")),
        }
    }

    /// The URLs of `redis_url`: one, or the seed nodes of a cluster (comma-separated);
    /// empty when unset.
    pub fn redis_urls(&self) -> Vec<&str> {
        self.redis_url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The database URL, or an error saying where to set it.
    pub fn database_url(&self) -> anyhow::Result<&str> {
        match self.database_url.as_deref() {
            Some(url) if !url.is_empty() => Ok(url),
            _ => bail!(
                "no database_url: set it in the config file, or DATABASE_URL, or {ENV_PREFIX}DATABASE_URL"
            ),
        }
    }

    /// `metrics.listen` resolved to one socket address.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        resolve_one(&self.metrics.listen).context("metrics.listen")
    }

    /// `admin.listen` resolved to one socket address.
    pub fn admin_addr(&self) -> anyhow::Result<SocketAddr> {
        resolve_one(&self.admin.listen).context("admin.listen")
    }

    /// The spool directory: `metering.spool_dir`, or the per-instance default under the
    /// temporary directory (see [`MeteringConfig::spool_dir`]).
    pub fn spool_dir(&self) -> PathBuf {
        match self.metering.spool_dir.as_deref() {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let mut h = Sha256::new();
                h.update(self.listen.as_bytes());
                h.update(b"\n");
                h.update(self.database_url.as_deref().unwrap_or("").as_bytes());
                let digest = hex::encode(h.finalize());
                std::env::temp_dir()
                    .join("maas-gateway-spool")
                    .join(format!("gw-{}", &digest[..16]))
            }
        }
    }

    /// `metering.flush_interval_ms` as a duration (at least 1 ms).
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.metering.flush_interval_ms.max(1))
    }
}

fn resolve_one(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("`{addr}` is not host:port"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

#[cfg(test)]
// figment::Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_without_file() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let c = GatewayConfig::load(Path::new("missing.toml"), false).unwrap();
            assert_eq!(c.listen, "127.0.0.1:8080");
            assert_eq!(c.upstream.backends, vec!["127.0.0.1:8001".to_string()]);
            assert_eq!(c.threads, 2);
            assert!(c.work_stealing);
            assert_eq!(c.listener_tasks_per_fd, 1);
            assert_eq!(c.upstream_keepalive_pool_size, 128);
            assert_eq!(c.metering.batch_size, 500);
            assert_eq!(c.metering.flush_interval_ms, 200);
            assert!(c.run_migrations);
            assert_eq!(c.metering.spool_full, SpoolFullPolicy::Reject);
            assert!(c.spool_dir().starts_with(std::env::temp_dir()));
            assert!(c.database_url().is_err());
            assert!(GatewayConfig::load(Path::new("missing.toml"), true).is_err());
            Ok(())
        });
    }

    #[test]
    fn file_then_env_overrides() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "gw.toml",
                r#"
                listen = "127.0.0.1:7000"
                database_url = "postgres://file/db"
                [upstream]
                backends = ["127.0.0.1:8001", "127.0.0.1:8002"]
                [metering]
                batch_size = 10
                "#,
            )?;
            let c = GatewayConfig::load(Path::new("gw.toml"), true).unwrap();
            assert_eq!(c.listen, "127.0.0.1:7000");
            assert_eq!(c.upstream.backends.len(), 2);
            assert_eq!(c.metering.batch_size, 10);
            assert_eq!(c.database_url().unwrap(), "postgres://file/db");

            jail.set_env("DATABASE_URL", "postgres://plain/db");
            let c = GatewayConfig::load(Path::new("gw.toml"), true).unwrap();
            assert_eq!(c.database_url().unwrap(), "postgres://plain/db");

            jail.set_env("MAAS_GATEWAY_DATABASE_URL", "postgres://prefixed/db");
            jail.set_env("MAAS_GATEWAY_LISTEN", "127.0.0.1:7001");
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", r#"["127.0.0.1:9000"]"#);
            jail.set_env("MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS", "50");
            jail.set_env("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", "100");
            jail.set_env("MAAS_GATEWAY_RUN_MIGRATIONS", "false");
            jail.set_env("MAAS_GATEWAY_METERING__SPOOL_FULL", "serve");
            jail.set_env("MAAS_GATEWAY_METERING__SPOOL_DIR", "/var/lib/maas/spool");
            let c = GatewayConfig::load(Path::new("gw.toml"), true).unwrap();
            assert_eq!(c.database_url().unwrap(), "postgres://prefixed/db");
            assert_eq!(c.listen, "127.0.0.1:7001");
            assert_eq!(c.upstream.backends, vec!["127.0.0.1:9000".to_string()]);
            assert_eq!(c.metering.flush_interval_ms, 50);
            assert_eq!(c.auth.cache_ttl_ms, 100);
            assert!(!c.run_migrations);
            assert_eq!(c.metering.spool_full, SpoolFullPolicy::Serve);
            assert_eq!(c.spool_dir(), PathBuf::from("/var/lib/maas/spool"));
            assert!(c.admin.token().is_none());
            jail.set_env("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", "op-secret");
            jail.set_env("MAAS_GATEWAY_ADMIN__LISTEN", "127.0.0.1:7002");
            let c = GatewayConfig::load(Path::new("gw.toml"), true).unwrap();
            assert_eq!(c.admin.token(), Some("op-secret"));
            assert_eq!(c.admin.listen, "127.0.0.1:7002");
            assert!(!format!("{c:?}").contains("op-secret"));
            Ok(())
        });
    }

    #[test]
    fn tls_and_redis_cluster_keys() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            assert!(!c.tls.enabled() && !c.h2c && !c.redis_cluster);
            assert_eq!(c.tls_addr().unwrap(), None);
            jail.set_env("MAAS_GATEWAY_TLS__LISTEN", "127.0.0.1:8443");
            let e = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
            assert!(
                format!("{e:#}").contains("tls.cert_path must name a PEM file"),
                "{e:#}"
            );
            jail.set_env("MAAS_GATEWAY_TLS__CERT_PATH", "/c.pem");
            jail.set_env("MAAS_GATEWAY_TLS__KEY_PATH", "/k.pem");
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            assert_eq!(
                c.tls_addr().unwrap(),
                Some("127.0.0.1:8443".parse().unwrap())
            );
            jail.set_env("MAAS_GATEWAY_TLS__LISTEN", "127.0.0.1:8080");
            let e = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
            assert!(
                format!("{e:#}").contains("tls.listen must differ from listen"),
                "{e:#}"
            );
            jail.set_env("MAAS_GATEWAY_TLS__LISTEN", "");

            jail.set_env(
                "REDIS_URL",
                "redis://127.0.0.1:7000, redis://127.0.0.1:7001",
            );
            let e = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
            assert!(
                format!("{e:#}").contains("set redis_cluster = true"),
                "{e:#}"
            );
            jail.set_env("MAAS_GATEWAY_REDIS_CLUSTER", "true");
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            assert_eq!(
                c.redis_urls(),
                vec!["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
            );
            jail.set_env("REDIS_URL", "redis://127.0.0.1:7000,http://x");
            assert!(GatewayConfig::load(Path::new("none.toml"), false).is_err());
            Ok(())
        });
    }

    #[test]
    fn fairness_settings_come_as_a_pair_of_header_safe_values() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAAS_GATEWAY_UPSTREAM__GATEWAY_SECRET", "shared");
            let e = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
            assert!(format!("{e:#}").contains("go together"), "{e:#}");
            jail.set_env("MAAS_GATEWAY_UPSTREAM__FAIRNESS_HMAC_KEY", "k");
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            assert_eq!(c.upstream.gateway_secret, "shared");
            jail.set_env("MAAS_GATEWAY_UPSTREAM__GATEWAY_SECRET", "new\nline");
            let e = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
            assert!(format!("{e:#}").contains("visible ASCII"), "{e:#}");
            Ok(())
        });
    }

    #[test]
    fn pools_from_the_file_and_the_upstream_shorthand() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            let legacy = c.effective_pools();
            assert_eq!(legacy.len(), 1);
            assert_eq!(legacy[0].name, "default");
            assert!(!legacy[0].discover);
            assert_eq!(
                legacy[0].backends,
                vec![BackendEntry::Address("127.0.0.1:8001".into())]
            );
            jail.create_file(
                "gw.toml",
                r#"
                [[pools]]
                name = "a"
                backends = ["127.0.0.1:8001", { address = "backend.svc:8002", weight = 3 }]
                models = ["digits"]
                policy = "weighted"
                [pools.health]
                interval_ms = 250
                [[pools]]
                name = "b"
                backends = ["localhost:9000"]
                "#,
            )?;
            let c = GatewayConfig::load(Path::new("gw.toml"), true).unwrap();
            let pools = c.effective_pools();
            assert_eq!(pools.len(), 2);
            assert_eq!(pools[0].policy, Policy::Weighted);
            assert_eq!(pools[0].backends[1].address(), "backend.svc:8002");
            assert_eq!(pools[0].backends[1].weight(), 3);
            assert_eq!(
                pools[0].models.as_deref(),
                Some(&["digits".to_string()][..])
            );
            assert_eq!(pools[0].health.interval_ms, 250);
            assert_eq!(pools[0].health.failures, 2);
            assert!(pools[1].discover);
            assert_eq!(pools[1].policy, Policy::P2c);

            for (bad, says) in [
                ("[[pools]]\nname = \"a\"\nbackends = []", "at least one backend"),
                ("[[pools]]\nname = \"a\"\nbackends = [\"nohost\"]", "not host:port"),
                (
                    "[[pools]]\nname = \"a\"\nbackends = [\"h:1\"]\n[[pools]]\nname = \"a\"\nbackends = [\"h:2\"]",
                    "two pools are named 'a'",
                ),
                (
                    "[[pools]]\nname = \"a\"\nbackends = [{ address = \"h:1\", weight = 0 }]",
                    "weight 0",
                ),
                (
                    "[[pools]]\nname = \"a\"\nbackends = [\"h:1\"]\n[pools.health]\nsuccesses = 0",
                    "health.successes",
                ),
            ] {
                jail.create_file("bad.toml", bad)?;
                let e = GatewayConfig::load(Path::new("bad.toml"), true).unwrap_err();
                assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
            }
            Ok(())
        });
    }

    #[test]
    fn rejects_unusable_values() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", "[]");
            assert!(GatewayConfig::load(Path::new("none.toml"), false).is_err());
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", r#"["nope"]"#);
            assert!(GatewayConfig::load(Path::new("none.toml"), false).is_err());
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", r#"["127.0.0.1:8001"]"#);
            for (key, value) in [
                ("MAAS_GATEWAY_LISTENER_TASKS_PER_FD", "0"),
                ("MAAS_GATEWAY_UPSTREAM_KEEPALIVE_POOL_SIZE", "0"),
            ] {
                jail.set_env(key, value);
                let err = GatewayConfig::load(Path::new("none.toml"), false).unwrap_err();
                assert!(
                    err.to_string().contains("must be at least 1"),
                    "{key}: {err}"
                );
                jail.set_env(key, "1");
            }
            jail.set_env("MAAS_GATEWAY_WORK_STEALING", "false");
            let c = GatewayConfig::load(Path::new("none.toml"), false).unwrap();
            assert!(!c.work_stealing);
            assert_eq!(c.listener_tasks_per_fd, 1);
            Ok(())
        });
    }

    /// Property tests over arbitrary config files: loading answers a typed error (or a
    /// configuration) and never panics. No key that names a host is generated: validation
    /// resolves those, and tests make no DNS queries.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn load_file(contents: &[u8]) {
            Jail::expect_with(|jail| {
                jail.clear_env();
                std::fs::write(jail.directory().join("gateway.toml"), contents)
                    .map_err(|e| figment::Error::from(e.to_string()))?;
                let _ = GatewayConfig::load(Path::new("gateway.toml"), true);
                Ok(())
            });
        }

        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| format!("{f:?}")),
                "[a-z0-9 ]{0,8}".prop_map(|s| format!("{s:?}")),
                Just("[]".to_string()),
                Just("[1, \"x\"]".to_string()),
                Just("{ a = 1 }".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                load_file(&bytes);
            }

            #[test]
            fn arbitrary_values_of_known_keys_never_panic(
                entries in proptest::collection::vec((
                    prop_oneof![
                        Just(("", "threads")),
                        Just(("", "work_stealing")),
                        Just(("", "listener_tasks_per_fd")),
                        Just(("", "upstream_keepalive_pool_size")),
                        Just(("", "run_migrations")),
                        Just(("metering", "batch_size")),
                        Just(("metering", "spool_segment_bytes")),
                        Just(("metering", "spool_max_bytes")),
                        Just(("metering", "spool_full")),
                        Just(("metering", "refused_flush_interval_ms")),
                        Just(("auth", "cache_ttl_ms")),
                        Just(("auth", "stale_if_error_s")),
                        Just(("auth", "db_max_connections")),
                        Just(("limits", "backend")),
                        Just(("limits", "gateway_instances")),
                        Just(("limits", "quota_estimate_units")),
                        Just(("upstream", "connect_timeout_ms")),
                        Just(("metrics", "enabled")),
                        Just(("metrics", "max_models")),
                    ],
                    toml_value(),
                ), 0..8),
            ) {
                let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                for ((section, key), value) in &entries {
                    sections.entry(section).or_default().push(format!("{key} = {value}"));
                }
                let mut file = String::new();
                for (section, lines) in &sections {
                    if !section.is_empty() {
                        file.push_str(&format!("[{section}]\n"));
                    }
                    // A key given twice is a TOML error, which is fine: it must be typed.
                    for line in lines {
                        file.push_str(line);
                        file.push('\n');
                    }
                }
                load_file(file.as_bytes());
            }
        }
    }
}
