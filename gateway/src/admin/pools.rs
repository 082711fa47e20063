//! `GET /admin/v1/pools` (operator): every backend pool of this gateway and each backend's
//! health, models, requests in flight, ejections and last error ([`crate::pools::PoolSnapshot`]).

use axum::extract::State;
use axum::Json;

use super::error::ErrorBody;
use super::state::AdminState;
use crate::pools::PoolSnapshot;

/// `GET /admin/v1/pools`.
#[utoipa::path(
    get, path = "/admin/v1/pools",
    responses(
        (status = 200, description = "Every pool of this gateway instance, in configuration order", body = [PoolSnapshot]),
        (status = 401, description = "Missing or wrong operator token", body = ErrorBody)
    )
)]
pub async fn list_pools(State(state): State<AdminState>) -> Json<Vec<PoolSnapshot>> {
    Json(
        state
            .pools
            .as_ref()
            .map(|p| p.snapshot())
            .unwrap_or_default(),
    )
}
