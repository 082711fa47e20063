//! Observability as an operator runs it: Debian's `prometheus` server scrapes a real gateway
//! and a real backend on loopback and answers queries over its HTTP API (both targets up, a
//! `histogram_quantile` over the gateway's and the backend's latency histograms); every
//! metric the Grafana dashboard (`deploy/grafana/maas.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) name exists in those scrapes; `promtool check rules`
//! accepts the rules.
//!
//! Needs `DATABASE_URL` (`make test` provides it), the workspace binaries (`cargo build
//! --workspace --bins`, which `make test` runs) and `prometheus`/`promtool`
//! (`scripts/setup.sh` installs them).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("gateway/ has a parent")
        .to_path_buf()
}

/// A workspace binary from the same target folder as this test (target/<profile>/).
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// `prometheus` or `promtool` on the PATH (scripts/setup.sh installs Debian's package).
fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Every `maas_*` metric name in a PromQL expression, with a histogram's `_bucket`, `_sum`
/// and `_count` suffix kept (they are series names of their own).
fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("maas_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

/// The PromQL expressions of the dashboard's panels (checking each panel's shape on the way).
fn dashboard_exprs() -> Vec<String> {
    let path = workspace_root().join("deploy/grafana/maas.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/maas.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "maas-overview");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

/// The `expr` of every alert rule (the file is YAML; each expression is a `expr:` key,
/// inline or a `|` block).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("deploy/prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let next_indent = next.len() - next.trim_start().len();
            if next.trim().is_empty() || next_indent <= indent {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        exprs.push(expr);
    }
    exprs
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = prometheus_tool("promtool") else {
        eprintln!(
            "SKIP: promtool is not installed (scripts/setup.sh installs Debian's prometheus)"
        );
        return;
    };
    let rules = workspace_root().join("deploy/prometheus/alerts.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SUCCESS: 6 rules found"), "{stdout}");
    assert_eq!(alert_exprs().len(), 6);
    let config = workspace_root().join("deploy/prometheus/prometheus.yml");
    let out = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A `maas-backend serve` on a free port with one small dense model `dense`.
fn start_real_backend(repo: &Path) -> (ChildGuard, String) {
    let out = Command::new(workspace_bin("maas-bench"))
        .args(["init-dense", "--repo"])
        .arg(repo)
        .args(["--model", "dense", "--dims", "4,8,2"])
        .output()
        .expect("run maas-bench init-dense");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(workspace_bin("maas-backend"))
        .args(["serve", "--repo"])
        .arg(repo)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start maas-backend");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("backend exited before printing its address")
            .expect("read stdout");
        if let Some(addr) = line.strip_prefix("maas-backend listening on ") {
            let addr = addr.trim().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (guard, addr);
        }
    }
}

async fn query(client: &reqwest::Client, prom: &str, promql: &str) -> Vec<Value> {
    let resp: Value = client
        .get(format!("http://{prom}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .expect("query Prometheus")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(resp["status"], "success", "{promql}: {resp}");
    resp["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The single number of an instant vector's first sample.
fn number(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_gateway_and_backend() {
    let Some(prometheus) = prometheus_tool("prometheus") else {
        eprintln!("SKIP: prometheus is not installed (scripts/setup.sh installs Debian's package)");
        return;
    };
    let tmp = std::env::temp_dir().join(format!("maas-prom-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (backend, backend_addr) = start_real_backend(&tmp.join("repo"));
    let (pool, db_url) = fresh_database().await;
    let gw = start_gateway(&db_url, &[backend_addr.parse().unwrap()], &[]);
    let key = create_key(&db_url, "acme", None);
    let client = reqwest::Client::new();
    let body = r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}"#;
    for _ in 0..5 {
        let resp = client
            .post(format!("http://{}/v2/models/dense/infer", gw.listen))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }

    // Every metric the dashboard and the alerts name is in one of the two scrapes.
    let mut exposed = BTreeSet::new();
    for url in [
        format!("http://{}/metrics", gw.metrics),
        format!("http://{backend_addr}/metrics"),
    ] {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text");
        for s in &scrape.samples {
            exposed.insert(s.metric.clone());
            if let prometheus_parse::Value::Histogram(_) = s.value {
                exposed.insert(format!("{}_bucket", s.metric));
            }
        }
    }
    let mut named = BTreeSet::new();
    for expr in dashboard_exprs().iter().chain(alert_exprs().iter()) {
        metric_names(expr, &mut named);
    }
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<_> = named.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exposed: {missing:?}"
    );

    // Prometheus scraping both, every second.
    let prom_addr = free_addr().to_string();
    let config = tmp.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: maas-gateway\n    static_configs:\n      - targets: [\"{}\"]\n\
             \x20 - job_name: maas-backend\n    static_configs:\n      - targets: [\"{backend_addr}\"]\n",
            gw.metrics
        ),
    )
    .unwrap();
    let server = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _server = ChildGuard(server);

    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut up, mut gateway_p50, mut backend_p50) = (Vec::new(), None, None);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if client
            .get(format!("http://{prom_addr}/-/ready"))
            .send()
            .await
            .is_err()
        {
            continue;
        }
        up = query(&client, &prom_addr, "up == 1").await;
        gateway_p50 = number(
            &query(
                &client,
                &prom_addr,
                "histogram_quantile(0.5, sum by (le) (maas_gateway_request_duration_seconds_bucket{model=\"dense\"}))",
            )
            .await,
        );
        backend_p50 = number(
            &query(
                &client,
                &prom_addr,
                "histogram_quantile(0.5, sum by (le) (maas_inference_request_duration_seconds_bucket{model=\"dense\"}))",
            )
            .await,
        );
        if up.len() == 2 && gateway_p50.is_some() && backend_p50.is_some() {
            break;
        }
    }
    let jobs: BTreeSet<_> = up
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from(["maas-backend".to_string(), "maas-gateway".to_string()]),
        "targets up: {up:?}"
    );
    let gateway_p50 = gateway_p50.expect("histogram_quantile over the gateway's histogram");
    let backend_p50 = backend_p50.expect("histogram_quantile over the backend's histogram");
    // Five requests of a tiny model: their median lies inside the buckets (50 µs .. 13 s).
    assert!(
        gateway_p50.is_finite() && gateway_p50 > 0.0 && gateway_p50 < 13.2,
        "{gateway_p50}"
    );
    assert!(
        backend_p50.is_finite() && backend_p50 > 0.0 && backend_p50 < 13.2,
        "{backend_p50}"
    );
    let count = number(
        &query(
            &client,
            &prom_addr,
            "sum(maas_inference_request_duration_seconds_count{model=\"dense\"})",
        )
        .await,
    );
    assert_eq!(count, Some(5.0));

    drop(gw);
    drop(backend);
    drop_database(pool).await;
    let _ = std::fs::remove_dir_all(&tmp);
}
