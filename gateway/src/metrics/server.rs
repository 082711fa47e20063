//! The metrics listener: `GET /metrics` (Prometheus text format 0.0.4) and the gateway's own
//! health (`GET /livez`, `GET /readyz`, see `health.rs`) on its own thread and runtime (pingora
//! owns the proxy's), bound before [`spawn`] returns.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use super::health::{Phase, Readiness};

/// Shared state of the listener's routes.
struct Listener {
    registry: Registry,
    readiness: Readiness,
}

async fn scrape(State(state): State<Arc<Listener>>) -> Response {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"no such route: metrics are at GET /metrics, health at GET /livez and GET /readyz"}"#,
    )
        .into_response()
}

/// `GET /livez`: 200 `{"status":"live"}` whenever the process answers.
async fn livez() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"live"}"#,
    )
        .into_response()
}

/// `GET /readyz`: 200 `{"status":"ready"}`, or 503 with `starting` or `draining`.
async fn readyz(State(state): State<Arc<Listener>>) -> Response {
    let phase = state.readiness.phase();
    let code = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"status":"{}"}}"#, phase.as_str()),
    )
        .into_response()
}

/// Serve `registry` at `http://<addr>/metrics`, and `readiness` at `/readyz` (with `/livez`),
/// on a thread of its own.
///
/// # Errors
/// When `addr` cannot be bound, or the thread or runtime cannot start.
pub fn spawn(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("metrics listener cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr().unwrap_or(addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the metrics runtime")?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(Arc::new(Listener {
            registry,
            readiness,
        }));
    std::thread::Builder::new()
        .name("maas-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "metrics listener");
                        return;
                    }
                };
                tracing::info!(%addr, "metrics listening");
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        })
        .context("spawning the metrics thread")
}
