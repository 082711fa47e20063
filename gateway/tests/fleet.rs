//! A fleet on one machine, with faults. Three `maas-gateway` processes (each its own spool
//! folder) behind a real L4 balancer, Debian's `haproxy` (mode tcp, round robin, each gateway
//! health-checked on its own `GET /readyz`), one Redis (the limiter's shared counters, the
//! caches' invalidations), one PostgreSQL (keys, limits, usage), and two backend pools
//! (`[[pools]]` `a` and `b`) of two real `maas-backend` processes each, serving a small dense
//! model per pool.
//!
//! An open-loop load of `LOAD_RPS` requests per second for `LOAD_SECONDS` goes through
//! haproxy, half to each pool's model, with one tenant whose rate limit (`RATE_OF_LOAD` of
//! the load per second, burst `BURST`) the load exceeds. Mid-run one gateway is SIGKILLed and started again
//! `GATEWAY_DOWN` later on the same spool folder and addresses, and one backend of pool `a`
//! is SIGKILLed (not restarted). After a graceful stop (SIGTERM) of every gateway:
//!
//! - **usage**: every 2xx the client saw (its `x-request-id`) has exactly one usage row, and
//!   the rows with no 2xx the client saw are only requests cut off by the kill after the
//!   backend had answered; with none of those, usage rows = client 2xx exactly. The killed
//!   gateway writes nothing before its death (its flush interval and batch size exceed the
//!   run), so everything it served is billed from its spool by the restarted process. A
//!   response counts as seen once its 2xx header is (the spool's *billable* record is written
//!   before that header leaves the gateway, ARCHITECTURE.md "Exactly-once metering"). The
//!   hourly rollup agrees, and no spool holds an event that PostgreSQL lacks.
//! - **limits**: client 2xx <= rate x window + `BURST` across the three gateways (window:
//!   first request sent to last answer received), and some requests were refused (429).
//! - **errors**: client errors (not 2xx, not 429, or no answer) are at most the requests in
//!   flight at the kill, measured in the client over the whole fleet (sent before the killed
//!   process was reaped, not answered when the signal was sent): an upper bound of those in
//!   flight on the killed gateway, which the client cannot tell apart behind haproxy.
//! - **pools**: pool `a` kept serving its model after its backend's death, and every gateway's
//!   active health check marks that backend down; haproxy marked the killed gateway down and
//!   back up, and the restarted gateway served again.
//!
//! Its size is in the constants below; `make fleet` runs it larger (`MAAS_FLEET_RPS`,
//! `MAAS_FLEET_SECONDS`). Needs `DATABASE_URL` and `REDIS_URL` (`make test` provides both),
//! `haproxy` (`make setup` installs it) and the workspace's binaries.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::{
    admin_request, create_key, drop_database, free_addr, fresh_database, gateway_command,
    redis_url, spawn_until_ready, workspace_bin, ChildGuard,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const OPERATOR: &str = "fleet-operator-token-0123456789";
/// Gateways behind haproxy.
const GATEWAYS: usize = 3;
/// The backend pools: (pool name, the one model its backends serve).
const POOLS: [(&str, &str); 2] = [("a", "fleet_a"), ("b", "fleet_b")];
/// `maas-backend` processes per pool.
const BACKENDS_PER_POOL: usize = 2;
/// The dense model's layer widths (`maas-bench init-dense --dims`), input first.
const DIMS: &str = "16,32,4";
/// Input features of that model (the first of [`DIMS`]).
const FEATURES: usize = 16;
/// Offered load, requests per second (open loop: sent on schedule, whatever the answers).
const LOAD_RPS: u64 = 300;
/// Length of the load, seconds.
const LOAD_SECONDS: u64 = 20;
/// Requests the client keeps in flight at most; a request due while this many wait is not
/// sent (and counted as skipped).
const MAX_IN_FLIGHT: usize = 256;
/// The tenant's rate limit, requests per second, as a fraction of the offered load.
const RATE_OF_LOAD: f64 = 2.0 / 3.0;
/// The tenant's burst.
const BURST: u64 = 20;
/// When gateway 0 is SIGKILLed, as a fraction of the load's length.
const GATEWAY_KILL_AT: f64 = 0.3;
/// How long it stays down before it is started again on the same spool.
const GATEWAY_DOWN: Duration = Duration::from_secs(2);
/// When the second backend of pool `a` is SIGKILLed, as a fraction of the load's length.
const BACKEND_KILL_AT: f64 = 0.6;
/// One request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateways' usage flush interval, milliseconds; the first run of the gateway that is
/// killed uses [`VICTIM_FLUSH_MS`] and [`VICTIM_BATCH`], more than the run lasts and holds,
/// so its usage is all in its spool when it dies.
const FLUSH_MS: u64 = 100;
const VICTIM_FLUSH_MS: u64 = 600_000;
const VICTIM_BATCH: u64 = 100_000;

/// The load's size: the constants, or `MAAS_FLEET_RPS` / `MAAS_FLEET_SECONDS` (`make fleet`).
#[derive(Debug, Clone, Copy)]
struct Size {
    rps: u64,
    seconds: u64,
    /// The tenant's rate limit, requests per second.
    rate: u64,
}

impl Size {
    fn from_env() -> Size {
        let read = |name: &str, default: u64| match std::env::var(name) {
            Ok(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a positive integer")),
            Err(_) => default,
        };
        let rps = read("MAAS_FLEET_RPS", LOAD_RPS).max(3);
        let seconds = read("MAAS_FLEET_SECONDS", LOAD_SECONDS).max(5);
        Size {
            rps,
            seconds,
            rate: (rps as f64 * RATE_OF_LOAD) as u64,
        }
    }

    fn at(&self, fraction: f64) -> Duration {
        Duration::from_secs_f64(self.seconds as f64 * fraction)
    }
}

/// A repository holding the dense model `model` (random weights, `init-dense`).
fn model_repository(model: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("maas-fleet-repo-{}", Uuid::new_v4().simple()));
    let out = Command::new(workspace_bin("maas-bench"))
        .args(["init-dense", "--repo"])
        .arg(&dir)
        .args(["--model", model, "--dims", DIMS])
        .output()
        .expect("run maas-bench init-dense");
    assert!(
        out.status.success(),
        "init-dense: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// One gateway of the fleet: fixed addresses and spool folder, so that it can be started again
/// where it was.
struct FleetGateway {
    child: Option<ChildGuard>,
    db_url: String,
    config: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    spool: PathBuf,
}

impl FleetGateway {
    /// Configured for `pools_toml` under `dir`, not started.
    fn new(dir: &Path, db_url: &str, pools_toml: &str) -> FleetGateway {
        std::fs::create_dir_all(dir).unwrap();
        let (listen, admin, metrics) = (free_addr(), free_addr(), free_addr());
        let spool = dir.join("spool");
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\ngrace_period_s = 2\ngraceful_shutdown_timeout_s = 2\n\
                 [upstream]\nconnect_timeout_ms = 1000\n[admin]\nlisten = \"{admin}\"\n\
                 [metering]\nspool_dir = \"{}\"\nflush_interval_ms = {FLUSH_MS}\n\
                 [limits]\nbackend = \"redis\"\nredis_timeout_ms = 1000\ngateway_instances = {GATEWAYS}\n\
                 {pools_toml}",
                spool.display()
            ),
        )
        .unwrap();
        FleetGateway {
            child: None,
            db_url: db_url.to_string(),
            config,
            listen,
            admin,
            metrics,
            spool,
        }
    }

    /// Start it (again) with the extra environment `env`, and wait for its readiness line.
    fn start(&mut self, env: &[(&str, String)]) {
        let mut cmd = gateway_command(&self.db_url);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("REDIS_URL", redis_url())
            .env("MAAS_GATEWAY_ADMIN__OPERATOR_TOKEN", OPERATOR)
            .env("MAAS_GATEWAY_METRICS__LISTEN", self.metrics.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, _stdout) = spawn_until_ready(cmd, self.listen);
        self.child = Some(child);
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        self.child.take();
    }

    /// SIGTERM: a graceful shutdown begins (see [`FleetGateway::wait_exit`]).
    fn terminate(&self) {
        if let Some(guard) = &self.child {
            let pid = guard.0.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success(), "kill -TERM {pid}");
        }
    }

    /// Wait (30 s at most) for it to exit after [`FleetGateway::terminate`].
    fn wait_exit(&mut self) {
        let Some(mut guard) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while guard.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "gateway {} did not exit within 30 s of SIGTERM",
                self.listen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `haproxy` in the foreground (`-db`) on a free loopback port, in front of `gateways`
/// (data address, metrics address), with an admin socket for `show stat`.
struct Haproxy {
    _child: ChildGuard,
    addr: SocketAddr,
    socket: PathBuf,
}

fn haproxy_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("haproxy not found: run `make setup` (scripts/setup.sh installs Debian's haproxy)")
    })
}

fn start_haproxy(dir: &Path, gateways: &[(SocketAddr, SocketAddr)]) -> Haproxy {
    let addr = free_addr();
    let socket = dir.join("haproxy.sock");
    let servers: String = gateways
        .iter()
        .enumerate()
        .map(|(i, (listen, metrics))| {
            format!("    server g{i} {listen} check port {}\n", metrics.port())
        })
        .collect();
    // Layer 4 only: a TCP connection goes to the next gateway in turn. A gateway is checked
    // every 100 ms on its metrics listener's GET /readyz (out after two failed checks, or at
    // once on a refused connection: `observe layer4`); a refused connect is retried on
    // another gateway (`option redispatch 1`: on every retry).
    let config = format!(
        "global\n    maxconn 4096\n    stats socket {} mode 600 level user\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n\
         \x20   retries 3\n    option redispatch 1\n\
         frontend fleet\n    bind {addr}\n    default_backend gateways\n\
         backend gateways\n    balance roundrobin\n    option httpchk\n\
         \x20   http-check send meth GET uri /readyz\n    http-check expect status 200\n\
         \x20   default-server inter 100ms fastinter 100ms downinter 100ms rise 2 fall 2 observe layer4 error-limit 1 on-error mark-down\n\
         {servers}",
        socket.display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let check = Command::new(haproxy_binary())
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy refused its configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    let child = Command::new(haproxy_binary())
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start haproxy");
    Haproxy {
        _child: ChildGuard(child),
        addr,
        socket,
    }
}

/// haproxy's view of each gateway (`show stat` on its admin socket): server name -> (status
/// such as `UP`, `DOWN`, `UP 1/2`; sessions so far).
async fn server_states(socket: &Path) -> std::io::Result<HashMap<String, (String, u64)>> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream.write_all(b"show stat\n").await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(status), Some(stot)) =
        (col("pxname"), col("svname"), col("status"), col("stot"))
    else {
        return Err(std::io::Error::other(format!("show stat: {text}")));
    };
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > stot && f[px] == "gateways" && f[sv].starts_with('g'))
        .map(|f| {
            (
                f[sv].to_string(),
                (f[status].to_string(), f[stot].parse().unwrap_or(0)),
            )
        })
        .collect())
}

/// Wait (10 s at most) until haproxy reports every gateway `UP`.
async fn wait_all_up(haproxy: &Haproxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(states) = server_states(&haproxy.socket).await {
            if states.len() == GATEWAYS && states.values().all(|(s, _)| s == "UP") {
                return;
            }
            assert!(Instant::now() < deadline, "haproxy: {states:?}");
        }
        assert!(Instant::now() < deadline, "haproxy did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the client saw of one request. Times are from the test's clock `t0`.
#[derive(Debug, Clone)]
struct Sample {
    /// Index into [`POOLS`] of the model called.
    pool: usize,
    sent: Duration,
    done: Duration,
    /// The HTTP status, 0 when no response header came.
    status: u16,
    /// `x-request-id` of the response.
    request_id: Option<Uuid>,
    /// The whole body was read.
    whole: bool,
    /// What failed, when no response header came.
    error: String,
}

impl Sample {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn is_error(&self) -> bool {
        !self.ok() && self.status != 429
    }
}

/// The error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn infer_body() -> bytes::Bytes {
    let body = json!({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": vec![0.5f32; FEATURES]}]});
    serde_json::to_vec(&body).unwrap().into()
}

/// One infer request of model `POOLS[pool]` to `base`, as the client saw it.
async fn call(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    pool: usize,
    body: bytes::Bytes,
    t0: Instant,
) -> (Sample, reqwest::header::HeaderMap) {
    let sent = t0.elapsed();
    let resp = client
        .post(format!("{base}/v2/models/{}/infer", POOLS[pool].1))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await;
    let mut sample = Sample {
        pool,
        sent,
        done: sent,
        status: 0,
        request_id: None,
        whole: false,
        error: String::new(),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    match resp {
        Ok(resp) => {
            sample.status = resp.status().as_u16();
            headers = resp.headers().clone();
            sample.request_id = headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Uuid::parse_str(v).ok());
            sample.whole = resp.bytes().await.is_ok();
        }
        Err(e) => sample.error = error_chain(&e),
    }
    sample.done = t0.elapsed();
    (sample, headers)
}

/// The open loop: `size.rps` requests per second for `size.seconds` to `base`, alternating
/// between the pools' models, each on its own TCP connection (so haproxy spreads them over the
/// gateways one by one). Returns every sample and when (on `t0`'s clock) requests were
/// skipped because [`MAX_IN_FLIGHT`] were waiting.
async fn open_loop(
    base: String,
    key: String,
    size: Size,
    t0: Instant,
) -> (Vec<Sample>, Vec<Duration>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let body = infer_body();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / size.rps as f64);
    let mut skipped = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..size.rps * size.seconds {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            skipped.push(t0.elapsed());
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (client, base, key, body) = (client.clone(), base.clone(), key.clone(), body.clone());
        let (samples, in_flight) = (samples.clone(), in_flight.clone());
        tasks.spawn(async move {
            let (sample, _) = call(&client, &base, &key, (i % 2) as usize, body, t0).await;
            samples.lock().unwrap().push(sample);
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a load task panicked");
    }
    let samples = samples.lock().unwrap().clone();
    (samples, skipped)
}

/// `GET /admin/v1/pools` of `gw`.
async fn pools_snapshot(client: &reqwest::Client, gw: &FleetGateway) -> Value {
    let a = admin_request(
        client,
        &format!("http://{}", gw.admin),
        reqwest::Method::GET,
        "/admin/v1/pools",
        Some(OPERATOR),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "pools of {}", gw.listen);
    a.json()
}

/// The snapshot of backend `addr` in pool `pool`.
fn backend_state<'a>(snapshot: &'a Value, pool: &str, addr: SocketAddr) -> &'a Value {
    snapshot
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .and_then(|p| {
            p["backends"]
                .as_array()?
                .iter()
                .find(|b| b["address"] == addr.to_string())
        })
        .unwrap_or_else(|| panic!("no backend {addr} in pool {pool}: {snapshot}"))
}

/// Every `usage_events` row: request id -> (HTTP status, call kind).
async fn usage_rows(pool: &sqlx::PgPool) -> HashMap<Uuid, (i16, String)> {
    let rows: Vec<(Uuid, i16, String)> =
        sqlx::query_as("SELECT request_id, http_status, call FROM usage_events")
            .fetch_all(pool)
            .await
            .unwrap();
    let n = rows.len();
    let map: HashMap<Uuid, (i16, String)> =
        rows.into_iter().map(|(id, s, c)| (id, (s, c))).collect();
    assert_eq!(map.len(), n, "a request id stored twice");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_bills_exactly_once_and_keeps_its_limits_through_a_gateway_and_a_backend_kill(
) {
    let size = Size::from_env();
    let (db, db_url) = fresh_database().await;
    let work = std::env::temp_dir().join(format!("maas-fleet-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).unwrap();

    // Two pools of two backends, one model each.
    let mut backends: Vec<Vec<Backend>> = POOLS
        .iter()
        .map(|(_, model)| {
            let repo = model_repository(model);
            (0..BACKENDS_PER_POOL)
                .map(|_| Backend::start(&repo))
                .collect()
        })
        .collect();
    let pools_toml: String = POOLS
        .iter()
        .zip(&backends)
        .map(|((name, model), bs)| {
            let addrs: Vec<String> = bs.iter().map(|b| format!("\"{}\"", b.addr)).collect();
            format!(
                "[[pools]]\nname = \"{name}\"\nmodels = [\"{model}\"]\nbackends = [{}]\n\
                 [pools.health]\ninterval_ms = 200\ntimeout_ms = 200\nsuccesses = 2\nfailures = 2\n",
                addrs.join(", ")
            )
        })
        .collect();

    // Three gateways; gateway 0, the one to be killed, first runs with a flush interval and a
    // batch size beyond the whole run: what it serves before its death is only in its spool.
    let mut gateways: Vec<FleetGateway> = (0..GATEWAYS)
        .map(|i| FleetGateway::new(&work.join(format!("gw{i}")), &db_url, &pools_toml))
        .collect();
    for (i, gw) in gateways.iter_mut().enumerate() {
        let env = if i == 0 {
            vec![
                (
                    "MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS",
                    VICTIM_FLUSH_MS.to_string(),
                ),
                (
                    "MAAS_GATEWAY_METERING__BATCH_SIZE",
                    VICTIM_BATCH.to_string(),
                ),
            ]
        } else {
            Vec::new()
        };
        gw.start(&env);
    }
    let haproxy = start_haproxy(
        &work,
        &gateways
            .iter()
            .map(|g| (g.listen, g.metrics))
            .collect::<Vec<_>>(),
    );
    wait_all_up(&haproxy).await;

    // One tenant, one key, a tenant rate limit the load exceeds.
    let key = create_key(&db_url, "fleet-tenant", None);
    let tenant = common::tenant_id(&db, "fleet-tenant").await;
    let client = reqwest::Client::new();
    let put = admin_request(
        &client,
        &format!("http://{}", gateways[1].admin),
        reqwest::Method::PUT,
        &format!("/admin/v1/tenants/{tenant}/limits"),
        Some(OPERATOR),
        Some(json!({"rules": [{"level": "tenant", "rate": size.rate, "burst": BURST}]})),
    )
    .await;
    assert!(
        (200..300).contains(&put.status),
        "PUT limits: {}",
        String::from_utf8_lossy(&put.body)
    );

    // The clock of every sample. Each gateway, asked directly, serves both models under the
    // tenant's limit (these answers are billed too, so they are in the ledger).
    let t0 = Instant::now();
    let mut ledger: Vec<Sample> = Vec::new();
    let body = infer_body();
    for gw in &gateways {
        for pool in 0..POOLS.len() {
            let (sample, headers) = call(
                &client,
                &format!("http://{}", gw.listen),
                &key,
                pool,
                body.clone(),
                t0,
            )
            .await;
            assert_eq!(sample.status, 200, "{} {sample:?}", gw.listen);
            let policy = headers
                .get("ratelimit-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(
                policy,
                format!("\"tenant-rps\";q={};w=1", size.rate),
                "{}",
                gw.listen
            );
            ledger.push(sample);
        }
    }

    // haproxy's view, every 50 ms: when gateway 0 was seen down and up again.
    let watching = Arc::new(Mutex::new(Vec::<(Duration, String)>::new()));
    let watcher = {
        let (socket, watching) = (haproxy.socket.clone(), watching.clone());
        let until = t0.elapsed() + Duration::from_secs(size.seconds + 5);
        tokio::spawn(async move {
            while t0.elapsed() < until {
                if let Ok(states) = server_states(&socket).await {
                    if let Some((status, _)) = states.get("g0") {
                        watching
                            .lock()
                            .unwrap()
                            .push((t0.elapsed(), status.clone()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The load, and the faults on its schedule.
    let load_start = Instant::now();
    let load = tokio::spawn(open_loop(
        format!("http://{}", haproxy.addr),
        key.clone(),
        size,
        t0,
    ));
    tokio::time::sleep_until((load_start + size.at(GATEWAY_KILL_AT)).into()).await;
    let killed_at = t0.elapsed();
    gateways[0].kill();
    let dead_at = t0.elapsed();
    // What it had spooled, none of it in PostgreSQL yet.
    let spooled: Vec<Uuid> = maas_gateway::read_dir_events(&gateways[0].spool)
        .expect("read the killed gateway's spool")
        .iter()
        .map(|e| e.request_id)
        .collect();
    let written_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE request_id = ANY($1)")
            .bind(&spooled)
            .fetch_one(&db)
            .await
            .unwrap();
    tokio::time::sleep(GATEWAY_DOWN).await;
    // Started again on the same spool and addresses, with the fleet's flush interval.
    let mut victim = gateways.remove(0);
    let victim = tokio::task::spawn_blocking(move || {
        victim.start(&[]);
        victim
    })
    .await
    .unwrap();
    gateways.insert(0, victim);
    let restarted_at = t0.elapsed();
    tokio::time::sleep_until((load_start + size.at(BACKEND_KILL_AT)).into()).await;
    let backend_killed_at = t0.elapsed();
    let killed_backend = backends[0][1].addr;
    backends[0][1].kill();
    let (samples, skipped) = load.await.unwrap();
    ledger.extend(samples.iter().cloned());

    // The spool of the killed run, replayed by the restarted process while it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replayed = 0;
    while Instant::now() < deadline {
        replayed = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM usage_events WHERE request_id = ANY($1)",
        )
        .bind(&spooled)
        .fetch_one(&db)
        .await
        .unwrap();
        if replayed == spooled.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pools, seen by every gateway before the stop: the killed backend is down, the others up.
    let mut survivor_requests = Vec::new();
    for gw in &gateways {
        let snap = pools_snapshot(&client, gw).await;
        for (p, (pool, _)) in POOLS.iter().enumerate() {
            for b in &backends[p] {
                let state = backend_state(&snap, pool, b.addr);
                let down = b.addr == killed_backend;
                assert_eq!(
                    state["healthy"],
                    json!(!down),
                    "gateway {}: {pool}/{}: {state}",
                    gw.listen,
                    b.addr
                );
            }
        }
        survivor_requests.push(backend_state(&snap, "a", backends[0][0].addr)["requests"].clone());
    }
    let restarted_served: u64 = pools_snapshot(&client, &gateways[0])
        .await
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["backends"].as_array().unwrap().iter())
        .map(|b| b["requests"].as_u64().unwrap_or(0))
        .sum();
    let balanced = server_states(&haproxy.socket).await.expect("haproxy stats");
    watcher.abort();
    let watched = watching.lock().unwrap().clone();

    // Graceful stop of the whole fleet: each drains its spool into PostgreSQL.
    let stopped = tokio::task::spawn_blocking(move || {
        for gw in &gateways {
            gw.terminate();
        }
        for gw in &mut gateways {
            gw.wait_exit();
        }
        gateways
    })
    .await
    .unwrap();

    // --- What the client saw. ---
    let ok: Vec<&Sample> = ledger.iter().filter(|s| s.ok()).collect();
    let refused = ledger.iter().filter(|s| s.status == 429).count();
    let errors: Vec<&Sample> = ledger.iter().filter(|s| s.is_error()).collect();
    let in_flight_at_kill = ledger
        .iter()
        .filter(|s| s.sent < dead_at && s.done > killed_at)
        .count();
    let first = ledger.iter().map(|s| s.sent).min().unwrap();
    let last = ledger.iter().map(|s| s.done).max().unwrap();
    let window = last - first;
    let ok_ids: Vec<Uuid> = ok
        .iter()
        .map(|s| s.request_id.expect("a 2xx without x-request-id"))
        .collect();
    let ok_set: HashSet<Uuid> = ok_ids.iter().copied().collect();
    let cut_off = ok.iter().filter(|s| !s.whole).count();
    let mut latencies: Vec<Duration> = ledger.iter().map(|s| s.done - s.sent).collect();
    latencies.sort_unstable();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let slowest = ledger.iter().max_by_key(|s| s.done - s.sent).unwrap();
    println!(
        "fleet: latency p50 {:?}, p99 {:?}, max {:?} (sent at {:?}, status {}); {} skipped \
         (first at {:?}, last at {:?})",
        quantile(0.5),
        quantile(0.99),
        slowest.done - slowest.sent,
        slowest.sent,
        slowest.status,
        skipped.len(),
        skipped.first(),
        skipped.last(),
    );
    println!(
        "fleet: {} rps x {} s offered, tenant limit {}/s burst {BURST}: {} sent, \
         {} 2xx ({cut_off} with the body cut off), {refused} 429, {} errors; window {window:?}; \
         {in_flight_at_kill} in flight at the gateway kill ({killed_at:?}, reaped {dead_at:?}, \
         restarted {restarted_at:?}); backend killed at {backend_killed_at:?}; \
         {} events in the killed gateway's spool ({written_before} written before its death, {replayed} after its restart); \
         haproxy {balanced:?}; restarted gateway served {restarted_served}",
        size.rps,
        size.seconds,
        size.rate,
        ledger.len(),
        ok.len(),
        errors.len(),
        spooled.len(),
    );
    for e in &errors {
        println!("  error: {e:?}");
    }
    assert_eq!(ok_set.len(), ok_ids.len(), "a request id answered twice");

    // --- Usage: exactly once, including what the killed gateway had spooled. ---
    let rows = usage_rows(&db).await;
    let billed: HashSet<Uuid> = rows
        .iter()
        .filter(|(_, (status, call))| (200..300).contains(status) && call == "inference")
        .map(|(id, _)| *id)
        .collect();
    let missing: Vec<&Uuid> = ok_set.difference(&billed).collect();
    assert!(
        missing.is_empty(),
        "{} of {} client 2xx have no usage row: {missing:?}",
        missing.len(),
        ok_set.len()
    );
    // A billed request whose 2xx the client never saw: cut off by the kill between the
    // billable record and the response header. At most the requests the kill cut off.
    let unseen: Vec<&Uuid> = billed.difference(&ok_set).collect();
    let cut_by_kill = errors
        .iter()
        .filter(|s| s.sent < dead_at && s.done > killed_at)
        .count();
    assert!(
        unseen.len() <= cut_by_kill,
        "{} billed requests the client never saw a 2xx for, but the kill cut off only {cut_by_kill}: {unseen:?}",
        unseen.len()
    );
    assert_eq!(
        billed.len(),
        ok_set.len() + unseen.len(),
        "billable usage rows = client 2xx + requests cut off after their billable record"
    );
    assert!(
        !spooled.is_empty(),
        "the killed gateway had spooled nothing"
    );
    assert_eq!(
        written_before, 0,
        "the killed gateway wrote usage before its death"
    );
    assert_eq!(
        replayed,
        spooled.len() as i64,
        "the restarted gateway did not write its spool within 10 s"
    );
    // The hourly rollup, what billing reads, agrees (one row per request here).
    let (rollup_billable, rollup_rows): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(billable_requests), 0)::bigint, coalesce(sum(inference_count), 0)::bigint \
         FROM usage_hourly WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        rollup_billable,
        billed.len() as i64,
        "usage_hourly billable requests"
    );
    assert_eq!(
        rollup_rows,
        billed.len() as i64,
        "usage_hourly inference count"
    );
    // The graceful stop drained every spool: nothing in any of them is missing from PostgreSQL.
    for gw in &stopped {
        let left =
            maas_gateway::read_dir_events(&gw.spool).expect("read a stopped gateway's spool");
        let undrained = left
            .iter()
            .filter(|e| !rows.contains_key(&e.request_id))
            .count();
        assert_eq!(undrained, 0, "gateway {}: spool not drained", gw.listen);
    }

    // --- The rate limit held across the three gateways. ---
    let bound = BURST + (size.rate as f64 * window.as_secs_f64()).floor() as u64;
    assert!(
        ok.len() as u64 <= bound,
        "{} 2xx > {bound} (rate {}/s x {window:?} + burst {BURST})",
        ok.len(),
        size.rate
    );
    assert!(refused > 0, "the load never exceeded the limit");
    // And the fleet served: at least half of what the limit allows.
    assert!(
        ok.len() as u64 >= size.rate * size.seconds / 2,
        "only {} 2xx in {} s at a limit of {}/s",
        ok.len(),
        size.seconds,
        size.rate
    );

    // --- Client errors: no more than the requests in flight at the kill. ---
    assert!(
        errors.len() <= in_flight_at_kill,
        "{} client errors, {in_flight_at_kill} requests in flight at the gateway kill",
        errors.len()
    );

    // --- Pool `a` kept serving after its backend's death; haproxy saw the gateway go and
    // come back; the restarted gateway served. ---
    let after = backend_killed_at + Duration::from_millis(500);
    let a_ok_after = ledger
        .iter()
        .filter(|s| s.pool == 0 && s.ok() && s.sent > after)
        .count();
    let a_errors_after = ledger
        .iter()
        .filter(|s| s.pool == 0 && s.is_error() && s.sent > after)
        .count();
    assert!(
        a_ok_after > 0,
        "pool a served nothing after its backend's death"
    );
    assert_eq!(
        a_errors_after, 0,
        "pool a failed requests after its backend's death"
    );
    assert!(
        survivor_requests.iter().all(|r| r.as_u64() > Some(0)),
        "pool a's survivor served nothing through some gateway: {survivor_requests:?}"
    );
    let down_seen = watched
        .iter()
        .find(|(t, s)| *t >= killed_at && !s.starts_with("UP"))
        .map(|(t, _)| *t);
    let up_again = watched
        .iter()
        .find(|(t, s)| *t >= restarted_at && s == "UP")
        .map(|(t, _)| *t);
    assert!(
        down_seen.is_some_and(|t| t < restarted_at),
        "haproxy never marked the killed gateway down: {watched:?}"
    );
    assert!(
        up_again.is_some(),
        "haproxy never marked the restarted gateway up: {watched:?}"
    );
    assert!(restarted_served > 0, "the restarted gateway served nothing");
    assert!(
        balanced.values().all(|(_, sessions)| *sessions > 0),
        "haproxy sent a gateway nothing: {balanced:?}"
    );

    drop(haproxy);
    drop(backends);
    drop(stopped);
    let _ = std::fs::remove_dir_all(&work);
    drop_database(db).await;
}
