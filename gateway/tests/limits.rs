//! Rate limits, concurrency limits and quotas through the real gateway binary, with a real
//! Redis and PostgreSQL: the GCRA bound holds exactly across two gateway instances under 64
//! concurrent clients, and with the in-process (governor) limiter; a refusal by one limit
//! consumes nothing from another; Redis stopped mid-run neither hangs a request nor turns into
//! a 5xx under fail-open (and is a 503 under fail-closed); concurrency slots come back after
//! clients abort; monthly quotas refuse with a body naming them and are rebuilt from
//! PostgreSQL when Redis loses them. Against a Redis Cluster of three primaries (the keys share
//! the tenant's hash tag): the same bound, and a primary killed mid-run under fail-open.
//!
//! Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both); the Redis-failure and
//! cluster tests start their own `redis-server`s on free ports.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use uuid::Uuid;

const OPERATOR: &str = "test-operator-token-0123456789";

/// Environment for the Redis limiter. The Redis timeout is 1 s unless `extra` says otherwise:
/// these tests share two cores with 64 clients and several gateways, where the production
/// default of 20 ms would send decisions to the fail-open fallback (which by design does not
/// keep the shared bound); the outage tests set their own.
fn redis_env(url: &str, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("REDIS_URL", url.to_string()),
        ("MAAS_GATEWAY_LIMITS__BACKEND", "redis".to_string()),
        ("MAAS_GATEWAY_LIMITS__REDIS_TIMEOUT_MS", "1000".to_string()),
    ];
    for (k, v) in extra {
        env.push((leak(k), v.to_string()));
    }
    env
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

async fn put_limits(client: &reqwest::Client, admin: SocketAddr, path: &str, rules: Value) {
    let resp = client
        .put(format!("http://{admin}{path}"))
        .bearer_auth(OPERATOR)
        .json(&json!({ "rules": rules }))
        .send()
        .await
        .expect("admin request");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {body}");
}

/// The API key id of `secret` (its hash is unique).
async fn key_id(pool: &sqlx::PgPool, secret: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    sqlx::query_scalar("SELECT id FROM api_keys WHERE secret_sha256 = $1")
        .bind(hash)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The Redis key of an API key's limit `suffix` (`gcra`, `conc`): the limiter's keys carry
/// the tenant id as their Redis Cluster hash tag.
async fn key_counter(pool: &sqlx::PgPool, key_id: Uuid, suffix: &str) -> String {
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM api_keys WHERE id = $1")
        .bind(key_id)
        .fetch_one(pool)
        .await
        .unwrap();
    format!("maas:rl:{{{tenant}}}:k:{key_id}:{suffix}")
}

struct Outcome {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

async fn call(client: &reqwest::Client, gw: SocketAddr, model: &str, key: &str) -> Outcome {
    let resp = client
        .post(format!("http://{gw}/v2/models/{model}/infer"))
        .bearer_auth(key)
        .body(BODY)
        .send()
        .await
        .expect("infer request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    Outcome {
        status,
        body,
        headers,
    }
}

/// 64 clients spread over `gateways` for `duration`: (admitted, refused, other, window) where
/// window runs from the first send to the last answer.
async fn flood(
    gateways: &[SocketAddr],
    key: &str,
    duration: Duration,
) -> (u64, u64, Vec<u16>, Duration, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let others = Arc::new(std::sync::Mutex::new(Vec::new()));
    let slowest = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let gw = gateways[c % gateways.len()];
        let (client, key) = (client.clone(), key.to_string());
        let (admitted, refused, others, slowest) = (
            admitted.clone(),
            refused.clone(),
            others.clone(),
            slowest.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Bounded in time and in count.
            for _ in 0..2000 {
                if start.elapsed() >= duration {
                    break;
                }
                let sent = Instant::now();
                let resp = client
                    .post(format!("http://{gw}/v2/models/dense/infer"))
                    .bearer_auth(&key)
                    .body(BODY)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                slowest.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                match resp.map(|r| r.status().as_u16()) {
                    Ok(200) => admitted.fetch_add(1, Ordering::Relaxed),
                    Ok(429) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        // A refused client waits a little, like a polite one would.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        0
                    }
                    Ok(s) => {
                        others.lock().unwrap().push(s);
                        0
                    }
                    Err(_) => {
                        others.lock().unwrap().push(0);
                        0
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let window = start.elapsed();
    let others = others.lock().unwrap().clone();
    (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        others,
        window,
        Duration::from_micros(slowest.load(Ordering::Relaxed)),
    )
}

/// The GCRA bound: `burst` at once plus `rate` per second over `window`.
fn bound(rate: u64, burst: u64, window: Duration) -> u64 {
    burst + (rate as f64 * window.as_secs_f64()).floor() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_never_admit_more_than_the_gcra_bound() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let redis = redis_url();
    let mut env_a = redis_env(&redis, &[("MAAS_GATEWAY_LIMITS__GATEWAY_INSTANCES", "2")]);
    env_a.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let a = start_gateway(&db_url, &[backend], &env_a);
    let b = start_gateway(
        &db_url,
        &[backend],
        &redis_env(&redis, &[("MAAS_GATEWAY_LIMITS__GATEWAY_INSTANCES", "2")]),
    );
    let client = reqwest::Client::new();
    let k1 = create_key(&db_url, "acme", None);
    let k2 = create_key(&db_url, "acme", None);
    let k1_id = key_id(&pool, &k1).await;
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (rate, burst) = (40u64, 5u64);
    put_limits(
        &client,
        a.admin,
        &format!("/admin/v1/keys/{k1_id}/limits"),
        json!([{"level": "key", "rate": rate, "burst": burst}]),
    )
    .await;

    let (admitted, refused, others, window, _) =
        flood(&[a.listen, b.listen], &k1, Duration::from_secs(3)).await;
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    let max = bound(rate, burst, window);
    assert!(
        admitted <= max,
        "admitted {admitted} > bound {max} (rate {rate}/s x {window:?} + burst {burst})"
    );
    // Not stuck either: at least half the rate got through.
    assert!(admitted >= rate * 3 / 2, "only {admitted} admitted");
    assert!(refused > 0);

    // Headers: the policy and the state on a 200, Retry-After and the policy on a 429.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = call(&client, a.listen, "dense", &k1).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["ratelimit-policy"], "\"key-rps\";q=40;w=1");
    let state = ok.headers["ratelimit"].to_str().unwrap().to_string();
    assert!(state.starts_with("\"key-rps\";r="), "{state}");
    let mut last = None;
    for _ in 0..20 {
        let o = call(&client, b.listen, "dense", &k1).await;
        if o.status == 429 {
            last = Some(o);
            break;
        }
    }
    let refused = last.expect("a burst of 20 was never refused");
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.headers["ratelimit-policy"], "\"key-rps\";q=40;w=1");
    assert_eq!(refused.headers["ratelimit"], "\"key-rps\";r=0;t=1");
    assert_eq!(
        refused.body["error"],
        "rate limit exceeded: key-rps allows 40 requests per 1 s (burst 5); retry after 1 s"
    );

    // A refusal by the key's limit consumes nothing from the tenant's: tenant burst 10 at one
    // per minute; k1 may send 3 per minute. 20 from k1 = 3 admitted; k2 then gets the other 7.
    put_limits(
        &client,
        a.admin,
        &format!("/admin/v1/tenants/{tenant}/limits"),
        json!([{"level": "tenant", "rate": 1, "period_s": 60, "burst": 10}]),
    )
    .await;
    put_limits(
        &client,
        a.admin,
        &format!("/admin/v1/keys/{k1_id}/limits"),
        json!([{"level": "key", "rate": 1, "period_s": 60, "burst": 3}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut k1_ok = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { a.listen } else { b.listen };
        if call(&client, gw, "dense", &k1).await.status == 200 {
            k1_ok += 1;
        }
    }
    assert_eq!(k1_ok, 3);
    let mut k2_ok = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { a.listen } else { b.listen };
        let o = call(&client, gw, "dense", &k2).await;
        if o.status == 200 {
            k2_ok += 1;
        } else {
            assert!(
                o.body["error"].as_str().unwrap().contains("tenant-rps"),
                "{}",
                o.body
            );
        }
    }
    assert_eq!(k2_ok, 7, "the tenant's burst of 10 minus k1's 3 admitted");
    drop((a, b));
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_limiter_keeps_the_same_bound() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string())],
    );
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    let id = key_id(&pool, &key).await;
    let (rate, burst) = (50u64, 8u64);
    put_limits(
        &client,
        gw.admin,
        &format!("/admin/v1/keys/{id}/limits"),
        json!([{"level": "key", "rate": rate, "burst": burst, "concurrency": 64}]),
    )
    .await;
    // The cache TTL (200 ms) lets the change through without Redis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (admitted, refused, others, window, _) =
        flood(&[gw.listen], &key, Duration::from_secs(2)).await;
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    let max = bound(rate, burst, window);
    assert!(admitted <= max, "admitted {admitted} > bound {max}");
    assert!(admitted >= rate, "only {admitted} admitted");
    assert!(refused > 0);
    let ok = call(&client, gw.listen, "dense", &key).await;
    if ok.status == 200 {
        assert_eq!(
            ok.headers["ratelimit-policy"],
            "\"key-rps\";q=50;w=1, \"key-concurrency\";q=64;qu=\"concurrent-requests\""
        );
    }
    drop(gw);
    drop_database(pool).await;
}

/// A private `redis-server` on a free port (killed on drop).
struct PrivateRedis {
    _child: ChildGuard,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/setup.sh)");
        let r = PrivateRedis {
            _child: ChildGuard(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A gateway using the private Redis at `redis_url` with the extra limiter settings `extra`,
/// and a key allowed 1,000 requests/s (burst 100) that has made one admitted call.
async fn gateway_with_limited_key(
    redis_url: &str,
    extra: &[(&str, &str)],
) -> (sqlx::PgPool, RunningGateway, reqwest::Client, String, Uuid) {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let mut env = redis_env(redis_url, extra);
    env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let gw = start_gateway(&db_url, &[backend], &env);
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    let id = key_id(&pool, &key).await;
    put_limits(
        &client,
        gw.admin,
        &format!("/admin/v1/keys/{id}/limits"),
        json!([{"level": "key", "rate": 1000, "burst": 100}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&client, gw.listen, "dense", &key).await.status, 200);
    (pool, gw, client, key, id)
}

async fn redis_outage(policy: &str) -> (Vec<u16>, Duration, u64) {
    let port = free_addr().port();
    let redis = PrivateRedis::start(port);
    let (pool, gw, client, key, id) = gateway_with_limited_key(
        &redis.url(),
        &[
            ("MAAS_GATEWAY_LIMITS__ON_REDIS_FAILURE", policy),
            ("MAAS_GATEWAY_LIMITS__REDIS_RETRY_MS", "200"),
            ("MAAS_GATEWAY_LIMITS__REDIS_TIMEOUT_MS", "100"),
        ],
    )
    .await;
    let gcra_key = key_counter(&pool, id, "gcra").await;
    // Redis is used: the key's GCRA state exists there.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let tat: Option<String> = redis::cmd("GET")
        .arg(&gcra_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(tat.is_some(), "the limiter did not use Redis");

    // Redis dies one second into a three-second run.
    let flood_key = key.clone();
    let gws = [gw.listen];
    let run = tokio::spawn(async move { flood(&gws, &flood_key, Duration::from_secs(3)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(redis);
    let (admitted, _refused, others, _window, slowest) = run.await.unwrap();

    // It comes back on the same port: the limiter uses it again by itself.
    let redis = PrivateRedis::start(port);
    let mut back = false;
    for _ in 0..100 {
        let _ = call(&client, gw.listen, "dense", &key).await;
        let mut conn = match redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
        {
            Ok(c) => c,
            Err(_) => continue,
        };
        let tat: Option<String> = redis::cmd("GET")
            .arg(&gcra_key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if tat.is_some() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the limiter never went back to Redis");
    drop((gw, redis));
    drop_database(pool).await;
    (others, slowest, admitted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_fail_open_never_hangs_or_fails_a_request() {
    let (others, slowest, admitted) = redis_outage("open").await;
    assert!(
        others.is_empty(),
        "non-200/429 answers under fail-open: {others:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    assert!(admitted > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_fail_closed_answers_503() {
    let (others, slowest, _) = redis_outage("closed").await;
    assert!(!others.is_empty(), "no 503 while Redis was down");
    assert!(others.iter().all(|s| *s == 503), "{others:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_come_back_after_clients_abort() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let redis = redis_url();
    let mut env = redis_env(&redis, &[]);
    env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let gw = start_gateway(&db_url, &[backend], &env);
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    let id = key_id(&pool, &key).await;
    let conc_key = key_counter(&pool, id, "conc").await;
    put_limits(
        &client,
        gw.admin,
        &format!("/admin/v1/keys/{id}/limits"),
        json!([{"level": "key", "concurrency": 4}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_use = || async {
        let mut conn = redis::Client::open(redis.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let n: i64 = redis::cmd("ZCARD")
            .arg(&conc_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    };

    // Four slow requests hold the four slots: a fifth is refused, naming the limit.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, key) = (client.clone(), key.clone());
        let gw = gw.listen;
        held.push(tokio::spawn(async move {
            call(&client, gw, "slow", &key).await.status
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fifth = call(&client, gw.listen, "dense", &key).await;
    assert_eq!(fifth.status, 429);
    assert_eq!(
        fifth.body["error"],
        "concurrency limit reached: key-concurrency allows 4 requests in flight"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }

    // Clients that give up mid-request (100 ms into a 300 ms answer) still free their slots.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut gave_up = 0;
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (c, key) = (impatient.clone(), key.clone());
            let gw = gw.listen;
            tasks.push(tokio::spawn(async move {
                c.post(format!("http://{gw}/v2/models/slow/infer"))
                    .bearer_auth(key)
                    .body(BODY)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                // Timed out mid-request.
                Err(_) => gave_up += 1,
                // Or refused while the previous round's slots were being released.
                Ok(status) => assert_eq!(status, 429),
            }
        }
    }
    assert!(gave_up >= 4, "only {gave_up} clients gave up mid-request");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = in_use().await;
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} slots still held 3 s after the clients left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(&client, gw.listen, "dense", &key).await.status, 200);
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_quota_and_budget_refuse_and_rebuild_from_postgres() {
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let redis = redis_url();
    let mut env = redis_env(&redis, &[]);
    env.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let gw = start_gateway(&db_url, &[backend], &env);
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "quota-co", None);
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'quota-co'")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Every answer of the fake backend reports 7 inference units. A quota of 20: three calls
    // fit (1 reserved each, 7 settled: 7, 14, 21), the fourth is refused.
    put_limits(
        &client,
        gw.admin,
        &format!("/admin/v1/tenants/{tenant}/limits"),
        json!([{"level": "tenant", "monthly_inference_quota": 20}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let o = call(&client, gw.listen, "dense", &key).await;
        assert_eq!(o.status, 200, "call {i}: {}", o.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let month = chrono::Utc::now().format("%Y-%m").to_string();
    let refused = call(&client, gw.listen, "dense", &key).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.body["error"],
        format!("monthly inference quota exhausted: tenant-quota allows 20 inference units in {month} (UTC)")
    );
    assert!(refused.headers.contains_key("retry-after"));

    // Redis loses the counter: it is rebuilt from PostgreSQL's usage (21), still refused.
    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counter = format!("maas:rl:{{{tenant}}}:t:{tenant}:q:{month}");
    let before: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, 21);
    let _: () = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the cached refusal
    let again = call(&client, gw.listen, "dense", &key).await;
    assert_eq!(again.status, 429, "{}", again.body);
    let rebuilt: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(rebuilt, 21);

    // Budget: 100 micro-USD per request on the default plan, 250 per month: two calls.
    sqlx::query("UPDATE plan_prices SET per_request_micro_usd = 100 WHERE plan = 'default'")
        .execute(&pool)
        .await
        .unwrap();
    put_limits(
        &client,
        gw.admin,
        &format!("/admin/v1/tenants/{tenant}/limits"),
        json!([{"level": "tenant", "monthly_budget_micro_usd": 250}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The month so far (3 calls = 300 micro-USD) is already over: rebuilt from PostgreSQL.
    let o = call(&client, gw.listen, "dense", &key).await;
    assert_eq!(o.status, 429, "{}", o.body);
    assert_eq!(
        o.body["error"],
        format!("monthly budget exhausted: tenant-budget allows 250 micro-USD in {month} (UTC)")
    );
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_times_out_into_the_fallback() {
    let redis = PrivateRedis::start(free_addr().port());
    let (pool, gw, client, key, _id) = gateway_with_limited_key(
        &redis.url(),
        &[
            ("MAAS_GATEWAY_LIMITS__REDIS_TIMEOUT_MS", "50"),
            ("MAAS_GATEWAY_LIMITS__REDIS_RETRY_MS", "100"),
        ],
    )
    .await;
    // Redis stops answering for 1.5 s (every client paused): no request waits for it.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, key) = (client.clone(), key.clone());
        let gw = gw.listen;
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let status = call(&client, gw, "dense", &key).await.status;
            (status, sent.elapsed())
        }));
    }
    for t in tasks {
        let (status, took) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            took < Duration::from_millis(1000),
            "a request waited {took:?} for a paused Redis"
        );
    }
    drop(gw);
    drop(redis);
    drop_database(pool).await;
}

/// A Redis Cluster of three primaries (no replicas) from `redis-server --cluster-enabled yes`
/// on free loopback ports, joined by `redis-cli --cluster create`; every node killed on drop.
struct RedisCluster {
    nodes: Vec<(u16, Option<ChildGuard>)>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("maas-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_addr().port();
            let child = Command::new("redis-server")
                .current_dir(&dir)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (installed by scripts/setup.sh)");
            nodes.push((port, Some(ChildGuard(child))));
        }
        for (port, _) in &nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|(p, _)| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster never reached state ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis_url` naming every node as a seed.
    fn url(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    /// The port of the primary serving `key`'s slot (the others answer MOVED).
    fn owner(&self, key: &str) -> u16 {
        let slot = cli(self.nodes[0].0, &["CLUSTER", "KEYSLOT", key]);
        let slot: u16 = slot.trim().parse().expect("CLUSTER KEYSLOT");
        for (port, _) in &self.nodes {
            let answer = cli(*port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
            let moved = cli(*port, &["GET", key]);
            if !moved.contains("MOVED") && answer.trim().parse::<u64>().is_ok() {
                return *port;
            }
        }
        panic!("no node serves slot {slot}");
    }

    /// SIGKILL the node on `port`.
    fn kill(&mut self, port: u16) {
        for (p, child) in &mut self.nodes {
            if *p == port {
                drop(child.take());
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            drop(child.take());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p port ARGS...` (no redirections followed), its stdout.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_the_gcra_bound_and_fails_open_when_a_primary_dies() {
    let mut cluster = RedisCluster::start();
    let (pool, db_url) = fresh_database().await;
    let backend = start_backend().await;
    let extra = [
        ("MAAS_GATEWAY_REDIS_CLUSTER", "true"),
        ("MAAS_GATEWAY_LIMITS__GATEWAY_INSTANCES", "2"),
        ("MAAS_GATEWAY_LIMITS__ON_REDIS_FAILURE", "open"),
        ("MAAS_GATEWAY_LIMITS__REDIS_RETRY_MS", "200"),
    ];
    let mut env_a = redis_env(&cluster.url(), &extra);
    env_a.push(("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR.to_string()));
    let a = start_gateway(&db_url, &[backend], &env_a);
    let b = start_gateway(&db_url, &[backend], &redis_env(&cluster.url(), &extra));
    let client = reqwest::Client::new();
    let key = create_key(&db_url, "acme", None);
    let id = key_id(&pool, &key).await;
    let (rate, burst) = (40u64, 5u64);
    put_limits(
        &client,
        a.admin,
        &format!("/admin/v1/keys/{id}/limits"),
        json!([{"level": "key", "rate": rate, "burst": burst}]),
    )
    .await;

    // Exactness across two gateways, the state in the cluster.
    let (admitted, refused, others, window, _) =
        flood(&[a.listen, b.listen], &key, Duration::from_secs(3)).await;
    assert!(others.is_empty(), "unexpected answers: {others:?}");
    let max = bound(rate, burst, window);
    assert!(
        admitted <= max,
        "admitted {admitted} > bound {max} (rate {rate}/s x {window:?} + burst {burst})"
    );
    assert!(admitted >= rate * 3 / 2, "only {admitted} admitted");
    assert!(refused > 0);
    let gcra_key = key_counter(&pool, id, "gcra").await;
    let owner = cluster.owner(&gcra_key);
    assert!(
        !cli(owner, &["GET", &gcra_key]).trim().is_empty(),
        "no GCRA state in the cluster"
    );

    // The primary holding the tenant's slot is killed one second into a three-second run:
    // under fail-open no request hangs and none is answered with anything but 200 or 429.
    let gws = [a.listen, b.listen];
    let flood_key = key.clone();
    let run = tokio::spawn(async move { flood(&gws, &flood_key, Duration::from_secs(3)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(owner);
    let (admitted, _refused, others, _window, slowest) = run.await.unwrap();
    assert!(
        others.is_empty(),
        "answers other than 200/429 after a primary died: {others:?}"
    );
    assert!(admitted > 0);
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );
    drop((a, b));
    drop_database(pool).await;
}
