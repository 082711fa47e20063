//! Floods that cost nothing: requests the gateway refuses itself are counted per tenant,
//! outcome and minute (`refused_requests`) and in the metrics, never written one row each, so
//! the database's write rate does not follow the flood rate; the admin API's usage report and
//! `maas_billing::usage_summary` still count them.
//!
//! Needs `DATABASE_URL` (`make test` provides it).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const OPERATOR: &str = "test-operator-token-0123456789";
const FLOOD: u64 = 20_000;

/// `n` POSTs to `url` with `Authorization: Bearer <key>` from 32 clients; counts by status.
async fn flood(url: String, key: String, n: u64) -> Vec<(u16, u64)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .unwrap();
    let left = Arc::new(AtomicU64::new(n));
    let counts: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, key, left, counts) = (
            client.clone(),
            url.clone(),
            key.clone(),
            left.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
            {
                let status = client
                    .post(&url)
                    .bearer_auth(&key)
                    .body(BODY)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                *counts.lock().unwrap().entry(status).or_insert(0) += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = counts.lock().unwrap();
    counts.iter().map(|(s, n)| (*s, *n)).collect()
}

/// The sum of `maas_gateway_requests_total` samples with `outcome="<outcome>"`.
async fn requests_metric(metrics: std::net::SocketAddr, outcome: &str) -> u64 {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with("maas_gateway_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_refusals_make_a_few_rows() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "acme", None);
    let acme = tenant_id(&pool, "acme").await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()),
            (
                "MAAS_GATEWAY_METERING__REFUSED_FLUSH_INTERVAL_MS",
                "200".into(),
            ),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}/v2/models/dense/infer", gw.listen);
    let started = Utc::now();

    // 20,000 well-formed keys nobody issued: 401 each, no tenant.
    let unknown = format!("maas_{}", "ab".repeat(24));
    let got = flood(url.clone(), unknown, FLOOD).await;
    assert_eq!(got, [(401, FLOOD)]);

    // acme's key: a rate limit of 2 per minute (burst 2), then 50 calls: 2 served, 48 refused.
    let resp = client
        .put(format!(
            "http://{}/admin/v1/tenants/{acme}/limits",
            gw.admin
        ))
        .bearer_auth(OPERATOR)
        .json(&json!({"rules": [{"level": "tenant", "rate": 2, "period_s": 60, "burst": 2}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = flood(url, key, 50).await;
    assert_eq!(got, [(200, 2), (429, 48)]);

    // The served ones are usage events; no refusal is.
    wait_for_rows(&pool, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rows: Vec<(Option<Uuid>, String, i64)> = loop {
        let rows: Vec<(Option<Uuid>, String, i64)> = sqlx::query_as(
            "SELECT tenant_id, outcome, sum(requests)::bigint FROM refused_requests \
             GROUP BY 1, 2 ORDER BY 2, 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let total: i64 = rows.iter().map(|r| r.2).sum();
        if total >= FLOOD as i64 + 48 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rows,
        [
            (Some(acme), "rate_limited".to_string(), 48),
            (None, "unauthenticated".to_string(), FLOOD as i64),
        ]
    );
    // One row per tenant, outcome and minute: the flood spans a few minutes at most.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM refused_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    let minutes =
        (Utc::now() - started.duration_trunc(TimeDelta::minutes(1)).unwrap()).num_minutes() + 1;
    assert!(
        stored <= 2 * minutes,
        "{stored} rows over {minutes} minutes"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2);

    // The metrics count every refusal.
    assert_eq!(requests_metric(gw.metrics, "unauthenticated").await, FLOOD);
    assert_eq!(requests_metric(gw.metrics, "rate_limited").await, 48);

    // The admin API's usage report and the billing summary still count acme's refusals.
    let day = Utc::now().duration_trunc(TimeDelta::days(1)).unwrap();
    let range = format!(
        "from={}&to={}",
        day.format("%Y-%m-%dT%H:%M:%SZ"),
        (day + TimeDelta::days(1)).format("%Y-%m-%dT%H:%M:%SZ")
    );
    for tz in ["UTC", "Asia/Kolkata"] {
        let report: Value = client
            .get(format!(
                "http://{}/admin/v1/tenants/{acme}/usage?{range}&tz={tz}",
                gw.admin
            ))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sum = |field: &str| -> i64 {
            report["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b[field].as_i64().unwrap())
                .sum()
        };
        assert_eq!(
            (
                sum("requests"),
                sum("billable_requests"),
                sum("error_requests")
            ),
            (50, 2, 48),
            "{tz}: {report}"
        );
    }
    let summary = maas_billing::usage_summary(
        &pool,
        "acme",
        started - TimeDelta::hours(1),
        Utc::now() + TimeDelta::hours(1),
    )
    .await
    .unwrap();
    assert_eq!((summary.requests, summary.refused_requests), (2, 48));
    drop(gw);
    drop_database(pool).await;
}
