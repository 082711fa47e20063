//! Billing matches the work done, through the real gateway binary: only inference calls are
//! billable (metadata and readiness calls are recorded with their kind and never priced); a
//! client that leaves before the answer still gets the backend's usage metered and holds its
//! concurrency slot until the backend is done; quotas reserve the rows a request declares, so
//! concurrent multi-row requests cannot overshoot them (local limiter, Redis, two gateways).
//!
//! Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const OPERATOR: &str = "test-operator-token-0123456789";
/// How long the backend takes for model `slow` and for every `rows` call.
const WORK: Duration = Duration::from_millis(600);

/// A backend that reports the rows it was sent as its inference count: the first dimension of
/// the first input's shape, from the JSON body or from the JSON part of a binary body
/// (`Inference-Header-Content-Length`). Model `slow` and model `rows` take [`WORK`].
async fn rows_backend(req: Request) -> (StatusCode, HeaderMap, axum::Json<Value>) {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let json_len = parts
        .headers
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let rows = serde_json::from_slice::<Value>(&bytes[..json_len])
        .ok()
        .and_then(|v| v["inputs"][0]["shape"][0].as_i64())
        .unwrap_or(1);
    let path = parts.uri.path();
    if path.starts_with("/v2/models/slow/") || path.starts_with("/v2/models/rows/") {
        tokio::time::sleep(WORK).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert("x-maas-inference-count", rows.into());
    headers.insert("x-maas-compute-us", COMPUTE_US.into());
    (
        StatusCode::OK,
        headers,
        axum::Json(json!({"path": path, "rows": rows})),
    )
}

async fn start_rows_backend() -> SocketAddr {
    serve_app(axum::Router::new().fallback(rows_backend)).await
}

/// A JSON infer body of `rows` rows of one FP32 value.
fn body(rows: usize) -> String {
    let data: Vec<f32> = vec![1.0; rows];
    json!({"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32", "data": data}]})
        .to_string()
}

async fn put_tenant_limits(
    client: &reqwest::Client,
    admin: SocketAddr,
    tenant: Uuid,
    rules: Value,
) {
    let resp = client
        .put(format!("http://{admin}/admin/v1/tenants/{tenant}/limits"))
        .bearer_auth(OPERATOR)
        .json(&json!({ "rules": rules }))
        .send()
        .await
        .expect("admin request");
    assert!(resp.status().is_success(), "{}", resp.status());
    // Past the limit cache's TTL (200 ms in tests).
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_inference_calls_are_billed_and_a_client_that_leaves_is_metered() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_rows_backend().await;
    let key = create_key(&db_url, "acme", None);
    let acme = tenant_id(&pool, "acme").await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string())],
    );
    let client = reqwest::Client::new();

    // One inference call of 3 rows, one model metadata call, one readiness call.
    let url = |p: &str| format!("http://{}{p}", gw.listen);
    let infer = client
        .post(url("/v2/models/dense/infer"))
        .bearer_auth(&key)
        .body(body(3));
    assert_eq!(infer.send().await.unwrap().status().as_u16(), 200);
    for p in ["/v2/models/dense", "/v2/models/dense/ready", "/v2"] {
        let r = client.get(url(p)).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }
    let index = client.post(url("/v2/repository/index")).bearer_auth(&key);
    assert_eq!(index.send().await.unwrap().status().as_u16(), 200);

    // One request at a time for the tenant from here on.
    put_tenant_limits(
        &client,
        gw.admin,
        acme,
        json!([{"level": "tenant", "concurrency": 1}]),
    )
    .await;

    // A client that gives up after 100 ms on a call that takes 600 ms: the backend's answer
    // is still metered, and the tenant's one concurrency slot stays taken until it is done.
    let gone = client
        .post(url("/v2/models/slow/infer"))
        .bearer_auth(&key)
        .body(body(5))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gone.is_err(), "the client timed out");
    let second = client
        .post(url("/v2/models/dense/infer"))
        .bearer_auth(&key)
        .body(body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status().as_u16(),
        429,
        "the slot is held while the backend works"
    );
    // Once the backend is done the slot is free again (polled: the machine may be slow).
    tokio::time::sleep(WORK).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let third = client
            .post(url("/v2/models/dense/infer"))
            .bearer_auth(&key)
            .body(body(2));
        match third.send().await.unwrap().status().as_u16() {
            200 => break,
            429 if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("after the backend finished: {other}"),
        }
    }

    // 7 events (the 429 is a refusal, counted apart); the calls by kind.
    wait_for_rows(&pool, 7).await;
    let rows: Vec<(String, String, i16, i64)> = sqlx::query_as(
        "SELECT coalesce(model, ''), call, http_status, inference_count FROM usage_events \
         ORDER BY started_at, request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let rows: Vec<(&str, &str, i16, i64)> = rows
        .iter()
        .map(|(m, c, s, n)| (m.as_str(), c.as_str(), *s, *n))
        .collect();
    assert_eq!(
        rows,
        [
            ("dense", "inference", 200, 3),
            ("dense", "metadata", 200, 1),
            ("dense", "readiness", 200, 1),
            ("", "metadata", 200, 0),
            ("", "index", 200, 0),
            ("slow", "inference", 200, 5),
            ("dense", "inference", 200, 2),
        ]
    );
    // Billable: the three inference calls only, with their rows.
    let (billable, inferences, requests): (i64, i64, i64) = sqlx::query_as(
        "SELECT sum(billable_requests)::bigint, sum(inference_count)::bigint, \
                sum(requests)::bigint FROM usage_hourly \
         WHERE tenant_id = $1 AND api_key_id IS NOT NULL",
    )
    .bind(acme)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((billable, inferences, requests), (3, 10, 7));
    drop(gw);
    drop_database(pool).await;
}

/// Send `n` requests of `rows` rows at once, spread over `gateways`; their statuses, sorted.
async fn parallel(gateways: &[SocketAddr], key: &str, n: usize, rows: usize) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = format!(
            "http://{}/v2/models/rows/infer",
            gateways[i % gateways.len()]
        );
        let req = client.post(url).bearer_auth(key).body(body(rows));
        tasks.push(tokio::spawn(async move {
            req.send().await.map_or(0, |r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    statuses
}

/// A tenant with a monthly quota of 20 inference units, `gateways` gateways with `env`: 8
/// parallel requests of 8 rows each may use at most 2 x 8 = 16 units.
async fn quota_holds(env: Vec<(&'static str, String)>, gateways: usize) {
    let (pool, db_url) = fresh_database().await;
    let backend = start_rows_backend().await;
    let key = create_key(&db_url, "acme", None);
    let acme = tenant_id(&pool, "acme").await;
    let mut env = env;
    env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let gws: Vec<RunningGateway> = (0..gateways)
        .map(|_| start_gateway(&db_url, &[backend], &env))
        .collect();
    let client = reqwest::Client::new();
    put_tenant_limits(
        &client,
        gws[0].admin,
        acme,
        json!([{"level": "tenant", "monthly_inference_quota": 20}]),
    )
    .await;
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.listen).collect();
    let statuses = parallel(&addrs, &key, 8, 8).await;
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429, 429, 429]);
    wait_for_rows(&pool, 2).await;
    let used: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(inference_count), 0)::bigint FROM usage_hourly WHERE tenant_id = $1",
    )
    .bind(acme)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(used, 16);
    // A binary request declares its rows in its JSON part: 5 more rows do not fit (16 + 5 > 20),
    // 4 do.
    for (rows, want) in [(5usize, 429u16), (4, 200)] {
        let header = json!({"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "FP32",
            "parameters": {"binary_data_size": rows * 4}}]})
        .to_string();
        let mut payload = header.clone().into_bytes();
        payload.extend(std::iter::repeat_n(0u8, rows * 4));
        let r = client
            .post(format!("http://{}/v2/models/rows/infer", addrs[0]))
            .bearer_auth(&key)
            .header("inference-header-content-length", header.len())
            .header("content-type", "application/octet-stream")
            .body(payload)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{rows} rows");
    }
    drop(gws);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_limiter_reserves_the_declared_rows() {
    quota_holds(vec![], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reserves_the_declared_rows_across_two_gateways() {
    let env = vec![
        ("REDIS_URL", redis_url()),
        ("MAAS_GATEWAY_LIMITS__BACKEND", "redis".to_string()),
        ("MAAS_GATEWAY_LIMITS__REDIS_TIMEOUT_MS", "1000".to_string()),
    ];
    quota_holds(env.clone(), 1).await;
    quota_holds(env, 2).await;
}
