//! Cache invalidation across gateway instances over Redis pub/sub.
//!
//! The admin API publishes an [`Invalidation`] on [`CHANNEL`] after every change that must take
//! effect at once (a key revoked or rotated, a tenant suspended or reactivated, a limit changed).
//! Every gateway subscribes ([`listen`]) and evicts what it cached about that tenant, so the
//! change applies everywhere within the pub/sub delivery time (milliseconds), not after the
//! cache TTL. Pub/sub is fire-and-forget: a gateway that was disconnected may have missed
//! messages, so on every (re)subscription it drops its whole cache; while Redis is unreachable
//! the TTL (`auth.cache_ttl_ms`) bounds how long a stale verdict lives.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Redis pub/sub channel.
pub const CHANNEL: &str = "maas:invalidate";

/// One announcement, JSON on the wire: `{"tenant_id": "<uuid>"}` or `{"all": true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The tenant whose cached keys, status and limits must be forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
    /// Forget everything (e.g. a plan's limits changed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Invalidation {
    /// Forget one tenant.
    pub fn tenant(tenant_id: Uuid) -> Self {
        Invalidation {
            tenant_id: Some(tenant_id),
            all: false,
        }
    }

    /// Forget everything.
    pub fn everything() -> Self {
        Invalidation {
            tenant_id: None,
            all: true,
        }
    }
}

/// What a subscriber does with an announcement.
pub trait Invalidate: Send + Sync {
    /// Forget what is cached about `tenant_id`.
    fn invalidate_tenant(&self, tenant_id: Uuid);
    /// Forget everything cached.
    fn invalidate_all(&self);
}

impl Invalidate for crate::auth::Authenticator {
    fn invalidate_tenant(&self, tenant_id: Uuid) {
        crate::auth::Authenticator::invalidate_tenant(self, tenant_id);
    }
    fn invalidate_all(&self) {
        crate::auth::Authenticator::invalidate_all(self);
    }
}

impl Invalidate for crate::limits::LimitResolver {
    fn invalidate_tenant(&self, tenant_id: Uuid) {
        crate::limits::LimitResolver::invalidate_tenant(self, tenant_id);
    }
    fn invalidate_all(&self) {
        crate::limits::LimitResolver::invalidate_all(self);
    }
}

impl Invalidate for crate::limits::Limiter {
    fn invalidate_tenant(&self, tenant_id: Uuid) {
        crate::limits::Limiter::invalidate_tenant(self, tenant_id);
    }
    fn invalidate_all(&self) {
        crate::limits::Limiter::invalidate_all(self);
    }
}

/// Publish `msg` on [`CHANNEL`], waiting at most `timeout`; returns how many gateways received
/// it.
///
/// # Errors
/// When Redis cannot be reached in time (the caller logs it: the TTL still bounds staleness).
pub async fn publish(
    client: &redis::Client,
    msg: &Invalidation,
    timeout: Duration,
) -> anyhow::Result<i64> {
    let payload = serde_json::to_string(msg)?;
    let send = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await
    };
    Ok(tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| anyhow::anyhow!("Redis PUBLISH timed out"))??)
}

/// Subscribe to [`CHANNEL`] and apply every announcement to each of `targets`, forever:
/// reconnects with a backoff of 100 ms doubling to 2 s, and drops every cache on each
/// (re)subscription. Returns only when `shutdown` resolves.
pub async fn listen(
    client: redis::Client,
    targets: Vec<Arc<dyn Invalidate>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let run = async {
        let mut backoff = Duration::from_millis(100);
        loop {
            match subscribe_once(&client, &targets).await {
                Ok(()) => tracing::warn!("invalidation subscription ended; resubscribing"),
                Err(e) => tracing::warn!(error = %e, "invalidation subscription failed; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    };
    tokio::select! {
        () = run => {}
        () = shutdown => {}
    }
}

async fn subscribe_once(
    client: &redis::Client,
    targets: &[Arc<dyn Invalidate>],
) -> anyhow::Result<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    // Whatever was announced while unsubscribed is lost: start from empty caches.
    for t in targets {
        t.invalidate_all();
    }
    tracing::info!(channel = CHANNEL, "subscribed to cache invalidations");
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let payload: String = match msg.get_payload() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "invalidation message is not text; ignored");
                continue;
            }
        };
        match serde_json::from_str::<Invalidation>(&payload) {
            Ok(Invalidation { all: true, .. }) => targets.iter().for_each(|t| t.invalidate_all()),
            Ok(Invalidation {
                tenant_id: Some(id),
                ..
            }) => targets.iter().for_each(|t| t.invalidate_tenant(id)),
            Ok(_) | Err(_) => {
                tracing::warn!(%payload, "unrecognised invalidation message; dropping every cache");
                targets.iter().for_each(|t| t.invalidate_all());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let id = Uuid::nil();
        assert_eq!(
            serde_json::to_string(&Invalidation::tenant(id)).unwrap(),
            r#"{"tenant_id":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(
            serde_json::to_string(&Invalidation::everything()).unwrap(),
            r#"{"all":true}"#
        );
        let back: Invalidation =
            serde_json::from_str(r#"{"tenant_id":"00000000-0000-0000-0000-000000000000"}"#)
                .unwrap();
        assert_eq!(back, Invalidation::tenant(id));
    }
}
