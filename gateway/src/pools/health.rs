//! Active health checks: pingora-load-balancing's `HttpHealthCheck` against each backend's
//! `GET /v2/health/ready` (OIP v2 server readiness: a backend that is draining answers 503 and
//! so stops receiving new requests while its in-flight ones finish), with the pool's timeout
//! and consecutive-result thresholds.

use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::lb::health_check::HttpHealthCheck;

use crate::config::HealthConfig;

/// The readiness path checked.
pub(super) const READY_PATH: &str = "/v2/health/ready";

/// The check of one pool: 200 from `GET /v2/health/ready` within `timeout_ms` passes; `successes`
/// passes in a row make a backend healthy, `failures` failures in a row unhealthy.
pub(super) fn readiness_check(config: &HealthConfig) -> pingora::Result<HttpHealthCheck> {
    let mut check = HttpHealthCheck::new("maas-backend", false);
    let mut req = RequestHeader::build("GET", READY_PATH.as_bytes(), None)?;
    req.append_header("Host", "maas-backend")?;
    check.req = req;
    check.consecutive_success = config.successes;
    check.consecutive_failure = config.failures;
    let timeout = Some(Duration::from_millis(config.timeout_ms));
    check.peer_template.options.connection_timeout = timeout;
    check.peer_template.options.read_timeout = timeout;
    check.reuse_connection = false;
    Ok(check)
}
