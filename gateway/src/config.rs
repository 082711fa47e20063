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
    /// PostgreSQL URL (`postgres://user:pass@host:port/db`) holding tenants, API keys and usage.
    /// No default: set it here, with `DATABASE_URL`, or with `MAAS_GATEWAY_DATABASE_URL`.
    pub database_url: Option<String>,
    /// Redis URL (`redis://host:port/db`): cache invalidation across gateway instances (and the
    /// rate limiter's shared state). Unset: each instance relies on its cache TTL alone.
    /// Also read from `REDIS_URL` (`MAAS_GATEWAY_REDIS_URL` wins over it).
    pub redis_url: Option<String>,
    /// Worker threads of the proxy's tokio runtime (pingora `threads`). Default 2.
    pub threads: usize,
    /// Apply the sqlx migrations (`migrations/*.sql`) before serving. Default true.
    pub run_migrations: bool,
    /// Seconds pingora keeps serving in-flight requests after SIGTERM before stopping its
    /// runtimes (pingora `grace_period_seconds`; its own default is 300). Default 5.
    /// SIGINT exits at once.
    pub grace_period_s: u64,
    /// Seconds pingora then waits for each runtime to finish its tasks
    /// (pingora `graceful_shutdown_timeout_seconds`). Default 5.
    pub graceful_shutdown_timeout_s: u64,
    /// Backend pool.
    pub upstream: UpstreamConfig,
    /// Usage metering pipeline.
    pub metering: MeteringConfig,
    /// API key authentication.
    pub auth: AuthConfig,
    /// Admin API (operators): its own listener, off unless an operator token is set.
    pub admin: AdminConfig,
    /// Rate limits, concurrency limits, quotas and budgets ([`crate::limiter`]).
    pub limits: LimitsConfig,
}

/// Where the limiter keeps its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterBackend {
    /// In process (governor): one gateway, no Redis.
    Local,
    /// Redis, shared by every gateway instance (needs `redis_url`).
    Redis,
}

/// What the `redis` backend does when Redis fails or is too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailurePolicy {
    /// Decide locally with every limit divided by `gateway_instances` (quotas and budgets are
    /// not enforced meanwhile).
    Open,
    /// Answer 503.
    Closed,
}

/// `[limits]`: admission control ([`crate::limiter`]); the rules themselves are in PostgreSQL
/// (`rate_limits`, set through the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// `local` (default) or `redis`.
    pub backend: LimiterBackend,
    /// Timeout of one Redis call on the request path, milliseconds. Default 20.
    pub redis_timeout_ms: u64,
    /// `open` (default) or `closed`.
    pub on_redis_failure: RedisFailurePolicy,
    /// Gateways sharing the limits; fail-open divides every limit by it. Default 1.
    pub gateway_instances: u32,
    /// After a Redis failure, Redis is not tried again for this many milliseconds. Default 1000.
    pub redis_retry_ms: u64,
    /// A concurrency slot whose gateway never released it (crash) expires after this many
    /// seconds; keep it above the longest request. Default 300.
    pub concurrency_lease_s: i64,
    /// Inference units reserved per request at admission against quotas and budgets, settled
    /// with the real count after the response. Default 1.
    pub quota_estimate_units: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimiterBackend::Local,
            redis_timeout_ms: 20,
            on_redis_failure: RedisFailurePolicy::Open,
            gateway_instances: 1,
            redis_retry_ms: 1000,
            concurrency_lease_s: 300,
            quota_estimate_units: 1,
        }
    }
}

/// `[admin]`: the operator API ([`crate::admin`]), axum on its own listener.
///
/// `Debug` prints the operator token as `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Address the admin listener binds, `host:port`. Default `127.0.0.1:8081`.
    pub listen: String,
    /// Bearer token operators send (`Authorization: Bearer <token>`). Unset or empty: the admin
    /// API is disabled (logged at start). Prefer `MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN` to the file.
    pub operator_token: Option<String>,
    /// Connections of the admin API's own PostgreSQL pool. Default 4.
    pub db_max_connections: u32,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| "***"),
            )
            .field("db_max_connections", &self.db_max_connections)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".into(),
            operator_token: None,
            db_max_connections: 4,
        }
    }
}

impl AdminConfig {
    /// The operator token when the admin API is enabled (set and not empty).
    pub fn token(&self) -> Option<&str> {
        self.operator_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// `[upstream]`: the backends (OIP v2 inference servers) requests are forwarded to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// `host:port` of each backend, plain HTTP; requests go round-robin over them, and a
    /// connection failure is retried on the next one. Default `["127.0.0.1:8001"]`.
    pub backends: Vec<String>,
    /// TCP connect timeout to a backend, milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
}

/// `[metering]`: how usage events travel from the request path through the spool
/// ([`crate::spool`]) to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeteringConfig {
    /// Most usage events written in one INSERT. Default 500.
    pub batch_size: usize,
    /// A partial batch is written at the latest this many milliseconds after its first event.
    /// Default 200.
    pub flush_interval_ms: u64,
    /// Spool directory (one per gateway process; it is locked). Unset or empty: a directory
    /// under the system temporary directory named after the listen address and the database
    /// (`$TMPDIR/maas-gateway-spool/gw-<hash>`), which suits development only: set a
    /// persistent path in production.
    pub spool_dir: Option<String>,
    /// The spool is full (see `spool_full`) once its segments hold this many bytes.
    /// Default 1 GiB (about 5 million events).
    pub spool_max_bytes: u64,
    /// Size at which a spool segment is sealed and a new one started; segments are deleted
    /// whole once all their events are committed. Default 8 MiB.
    pub spool_segment_bytes: u64,
    /// Interval of the spool's group `fdatasync`, milliseconds: the most a machine crash (not a
    /// process crash) can lose. Default 100.
    pub spool_fsync_interval_ms: u64,
    /// What a billable request gets while the spool is full. Default `reject`.
    pub spool_full: SpoolFullPolicy,
    /// `usage_events` month partitions the writer keeps created ahead of the current month.
    /// Default 2.
    pub partition_months_ahead: u32,
}

/// `metering.spool_full`: the policy while the spool is full (PostgreSQL down for long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFullPolicy {
    /// Answer authenticated requests 503 without forwarding them (nothing unbilled is served).
    Reject,
    /// Serve them and drop their usage events, counted in `MeteringStats::dropped` and logged.
    Serve,
}

/// `[auth]`: API key lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// How long a key lookup (found or not found) is cached in process, milliseconds.
    /// A revoked key keeps working for at most this long. Default 5000.
    pub cache_ttl_ms: u64,
    /// Most cached key lookups; beyond this expired entries are evicted, then all. Default 100000.
    pub cache_capacity: usize,
    /// Connections of the proxy's PostgreSQL pool (key lookups). Default 8.
    pub db_max_connections: u32,
    /// `api_keys.last_used_at` is written for the keys used in each interval of this many
    /// milliseconds, in one statement (not per request). Default 60000.
    pub last_used_flush_ms: u64,
    /// JWT verification ([`crate::jwt`]); off while no key source is set.
    pub jwt: JwtConfig,
}

/// `[auth.jwt]`: keys and claim rules for JWT bearer tokens (RFC 7519), see [`crate::jwt`].
///
/// JWT is on when at least one key source is set: `hmac_secret`, `keys`, `jwks_file` or
/// `jwks_url`. `Debug` prints secrets as `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// Shared secret (UTF-8 bytes) for HS256, HS384 and HS512 tokens without a `kid`; the
    /// environment-friendly shorthand for one HMAC entry in `keys`. Unset: none.
    pub hmac_secret: Option<String>,
    /// Verification keys, each pinned to one algorithm.
    pub keys: Vec<JwtKeyConfig>,
    /// A JWK Set (RFC 7517) in a local file, read at start and re-read like a URL.
    pub jwks_file: Option<PathBuf>,
    /// A JWK Set fetched over HTTP(S) (e.g. an identity provider's `jwks_uri`), cached.
    pub jwks_url: Option<String>,
    /// The JWK Set is re-read after this many seconds (lazily, on the next token). Default 300.
    pub jwks_refresh_s: u64,
    /// A token whose `kid` is unknown triggers a re-read, at most once per this many
    /// milliseconds (so a flood of made-up `kid`s cannot flood the identity provider).
    /// Default 10000.
    pub jwks_min_refresh_interval_ms: u64,
    /// Timeout of one JWK Set fetch, milliseconds. Default 2000.
    pub jwks_fetch_timeout_ms: u64,
    /// Required `iss`; unset: not checked.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences); unset: not checked.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf`, seconds. Default 30.
    pub leeway_s: u64,
    /// Claim holding the tenant: its name, or its id (a UUID). Default `tenant`.
    pub tenant_claim: String,
    /// Claim holding the models the token may call: an array of names or one space-separated
    /// string (OAuth `scope` style). Absent from a token: every model of the tenant.
    /// Default `models`.
    pub models_claim: String,
    /// Longest accepted token, bytes; longer ones are refused before parsing. Default 8192.
    pub max_token_bytes: usize,
}

/// One entry of `[[auth.jwt.keys]]`: a verification key pinned to one algorithm.
///
/// A token is checked against a key only when its header `alg` equals the key's `alg` (and its
/// `kid` the key's `kid`, when the key has one), so an HMAC token is never checked against a
/// public key (algorithm confusion).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JwtKeyConfig {
    /// Key id matched against the token header's `kid`; unset: matches tokens without `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// One of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA.
    pub alg: String,
    /// The shared secret for HS* (UTF-8 bytes).
    #[serde(default)]
    pub secret: Option<String>,
    /// The public key for the others, PEM (`-----BEGIN PUBLIC KEY-----`, or
    /// `-----BEGIN RSA PUBLIC KEY-----` for RSA).
    #[serde(default)]
    pub pem: Option<String>,
}

impl std::fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("pem", &self.pem.is_some())
            .finish()
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "***"))
            .field("keys", &self.keys)
            .field("jwks_file", &self.jwks_file)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("tenant_claim", &self.tenant_claim)
            .field("models_claim", &self.models_claim)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hmac_secret: None,
            keys: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            jwks_min_refresh_interval_ms: 10_000,
            jwks_fetch_timeout_ms: 2000,
            issuer: None,
            audience: None,
            leeway_s: 30,
            tenant_claim: "tenant".into(),
            models_claim: "models".into(),
            max_token_bytes: 8192,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            redis_url: None,
            threads: 2,
            run_migrations: true,
            grace_period_s: 5,
            graceful_shutdown_timeout_s: 5,
            upstream: UpstreamConfig::default(),
            metering: MeteringConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            backends: vec!["127.0.0.1:8001".into()],
            connect_timeout_ms: 1000,
        }
    }
}

impl Default for MeteringConfig {
    fn default() -> Self {
        MeteringConfig {
            batch_size: 500,
            flush_interval_ms: 200,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            spool_segment_bytes: 8 << 20,
            spool_fsync_interval_ms: 100,
            spool_full: SpoolFullPolicy::Reject,
            partition_months_ahead: 2,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cache_ttl_ms: 5000,
            cache_capacity: 100_000,
            db_max_connections: 8,
            last_used_flush_ms: 60_000,
            jwt: JwtConfig::default(),
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
        if self.upstream.backends.is_empty() {
            bail!("upstream.backends must name at least one backend (host:port)");
        }
        self.backend_addrs()?;
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
        if self.limits.gateway_instances == 0 {
            bail!("limits.gateway_instances must be at least 1");
        }
        if self.auth.db_max_connections == 0 {
            bail!("auth.db_max_connections must be at least 1");
        }
        Ok(())
    }

    /// `listen` resolved to one socket address.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        resolve_one(&self.listen).context("listen")
    }

    /// `upstream.backends`, each resolved to one socket address (first DNS answer).
    pub fn backend_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.upstream
            .backends
            .iter()
            .map(|b| resolve_one(b).context("upstream.backends"))
            .collect()
    }

    /// A Redis client for `redis_url` (no connection is made yet); `None` when unset.
    ///
    /// # Errors
    /// When the URL does not parse as a Redis URL.
    pub fn redis_client(&self) -> anyhow::Result<Option<redis::Client>> {
        match self.redis_url.as_deref() {
            None | Some("") => Ok(None),
            Some(url) => redis::Client::open(url)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("redis_url is not a Redis URL: {e}")),
        }
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
    fn rejects_unusable_values() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", "[]");
            assert!(GatewayConfig::load(Path::new("none.toml"), false).is_err());
            jail.set_env("MAAS_GATEWAY_UPSTREAM__BACKENDS", r#"["nope"]"#);
            assert!(GatewayConfig::load(Path::new("none.toml"), false).is_err());
            Ok(())
        });
    }
}
