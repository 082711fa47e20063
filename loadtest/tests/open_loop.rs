//! The real binary against a small loopback server: counts, statuses, the JSON report and the
//! plot, and that open loop charges a server stall to every request it delayed (no
//! coordinated omission) while closed loop, by construction, hides it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;

/// Serves `POST /v2/models/m/infer`; the 50th request stalls for 200 ms.
async fn start_server() -> SocketAddr {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/v2/models/m/infer",
        post(move || {
            let count = count.clone();
            async move {
                if count.fetch_add(1, Ordering::SeqCst) == 50 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r#"{"outputs":[]}"#
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("maas-loadtest-{}-{name}", std::process::id()))
}

fn run(addr: SocketAddr, mode: &str, extra: &[String]) -> serde_json::Value {
    let body = temp("body.json");
    std::fs::write(&body, br#"{"inputs":[]}"#).expect("body file");
    // Tests run in parallel in one process: one report file per run.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let json = temp(&format!(
        "{mode}-{}.json",
        RUNS.fetch_add(1, Ordering::SeqCst)
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_maas-loadtest"))
        .arg("--url")
        .arg(format!("http://{addr}/v2/models/m/infer"))
        .args(["--mode", mode, "--concurrency", "1", "--body", "file"])
        .arg("--body-file")
        .arg(&body)
        .arg("--json")
        .arg(&json)
        .arg("--no-progress")
        .args(extra)
        .output()
        .expect("run maas-loadtest");
    assert!(
        out.status.success(),
        "maas-loadtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json).expect("json report");
    serde_json::from_str(&report).expect("report is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_the_scheduled_count_and_charges_stalls_to_delayed_requests() {
    let addr = start_server().await;
    let plot = temp("plot.svg");
    let args: Vec<String> = ["--rate", "200", "--duration", "1.5", "--plot"]
        .iter()
        .map(|s| s.to_string())
        .chain([plot.to_string_lossy().into_owned()])
        .collect();
    let r = tokio::task::spawn_blocking(move || run(addr, "open", &args))
        .await
        .expect("join");
    // 200 req/s for 1.5 s: exactly 300 intended send times, all answered 200.
    assert_eq!(r["responses"], 300);
    assert_eq!(r["statuses"]["200"], 300);
    assert_eq!(r["transport_errors"], 0);
    // One 200 ms stall with one connection delays the ~40 requests scheduled behind it;
    // measured from their intended send times, the slowest 5% all waited over 50 ms.
    let p95 = r["percentile_curve"]
        .as_array()
        .expect("curve")
        .iter()
        .find(|p| p[0] == 95.0)
        .and_then(|p| p[1].as_u64())
        .expect("p95 point");
    assert!(
        p95 >= 50_000,
        "open-loop p95 {p95} us should show the stall"
    );
    // The stall also shows as send lag: the requests behind it waited for the one connection.
    let lag = &r["send_lag_us"];
    assert!(
        lag["p50"].as_u64().is_some(),
        "open loop reports its send lag: {r}"
    );
    assert!(lag["max"].as_u64().expect("max lag") >= 100_000, "{lag}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "an SVG line plot"
    );

    // The same stall in closed loop delays only the one request that met it.
    let addr = start_server().await;
    let r = tokio::task::spawn_blocking(move || {
        let args = ["--requests", "300", "--duration", "10"].map(String::from);
        run(addr, "closed", &args)
    })
    .await
    .expect("join");
    assert_eq!(r["responses"], 300);
    assert!(
        r.get("send_lag_us").is_none(),
        "closed loop has no intended send times"
    );
    assert!(r["latency_us"]["max"].as_u64().expect("max") >= 200_000);
    assert!(r["latency_us"]["p99"].as_u64().expect("p99") < 50_000);
}

/// `--busy-poll` keeps the same schedule and the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_sends_the_same_schedule() {
    let addr = start_server().await;
    let r = tokio::task::spawn_blocking(move || {
        let args = ["--rate", "100", "--duration", "1", "--busy-poll"].map(String::from);
        run(addr, "open", &args)
    })
    .await
    .expect("join");
    assert_eq!(r["responses"], 100);
    assert_eq!(r["statuses"]["200"], 100);
}

/// A mistake is one line on stderr without a backtrace, even with backtraces asked for.
#[test]
fn errors_are_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_maas-loadtest"))
        .args([
            "--url",
            "http://127.0.0.1:9/v2/models/m/infer",
            "--scenario",
        ])
        .arg(temp("no-such-scenario.toml"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run maas-loadtest");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("no-such-scenario.toml"), "{stderr}");
}
