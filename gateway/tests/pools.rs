//! Backend pools with real processes: several `maas-backend serve` on loopback behind one
//! `maas-gateway`, trained digits models, a real PostgreSQL (for keys and usage).
//!
//! Needs `DATABASE_URL` and the workspace's binaries (`cargo build --workspace --bins`, which
//! `make test` runs first).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::{
    admin_request, create_key, drop_database, free_addr, fresh_database, gateway_command,
    ChildGuard,
};
use serde_json::{json, Value};
use uuid::Uuid;

const OPERATOR: &str = "op-token-pools";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    common::workspace_bin(name)
}

/// A repository with `digits` (trained once per test binary), copied under `names`.
fn repo(names: &[&str]) -> PathBuf {
    static TRAINED: OnceLock<PathBuf> = OnceLock::new();
    let trained = TRAINED.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("maas-pools-trained-{}", Uuid::new_v4().simple()));
        let out = Command::new(bin("maas-train"))
            .args(["train", "--epochs", "5", "--repo"])
            .arg(&dir)
            .args(["--model", "digits", "--data"])
            .arg(workspace_root().join("data/digits.csv.gz"))
            .output()
            .expect("run maas-train");
        assert!(
            out.status.success(),
            "train: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    let dir = std::env::temp_dir().join(format!("maas-pools-repo-{}", Uuid::new_v4().simple()));
    for name in names {
        let to = dir.join(name).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(
            trained.join("digits/1/model.safetensors"),
            to.join("model.safetensors"),
        )
        .unwrap();
        std::fs::copy(
            trained.join("digits/config.toml"),
            dir.join(name).join("config.toml"),
        )
        .unwrap();
    }
    dir
}

/// A gateway serving `pools_toml` (a TOML fragment of `[[pools]]` entries), with the admin API.
struct Gateway {
    _child: ChildGuard,
    base: String,
    admin: String,
    metrics: SocketAddr,
    dir: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_gateway(db_url: &str, pools_toml: &str) -> Gateway {
    let listen = free_addr();
    let admin = free_addr();
    let metrics = free_addr();
    let dir = std::env::temp_dir().join(format!("maas-pools-gw-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\ngrace_period_s = 0\n[upstream]\nconnect_timeout_ms = 1000\n[admin]\nlisten = \"{admin}\"\n[metering]\nspool_dir = \"{}\"\nflush_interval_ms = 50\n{pools_toml}",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let mut cmd = gateway_command(db_url);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR)
        .env("MAAS_GATEWAY_METRICS__LISTEN", metrics.to_string());
    let (guard, _stdout) = common::spawn_until_ready(cmd, listen);
    Gateway {
        _child: guard,
        base: format!("http://{listen}"),
        admin: format!("http://{admin}"),
        metrics,
        dir,
    }
}

fn infer_body() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![3.0f32; 64]}]})
}

async fn infer(client: &reqwest::Client, gw: &Gateway, key: &str, model: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{}/v2/models/{model}/infer", gw.base))
        .bearer_auth(key)
        .json(&infer_body())
        .send()
        .await
        .expect("infer through the gateway");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The value of the `maas_gateway_backend_*` series `name` for `backend` of pool `pool`, from
/// the gateway's `GET /metrics` (parsed with a Prometheus text parser).
async fn backend_metric(
    client: &reqwest::Client,
    gw: &Gateway,
    name: &str,
    pool: &str,
    backend: SocketAddr,
) -> f64 {
    let text = client
        .get(format!("http://{}/metrics", gw.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let addr = backend.to_string();
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|x| {
            x.metric == name
                && x.labels.get("pool") == Some(pool)
                && x.labels.get("backend") == Some(addr.as_str())
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}{{pool={pool},backend={addr}}} in\n{text}"
    );
    found[0]
}

async fn pools(client: &reqwest::Client, gw: &Gateway) -> Value {
    let a = admin_request(
        client,
        &gw.admin,
        reqwest::Method::GET,
        "/admin/v1/pools",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    a.json()
}

/// The snapshot of backend `addr` in pool `pool`.
fn backend<'a>(snapshot: &'a Value, pool: &str, addr: SocketAddr) -> &'a Value {
    snapshot
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .and_then(|p| {
            p["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == addr.to_string())
        })
        .unwrap_or_else(|| panic!("no backend {addr} in pool {pool}: {snapshot}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_route_each_model_to_its_backends_and_list_what_a_key_may_call() {
    let (pool, db_url) = fresh_database().await;
    let (repo_a, repo_b) = (repo(&["digits"]), repo(&["digits_b"]));
    let (a, b) = (Backend::start(&repo_a), Backend::start(&repo_b));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"a\"\nbackends = [\"{}\"]\n[[pools]]\nname = \"b\"\nbackends = [\"{}\"]\npolicy = \"round_robin\"\n",
            a.addr, b.addr
        ),
    );
    let any_key = create_key(&db_url, "pools-tenant", None);
    let digits_key = create_key(&db_url, "pools-tenant", Some("digits"));
    let client = reqwest::Client::new();

    for _ in 0..3 {
        assert_eq!(infer(&client, &gw, &any_key, "digits").await.0, 200);
    }
    let (status, body) = infer(&client, &gw, &any_key, "digits_b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_name"], "digits_b");
    // A model no pool serves: 404 naming only it, and no backend saw the request.
    let (status, body) = infer(&client, &gw, &any_key, "nope").await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "unknown model 'nope'"}))
    );
    // The allow-list applies before routing.
    assert_eq!(infer(&client, &gw, &digits_key, "digits_b").await.0, 403);

    let snap = pools(&client, &gw).await;
    let (sa, sb) = (backend(&snap, "a", a.addr), backend(&snap, "b", b.addr));
    assert_eq!(sa["models"], json!(["digits"]));
    assert_eq!(sb["models"], json!(["digits_b"]));
    assert_eq!(sa["requests"], 3);
    assert_eq!(sb["requests"], 1);
    assert_eq!(
        (sa["healthy"].clone(), sa["in_flight"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(sa["entry"], a.addr.to_string());
    assert_eq!(snap[0]["policy"], "p2c");
    assert_eq!(snap[1]["policy"], "round_robin");
    let no_token = admin_request(
        &client,
        &gw.admin,
        reqwest::Method::GET,
        "/admin/v1/pools",
        None,
        None,
    )
    .await;
    assert_eq!(no_token.status, 401);

    // Server metadata and the repository index through the data path, with a key.
    let meta: Value = client
        .get(format!("{}/v2", gw.base))
        .bearer_auth(&digits_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["name"], "maas-gateway");
    assert_eq!(meta["extensions"], json!(["model_repository"]));
    let index = |key: String, body: Option<Value>| {
        let client = client.clone();
        let url = format!("{}/v2/repository/index", gw.base);
        async move {
            let mut req = client.post(url).bearer_auth(key);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        index(digits_key.clone(), None).await,
        (
            200,
            json!([{"name": "digits", "state": "READY", "reason": ""}])
        )
    );
    assert_eq!(
        index(any_key.clone(), Some(json!({"ready": true}))).await,
        (
            200,
            json!([
                {"name": "digits", "state": "READY", "reason": ""},
                {"name": "digits_b", "state": "READY", "reason": ""}
            ])
        )
    );
    let (status, body) = index(any_key.clone(), Some(json!({"ready": "yes"}))).await;
    assert_eq!(status, 400, "{body}");
    let unauthenticated = client
        .post(format!("{}/v2/repository/index", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // The OpenAPI document lists the route and its schema.
    let doc = admin_request(
        &client,
        &gw.admin,
        reqwest::Method::GET,
        "/admin/v1/openapi.json",
        None,
        None,
    )
    .await
    .json();
    assert!(doc["paths"]["/admin/v1/pools"]["get"].is_object());
    assert!(doc["components"]["schemas"]["BackendSnapshot"].is_object());
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loaded_or_unloaded_on_a_backend_is_routed_accordingly_within_the_discovery_interval(
) {
    let (pool, db_url) = fresh_database().await;
    let repo = repo(&["digits", "digits_b"]);
    let be = Backend::start(&repo);
    // A DNS name: `localhost` is resolved by the gateway (every address it has).
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [\"localhost:{}\"]\ndiscovery_interval_ms = 200\n",
            be.addr.port()
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    assert_eq!(infer(&client, &gw, &key, "digits_b").await.0, 200);
    let snap = pools(&client, &gw).await;
    assert_eq!(
        backend(&snap, "p", be.addr)["entry"],
        format!("localhost:{}", be.addr.port())
    );

    let control = |what: &'static str| {
        let client = client.clone();
        let url = format!("http://{}/v2/repository/models/digits_b/{what}", be.addr);
        async move {
            let r = client.post(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{what}");
        }
    };
    // Unloaded at the backend (not through the gateway): gone from routing within the interval
    // (five intervals allowed for scheduling on a loaded machine).
    control("unload").await;
    let t = Instant::now();
    let mut status = 0;
    while t.elapsed() < Duration::from_millis(1000) {
        status = infer(&client, &gw, &key, "digits_b").await.0;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        404,
        "still routed {:?} after the unload",
        t.elapsed()
    );
    assert_eq!(infer(&client, &gw, &key, "digits").await.0, 200);
    // Loaded again: routable again.
    control("load").await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1000) {
        status = infer(&client, &gw, &key, "digits_b").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "not routed {:?} after the load", t.elapsed());
    drop(gw);
    drop_database(pool).await;
}

/// Counters of the load loop.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_leaves_rotation_and_comes_back() {
    let (pool, db_url) = fresh_database().await;
    let repo = repo(&["digits"]);
    let a = Backend::start(&repo);
    let mut b = Backend::start(&repo);
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [\"{}\", \"{}\"]\n[pools.health]\ninterval_ms = 200\ntimeout_ms = 200\nsuccesses = 2\nfailures = 2\n",
            a.addr, b.addr
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    let load = Arc::new(Load::default());
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, load, key, url) = (
            client.clone(),
            load.clone(),
            key.clone(),
            format!("{}/v2/models/digits/infer", gw.base),
        );
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 20 s of requests whatever happens.
            let t = Instant::now();
            while !load.stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(20) {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&infer_body())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    load.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = pools(&client, &gw).await;
    let ok_before = load.ok.load(Ordering::Relaxed);
    assert!(
        ok_before >= 100,
        "only {ok_before} requests in the first second"
    );
    assert!(backend(&before, "p", b.addr)["requests"].as_u64().unwrap() > 0);
    b.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_1s = backend(&pools(&client, &gw).await, "p", b.addr).clone();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after_2s = backend(&pools(&client, &gw).await, "p", b.addr).clone();
    // Within a second of its death no request goes to it any more.
    assert_eq!(
        after_1s["requests"], after_2s["requests"],
        "{after_1s} / {after_2s}"
    );
    assert_eq!(after_2s["healthy"], false);
    assert_eq!(after_2s["in_flight"], 0);
    assert!(after_2s["ejections"].as_u64().unwrap() >= 1, "{after_2s}");
    assert!(after_2s["last_error"].is_string());
    // The same state in the gateway's Prometheus metrics.
    let metric = |name: &'static str, addr| backend_metric(&client, &gw, name, "p", addr);
    assert_eq!(metric("maas_gateway_backend_healthy", b.addr).await, 0.0);
    assert_eq!(metric("maas_gateway_backend_healthy", a.addr).await, 1.0);
    assert_eq!(metric("maas_gateway_backend_in_flight", b.addr).await, 0.0);
    assert_eq!(
        metric("maas_gateway_backend_requests_total", b.addr).await,
        after_2s["requests"].as_u64().unwrap() as f64
    );
    assert!(metric("maas_gateway_backend_ejections_total", b.addr).await >= 1.0);
    // Only requests being computed on it when it died may fail: at most one per client.
    let failed = load.failed.load(Ordering::Relaxed);
    println!(
        "killed backend: {} ok, {failed} failed so far; {} requests to it before its death",
        load.ok.load(Ordering::Relaxed),
        after_1s["requests"]
    );
    assert!(failed <= CLIENTS as u64, "{failed} failed requests");

    // Back on the same address: traffic again after the configured successes.
    b.restart();
    let t = Instant::now();
    let mut back = Value::Null;
    while t.elapsed() < Duration::from_secs(5) {
        back = backend(&pools(&client, &gw).await, "p", b.addr).clone();
        if back["requests"].as_u64() > after_2s["requests"].as_u64() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back["requests"].as_u64() > after_2s["requests"].as_u64(),
        "no traffic after restart: {back}"
    );
    assert_eq!(back["healthy"], true);
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        failed,
        "failures after the restart"
    );
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_a_503_naming_the_model_within_the_connect_timeout() {
    let (pool, db_url) = fresh_database().await;
    let repo = repo(&["digits"]);
    let (mut a, mut b) = (Backend::start(&repo), Backend::start(&repo));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    assert_eq!(infer(&client, &gw, &key, "digits").await.0, 200);
    a.kill();
    b.kill();
    // Before any health check noticed, and after: the same answer, well within the 1 s connect
    // timeout (refused connections fail at once on loopback).
    for _ in 0..3 {
        let t = Instant::now();
        let resp = client
            .post(format!("{}/v2/models/digits/infer", gw.base))
            .bearer_auth(&key)
            .json(&infer_body())
            .send()
            .await
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "no healthy backend is available for model 'digits', retry later"})
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // An unknown model is still a 404, not a 503.
    assert_eq!(infer(&client, &gw, &key, "nope").await.0, 404);
    drop(gw);
    drop_database(pool).await;
}

/// What PyPI's `tritonclient[http]`, unmodified, sees through the gateway with `key`
/// (`Authorization: Bearer` in its `headers`): the repository index, the server metadata,
/// whether `allowed` and `other` are ready, and the status of an index asked without a key.
const TRITONCLIENT_THROUGH_GATEWAY: &str = r#"
import json, sys
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
url, key, allowed, other = sys.argv[1:5]
headers = {"Authorization": "Bearer " + key}
client = httpclient.InferenceServerClient(url=url)
out = {
    "index": client.get_model_repository_index(headers=headers),
    "metadata": client.get_server_metadata(headers=headers),
    "allowed_ready": client.is_model_ready(allowed, headers=headers),
    "other_ready": client.is_model_ready(other, headers=headers),
}
try:
    client.get_model_repository_index()
    out["no_key"] = "200"
except InferenceServerException as e:
    out["no_key"] = str(e.status())
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_lists_through_the_gateway_exactly_the_models_a_key_may_call() {
    let python = workspace_root().join(".venv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import tritonclient.http"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        importable,
        "{} cannot import tritonclient.http; run `make setup` (scripts/setup.sh installs it)",
        python.display()
    );
    let (pool, db_url) = fresh_database().await;
    let (repo_a, repo_b) = (repo(&["digits", "digits_c"]), repo(&["digits_b"]));
    let (a, b) = (Backend::start(&repo_a), Backend::start(&repo_b));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"a\"\nbackends = [\"{}\"]\n[[pools]]\nname = \"b\"\nbackends = [\"{}\"]\n",
            a.addr, b.addr
        ),
    );
    // Two of the three models served, one on each pool.
    let key = create_key(&db_url, "pools-tenant", Some("digits,digits_b"));
    let host = gw.base.trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([
                "-c",
                TRITONCLIENT_THROUGH_GATEWAY,
                &host,
                &key,
                "digits",
                "digits_c",
            ])
            .output()
            .expect("run .venv/bin/python")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "tritonclient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        seen["index"],
        json!([
            {"name": "digits", "state": "READY", "reason": ""},
            {"name": "digits_b", "state": "READY", "reason": ""}
        ]),
        "{seen}"
    );
    assert_eq!(seen["metadata"]["name"], "maas-gateway", "{seen}");
    assert_eq!(seen["metadata"]["extensions"], json!(["model_repository"]));
    assert_eq!(seen["allowed_ready"], true, "{seen}");
    // Served by pool a, but not on the key's allow-list: not ready for this key.
    assert_eq!(seen["other_ready"], false, "{seen}");
    assert_eq!(seen["no_key"], "401", "{seen}");
    drop(gw);
    drop_database(pool).await;
}

/// `repo(&["digits"])` whose model holds each batch back `delay_ms` for more requests
/// (`max_queue_delay_us`): every request on it takes about that long.
fn slow_repo(delay_ms: u64) -> PathBuf {
    let dir = repo(&["digits"]);
    let config = dir.join("digits/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let slow = text.replace("max_batch_size = 0", "max_batch_size = 64")
        + &format!(
            "\n[dynamic_batching]\nmax_queue_delay_us = {}\n",
            delay_ms * 1000
        );
    std::fs::write(&config, slow).unwrap();
    dir
}

/// `n` concurrent infer requests through `gw`, each answering (status, body read, time taken);
/// returns once backend `slow` of pool `p` holds half of them in flight (round-robin).
async fn start_in_flight(
    client: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    n: usize,
    slow: SocketAddr,
) -> Vec<tokio::task::JoinHandle<(u16, bool, Duration)>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url, key) = (
            client.clone(),
            format!("{}/v2/models/digits/infer", gw.base),
            key.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(key)
                .json(&infer_body())
                .send()
                .await
                .expect("infer");
            let status = r.status().as_u16();
            let ok = r.bytes().await.is_ok();
            (status, ok, t.elapsed())
        }));
    }
    let t = Instant::now();
    let mut held = Value::Null;
    while t.elapsed() < Duration::from_millis(1000) {
        held = backend(&pools(client, gw).await, "p", slow).clone();
        if held["in_flight"] == n as u64 / 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held["in_flight"], n as u64 / 2, "{held}");
    tasks
}

/// Backend `addr` of pool `p` once it has no request in flight (a request's hold ends in the
/// gateway's logging phase, just after its client has the response), or after 500 ms.
async fn settled(client: &reqwest::Client, gw: &Gateway, addr: SocketAddr) -> Value {
    let t = Instant::now();
    loop {
        let b = backend(&pools(client, gw).await, "p", addr).clone();
        if b["in_flight"] == 0 || t.elapsed() > Duration::from_millis(500) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every task answered 200 with its body; `n` of them took at least `delay`.
async fn assert_all_finish(
    tasks: Vec<tokio::task::JoinHandle<(u16, bool, Duration)>>,
    delay: Duration,
    n: usize,
) {
    let mut slow = 0;
    for task in tasks {
        let (status, ok, took) = task.await.unwrap();
        assert_eq!((status, ok), (200, true));
        if took >= delay {
            slow += 1;
        }
    }
    assert_eq!(slow, n, "in-flight requests on the draining backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_draining_on_sigterm_finishes_its_in_flight_requests_and_gets_no_new_ones() {
    let (pool, db_url) = fresh_database().await;
    const DELAY_MS: u64 = 1500;
    let draining = Backend::start(&slow_repo(DELAY_MS));
    let other = Backend::start(&repo(&["digits"]));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [\"{}\", \"{}\"]\npolicy = \"round_robin\"\n[pools.health]\ninterval_ms = 200\ntimeout_ms = 200\nsuccesses = 2\nfailures = 2\n",
            draining.addr, other.addr
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    // Round-robin: of 8 concurrent requests, 4 wait on the slow backend.
    const IN_FLIGHT: usize = 8;
    let slow = start_in_flight(&client, &gw, &key, IN_FLIGHT, draining.addr).await;
    // SIGTERM: the backend stops being ready and drains.
    let pid = draining.child.as_ref().unwrap().0.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other_before = backend(&pools(&client, &gw).await, "p", other.addr)["requests"]
        .as_u64()
        .unwrap();
    // New requests while it drains: every one answered, by the other backend.
    const NEW: u64 = 40;
    for _ in 0..NEW {
        let (status, body) = infer(&client, &gw, &key, "digits").await;
        assert_eq!(status, 200, "{body}");
    }
    let snap = pools(&client, &gw).await;
    assert_eq!(
        backend(&snap, "p", other.addr)["requests"]
            .as_u64()
            .unwrap()
            - other_before,
        NEW,
        "{snap}"
    );
    // Its in-flight requests finish, each after the batching delay it was held for.
    assert_all_finish(slow, Duration::from_millis(DELAY_MS), IN_FLIGHT / 2).await;
    let after = settled(&client, &gw, draining.addr).await;
    assert_eq!(after["in_flight"], 0, "{after}");
    assert_eq!(after["healthy"], false, "{after}");
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weighted_policy_sends_requests_in_the_configured_ratio() {
    let (pool, db_url) = fresh_database().await;
    let repo = repo(&["digits"]);
    let (heavy, light) = (Backend::start(&repo), Backend::start(&repo));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [{{ address = \"{}\", weight = 3 }}, \"{}\"]\npolicy = \"weighted\"\n",
            heavy.addr, light.addr
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    const N: u64 = 400;
    for _ in 0..N {
        let (status, body) = infer(&client, &gw, &key, "digits").await;
        assert_eq!(status, 200, "{body}");
    }
    let snap = pools(&client, &gw).await;
    let h = backend(&snap, "p", heavy.addr)["requests"]
        .as_u64()
        .unwrap();
    let l = backend(&snap, "p", light.addr)["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(h + l, N, "{snap}");
    // Weights 3:1, so the heavy backend's share is 0.75. Each request is an independent draw:
    // the count is Binomial(400, 0.75), standard deviation sqrt(400 * 0.75 * 0.25) = 8.7, and
    // the tolerance is +-40 requests (0.65..0.85 of them, over 4.6 standard deviations; a
    // false failure about once in 200 000 runs).
    assert!(
        (260..=340).contains(&h),
        "heavy backend got {h} of {N} (light {l}), expected 300 +- 40"
    );
    drop(gw);
    drop_database(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_not_ready_gets_no_new_requests_while_its_in_flight_ones_finish() {
    let (pool, db_url) = fresh_database().await;
    const DELAY_MS: u64 = 2500;
    let unready_repo = slow_repo(DELAY_MS);
    let unready = Backend::start(&unready_repo);
    let other = Backend::start(&repo(&["digits"]));
    let gw = start_gateway(
        &db_url,
        &format!(
            "[[pools]]\nname = \"p\"\nbackends = [\"{}\", \"{}\"]\npolicy = \"round_robin\"\n[pools.health]\ninterval_ms = 200\ntimeout_ms = 200\nsuccesses = 2\nfailures = 2\n",
            unready.addr, other.addr
        ),
    );
    let key = create_key(&db_url, "pools-tenant", None);
    let client = reqwest::Client::new();
    const IN_FLIGHT: usize = 8;
    let slow = start_in_flight(&client, &gw, &key, IN_FLIGHT, unready.addr).await;
    // A model that fails to load makes the backend answer 503 on /v2/health/ready while it
    // keeps accepting connections and serving `digits`.
    let broken = unready_repo.join("broken");
    std::fs::create_dir_all(broken.join("1")).unwrap();
    std::fs::write(broken.join("config.toml"), "platform = \"nonsense\"\n").unwrap();
    let load = client
        .post(format!(
            "http://{}/v2/repository/models/broken/load",
            unready.addr
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(load.status(), 200);
    let ready = client
        .get(format!("http://{}/v2/health/ready", unready.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Out of rotation after `failures` active checks (two intervals; a second allowed).
    let t = Instant::now();
    let mut seen = Value::Null;
    while t.elapsed() < Duration::from_millis(1000) {
        seen = backend(&pools(&client, &gw).await, "p", unready.addr).clone();
        if seen["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen["healthy"], false, "{seen}");
    assert_eq!(seen["in_flight"], IN_FLIGHT as u64 / 2, "{seen}");
    let snap = pools(&client, &gw).await;
    let (unready_before, other_before) = (
        backend(&snap, "p", unready.addr)["requests"]
            .as_u64()
            .unwrap(),
        backend(&snap, "p", other.addr)["requests"]
            .as_u64()
            .unwrap(),
    );
    const NEW: u64 = 40;
    for _ in 0..NEW {
        let (status, body) = infer(&client, &gw, &key, "digits").await;
        assert_eq!(status, 200, "{body}");
    }
    let snap = pools(&client, &gw).await;
    assert_eq!(
        backend(&snap, "p", unready.addr)["requests"]
            .as_u64()
            .unwrap(),
        unready_before,
        "{snap}"
    );
    assert_eq!(
        backend(&snap, "p", other.addr)["requests"]
            .as_u64()
            .unwrap()
            - other_before,
        NEW,
        "{snap}"
    );
    assert_all_finish(slow, Duration::from_millis(DELAY_MS), IN_FLIGHT / 2).await;
    let after = settled(&client, &gw, unready.addr).await;
    assert_eq!(after["in_flight"], 0, "{after}");
    drop(gw);
    drop_database(pool).await;
}
