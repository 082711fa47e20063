//! The metrics listener: `GET /metrics` (Prometheus text format 0.0.4) on its own thread and
//! runtime (pingora owns the proxy's), bound before [`spawn`] returns.

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

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &registry) {
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
        r#"{"error":"no such route: metrics are at GET /metrics"}"#,
    )
        .into_response()
}

/// Serve `registry` at `http://<addr>/metrics` on a thread of its own.
///
/// # Errors
/// When `addr` cannot be bound, or the thread or runtime cannot start.
pub fn spawn(addr: SocketAddr, registry: Registry) -> anyhow::Result<std::thread::JoinHandle<()>> {
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
        .fallback(not_found)
        .with_state(Arc::new(registry));
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
