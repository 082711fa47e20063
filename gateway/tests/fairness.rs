//! Tenant-fair batching end to end: the real `maas-gateway` in front of the real
//! `maas-backend` (the digits model, trained once per test binary), sharing a gateway secret.
//!
//! The model batches up to 64 rows and holds a batch back 1.5 s for more
//! (`max_queue_delay_us`), with `max_queue_size = 8`: a burst of requests fills its queue and
//! stays there long enough to probe the refusal rule deterministically. When the queue is full,
//! the job refused is one of the fairness key with the most rows queued (ARCHITECTURE.md,
//! "Tenant-fair batching"), so a tenant with nothing queued is served while the flooding one
//! gets 503s. Refusal by key is also what a user can observe of the key a request was given:
//! a request in the flooding key is refused at once, a request in another key is queued.
//!
//! Needs `DATABASE_URL`; `make test` provides it and builds the binaries first.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{create_key, drop_database, fresh_database, start_gateway, ChildGuard};
use maas_protocol::{FAIRNESS_KEY, GATEWAY_SECRET, PRIORITY};
use serde_json::{json, Value};
use uuid::Uuid;

/// The secret shared by the gateway (`[upstream] gateway_secret`) and the backend.
const SECRET: &str = "fairness-test-secret";
/// The model's `max_queue_size`.
const QUEUE: usize = 8;

/// A repository with `digits` (trained once per test binary) batching up to 64 rows, holding
/// a batch back 1.5 s, with at most [`QUEUE`] requests queued.
fn repo() -> PathBuf {
    static TRAINED: OnceLock<PathBuf> = OnceLock::new();
    let trained = TRAINED.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("maas-fair-trained-{}", Uuid::new_v4().simple()));
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(common::workspace_bin("maas-train"))
            .args(["train", "--epochs", "2", "--repo"])
            .arg(&dir)
            .args(["--model", "digits", "--data"])
            .arg(root.join("data/digits.csv.gz"))
            .output()
            .expect("run maas-train");
        assert!(
            out.status.success(),
            "train: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    let dir = std::env::temp_dir().join(format!("maas-fair-repo-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("digits/1")).unwrap();
    std::fs::copy(
        trained.join("digits/1/model.safetensors"),
        dir.join("digits/1/model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(trained.join("digits/config.toml")).unwrap();
    let config = config.replace("max_batch_size = 0", "max_batch_size = 64")
        + &format!(
            "\n[dynamic_batching]\nmax_queue_delay_us = 1500000\nmax_queue_size = {QUEUE}\n"
        );
    std::fs::write(dir.join("digits/config.toml"), config).unwrap();
    dir
}

/// `maas-backend serve` on a free port with `--gateway-secret SECRET`; killed on drop.
fn start_backend(repo: &PathBuf) -> (ChildGuard, SocketAddr) {
    let mut child = Command::new(common::workspace_bin("maas-backend"))
        .args(["serve", "--repo"])
        .arg(repo)
        .args(["--listen", "127.0.0.1:0", "--gateway-secret", SECRET])
        .env_remove("MAAS_GATEWAY_SECRET")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start maas-backend");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let addr = line
        .trim()
        .strip_prefix("maas-backend listening on ")
        .unwrap_or_else(|| panic!("maas-backend did not start: {line:?}"))
        .parse()
        .unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    (guard, addr)
}

fn infer_body() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![3.0f32; 64]}]})
}

/// One infer request to `url` with `headers` (and `key` as a bearer token when given), in a
/// task answering its status.
fn send(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    headers: &[(&'static str, &str)],
) -> tokio::task::JoinHandle<u16> {
    let mut req = client.post(url).json(&infer_body());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    tokio::spawn(async move {
        let resp = req.send().await.expect("infer request");
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        status
    })
}

/// The digits series `name` with label `label` (any when `None`) on the backend at `backend`,
/// from its `GET /metrics` (parsed with a Prometheus text parser): a counter's or gauge's
/// value, a histogram's count (its `+Inf` bucket); `None` when there is no such series.
async fn backend_metric(
    client: &reqwest::Client,
    backend: SocketAddr,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<f64> {
    let text = client
        .get(format!("http://{backend}/metrics"))
        .send()
        .await
        .expect("backend /metrics")
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.get("model") == Some("digits")
                && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            _ => f64::NAN,
        })
}

/// `maas_inference_pending_request_count` of digits v1 on the backend at `backend`.
async fn pending(client: &reqwest::Client, backend: SocketAddr) -> f64 {
    backend_metric(
        client,
        backend,
        "maas_inference_pending_request_count",
        None,
    )
    .await
    .expect("a pending count for digits")
}

/// `maas_inference_refused_total{reason}` of digits v1.
async fn refused(client: &reqwest::Client, backend: SocketAddr, reason: &str) -> f64 {
    backend_metric(
        client,
        backend,
        "maas_inference_refused_total",
        Some(("reason", reason)),
    )
    .await
    .unwrap_or_else(|| panic!("no refusal count for {reason}"))
}

/// `maas_inference_queue_depth{priority}` of digits v1 (`None` before the level was used).
async fn depth(client: &reqwest::Client, backend: SocketAddr, level: &str) -> Option<f64> {
    backend_metric(
        client,
        backend,
        "maas_inference_queue_depth",
        Some(("priority", level)),
    )
    .await
}

/// Waits (5 s at most) until the backend's digits queue holds `n` requests.
async fn wait_pending(client: &reqwest::Client, backend: SocketAddr, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = pending(client, backend).await;
        if now == n as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the digits queue holds {now} requests, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts of 200 and 503 among `tasks`; any other status fails the test.
async fn outcomes(tasks: Vec<tokio::task::JoinHandle<u16>>) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            200 => ok += 1,
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_gets_the_503s_and_the_other_tenant_is_served() {
    let (pool, db_url) = fresh_database().await;
    let repo = repo();
    let (_backend, backend) = start_backend(&repo);
    let gw = start_gateway(
        &db_url,
        &[backend],
        &[
            ("MAAS_GATEWAY_UPSTREAM__GATEWAY_SECRET", SECRET.into()),
            ("MAAS_GATEWAY_UPSTREAM__FAIRNESS_HMAC_KEY", "hmac".into()),
        ],
    );
    let key_a = create_key(&db_url, "tenant-a", None);
    let key_b = create_key(&db_url, "tenant-b", None);
    // B's plan has priority level 4 (`plans.priority`), which the gateway sends as
    // x-maas-priority; A stays on the default plan, level 1.
    sqlx::query("INSERT INTO plans (name, priority) VALUES ('gold', 4)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET plan = 'gold' WHERE name = 'tenant-b'")
        .execute(&pool)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v2/models/digits/infer", gw.listen);

    // Tenant A floods: four times the queue at once. The queue fills with A's requests and
    // the rest are refused at once.
    let flood: Vec<_> = (0..4 * QUEUE)
        .map(|_| send(&client, &url, Some(&key_a), &[]))
        .collect();
    wait_pending(&client, backend, QUEUE).await;

    // Through the gateway, A's forged headers (another key, top priority, a guessed secret)
    // are removed: the request is in A's key, the heaviest, and refused at once.
    let forged = send(
        &client,
        &url,
        Some(&key_a),
        &[
            (FAIRNESS_KEY, "0123456789abcdef0123456789abcdef"),
            (PRIORITY, "16"),
            (GATEWAY_SECRET, "guess"),
        ],
    );
    let t = Instant::now();
    assert_eq!(forged.await.unwrap(), 503, "a forged key was honoured");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "the forged request was queued, not refused"
    );

    // Tenant B, meanwhile: each of its requests takes the place of one of A's.
    let b: Vec<_> = (0..QUEUE / 2)
        .map(|_| send(&client, &url, Some(&key_b), &[]))
        .collect();
    let (b_ok, b_refused) = outcomes(b).await;
    assert_eq!((b_ok, b_refused), (QUEUE / 2, 0), "tenant B refused");
    let (a_ok, a_refused) = outcomes(flood).await;
    assert_eq!(a_ok, QUEUE / 2, "A keeps the rest of the queue");
    assert_eq!(a_refused, 4 * QUEUE - QUEUE / 2);

    // The backend counts the refusals by reason: on arrival (A's flood beyond the queue and
    // the forged request) and taken out of the queue for B.
    assert_eq!(
        refused(&client, backend, "queue_full").await,
        (3 * QUEUE + 1) as f64
    );
    assert_eq!(
        refused(&client, backend, "evicted").await,
        (QUEUE / 2) as f64
    );
    assert_eq!(refused(&client, backend, "closed").await, 0.0);
    assert_eq!(depth(&client, backend, "1").await, Some(0.0));
    assert_eq!(depth(&client, backend, "4").await, Some(0.0));
    // B's requests waited at its plan's level, A's at the default one.
    let histogram = "maas_inference_queue_priority_duration_seconds";
    let served = |level: &'static str| {
        let client = client.clone();
        async move { backend_metric(&client, backend, histogram, Some(("priority", level))).await }
    };
    assert_eq!(served("4").await, Some((QUEUE / 2) as f64));
    assert_eq!(served("1").await, Some((QUEUE / 2) as f64));

    drop(gw);
    let _ = std::fs::remove_dir_all(&repo);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_calling_the_backend_directly_cannot_forge_a_fairness_key() {
    let repo = repo();
    let (_backend, backend) = start_backend(&repo);
    let client = reqwest::Client::new();
    let url = format!("http://{backend}/v2/models/digits/infer");

    // The queue fills with requests without fairness headers: the default key.
    let held: Vec<_> = (0..QUEUE).map(|_| send(&client, &url, None, &[])).collect();
    wait_pending(&client, backend, QUEUE).await;

    // Another key and a top priority with a wrong secret: the default key, refused at once.
    let another = "0123456789abcdef0123456789abcdef";
    let forged = [
        (FAIRNESS_KEY, another),
        (PRIORITY, "16"),
        (GATEWAY_SECRET, "guess"),
    ];
    assert_eq!(send(&client, &url, None, &forged).await.unwrap(), 503);
    // Without any secret: the same.
    assert_eq!(send(&client, &url, None, &forged[..2]).await.unwrap(), 503);
    assert_eq!(pending(&client, backend).await, QUEUE as f64);
    // Only the default level was queued at.
    assert_eq!(depth(&client, backend, "1").await, Some(QUEUE as f64));
    assert_eq!(depth(&client, backend, "16").await, None);

    // With the gateway's secret the key and level are honoured: the request is queued at its
    // level in place of one of the default key's.
    let honoured = [
        (FAIRNESS_KEY, another),
        (PRIORITY, "3"),
        (GATEWAY_SECRET, SECRET),
    ];
    let gateway = send(&client, &url, None, &honoured);
    let deadline = Instant::now() + Duration::from_secs(2);
    while depth(&client, backend, "3").await != Some(1.0) {
        assert!(Instant::now() < deadline, "level 3 never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth(&client, backend, "1").await, Some((QUEUE - 1) as f64));
    assert_eq!(gateway.await.unwrap(), 200);
    let (ok, evicted) = outcomes(held).await;
    assert_eq!((ok, evicted), (QUEUE - 1, 1));

    // The refusals by reason, and the queue time per level: one request at level 3, the
    // default key's served ones at level 1.
    assert_eq!(refused(&client, backend, "queue_full").await, 2.0);
    assert_eq!(refused(&client, backend, "evicted").await, 1.0);
    let histogram = "maas_inference_queue_priority_duration_seconds";
    let count = |level: &'static str| {
        let client = client.clone();
        async move { backend_metric(&client, backend, histogram, Some(("priority", level))).await }
    };
    assert_eq!(count("3").await, Some(1.0));
    assert_eq!(count("1").await, Some((QUEUE - 1) as f64));
    assert_eq!(depth(&client, backend, "3").await, Some(0.0));

    let _ = std::fs::remove_dir_all(&repo);
}
