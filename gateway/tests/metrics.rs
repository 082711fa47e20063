//! The gateway's Prometheus metrics after a known sequence of requests (good, 401, 403, 429,
//! 404, backend down), scraped from its metrics listener and parsed with a Prometheus text
//! parser (`prometheus-parse`): exact counter values and histogram counts. Also the W3C
//! `traceparent` forwarded to the backend and the JSON access log line.
//!
//! Needs `DATABASE_URL` (`make test` provides it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use serde_json::{json, Value as Json};

const OPERATOR: &str = "test-operator-token-0123456789";

/// `GET /metrics` of `addr`, parsed.
async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> Scrape {
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// Sum of `maas_gateway_requests_total` over every series.
fn requests_counted(scrape: &Scrape) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|x| x.metric == "maas_gateway_requests_total")
        .map(|x| match x.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A scrape once `requests` requests are counted: a request is counted in pingora's
/// `logging` phase, after its response went out (bounded wait, 5 s).
async fn scrape_after(client: &reqwest::Client, addr: SocketAddr, requests: f64) -> Scrape {
    for _ in 0..100 {
        let s = scrape(client, addr).await;
        if requests_counted(&s) >= requests {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    scrape(client, addr).await
}

/// The value of the counter or gauge `name` whose labels include `labels` (exactly one
/// series must match); `None` when no series matches.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?}: {} series",
        matching.len()
    );
    matching.first().map(|s| match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is not a single value: {other:?}"),
    })
}

/// The observation count of histogram `name` with `labels`: its `+Inf` bucket, checked
/// against `<name>_count`.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let series = scrape.samples.iter().find(|s| {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })?;
    let Value::Histogram(buckets) = &series.value else {
        panic!("{name} is not a histogram");
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite())?.count;
    assert_eq!(value(scrape, &format!("{name}_count"), labels), Some(inf));
    // Cumulative buckets never decrease.
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    Some(inf)
}

async fn infer(
    client: &reqwest::Client,
    gw: SocketAddr,
    model: &str,
    key: Option<&str>,
    traceparent: Option<&str>,
) -> (u16, Json, String) {
    let mut req = client
        .post(format!("http://{gw}/v2/models/{model}/infer"))
        .header("content-type", "application/json")
        .body(BODY);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(t) = traceparent {
        req = req.header("traceparent", t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, resp.json().await.unwrap_or(Json::Null), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_after_a_known_sequence_counts_every_outcome() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string())],
    );
    let client = reqwest::Client::new();
    let good = create_key(&db_url, "acme", None);
    let limited = create_key(&db_url, "acme", None);
    let elsewhere = create_key(&db_url, "acme", Some("other"));
    let limited_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys ORDER BY created_at, id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .nth(1)
            .unwrap();
    let resp = client
        .put(format!(
            "http://{}/admin/v1/keys/{limited_id}/limits",
            gw.admin
        ))
        .bearer_auth(OPERATOR)
        .json(&json!({"rules": [{"level": "key", "rate": 1, "period_s": 3600, "burst": 1}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The known sequence.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, body, _) = infer(&client, gw.listen, "dense", Some(&good), Some(trace)).await;
    assert_eq!(status, 200);
    let forwarded = body["traceparent"].as_str().expect("traceparent forwarded");
    assert!(
        forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{forwarded}"
    );
    assert_ne!(forwarded, trace, "the gateway's own span is the parent");
    let (status, body, _) = infer(&client, gw.listen, "dense", Some(&good), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["traceparent"].as_str().map(str::len),
        Some(55),
        "a trace made here"
    );
    assert_eq!(infer(&client, gw.listen, "dense", None, None).await.0, 401);
    assert_eq!(
        infer(&client, gw.listen, "dense", Some(&elsewhere), None)
            .await
            .0,
        403
    );
    assert_eq!(
        infer(&client, gw.listen, "dense", Some(&limited), None)
            .await
            .0,
        200
    );
    assert_eq!(
        infer(&client, gw.listen, "dense", Some(&limited), None)
            .await
            .0,
        429
    );
    let not_found = client
        .get(format!("http://{}/v1/chat", gw.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(not_found.status(), 404);

    let s = scrape_after(&client, gw.metrics, 7.0).await;
    let requests = |status_class: &str, outcome: &str, model: &str| {
        value(
            &s,
            "maas_gateway_requests_total",
            &[
                ("model", model),
                ("status_class", status_class),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(requests("2xx", "ok", "dense"), Some(3.0));
    assert_eq!(requests("4xx", "unauthenticated", "dense"), Some(1.0));
    assert_eq!(requests("4xx", "forbidden", "dense"), Some(1.0));
    assert_eq!(requests("4xx", "rate_limited", "dense"), Some(1.0));
    assert_eq!(requests("4xx", "bad_request", ""), Some(1.0));
    assert_eq!(requests("5xx", "no_backend", "dense"), None);
    assert_eq!(requests_counted(&s), 7.0);
    let dense = [("model", "dense")];
    assert_eq!(
        histogram_count(&s, "maas_gateway_request_duration_seconds", &dense),
        Some(6.0)
    );
    assert_eq!(
        histogram_count(
            &s,
            "maas_gateway_request_duration_seconds",
            &[("model", "")]
        ),
        Some(1.0)
    );
    assert_eq!(
        histogram_count(&s, "maas_gateway_overhead_duration_seconds", &[]),
        Some(7.0)
    );
    assert_eq!(
        histogram_count(&s, "maas_gateway_upstream_duration_seconds", &dense),
        Some(3.0)
    );
    // Only the limited key has limits: one admitted, one refused, by the local limiter.
    let decisions = |backend: &str, result: &str| {
        value(
            &s,
            "maas_gateway_limiter_decisions_total",
            &[("backend", backend), ("result", result)],
        )
    };
    assert_eq!(decisions("local", "admitted"), Some(1.0));
    assert_eq!(decisions("local", "denied"), Some(1.0));
    assert_eq!(decisions("redis", "admitted"), Some(0.0));
    assert_eq!(value(&s, "maas_gateway_limiter_redis_down", &[]), Some(0.0));
    assert_eq!(
        histogram_count(&s, "maas_gateway_limiter_redis_call_duration_seconds", &[]),
        Some(0.0)
    );
    // Five authenticated calls looked the key cache up at least once each.
    let lookups = |result: &str| {
        value(
            &s,
            "maas_gateway_auth_cache_lookups_total",
            &[("cache", "api_key"), ("result", result)],
        )
        .unwrap()
    };
    assert!(lookups("hit") + lookups("miss") >= 5.0);
    assert_eq!(value(&s, "maas_gateway_jwks_fetches_total", &[]), Some(0.0));

    // The writer drains the spool (one event per forwarded request; the four refusals are
    // counted per tenant, outcome and minute instead): every row in PostgreSQL is counted,
    // nothing pending.
    let mut rows: i64 = 0;
    let mut s = s;
    for _ in 0..100 {
        rows = sqlx::query_scalar("SELECT count(*) FROM usage_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        s = scrape(&client, gw.metrics).await;
        if rows == 3 && value(&s, "maas_gateway_spool_pending_events", &[]) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows, 3, "one usage event per forwarded request");
    assert_eq!(
        value(&s, "maas_gateway_usage_rows_written_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&s, "maas_gateway_spool_pending_events", &[]),
        Some(0.0)
    );
    assert!(value(&s, "maas_gateway_usage_batches_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&s, "maas_gateway_usage_write_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "maas_gateway_usage_events_dropped_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "maas_gateway_spool_oldest_unwritten_age_seconds", &[]),
        Some(0.0)
    );

    // An unknown path on the metrics listener is a JSON 404.
    let other = client
        .get(format!("http://{}/", gw.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_is_no_backend_in_metrics_and_the_access_log() {
    let (pool, db_url) = fresh_database().await;
    // Nothing listens on this port.
    let down = free_addr();
    let gw = start_gateway(
        &db_url,
        &[down],
        &[("MAAS_GATEWAY_METRICS__ACCESS_LOG", "json".to_string())],
    );
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, body, request_id) =
        infer(&client, gw.listen, "dense", Some(&key), Some(trace)).await;
    // The one backend refused the connection: it is ejected, and no healthy backend is left.
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"],
        "no healthy backend is available for model 'dense', retry later"
    );

    let s = scrape_after(&client, gw.metrics, 1.0).await;
    assert_eq!(
        value(
            &s,
            "maas_gateway_requests_total",
            &[
                ("model", "dense"),
                ("status_class", "5xx"),
                ("outcome", "no_backend")
            ],
        ),
        Some(1.0)
    );
    assert_eq!(
        histogram_count(
            &s,
            "maas_gateway_upstream_duration_seconds",
            &[("model", "dense")]
        ),
        Some(1.0)
    );

    // One JSON access log line for the request.
    let line = gw
        .stdout
        .recv_timeout(Duration::from_secs(5))
        .expect("an access log line");
    let entry: Json = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(entry["request_id"], request_id.as_str());
    assert_eq!(entry["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(entry["model"], "dense");
    assert_eq!(entry["status"], 503);
    assert_eq!(entry["outcome"], "no_backend");
    assert!(entry["tenant_id"].is_string());
    assert!(entry["key_id"].is_string());
    let latency = entry["latency_us"].as_u64().unwrap();
    let overhead = entry["overhead_us"].as_u64().unwrap();
    assert!(overhead <= latency, "{entry}");
    assert!(entry["upstream_us"].as_u64().is_some());
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_serves_no_listener() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_METRICS__ENABLED", "false".to_string())],
    );
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    assert_eq!(
        infer(&client, gw.listen, "dense", Some(&key), None).await.0,
        200
    );
    assert!(client
        .get(format!("http://{}/metrics", gw.metrics))
        .send()
        .await
        .is_err());
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_while_serving_and_draining_once_sigterm_arrives() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    // A grace period long enough to look at /readyz while the gateway drains.
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_GRACE_PERIOD_S", "3".to_string())],
    );
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{}{path}", gw.metrics);
        async move {
            let r = client.get(url).send().await.expect("health answer");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.expect("health JSON");
            (status, body)
        }
    };
    assert_eq!(
        get("/livez").await,
        (200, serde_json::json!({"status": "live"}))
    );
    // The readiness line was printed; the announcer marks ready right after it.
    let mut ready = get("/readyz").await;
    for _ in 0..100 {
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = get("/readyz").await;
    }
    assert_eq!(ready, (200, serde_json::json!({"status": "ready"})));

    let pid = gw.child.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut draining = get("/readyz").await;
    for _ in 0..100 {
        if draining.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        draining = get("/readyz").await;
    }
    assert_eq!(draining, (503, serde_json::json!({"status": "draining"})));
    // Still live while it drains.
    assert_eq!(get("/livez").await.0, 200);
    drop(gw);
    drop_database(pool).await;
}
