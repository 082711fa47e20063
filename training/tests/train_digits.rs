//! End to end: the real `maas-train train` on `data/digits.csv.gz`, then the real
//! `maas-backend serve` on the resulting repository, checked over HTTP.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{backend_bin, TempDir, TRAIN_BIN};

/// A running `maas-backend serve`, killed on drop (also when the test panics).
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the server on a free port; its log goes to `log` (a pipe nobody reads could fill
    /// up and block it).
    fn start(repo: &Path, log: &Path) -> Server {
        let log_file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(backend_bin())
            .args(["serve", "--repo"])
            .arg(repo)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start maas-backend serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("maas-backend listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(log).unwrap_or_default();
            panic!("unexpected first line {line:?}; stderr:\n{stderr}");
        };
        let base = format!("http://{addr}");
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz")
}

/// Runs `maas-train train`; returns stdout.
fn train(repo: &Path) -> String {
    let started = Instant::now();
    let output = Command::new(TRAIN_BIN)
        .args(["train", "--data"])
        .arg(data_path())
        .arg("--repo")
        .arg(repo)
        .args(["--model", "digits"])
        .output()
        .expect("run maas-train train");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "train failed: {stderr}");
    eprintln!(
        "train took {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        stdout.trim()
    );
    stdout
}

/// The first `n` rows of the digits table: (64 raw pixels, label).
fn digits_rows(n: usize) -> Vec<(Vec<f64>, usize)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(data_path()).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let values: Vec<f64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            let (label, pixels) = values.split_last().unwrap();
            (pixels.to_vec(), *label as usize)
        })
        .collect()
}

fn header(response: &reqwest::Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn error_of(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_string()
}

#[tokio::test]
async fn train_then_serve_digits() {
    let repo = TempDir::new("digits");

    // Train twice with the same seed: versions 1 and 2, the same accuracy (reproducible).
    let first = train(repo.path());
    let last_line = first.lines().last().unwrap();
    assert!(
        last_line.starts_with("test accuracy: 0.") && last_line.ends_with("(version 1)"),
        "{last_line}"
    );
    let second = train(repo.path());
    assert!(second.trim().ends_with("(version 2)"), "{second}");
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(repo.path().join("digits/1/metrics.json")).unwrap())
            .unwrap();
    let accuracy = metrics["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "test accuracy {accuracy} < 0.95");
    assert_eq!(
        metrics["rows_train"].as_u64().unwrap() + metrics["rows_test"].as_u64().unwrap(),
        1797
    );
    assert_eq!(metrics["seed"], 42);
    assert_eq!(metrics["epochs"], 30);
    let metrics2: Value =
        serde_json::from_slice(&std::fs::read(repo.path().join("digits/2/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics2["test_accuracy"], metrics["test_accuracy"]);
    assert!(repo.path().join("digits/config.toml").is_file());
    assert!(repo.path().join("digits/2/model.safetensors").is_file());

    // A broken model next to it: logged and skipped, the server still serves digits.
    std::fs::create_dir_all(repo.path().join("broken/1")).unwrap();
    std::fs::write(
        repo.path().join("broken/config.toml"),
        "platform = \"dense\"\n",
    )
    .unwrap();

    let log = TempDir::new("log");
    let server = Server::start(repo.path(), &log.path().join("serve.log"));
    let client = reqwest::Client::new();

    let live: Value = client
        .get(server.url("/v2/health/live"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live, json!({"live": true}));
    let ready = client
        .get(server.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        503,
        "a failed model makes the server not ready"
    );
    let e = error_of(
        client
            .get(server.url("/v2/models/broken/ready"))
            .send()
            .await
            .unwrap(),
        503,
    )
    .await;
    assert!(e.contains("broken/config.toml"), "{e}");

    // Metadata.
    let metadata: Value = client
        .get(server.url("/v2/models/digits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["name"], "digits");
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert_eq!(metadata["platform"], "dense");
    assert_eq!(metadata["inputs"][0]["name"], "input");
    assert_eq!(metadata["inputs"][0]["datatype"], "FP32");
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 64]));
    assert_eq!(metadata["outputs"][0]["shape"], json!([-1, 10]));
    let ready: Value = client
        .get(server.url("/v2/models/digits/versions/1/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"name": "digits", "ready": true}));

    // Infer 5 real rows, raw pixels, nested data.
    let rows = digits_rows(5);
    let data: Vec<&Vec<f64>> = rows.iter().map(|(pixels, _)| pixels).collect();
    let request = json!({
        "id": "five-digits",
        "inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": data}],
    });
    let response = client
        .post(server.url("/v2/models/digits/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(header(&response, "x-maas-inference-count"), 5);
    assert!(header(&response, "x-maas-compute-us") > 0);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_name"], "digits");
    assert_eq!(body["model_version"], "2");
    assert_eq!(body["id"], "five-digits");
    let output = &body["outputs"][0];
    assert_eq!(output["name"], "probabilities");
    assert_eq!(output["datatype"], "FP32");
    assert_eq!(output["shape"], json!([5, 10]));
    let probabilities: Vec<f64> = output["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probabilities.len(), 50);
    let mut correct = 0;
    for ((_, label), row) in rows.iter().zip(probabilities.chunks(10)) {
        let sum: f64 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
        let argmax = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        correct += usize::from(argmax == *label);
    }
    assert!(correct >= 4, "only {correct} of 5 digits right");

    // Integer datatype, flat data, a named version.
    let flat: Vec<i64> = rows[0].0.iter().map(|&v| v as i64).collect();
    let request = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "UINT8", "data": flat}],
                         "outputs": [{"name": "probabilities"}]});
    let response = client
        .post(server.url("/v2/models/digits/versions/1/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(header(&response, "x-maas-inference-count"), 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_version"], "1");
    assert!(body.get("id").is_none());
    assert_eq!(body["outputs"][0]["shape"], json!([1, 10]));

    // Errors: JSON bodies with the right status.
    let e = error_of(
        client
            .post(server.url("/v2/models/digits/versions/9/infer"))
            .json(&request)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(e.contains("no version '9'"), "{e}");
    let e = error_of(
        client
            .post(server.url("/v2/models/nope/infer"))
            .json(&request)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(e.contains("unknown model 'nope'"), "{e}");
    let wrong_shape = json!({"inputs": [{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]});
    let e = error_of(
        client
            .post(server.url("/v2/models/digits/infer"))
            .json(&wrong_shape)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(e.contains("expected shape [-1, 64]"), "{e}");
    let e = error_of(
        client
            .post(server.url("/v2/models/digits/infer"))
            .header("content-type", "application/json")
            .body("{\"inputs\": [")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(e.contains("not valid JSON"), "{e}");
    let e = error_of(
        client
            .get(server.url("/v2/nothing/here"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(e.contains("no route"), "{e}");

    // SIGTERM: a graceful stop with exit status 0.
    let mut server = server;
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "server exited with {exit}");
    let log = std::fs::read_to_string(log.path().join("serve.log")).unwrap();
    assert!(log.contains("broken"), "the failed model is logged: {log}");
}
