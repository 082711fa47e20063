//! `[[pools]]`: named groups of backends, the models each serves, how a backend is chosen, and
//! how its health is checked.

use serde::{Deserialize, Serialize};

/// How a backend of a pool is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
    /// Balancing", 2001): two eligible backends drawn at random, the one with fewer requests in
    /// flight through this gateway wins. The default.
    #[default]
    P2c,
    /// Each eligible backend in turn.
    RoundRobin,
    /// At random, in proportion to each backend's `weight`.
    Weighted,
}

/// One entry of a pool's `backends`: `"host:port"`, or `{ address = "host:port", weight = N }`.
///
/// `host` is an IP address or a DNS name; a name stands for every A/AAAA record it resolves to
/// (as a Kubernetes headless Service gives them), re-resolved every `dns_interval_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BackendEntry {
    /// `"host:port"`, weight 1.
    Address(String),
    /// `{ address = "host:port", weight = N }`.
    Weighted {
        /// `host:port`.
        address: String,
        /// Relative share of the requests under `policy = "weighted"` (at least 1).
        weight: usize,
    },
}

impl BackendEntry {
    /// `host:port` as written.
    pub fn address(&self) -> &str {
        match self {
            BackendEntry::Address(a) | BackendEntry::Weighted { address: a, .. } => a,
        }
    }

    /// The weight (1 when not given).
    pub fn weight(&self) -> usize {
        match self {
            BackendEntry::Address(_) => 1,
            BackendEntry::Weighted { weight, .. } => *weight,
        }
    }
}

/// `[pools.health]`: active checks (`GET /v2/health/ready`, OIP v2 server readiness) of every
/// backend of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Milliseconds between two checks of a backend. Default 1000.
    pub interval_ms: u64,
    /// Connect and read timeout of one check, milliseconds. Default 500.
    pub timeout_ms: u64,
    /// Consecutive passed checks that make an unhealthy backend healthy. Default 2.
    pub successes: usize,
    /// Consecutive failed checks (not 200, or no answer) that make a healthy backend
    /// unhealthy. Default 2.
    pub failures: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: 1000,
            timeout_ms: 500,
            successes: 2,
            failures: 2,
        }
    }
}

/// `[pools.ejection]`: passive health, from the requests themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EjectionConfig {
    /// Consecutive connect failures, resets or 5xx answers (503 excepted: a model that is not
    /// ready, or a draining backend, is for discovery and the active check) after which the
    /// backend gets no requests for a cool-down; a refused connection ejects at once.
    /// Default 3.
    pub consecutive_errors: u32,
    /// First cool-down, milliseconds. Each ejection that follows another without a success in
    /// between doubles it. Default 1000.
    pub base_ms: u64,
    /// Longest cool-down, milliseconds. Default 30000.
    pub max_ms: u64,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_errors: 3,
            base_ms: 1000,
            max_ms: 30_000,
        }
    }
}

/// `[[pools]]`: one pool of backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Name, unique among the pools (shown by `GET /admin/v1/pools`).
    pub name: String,
    /// The backends: `host:port` or `{ address, weight }`; a DNS name stands for all its
    /// addresses.
    pub backends: Vec<BackendEntry>,
    /// The models this pool serves. Unset: whatever its backends report READY in their
    /// repository index (with `discover = true`), or every model (with `discover = false`).
    /// Set: only these, and with `discover = true` only on the backends that report them READY.
    pub models: Option<Vec<String>>,
    /// How a backend is chosen. Default `"p2c"`.
    pub policy: Policy,
    /// Read each backend's repository index (`POST /v2/repository/index`, the OIP model
    /// repository extension) every `discovery_interval_ms`, and route a model only to the
    /// backends that report it READY. Default true.
    pub discover: bool,
    /// Milliseconds between two index reads of a backend. Default 2000.
    pub discovery_interval_ms: u64,
    /// Milliseconds between two resolutions of the backends' DNS names. Default 5000.
    pub dns_interval_ms: u64,
    /// Active health checks.
    pub health: HealthConfig,
    /// Passive ejection.
    pub ejection: EjectionConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: String::new(),
            backends: Vec::new(),
            models: None,
            policy: Policy::default(),
            discover: true,
            discovery_interval_ms: 2000,
            dns_interval_ms: 5000,
            health: HealthConfig::default(),
            ejection: EjectionConfig::default(),
        }
    }
}

impl PoolConfig {
    /// The pool `[upstream] backends` stands for when no `[[pools]]` is given: named
    /// `default`, routing every model (no discovery for routing: the indexes are read only to
    /// list the models), default health checks.
    pub fn legacy(backends: &[String]) -> Self {
        PoolConfig {
            name: "default".into(),
            backends: backends
                .iter()
                .cloned()
                .map(BackendEntry::Address)
                .collect(),
            discover: false,
            ..PoolConfig::default()
        }
    }

    /// Check values that deserialize but cannot work.
    ///
    /// # Errors
    /// A message naming the pool and the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let name = &self.name;
        if name.is_empty() {
            bail!("every [[pools]] entry needs a name");
        }
        if self.backends.is_empty() {
            bail!("pool '{name}': backends must name at least one backend (host:port)");
        }
        for b in &self.backends {
            let addr = b.address();
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => bail!("pool '{name}': backend `{addr}` is not host:port"),
            }
            if b.weight() == 0 {
                bail!("pool '{name}': backend `{addr}` has weight 0 (at least 1)");
            }
        }
        if self.models.as_ref().is_some_and(|m| m.is_empty()) {
            bail!("pool '{name}': models is empty (leave it out to serve what is discovered)");
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            bail!("pool '{name}': health.interval_ms and health.timeout_ms must be at least 1");
        }
        if self.health.successes == 0 || self.health.failures == 0 {
            bail!("pool '{name}': health.successes and health.failures must be at least 1");
        }
        if self.discovery_interval_ms == 0 || self.dns_interval_ms == 0 {
            bail!("pool '{name}': discovery_interval_ms and dns_interval_ms must be at least 1");
        }
        if self.ejection.consecutive_errors == 0 {
            bail!("pool '{name}': ejection.consecutive_errors must be at least 1");
        }
        if self.ejection.base_ms == 0 || self.ejection.max_ms < self.ejection.base_ms {
            bail!("pool '{name}': ejection needs 1 <= base_ms <= max_ms");
        }
        Ok(())
    }
}
