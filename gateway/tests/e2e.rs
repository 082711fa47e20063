//! End to end: real backend (trained on the digits data), real gateway, real PostgreSQL.
//!
//! Needs `DATABASE_URL` (an account that may create databases); `make test` provides one.
//! Uses the workspace's binaries from the same target folder as this test
//! (`make test` builds them first with `cargo build --workspace --bins`).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

/// Kills the child process when dropped, so a failing assertion leaves no server behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

/// The folder holding the workspace binaries: target/<profile>/ (this test runs from deps/).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Reads the digits data set: (64 pixel values, label) per row.
fn digits_rows() -> Vec<(Vec<f32>, usize)> {
    let file = std::fs::File::open(workspace_root().join("data/digits.csv.gz")).expect("data");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gunzip digits");
    text.lines()
        .map(|line| {
            let v: Vec<f32> = line
                .split(',')
                .map(|x| x.parse().expect("number"))
                .collect();
            (v[..64].to_vec(), v[64] as usize)
        })
        .collect()
}

/// Waits for `maas-backend`'s "listening on ADDR" line and returns ADDR.
fn read_listen_line(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("server exited before printing its address")
            .expect("read stdout");
        if let Some(addr) = line.strip_prefix(prefix) {
            // keep draining stdout so the server never blocks on a full pipe
            std::thread::spawn(move || for _ in lines {});
            return addr.trim().to_string();
        }
    }
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not become ready within 30 s");
}

/// (http_status, model, model_version, inference_count, tenant name, response_bytes) of a
/// usage row.
type UsageRow = (
    i16,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    i64,
);

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |best, (i, &x)| if x > best.1 { (i, x) } else { best },
        )
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_through_gateway_is_classified_authenticated_and_metered() {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at PostgreSQL (make test starts one)");

    // A fresh database for this test.
    let db_name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let db_url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db_name}"),
        None => panic!("DATABASE_URL has no database part"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .expect("connect test db");
    maas_billing::MIGRATOR.run(&pool).await.expect("migrate");

    // Train the demo model into a temporary repository.
    let repo = std::env::temp_dir().join(format!("maas-e2e-{}", uuid::Uuid::new_v4().simple()));
    let out = Command::new(bin("maas-train"))
        .args(["train", "--repo"])
        .arg(&repo)
        .args(["--model", "digits", "--data"])
        .arg(workspace_root().join("data/digits.csv.gz"))
        .output()
        .expect("run maas-train train");
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Backend on a free port (it prints the address it bound).
    let mut backend = Command::new(bin("maas-backend"))
        .args(["serve", "--repo"])
        .arg(&repo)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start backend");
    let backend_addr = read_listen_line(&mut backend, "maas-backend listening on ");
    let _backend = ChildGuard(backend);
    wait_ready(&format!("http://{backend_addr}/v2/health/ready")).await;

    // Gateway in front of it.
    let gateway_addr = format!("127.0.0.1:{}", free_port());
    let gateway = Command::new(bin("maas-gateway"))
        .args(["serve", "--config"])
        .arg(workspace_root().join("config/gateway.toml"))
        .env("DATABASE_URL", &db_url)
        .env("MAAS_GATEWAY_LISTEN", &gateway_addr)
        .env("MAAS_GATEWAY_METRICS__LISTEN", "127.0.0.1:0")
        .env(
            "MAAS_GATEWAY_UPSTREAM__BACKENDS",
            format!("[\"{backend_addr}\"]"),
        )
        .env("MAAS_GATEWAY_METERING__SPOOL_DIR", repo.join("spool"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start gateway");
    let _gateway = ChildGuard(gateway);
    wait_ready(&format!("http://{gateway_addr}/v2/health/ready")).await;

    // A tenant and its API key.
    let out = Command::new(bin("maas-gateway"))
        .args(["keys", "create", "--tenant", "e2e-tenant", "--name", "e2e"])
        .env("DATABASE_URL", &db_url)
        .output()
        .expect("create key");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(key.starts_with("maas_"), "unexpected key format: {key}");

    // Authenticated infer with real rows: each comes back as its label.
    let client = reqwest::Client::new();
    let infer_url = format!("http://{gateway_addr}/v2/models/digits/infer");
    let rows = digits_rows();
    let mut request_ids = Vec::new();
    for (pixels, label) in rows.iter().step_by(97).take(8) {
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]
        });
        let resp = client
            .post(&infer_url)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("infer through gateway");
        assert_eq!(resp.status(), 200);
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id header")
            .to_string();
        let answer: serde_json::Value = resp.json().await.expect("json answer");
        let probs: Vec<f64> = answer["outputs"][0]["data"]
            .as_array()
            .expect("outputs[0].data")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_eq!(probs.len(), 10);
        assert_eq!(argmax(&probs), *label, "row with label {label}: {probs:?}");
        request_ids.push(uuid::Uuid::parse_str(&request_id).expect("request id is a uuid"));
    }

    // The `[upstream] backends` shorthand routes every model, and still lists what its backend
    // serves: the repository index through the gateway names the trained model, READY.
    let index: serde_json::Value = client
        .post(format!("http://{gateway_addr}/v2/repository/index"))
        .bearer_auth(&key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("repository index through the gateway")
        .json()
        .await
        .expect("index json");
    let listed: Vec<(&str, &str)> = index
        .as_array()
        .expect("the index is an array")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(listed, vec![("digits", "READY")], "{index}");

    // No key: 401 with a JSON error and a challenge; the backend is not reached.
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[0].0}]
    });
    let resp = client
        .post(&infer_url)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    let rejected_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .expect("x-request-id on the 401");
    let err: serde_json::Value = resp.json().await.expect("json error");
    assert!(err["error"].as_str().is_some_and(|s| !s.is_empty()));

    // A wrong key is 401 too.
    let resp = client
        .post(&infer_url)
        .bearer_auth("maas_000000000000000000000000000000000000000000000000")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);

    // An unknown model is a 404 that names only the model asked for (nothing about the models
    // that exist, this tenant's or anyone else's).
    let resp = client
        .post(infer_url.replace("/digits/", "/no-such-model/"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let err: serde_json::Value = resp.json().await.expect("json error");
    assert_eq!(
        err,
        serde_json::json!({"error": "unknown model 'no-such-model'"})
    );

    // Metering: exactly one usage row per request, with what the user would check.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = request_ids.clone();
    all.push(rejected_id);
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM usage_events WHERE request_id = ANY($1)")
                .bind(&all)
                .fetch_one(&pool)
                .await
                .expect("count usage");
        if n as usize == all.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &request_ids {
        let rows: Vec<UsageRow> = sqlx::query_as(
            "SELECT u.http_status, u.model, u.model_version, u.inference_count, t.name, \
                    u.response_bytes \
             FROM usage_events u LEFT JOIN tenants t ON t.id = u.tenant_id \
             WHERE u.request_id = $1",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .expect("usage row");
        assert_eq!(rows.len(), 1, "exactly one usage row for {id}");
        let (status, model, version, inferences, tenant, response_bytes) = &rows[0];
        assert_eq!(*status, 200);
        assert_eq!(model.as_deref(), Some("digits"));
        // The request named no version; the backend's answer says which one served it.
        assert_eq!(version.as_deref(), Some("1"));
        assert_eq!(*inferences, 1);
        assert_eq!(tenant.as_deref(), Some("e2e-tenant"));
        assert!(*response_bytes > 0);
    }
    // A refusal is counted per tenant, outcome and minute, not stored as a usage event.
    let rejected_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE request_id = $1")
            .bind(rejected_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rejected_rows, 0);

    pool.close().await;
    let _ = std::fs::remove_dir_all(&repo);
    let _ = sqlx::query(&format!("DROP DATABASE {db_name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
