//! Exactly-once metering through the spool, against a real
//! PostgreSQL and the `maas-gateway` binary in front of a fake OIP backend.
//!
//! - (a) requests while PostgreSQL is stopped, then restarted: exactly N new rows. This test
//!   starts its own private PostgreSQL (the commands `scripts/with-services.sh` uses), so it
//!   can stop and start it; it needs the server binaries under `/usr/lib/postgresql/*/bin`.
//! - (b) the gateway SIGKILLed under load and restarted on the same spool: every request
//!   whose client got a response has exactly one row.
//! - (c) replaying a spool twice adds nothing.
//! - (d) the hourly rollup's totals equal the raw rows (checked after each of the above).
//!
//! (b) and (c) use `DATABASE_URL` (a role allowed to CREATE DATABASE; `make test` provides it).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{TimeZone, Utc};
use maas_billing::UsageEvent;
use maas_gateway::config::MeteringConfig;
use maas_gateway::{read_dir_events, RecordKind, Spool, SpoolOptions, UsageWriter};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_maas-gateway");
const BODY: &str = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[1.0]}]}"#;

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: these tests need a PostgreSQL role that may CREATE DATABASE \
         (run them with `make test`)",
    )
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
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

/// A fresh migrated database on the server of `admin_url`.
async fn fresh_database(admin_url: &str) -> (PgPool, String) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
    let name = format!("gw_meter_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await;
    let url = with_database(admin_url, &name);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .expect("connect to the test database");
    maas_billing::MIGRATOR.run(&pool).await.expect("migrations");
    (pool, url)
}

async fn drop_database(pool: PgPool, admin_url: &str) {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("maas-{tag}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fake backend: reads the body, answers 200 with the usage headers. For model `slow` it
/// sends the header at once and the body 300 ms later, so a gateway killed in between has
/// forwarded the header (the client got its answer's status and request id) but not logged.
async fn fake_backend(req: Request) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let _ = axum::body::to_bytes(body, usize::MAX).await;
    let mut headers = HeaderMap::new();
    headers.insert("x-maas-inference-count", 3.into());
    headers.insert("x-maas-compute-us", 250.into());
    headers.insert("content-type", "application/json".parse().unwrap());
    const ANSWER: &str =
        r#"{"outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[0.5]}]}"#;
    if parts.uri.path().starts_with("/v2/models/slow/") {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{")), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Some((Ok(bytes::Bytes::from_static(&ANSWER.as_bytes()[1..])), 2))
                }
                _ => None,
            }
        });
        return (
            StatusCode::OK,
            headers,
            axum::body::Body::from_stream(chunks),
        )
            .into_response();
    }
    (StatusCode::OK, headers, ANSWER).into_response()
}

async fn start_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(fake_backend);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A child process killed (SIGKILL) and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway_command(db_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(std::env::temp_dir())
        .env_remove("MAAS_GATEWAY_CONFIG")
        .env("MAAS_GATEWAY_DATABASE_URL", db_url)
        .env("MAAS_GATEWAY_METRICS__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn,maas_gateway::metering=error");
    cmd
}

/// Start `maas-gateway serve` on `spool` and wait for its readiness line.
fn start_gateway(db_url: &str, backend: SocketAddr, spool: &Path) -> (ChildGuard, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = gateway_command(db_url)
        .arg("serve")
        .env("MAAS_GATEWAY_LISTEN", listen.to_string())
        .env(
            "MAAS_GATEWAY_UPSTREAM__BACKENDS",
            format!("[\"{backend}\"]"),
        )
        .env("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", "600000")
        .env("MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS", "50")
        .env("MAAS_GATEWAY_METERING__SPOOL_DIR", spool)
        .env("MAAS_GATEWAY_METERING__SPOOL_SEGMENT_BYTES", "65536")
        .env("MAAS_GATEWAY_GRACE_PERIOD_S", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn maas-gateway");
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
    (guard, listen)
}

fn create_key(db_url: &str, tenant: &str) -> String {
    let out = gateway_command(db_url)
        .args(["keys", "create", "--tenant", tenant, "--name", "test"])
        .output()
        .expect("run keys create");
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One authenticated infer call; `Some(request id)` when the client got a 200 answer.
async fn infer(client: &reqwest::Client, gw: SocketAddr, key: &str) -> Option<Uuid> {
    let (id, body) = infer_model(client, gw, key, "dense").await?;
    body.then_some(id)
}

/// One authenticated infer call to `model`: `Some((request id, whole body read))` once the
/// client has the 200 response header.
async fn infer_model(
    client: &reqwest::Client,
    gw: SocketAddr,
    key: &str,
    model: &str,
) -> Option<(Uuid, bool)> {
    let resp = client
        .post(format!("http://{gw}/v2/models/{model}/infer"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .ok()?;
    if resp.status() != 200 {
        return None;
    }
    let id = resp
        .headers()
        .get("x-request-id")?
        .to_str()
        .ok()?
        .to_string();
    let id = Uuid::parse_str(&id).ok()?;
    Some((id, resp.bytes().await.is_ok()))
}

async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until every id in `ids` has a row (at most `secs` seconds).
async fn wait_for_ids(pool: &PgPool, ids: &[Uuid], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT request_id) FROM usage_events WHERE request_id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap();
        if n as usize == ids.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {} request ids have a usage row",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every id in `ids` has exactly one row.
async fn assert_exactly_once(pool: &PgPool, ids: &[Uuid]) {
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT request_id FROM usage_events \
         GROUP BY request_id HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0, "request ids with more than one usage row");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE request_id = ANY($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n as usize, ids.len(), "one row per request id");
}

/// (d): the rollup's totals equal the raw rows', per (tenant, key, model, hour).
async fn assert_rollup_matches_raw(pool: &PgPool) {
    let mismatches: i64 = sqlx::query_scalar(
        "WITH raw AS ( \
             SELECT tenant_id, api_key_id, model, date_trunc('hour', started_at, 'UTC') AS hour, \
                 count(*) AS requests, \
                 count(*) FILTER (WHERE http_status BETWEEN 200 AND 299) AS billable, \
                 count(*) FILTER (WHERE http_status >= 400 OR http_status < 100) AS errors, \
                 coalesce(sum(inference_count) FILTER (WHERE http_status BETWEEN 200 AND 299), 0) AS inf, \
                 coalesce(sum(compute_us) FILTER (WHERE http_status BETWEEN 200 AND 299), 0) AS cu, \
                 sum(request_bytes) AS rqb, sum(response_bytes) AS rsb \
             FROM usage_events GROUP BY 1, 2, 3, 4) \
         SELECT count(*) FROM raw FULL JOIN usage_hourly h \
             ON h.tenant_id IS NOT DISTINCT FROM raw.tenant_id \
             AND h.api_key_id IS NOT DISTINCT FROM raw.api_key_id \
             AND h.model IS NOT DISTINCT FROM raw.model AND h.hour = raw.hour \
         WHERE raw.requests IS DISTINCT FROM h.requests \
             OR raw.billable IS DISTINCT FROM h.billable_requests \
             OR raw.errors IS DISTINCT FROM h.error_requests \
             OR raw.inf IS DISTINCT FROM h.inference_count \
             OR raw.cu IS DISTINCT FROM h.compute_us \
             OR raw.rqb IS DISTINCT FROM h.request_bytes \
             OR raw.rsb IS DISTINCT FROM h.response_bytes",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        mismatches, 0,
        "usage_hourly groups differing from usage_events"
    );
}

/// A private PostgreSQL that the test can stop and start (as `scripts/with-services.sh`
/// starts one: `initdb` and `pg_ctl` as the `postgres` user when running as root).
struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    fn init() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (make setup)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .max()
            .expect("a PostgreSQL server installed");
        let root = std::env::temp_dir().join(format!("maas-pg-{}", Uuid::new_v4().simple()));
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let uid = Command::new("id").arg("-u").output().unwrap();
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&root)
                .status()
                .unwrap();
            assert!(ok.success(), "chown the data folder to postgres");
        }
        let pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.dir)
            .args(["-A", "trust", "-U", "maas", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }

    fn admin_url(&self) -> String {
        format!("postgres://maas@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop();
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// (a) N requests while PostgreSQL is stopped, then restarted: exactly N new rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_counts_nothing_twice() {
    let pg = PrivatePg::init();
    pg.start();
    let (pool, db_url) = fresh_database(&pg.admin_url()).await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "outage");
    let spool = temp_dir("spool-outage");
    let (_gw, gw) = start_gateway(&db_url, backend, &spool);
    let client = reqwest::Client::new();

    // Warm the key cache and see one row arrive.
    let first = infer(&client, gw, &key)
        .await
        .expect("first request served");
    wait_for_ids(&pool, &[first], 20).await;
    pool.close().await;

    pg.stop();
    const N: usize = 60;
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(
            infer(&client, gw, &key)
                .await
                .expect("served while PostgreSQL is down"),
        );
    }
    // The events wait in the spool.
    let spooled = read_dir_events(&spool).unwrap();
    for id in &ids {
        assert!(
            spooled.iter().any(|e| e.request_id == *id),
            "{id} is in the spool"
        );
    }

    pg.start();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .expect("reconnect");
    wait_for_ids(&pool, &ids, 60).await;
    // A little longer: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_rows(&pool).await, N as i64 + 1, "exactly N new rows");
    assert_exactly_once(&pool, &ids).await;
    assert_rollup_matches_raw(&pool).await;
    let billable: i64 =
        sqlx::query_scalar("SELECT sum(billable_requests)::bigint FROM usage_hourly")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(billable, N as i64 + 1);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&spool);
}

/// (b) The gateway SIGKILLed under load, then restarted on the same spool: every request whose
/// client got a response has exactly one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_answered_request() {
    let admin = database_url();
    let (pool, db_url) = fresh_database(&admin).await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "killed");
    let spool = temp_dir("spool-kill");
    let (mut gw_guard, gw) = start_gateway(&db_url, backend, &spool);

    let answered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Six clients call a fast model, four a model whose body comes 300 ms after its header:
    // those are in the middle of their answer when the gateway is killed, with only their
    // billable spool record written. A response counts as received once its header is.
    let headers_only = Arc::new(Mutex::new(Vec::new()));
    for c in 0..10 {
        let (answered, stop, key) = (answered.clone(), stop.clone(), key.clone());
        let headers_only = headers_only.clone();
        let model = if c < 6 { "dense" } else { "slow" };
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                match infer_model(&client, gw, &key, model).await {
                    Some((id, whole)) => {
                        answered.lock().unwrap().push(id);
                        if !whole {
                            headers_only.lock().unwrap().push(id);
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw_guard.0.kill().expect("SIGKILL the gateway");
    let _ = gw_guard.0.wait();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ids = answered.lock().unwrap().clone();
    assert!(
        ids.len() > 50,
        "load before the kill: only {} answers",
        ids.len()
    );

    let (_gw2, _) = start_gateway(&db_url, backend, &spool);
    wait_for_ids(&pool, &ids, 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&pool, &ids).await;
    assert_rollup_matches_raw(&pool).await;
    let cut = headers_only.lock().unwrap().clone();
    eprintln!(
        "sigkill: {} answered requests ({} cut off mid-body), {} rows",
        ids.len(),
        cut.len(),
        count_rows(&pool).await
    );
    // The cut-off ones are billed from their billable record (no final record was written).
    let zero_body: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_events WHERE request_id = ANY($1) AND response_bytes = 0 \
         AND http_status = 200 AND inference_count = 3",
    )
    .bind(&cut)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(zero_body as usize, cut.len());
    drop_database(pool, &admin).await;
    let _ = std::fs::remove_dir_all(&spool);
}

fn spool_event(i: i64, tenant: Uuid) -> UsageEvent {
    let request_id = Uuid::now_v7();
    UsageEvent {
        request_id,
        // Spread over two hours and two months (a partition is created on demand).
        started_at: Utc
            .with_ymd_and_hms(
                2026,
                10 + (i % 2) as u32,
                31 - (i % 2) as u32 * 29,
                (i % 3) as u32,
                5,
                0,
            )
            .single()
            .unwrap(),
        tenant_id: Some(tenant),
        api_key_id: None,
        model: Some(if i % 2 == 0 { "a" } else { "b" }.to_string()),
        model_version: None,
        http_status: if i % 5 == 4 { 500 } else { 200 },
        call: maas_billing::CallKind::Inference,
        inference_count: i,
        compute_us: 100 + i,
        request_bytes: 64,
        response_bytes: 10 * i,
        latency_us: 1000,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// (c) Replaying a spool twice adds nothing; (d) the rollup matches the raw rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_spool_twice_adds_nothing() {
    let admin = database_url();
    let (pool, db_url) = fresh_database(&admin).await;
    let tenant = Uuid::now_v7();
    let dir = temp_dir("spool-replay");
    let options = |dir: &Path| SpoolOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        max_bytes: 1 << 30,
    };
    // One run's spool: complete requests, one superseded billable record, and billable
    // records of requests the run never finished (a kill between the two writes).
    let spool = Spool::open(options(&dir)).unwrap();
    let mut expected = Vec::new();
    for i in 0..200 {
        let mut e = spool_event(i, tenant);
        if i % 7 == 0 {
            spool.append(RecordKind::Billable, &e).unwrap();
        } else {
            spool.append(RecordKind::Billable, &e).unwrap();
            e.response_bytes += 1;
            e.latency_us += 1;
            spool.append(RecordKind::Final, &e).unwrap();
        }
        expected.push(e);
    }
    spool.sync().unwrap();
    drop(spool);
    let copy = temp_dir("spool-replay-copy");
    copy_dir(&dir, &copy);

    let config = MeteringConfig {
        batch_size: 64,
        ..MeteringConfig::default()
    };
    let spool = Spool::open(options(&dir)).unwrap();
    let writer = UsageWriter::new(spool.clone(), &db_url, &config);
    let mut reader = spool.reader();
    let inserted = writer.drain_once(&pool, &mut reader).await.unwrap();
    assert_eq!(inserted, 200);
    assert!(
        read_dir_events(&dir).unwrap().is_empty(),
        "the replayed spool is trimmed"
    );

    // The same spool again (a crash before the trim): nothing new.
    let spool2 = Spool::open(options(&copy)).unwrap();
    let writer2 = UsageWriter::new(spool2.clone(), &db_url, &config);
    let mut reader2 = spool2.reader();
    assert_eq!(writer2.drain_once(&pool, &mut reader2).await.unwrap(), 0);
    assert_eq!(count_rows(&pool).await, 200);

    // Final records superseded the billable ones.
    let sum: i64 = sqlx::query_scalar("SELECT sum(response_bytes)::bigint FROM usage_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sum, expected.iter().map(|e| e.response_bytes).sum::<i64>());
    assert_rollup_matches_raw(&pool).await;

    drop((reader, reader2, writer, writer2, spool, spool2));
    drop_database(pool, &admin).await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&copy);
}

/// Start a gateway with extra environment settings.
fn start_gateway_with(
    db_url: &str,
    backend: SocketAddr,
    spool: &Path,
    extra: &[(&str, &str)],
) -> (ChildGuard, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = gateway_command(db_url);
    cmd.arg("serve")
        .env("MAAS_GATEWAY_LISTEN", listen.to_string())
        .env(
            "MAAS_GATEWAY_UPSTREAM__BACKENDS",
            format!("[\"{backend}\"]"),
        )
        .env("MAAS_GATEWAY_AUTH__CACHE_TTL_MS", "600000")
        .env("MAAS_GATEWAY_METERING__SPOOL_DIR", spool)
        .env("MAAS_GATEWAY_GRACE_PERIOD_S", "0")
        .stdout(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
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
    (guard, listen)
}

/// Status and request id of one authenticated infer call.
async fn infer_status(client: &reqwest::Client, gw: SocketAddr, key: &str) -> (u16, Uuid) {
    let resp = client
        .post(format!("http://{gw}/v2/models/dense/infer"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .expect("request to the gateway");
    let status = resp.status().as_u16();
    let id = Uuid::parse_str(resp.headers()["x-request-id"].to_str().unwrap()).unwrap();
    let body = resp.bytes().await.unwrap();
    if status != 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
        assert!(v["error"].is_string(), "{v}");
    }
    (status, id)
}

/// Spool full: `reject` answers 503 and serves nothing unbilled; `serve` keeps serving and
/// drops (counts) the events that do not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_full_policies() {
    let pg = PrivatePg::init();
    pg.start();
    let (pool, db_url) = fresh_database(&pg.admin_url()).await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "full");
    let small = [
        ("MAAS_GATEWAY_METERING__SPOOL_MAX_BYTES", "8192"),
        ("MAAS_GATEWAY_METERING__SPOOL_SEGMENT_BYTES", "4096"),
        ("MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS", "20"),
    ];
    let (spool_r, spool_s) = (temp_dir("spool-reject"), temp_dir("spool-serve"));
    let (_gr, gr) = start_gateway_with(&db_url, backend, &spool_r, &small);
    let mut serve = small.to_vec();
    serve.push(("MAAS_GATEWAY_METERING__SPOOL_FULL", "serve"));
    let (_gs, gs) = start_gateway_with(&db_url, backend, &spool_s, &serve);
    let client = reqwest::Client::new();
    let warm = [
        infer_status(&client, gr, &key).await.1,
        infer_status(&client, gs, &key).await.1,
    ];
    wait_for_ids(&pool, &warm, 20).await;
    pool.close().await;

    pg.stop();
    let (mut served_r, mut refused) = (Vec::new(), 0);
    for _ in 0..100 {
        match infer_status(&client, gr, &key).await {
            (200, id) => {
                assert_eq!(refused, 0, "served after the spool was full");
                served_r.push(id);
            }
            (503, _) => refused += 1,
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    assert!(
        refused > 0 && !served_r.is_empty(),
        "{} served, {refused} refused",
        served_r.len()
    );
    let mut served_s = Vec::new();
    for _ in 0..100 {
        let (status, id) = infer_status(&client, gs, &key).await;
        assert_eq!(status, 200, "policy serve keeps serving");
        served_s.push(id);
    }

    pg.start();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .expect("reconnect");
    wait_for_ids(&pool, &served_r, 60).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metered_s: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE request_id = ANY($1)")
            .bind(&served_s)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        metered_s > 0 && metered_s < 100,
        "policy serve: {metered_s} of 100 metered"
    );
    assert_rollup_matches_raw(&pool).await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&spool_r);
    let _ = std::fs::remove_dir_all(&spool_s);
}

/// SIGTERM drains: events still waiting for a (long) flush interval are written before exit.
/// pingora keeps the runtimes running for `grace_period_s` after SIGTERM and then drops their
/// tasks, so the drain happens within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_queue() {
    let admin = database_url();
    let (pool, db_url) = fresh_database(&admin).await;
    let backend = start_backend().await;
    let key = create_key(&db_url, "drain");
    let spool = temp_dir("spool-drain");
    let (mut guard, gw) = start_gateway_with(
        &db_url,
        backend,
        &spool,
        &[
            ("MAAS_GATEWAY_METERING__FLUSH_INTERVAL_MS", "600000"),
            ("MAAS_GATEWAY_METERING__BATCH_SIZE", "100000"),
            ("MAAS_GATEWAY_GRACE_PERIOD_S", "2"),
        ],
    );
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(infer(&client, gw, &key).await.expect("served"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count_rows(&pool).await, 0, "nothing flushed yet");
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while guard.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_exactly_once(&pool, &ids).await;
    assert_eq!(count_rows(&pool).await, 20);
    assert!(read_dir_events(&spool).unwrap().len() <= 20);
    drop_database(pool, &admin).await;
    let _ = std::fs::remove_dir_all(&spool);
}

/// Ingest benchmark: events appended to a spool, then drained into
/// PostgreSQL in batches of 5,000. Run with
/// `cargo test -p maas-gateway --test metering -- --ignored --nocapture ingest`.
/// `MAAS_INGEST_EVENTS` sets the number of events (default 200,000); with `MAAS_INGEST_JSON`
/// set, the figures are also written there as one JSON object (`make bench`, section ingest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ingest_benchmark() {
    let admin = database_url();
    let (pool, db_url) = fresh_database(&admin).await;
    let n: i64 = std::env::var("MAAS_INGEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = temp_dir("spool-bench");
    let spool = Spool::open(SpoolOptions {
        dir: dir.clone(),
        segment_bytes: 8 << 20,
        max_bytes: 1 << 34,
    })
    .unwrap();
    let tenants: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let keys: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    let now = Utc::now();
    let events: Vec<UsageEvent> = (0..n)
        .map(|i| UsageEvent {
            request_id: Uuid::now_v7(),
            started_at: now + chrono::Duration::microseconds(i),
            tenant_id: Some(tenants[(i % 10) as usize]),
            api_key_id: Some(keys[(i % 50) as usize]),
            model: Some(["digits", "dense", "mlp"][(i % 3) as usize].into()),
            model_version: None,
            http_status: 200,
            call: maas_billing::CallKind::Inference,
            inference_count: 1 + i % 8,
            compute_us: 100 + i % 1000,
            request_bytes: 600,
            response_bytes: 300,
            latency_us: 900,
        })
        .collect();
    let t = Instant::now();
    for e in &events {
        spool.append(RecordKind::Billable, e).unwrap();
        spool.append(RecordKind::Final, e).unwrap();
    }
    spool.sync().unwrap();
    let append = t.elapsed();
    let t = Instant::now();
    assert_eq!(read_dir_events(&dir).unwrap().len() as i64, n);
    let decode = t.elapsed();
    let config = MeteringConfig {
        batch_size: 5000,
        ..MeteringConfig::default()
    };
    let writer = UsageWriter::new(spool.clone(), &db_url, &config);
    let mut reader = spool.reader();
    let t = Instant::now();
    let inserted = writer.drain_once(&pool, &mut reader).await.unwrap();
    let ingest = t.elapsed();
    assert_eq!(inserted as i64, n);
    eprintln!(
        "ingest: {n} events; spool append (2 records/event) {:.2} us/record; spool decode \
         alone {:.0} events/s; spool -> PostgreSQL (insert + rollup, batches of 5000) {:.0} \
         events/s",
        append.as_secs_f64() * 1e6 / (2 * n) as f64,
        n as f64 / decode.as_secs_f64(),
        n as f64 / ingest.as_secs_f64()
    );
    if let Ok(path) = std::env::var("MAAS_INGEST_JSON") {
        let result = serde_json::json!({
            "events": n,
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "batch_size": config.batch_size,
            "spool_append_us_per_record": append.as_secs_f64() * 1e6 / (2 * n) as f64,
            "spool_decode_events_per_s": n as f64 / decode.as_secs_f64(),
            "ingest_s": ingest.as_secs_f64(),
            "ingest_events_per_s": n as f64 / ingest.as_secs_f64(),
        });
        std::fs::write(&path, result.to_string()).expect("write MAAS_INGEST_JSON");
    }
    drop((reader, writer, spool));
    drop_database(pool, &admin).await;
    let _ = std::fs::remove_dir_all(&dir);
}
