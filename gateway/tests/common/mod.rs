//! Shared harness of the gateway's integration tests: a fresh PostgreSQL database per test, a
//! fake OIP backend, real `maas-backend` processes ([`backend`]), and the `maas-gateway`
//! binary started on free loopback ports.
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE) and, for the tests that use it,
//! `REDIS_URL`; `make test` provides both (scripts/with-services.sh).
#![allow(dead_code)]

pub mod backend;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

/// The gateway binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_maas-gateway");
/// `x-maas-inference-count` of every fake backend answer.
pub const INFERENCE_COUNT: i64 = 7;
/// `x-maas-compute-us` of every fake backend answer.
pub const COMPUTE_US: i64 = 1234;
/// A small OIP infer body.
pub const BODY: &str = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[1.0]}]}"#;

/// `DATABASE_URL`, or a panic saying how to get one.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need a PostgreSQL server whose role may \
             CREATE DATABASE (run them with `make test`, or set DATABASE_URL=postgres://...)"
        )
    })
}

/// `REDIS_URL`, or a panic saying how to get one.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "REDIS_URL is not set: these tests need a Redis server (run them with `make test`, \
             or set REDIS_URL=redis://127.0.0.1:6379)"
        )
    })
}

/// `url` with its database name replaced by `name` (query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{root}/{name}{query}")
}

/// A fresh database with the migrations applied. A passing test drops it with
/// [`drop_database`]; a failing one leaves it behind for inspection.
pub async fn fresh_database() -> (PgPool, String) {
    let admin_url = database_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL ({admin_url}): {e}"));
    let name = format!("gw_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await;
    let url = with_database(&admin_url, &name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect to the test database");
    maas_billing::MIGRATOR.run(&pool).await.expect("migrations");
    (pool, url)
}

/// Drop the test database behind `pool` (closing `pool`; other sessions are terminated).
pub async fn drop_database(pool: PgPool) {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// A free loopback address (bound and released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The fake backend: answers every path with what it saw, plus the usage headers. For model
/// `slow` it waits 300 ms before answering. It reads the request body like a real OIP server,
/// except for model `lazy`, which answers without reading it: hyper then closes the connection
/// after the response, and the gateway finds that pooled upstream connection dead on its next
/// use.
pub async fn fake_backend(req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let path = parts.uri.path().to_string();
    let body_bytes = if path.starts_with("/v2/models/lazy/") {
        None
    } else {
        Some(
            axum::body::to_bytes(body, usize::MAX)
                .await
                .map_or(0, |b| b.len()),
        )
    };
    if path.starts_with("/v2/models/slow/") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let body = json!({
        "path": path,
        "saw_authorization": h.contains_key("authorization"),
        "saw_api_key": h.contains_key("x-api-key"),
        "request_id": h.get("x-request-id").and_then(|v| v.to_str().ok()),
        "traceparent": h.get("traceparent").and_then(|v| v.to_str().ok()),
        "body_bytes": body_bytes,
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 1], "data": [0.5]}],
    });
    let mut headers = HeaderMap::new();
    headers.insert("x-maas-inference-count", INFERENCE_COUNT.into());
    headers.insert("x-maas-compute-us", COMPUTE_US.into());
    (StatusCode::OK, headers, Json(body))
}

/// Serve `app` on a free loopback port in the current runtime.
pub async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// [`fake_backend`] on a free loopback port.
pub async fn start_backend() -> SocketAddr {
    serve_app(axum::Router::new().fallback(fake_backend)).await
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `maas-gateway` with a clean environment pointing at `db_url`.
pub fn gateway_command(db_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(std::env::temp_dir())
        .env_remove("MAAS_GATEWAY_CONFIG")
        .env_remove("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN")
        .env_remove("REDIS_URL")
        .env("MAAS_GATEWAY_DATABASE_URL", db_url)
        // Any free port: tests run gateways side by side (start_gateway picks a known one).
        .env("MAAS_GATEWAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn");
    cmd
}

/// A running `maas-gateway serve`.
pub struct RunningGateway {
    /// Killed on drop.
    pub child: ChildGuard,
    /// The data-path address.
    pub listen: SocketAddr,
    /// The admin API address (listening only when an operator token was given).
    pub admin: SocketAddr,
    /// The metrics listener's address (`GET /metrics`).
    pub metrics: SocketAddr,
    /// Its spool directory (removed on drop).
    pub spool: std::path::PathBuf,
    /// The lines it printed on stdout after the readiness line (the JSON access log).
    pub stdout: mpsc::Receiver<String>,
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// Start `maas-gateway serve` for `backends`, with the extra environment `env` (applied last),
/// and wait for its readiness line. Auth cache TTL 200 ms, flush interval 50 ms (refusal
/// counts 100 ms), no grace
/// period and a private spool directory unless `env` says otherwise.
pub fn start_gateway(
    db_url: &str,
    backends: &[SocketAddr],
    env: &[(&str, String)],
) -> RunningGateway {
    let listen = free_addr();
    let admin = free_addr();
    let metrics = free_addr();
    let spool = std::env::temp_dir().join(format!("maas-test-spool-{}", Uuid::new_v4().simple()));
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let mut cmd = gateway_command(db_url);
    cmd.arg("serve")
        .env("MAAS_GATEWAY_LISTEN", listen.to_string())
        .env("MAAS_GATEWAY_ADMIN__LISTEN", admin.to_string())
        .env("MAAS_GATEWAY_METRICS__LISTEN", metrics.to_string())
        .env(
            "MAAS_GATEWAY_UPSTREAM__BACKENDS",
            format!("[{}]", backends.join(",")),
        )
        .env("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", "200")
        .env("MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS", "50")
        .env("MAAS_GATEWAY_METERING__REFUSED_FLUSH_INTERVAL_MS", "100")
        .env("MAAS_GATEWAY_METERING__SPOOL_DIR", &spool)
        .env("MAAS_GATEWAY_GRACE_PERIOD_S", "0")
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (child, stdout) = spawn_until_ready(cmd, listen);
    RunningGateway {
        child,
        listen,
        admin,
        metrics,
        spool,
        stdout,
    }
}

/// Spawn `maas-gateway serve` as `cmd` and wait (60 s at most) for its readiness line
/// `maas-gateway listening on <listen>`; returns the child and the lines it prints on stdout
/// after that one.
pub fn spawn_until_ready(
    mut cmd: Command,
    listen: SocketAddr,
) -> (ChildGuard, mpsc::Receiver<String>) {
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn maas-gateway");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gateway printed no readiness line within 60 s");
    assert_eq!(line, format!("maas-gateway listening on {listen}"));
    (guard, rx)
}

/// A binary of the workspace beside the gateway's (target/<profile>/; `cargo build
/// --workspace --bins`, which `make test` runs first, builds them all).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// `maas-gateway keys create`, returning the printed secret.
pub fn create_key(db_url: &str, tenant: &str, models: Option<&str>) -> String {
    let mut cmd = gateway_command(db_url);
    cmd.args(["keys", "create", "--tenant", tenant, "--name", "test"]);
    if let Some(m) = models {
        cmd.args(["--models", m]);
    }
    let out = cmd.output().expect("run keys create");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An admin API answer: status, headers and body.
pub struct AdminAnswer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
}

impl AdminAnswer {
    /// The body as JSON, or a panic showing it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "non-JSON admin body ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Send `method path` to the admin API at `base` (`http://host:port`), with `Authorization:
/// Bearer <token>` and a JSON `body` when given.
pub async fn admin_request(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> AdminAnswer {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request to the admin API");
    AdminAnswer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("admin API body").to_vec(),
    }
}

/// Wait until `usage_events` holds `n` rows (the writer flushes every 50 ms here).
pub async fn wait_for_rows(pool: &PgPool, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
            .fetch_one(pool)
            .await
            .unwrap();
        if count >= n {
            assert_eq!(count, n, "more usage rows than requests");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {count} of {n} usage rows written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id of tenant `name`.
pub async fn tenant_id(pool: &PgPool, name: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}
