//! What every admin handler shares ([`AdminState`]): the admin API's own PostgreSQL pool, the
//! operator token, and where changes are announced to the gateways.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::auth::{CallerSource, OperatorToken};
use super::error::AppError;
use super::session::SignInLimiter;
use crate::invalidation::{self, Invalidation};
use crate::pools::Pools;
use crate::store;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The admin API's own pool.
    pub pool: PgPool,
    operator: OperatorToken,
    /// Where changes are announced to every gateway ([`crate::invalidation`]); `None`: the
    /// gateways' cache TTL alone bounds how long a change takes.
    redis: Option<redis::Client>,
    /// The data path's backend pools (`GET /admin/v1/pools`); `None` in tests without them.
    pub pools: Option<Arc<Pools>>,
    /// Bounds dashboard sign-in attempts per client address.
    pub sign_in: Arc<SignInLimiter>,
}

impl AdminState {
    /// State for `pool` accepting `operator_token`.
    pub fn new(pool: PgPool, operator_token: &str) -> Self {
        AdminState {
            pool,
            operator: OperatorToken::new(operator_token),
            redis: None,
            pools: None,
            sign_in: Arc::new(SignInLimiter::default()),
        }
    }

    /// The same, announcing changes on `redis`.
    pub fn with_redis(mut self, redis: Option<redis::Client>) -> Self {
        self.redis = redis;
        self
    }

    /// The same, showing `pools`.
    pub fn with_pools(mut self, pools: Arc<Pools>) -> Self {
        self.pools = Some(pools);
        self
    }

    /// The operator token.
    pub fn operator_token_ref(&self) -> &OperatorToken {
        &self.operator
    }

    /// The name of tenant `id`.
    ///
    /// # Errors
    /// [`AppError::NotFound`] `no tenant <id>` when there is none; [`AppError::Internal`] when
    /// PostgreSQL fails.
    pub async fn tenant_name(&self, id: Uuid) -> Result<String, AppError> {
        store::tenant_name(&self.pool, id)
            .await?
            .ok_or_else(|| AppError::no_tenant(id))
    }

    /// Tell every gateway to forget what it cached about `tenant_id` (logged on failure: the
    /// change then takes effect within the gateways' cache TTL).
    pub async fn announce(&self, tenant_id: Uuid) {
        self.announce_change(Some(tenant_id)).await;
    }

    /// The same for `Some(tenant)`, or for every tenant with `None`.
    pub async fn announce_change(&self, tenant_id: Option<Uuid>) {
        if let Some(client) = &self.redis {
            let msg = match tenant_id {
                Some(id) => Invalidation::tenant(id),
                None => Invalidation::everything(),
            };
            match invalidation::publish(client, &msg, Duration::from_secs(1)).await {
                Ok(receivers) => tracing::debug!(?tenant_id, receivers, "invalidation announced"),
                Err(e) => {
                    tracing::warn!(?tenant_id, error = %e, "invalidation not announced; caches expire by TTL")
                }
            }
        }
    }
}

impl CallerSource for AdminState {
    fn operator_token(&self) -> &OperatorToken {
        &self.operator
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }
}
