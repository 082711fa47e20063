//! End-to-end tests of the gateway binary against a real PostgreSQL and a fake OIP backend.
//!
//! Needs `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides one). Each
//! test creates its own database `gw_test_<random>`, applies the migrations, starts an axum
//! fake backend on a free loopback port and the `maas-gateway` binary on another.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

mod common;

use common::*;

/// Start the gateway for `backends`; its process and data-path address.
fn start(db_url: &str, backends: &[SocketAddr]) -> (RunningGateway, SocketAddr) {
    let gw = start_gateway(db_url, backends, &[]);
    let addr = gw.listen;
    (gw, addr)
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn request_id(&self) -> Uuid {
        let id = self
            .headers
            .get("x-request-id")
            .expect("x-request-id on every response")
            .to_str()
            .unwrap();
        Uuid::parse_str(id).unwrap()
    }
}

async fn call(
    client: &reqwest::Client,
    gw: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client
        .post(format!("http://{gw}{path}"))
        .header("content-type", "application/json")
        .body(BODY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request to the gateway");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)));
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_json_error(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/json",
        "error content-type"
    );
    assert!(r.body["error"].is_string(), "{:?}", r.body);
    r.request_id();
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    tenant_id: Option<Uuid>,
    api_key_id: Option<Uuid>,
    model: Option<String>,
    model_version: Option<String>,
    http_status: i16,
    inference_count: i64,
    compute_us: i64,
    request_bytes: i64,
    response_bytes: i64,
    latency_us: i64,
}

async fn usage_row(pool: &PgPool, id: Uuid) -> Row {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, api_key_id, model, model_version, http_status, inference_count, \
                compute_us, request_bytes, response_bytes, latency_us \
         FROM usage_events WHERE request_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "exactly one usage row for {id}");
    rows.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_forwards_and_meters() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "acme", None);
    let limited = create_key(&db_url, "acme", Some("dense,other"));
    let suspended_key = create_key(&db_url, "gone", None);
    sqlx::query("UPDATE tenants SET status = 'suspended' WHERE name = 'gone'")
        .execute(&pool)
        .await
        .unwrap();
    let acme = tenant_id(&pool, "acme").await;
    let (gateway, gw) = start(&db_url, &[backend]);
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {key}");
    let mut expected_rows = 0;

    // A valid key: forwarded without credentials, same request id both ways.
    let ok = call(
        &client,
        gw,
        "/v2/models/dense/versions/2/infer",
        &[("authorization", &bearer)],
    )
    .await;
    expected_rows += 1;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["saw_authorization"], false);
    assert_eq!(ok.body["saw_api_key"], false);
    assert_eq!(ok.body["path"], "/v2/models/dense/versions/2/infer");
    assert_eq!(ok.body["body_bytes"], BODY.len());
    let ok_id = ok.request_id();
    assert_eq!(ok_id.get_version_num(), 7);
    assert_eq!(ok.body["request_id"], ok_id.to_string());

    // x-api-key works too, and is stripped.
    let ok2 = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("x-api-key", &key)],
    )
    .await;
    expected_rows += 1;
    assert_eq!(ok2.status, 200);
    assert_eq!(ok2.body["saw_api_key"], false);
    assert_eq!(ok2.body["request_id"], ok2.request_id().to_string());
    assert_ne!(ok2.request_id(), ok_id);

    // More than one credential, even the same valid key twice: 400, none of them served.
    for headers in [
        [("x-api-key", key.as_str()), ("x-api-key", key.as_str())],
        [("x-api-key", key.as_str()), ("x-api-key", "maas_other")],
        [
            ("authorization", bearer.as_str()),
            ("authorization", bearer.as_str()),
        ],
        [
            ("authorization", bearer.as_str()),
            ("x-api-key", key.as_str()),
        ],
    ] {
        let two = call(&client, gw, "/v2/models/dense/infer", &headers).await;
        assert_json_error(&two, 400);
        assert_eq!(
            two.body,
            json!({"error": "more than one credential: send exactly one Authorization: Bearer or x-api-key header"})
        );
    }

    // Missing key.
    let missing = call(&client, gw, "/v2/models/dense/infer", &[]).await;
    assert_json_error(&missing, 401);
    assert_eq!(missing.headers.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(
        missing.body,
        json!({"error": "missing API key: send Authorization: Bearer <key>"})
    );

    // Unknown (well-formed) key and garbage key.
    let unknown = format!("maas_{}", "ab".repeat(24));
    let wrong = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("authorization", &format!("Bearer {unknown}"))],
    )
    .await;
    assert_json_error(&wrong, 401);
    assert_eq!(wrong.headers.get("www-authenticate").unwrap(), "Bearer");
    assert_eq!(wrong.body, json!({"error": "invalid API key"}));
    let garbage = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("x-api-key", "hunter2")],
    )
    .await;
    assert_json_error(&garbage, 401);

    // Allow-list and suspended tenant.
    let allowed = call(
        &client,
        gw,
        "/v2/models/other/infer",
        &[("authorization", &format!("Bearer {limited}"))],
    )
    .await;
    expected_rows += 1;
    assert_eq!(allowed.status, 200);
    let forbidden = call(
        &client,
        gw,
        "/v2/models/secret/infer",
        &[("authorization", &format!("Bearer {limited}"))],
    )
    .await;
    assert_json_error(&forbidden, 403);
    let suspended = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("authorization", &format!("Bearer {suspended_key}"))],
    )
    .await;
    assert_json_error(&suspended, 403);

    // Unknown route; health without a key.
    let nf = call(
        &client,
        gw,
        "/v1/chat/completions",
        &[("authorization", &bearer)],
    )
    .await;
    assert_json_error(&nf, 404);
    let health = client
        .get(format!("http://{gw}/v2/health/ready"))
        .send()
        .await
        .unwrap();
    expected_rows += 1;
    assert_eq!(health.status(), 200);
    let health_id = Uuid::parse_str(health.headers()["x-request-id"].to_str().unwrap()).unwrap();

    // Revocation takes effect within the cache TTL (200 ms here).
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE secret_sha256 = $1")
        .bind(maas_gateway::hash_key(&key))
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let revoked = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("authorization", &bearer)],
    )
    .await;
    assert_json_error(&revoked, 401);
    assert_eq!(revoked.headers.get("www-authenticate").unwrap(), "Bearer");

    // Usage: one row per request, with what the gateway saw.
    wait_for_rows(&pool, expected_rows).await;
    let row = usage_row(&pool, ok_id).await;
    assert_eq!(row.http_status, 200);
    assert_eq!(row.tenant_id, Some(acme));
    assert!(row.api_key_id.is_some());
    assert_eq!(row.model.as_deref(), Some("dense"));
    assert_eq!(row.model_version.as_deref(), Some("2"));
    assert_eq!(row.inference_count, INFERENCE_COUNT);
    assert_eq!(row.compute_us, COMPUTE_US);
    assert_eq!(row.request_bytes, BODY.len() as i64, "{row:?}");
    assert!(row.response_bytes > 0, "{row:?}");
    assert!(row.latency_us > 0, "{row:?}");

    // Refusals are not usage events: they are counted per tenant, outcome and minute.
    for refused in [
        &missing, &wrong, &garbage, &forbidden, &suspended, &nf, &revoked,
    ] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE request_id = $1")
            .bind(refused.request_id())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "a usage row for a refusal: {:?}", refused.body);
    }
    let gone = tenant_id(&pool, "gone").await;
    let mut want = vec![
        (None, "bad_request".to_string(), 5),
        (None, "unauthenticated".to_string(), 3),
        (Some(acme), "forbidden".to_string(), 1),
        (Some(acme), "unauthenticated".to_string(), 1),
        (Some(gone), "forbidden".to_string(), 1),
    ];
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut got: Vec<(Option<Uuid>, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, outcome, sum(requests)::bigint FROM refused_requests GROUP BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        got.sort();
        if got == want || Instant::now() > deadline {
            assert_eq!(got, want);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = usage_row(&pool, health_id).await;
    assert_eq!((row.http_status, row.tenant_id), (200, None));
    drop(gateway);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_503_json_and_metered() {
    let (pool, db_url) = fresh_database().await;
    // `migrate` on an up-to-date database is a no-op.
    let out = gateway_command(&db_url).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = create_key(&db_url, "acme", None);
    let dead = free_addr(); // nothing listens here
    let (gateway, gw) = start(&db_url, &[dead]);
    let client = reqwest::Client::new();
    let r = call(
        &client,
        gw,
        "/v2/models/dense/infer",
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    // The refused connection ejects the pool's only backend: no healthy backend is left.
    assert_json_error(&r, 503);
    assert_eq!(
        r.body["error"],
        "no healthy backend is available for model 'dense', retry later"
    );
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    wait_for_rows(&pool, 1).await;
    let row = usage_row(&pool, r.request_id()).await;
    assert_eq!(row.http_status, 503);
    assert_eq!(row.tenant_id, Some(tenant_id(&pool, "acme").await));
    assert_eq!(row.inference_count, 0);
    drop(gateway);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_next_backend_when_one_is_down() {
    let (pool, db_url) = fresh_database().await;
    let key = create_key(&db_url, "acme", None);
    let backend = start_backend().await;
    let dead = free_addr();
    let (gateway, gw) = start(&db_url, &[dead, backend]);
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let r = call(
            &client,
            gw,
            "/v2/models/dense/infer",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    wait_for_rows(&pool, 4).await;
    drop(gateway);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_post_on_a_stale_pooled_connection() {
    let (pool, db_url) = fresh_database().await;
    let key = create_key(&db_url, "acme", None);
    let backend = start_backend().await;
    let (gateway, gw) = start(&db_url, &[backend]);
    let client = reqwest::Client::new();
    let auth = format!("Bearer {key}");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, auth) = (client.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let r = call(
                    &client,
                    gw,
                    "/v2/models/lazy/infer",
                    &[("authorization", &auth)],
                )
                .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for_rows(&pool, 200).await;
    drop(gateway);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_every_request_under_load() {
    const REQUESTS: usize = 3000;
    const CONCURRENCY: usize = 32;
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "acme", None);
    let (gateway, gw) = start(&db_url, &[backend]);
    let client = reqwest::Client::new();
    let bearer = format!("Bearer {key}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let client = client.clone();
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (worker..REQUESTS).step_by(CONCURRENCY) {
                // Every 10th request is rejected: counted as a refusal, not a usage event.
                let auth = if i % 10 == 0 {
                    "Bearer nope"
                } else {
                    bearer.as_str()
                };
                let r = call(
                    &client,
                    gw,
                    "/v2/models/dense/infer",
                    &[("authorization", auth)],
                )
                .await;
                assert_eq!(r.status, if i % 10 == 0 { 401 } else { 200 });
                ids.push((r.request_id(), r.status));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{REQUESTS} requests in {elapsed:?} ({:.0}/s)",
        REQUESTS as f64 / elapsed.as_secs_f64()
    );
    let refused = REQUESTS / 10;
    wait_for_rows(&pool, (REQUESTS - refused) as i64).await;
    let stored: Vec<(Uuid, i16, i64)> =
        sqlx::query_as("SELECT request_id, http_status, inference_count FROM usage_events")
            .fetch_all(&pool)
            .await
            .unwrap();
    let stored: std::collections::HashMap<Uuid, (i16, i64)> =
        stored.into_iter().map(|(id, s, n)| (id, (s, n))).collect();
    assert_eq!(stored.len(), REQUESTS - refused);
    for (id, status) in ids {
        if status == 401 {
            assert!(!stored.contains_key(&id));
            continue;
        }
        let (s, n) = stored[&id];
        assert_eq!(s as u16, status);
        assert_eq!(n, if status == 200 { INFERENCE_COUNT } else { 0 });
    }
    drop(gateway);
    drop_database(pool).await;
}

#[test]
fn with_database_replaces_the_path() {
    assert_eq!(
        with_database("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(
        with_database("postgres://u@h:1/postgres?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}
