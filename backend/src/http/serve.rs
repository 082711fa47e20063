//! The life of a serving process: bind, print the address, serve until SIGINT or SIGTERM,
//! then stop being ready, drain in-flight requests (at most a limit) and stop the workers.
//!
//! Connections are served by hyper directly (not `axum::serve`, which sets no timer): HTTP/1
//! with a header read timeout, which also closes a keep-alive connection left idle, and
//! HTTP/2 (prior knowledge) beside it; the body limits are the router's ([`super::extract`]).

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use super::{router, AppState, GatewaySecret, ServerOptions};
use crate::repository::ModelRepository;

/// Binds `listen`, prints `maas-backend listening on <addr>` to stdout, serves `repository`
/// until SIGINT or SIGTERM, then drains in-flight requests (at most `drain`) and stops the
/// workers. `options`: the body limit and the timeouts; `gateway_secret`: the secret that makes
/// the gateway's fairness headers count (`None`: every request shares the default key).
pub fn serve_until_signal(
    repository: Arc<ModelRepository>,
    listen: &str,
    options: ServerOptions,
    gateway_secret: Option<GatewaySecret>,
    drain: Duration,
) -> anyhow::Result<()> {
    let repo_root = repository.root().to_path_buf();
    let mut state = AppState::new(repository);
    state.gateway_secret = gateway_secret;
    let app = router(state.clone(), options);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "maas-backend listening on {addr}")?;
        stdout.flush()?;
        drop(stdout);
        tracing::info!(%addr, repo = %repo_root.display(), "serving");
        let flag = state.shutting_down.clone();
        let stopping = Arc::new(tokio::sync::Notify::new());
        let notify = stopping.clone();
        let server = serve(listener, app, options, async move {
            shutdown_signal().await;
            flag.store(true, Ordering::Relaxed);
            tracing::info!("shutting down: finishing in-flight requests");
            notify.notify_one();
        });
        let drain_limit = async move {
            stopping.notified().await;
            tokio::time::sleep(drain).await;
        };
        tokio::select! {
            result = server => result.context("server failed"),
            () = drain_limit => {
                tracing::warn!("connections still open after {drain:?}; stopping anyway");
                Ok(())
            }
        }
    })?;
    drop(runtime);
    // The last handle to the repository: dropping it joins every worker thread.
    drop(state);
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish (each connection closes after its current response).
async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.header_read_timeout)
        .keep_alive_timeout(options.body_idle_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close, as
                    // axum::serve does.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
