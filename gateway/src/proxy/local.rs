//! The data-path routes the gateway answers itself from its pools, for an authenticated
//! caller: `GET /v2` (OIP v2 server metadata) and `POST /v2/repository/index` (the model
//! repository extension's index, Triton's format), the index holding only the models the
//! caller's credential may call.

use bytes::Bytes;
use http::{Method, StatusCode};
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::json;

use super::ctx::RequestCtx;
use super::respond::write_json;
use crate::auth::Authenticator;
use crate::error::GatewayError;
use crate::pools::Pools;

/// Longest `POST /v2/repository/index` body read, bytes.
const MAX_INDEX_BODY: usize = 4096;

/// The body of `POST /v2/repository/index` (may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    /// Only models a healthy backend serves now.
    #[serde(default)]
    ready: bool,
}

/// `GET /v2`: `{"name": "maas-gateway", "version": ..., "extensions": ["model_repository"]}`.
///
/// # Errors
/// 405 for another method.
pub(super) async fn server_metadata(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<pingora::Result<()>, GatewayError> {
    if session.req_header().method != Method::GET {
        return Err(GatewayError::Http(StatusCode::METHOD_NOT_ALLOWED));
    }
    let body = json!({
        "name": "maas-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository"],
    });
    Ok(write_json(session, ctx, 200, Bytes::from(body.to_string())).await)
}

/// `POST /v2/repository/index` with an optional `{"ready": bool}` body: `[{"name", "state":
/// "READY" | "UNAVAILABLE", "reason"}]`, sorted by name, for the models of `pools` that
/// `credential` may call.
///
/// # Errors
/// 405 for another method; 400 for a body that is not `{"ready": bool}`.
pub(super) async fn repository_index(
    session: &mut Session,
    ctx: &mut RequestCtx,
    pools: &Pools,
    auth: &Authenticator,
    credential: &str,
) -> Result<pingora::Result<()>, GatewayError> {
    if session.req_header().method != Method::POST {
        return Err(GatewayError::Http(StatusCode::METHOD_NOT_ALLOWED));
    }
    let mut raw = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                raw.extend_from_slice(&chunk);
                if raw.len() > MAX_INDEX_BODY {
                    return Err(GatewayError::BadRequest(format!(
                        "the repository index body is at most {MAX_INDEX_BODY} bytes: {{\"ready\": true|false}}"
                    )));
                }
            }
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        }
    }
    ctx.request_bytes += raw.len() as u64;
    let request: IndexRequest = if raw.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| {
            GatewayError::BadRequest(format!(
                "expected a JSON object {{\"ready\": true|false}} or no body: {e}"
            ))
        })?
    };
    let mut rows = Vec::new();
    for model in pools.models() {
        if request.ready && !model.ready {
            continue;
        }
        // The same decision as for a request to the model (cached per credential).
        if auth
            .authenticate_credential(credential, Some(&model.name))
            .await
            .is_err()
        {
            continue;
        }
        rows.push(if model.ready {
            json!({"name": model.name, "state": "READY", "reason": ""})
        } else {
            json!({"name": model.name, "state": "UNAVAILABLE", "reason": "no healthy backend"})
        });
    }
    let body = Bytes::from(serde_json::Value::Array(rows).to_string());
    Ok(write_json(session, ctx, 200, body).await)
}
