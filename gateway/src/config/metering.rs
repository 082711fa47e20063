//! `[metering]`: the usage spool and the writer into PostgreSQL.

use serde::{Deserialize, Serialize};

/// `[metering]`: how usage events travel from the request path through the spool
/// ((`metering::spool`)) to PostgreSQL.
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
    /// Requests the gateway refused itself are counted per tenant, outcome and minute and
    /// written to `refused_requests` this often, milliseconds (one statement each time).
    /// Default 5000.
    pub refused_flush_interval_ms: u64,
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
            refused_flush_interval_ms: 5000,
        }
    }
}
