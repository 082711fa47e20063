//! A dense model split into pipeline stages across processes (GPipe, Huang et al. 2019): a front
//! `maas-backend serve` runs some stages itself and drives the others in `maas-backend
//! serve-stage` processes over HTTP; the split model answers what the unsplit one answers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{digits_rows, trained_repo, workspace_bin, Server, BIN};
use serde_json::{json, Value};

const TOLERANCE: f32 = 1e-5;

/// A fresh repository under cargo's per-target temp folder with a copy of the trained `digits`
/// model (64 -> 128 relu -> 10 softmax, with biases) under each of `names`.
fn repo_with_digits(tag: &str, names: &[&str]) -> PathBuf {
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pipeline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    for name in names {
        copy_model(&trained_repo().join("digits"), &repo.join(name));
    }
    repo
}

/// Copies a model folder with version 1 (config.toml and 1/model.safetensors).
fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("1")).unwrap();
    for file in ["config.toml", "1/model.safetensors"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// Writes `<repo>/<model>/config.toml`: the config of `<repo>/<base>` with a `[pipeline]` of
/// `micro_batches` and `stages` (`(first, end, "device = ..." or "address = ...")`).
fn write_split(
    repo: &Path,
    model: &str,
    base: &str,
    micro_batches: u32,
    stages: &[(usize, usize, String)],
) {
    let mut text = std::fs::read_to_string(repo.join(base).join("config.toml")).unwrap();
    text.push_str(&format!(
        "\n[pipeline]\nmicro_batches = {micro_batches}\ntimeout_ms = 10000\n"
    ));
    for (first, end, place) in stages {
        text.push_str(&format!(
            "[[pipeline.stages]]\nlayers = [{first}, {end}]\n{place}\n"
        ));
    }
    std::fs::write(repo.join(model).join("config.toml"), text).unwrap();
}

/// The two stages of the digits model: layer 0 in the front, layer 1 at `address`.
fn digits_stages(address: &str) -> Vec<(usize, usize, String)> {
    vec![
        (0, 1, "device = \"cpu\"".into()),
        (1, 2, format!("address = \"{address}\"")),
    ]
}

fn stage(repo: &Path, model: &str, layers: &str) -> Server {
    Server::run("serve-stage", repo, &["--model", model, "--layers", layers])
}

/// Posts `rows` (JSON input) to `model` and returns the status and the JSON body.
fn infer(server: &Server, model: &str, rows: &[Vec<f32>]) -> (u16, Value) {
    let width = rows.first().map_or(0, Vec::len);
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let body = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows.len(), width], "data": data}]
    });
    let response = reqwest::blocking::Client::new()
        .post(server.url(&format!("/v2/models/{model}/infer")))
        .json(&body)
        .send()
        .expect("the front answers");
    let status = response.status().as_u16();
    (status, response.json().expect("a JSON body"))
}

fn output_of(body: &Value) -> Vec<f32> {
    body["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no output data in {body}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(split: &[f32], whole: &[f32], what: &str) {
    assert_eq!(split.len(), whole.len(), "{what}: lengths");
    for (i, (a, b)) in split.iter().zip(whole).enumerate() {
        assert!(
            (a - b).abs() <= TOLERANCE,
            "{what}: element {i}: split {a} vs unsplit {b}"
        );
    }
}

/// Digits in two stages in two processes (layer 0 in the front, layer 1 in a serve-stage),
/// and a random 4-layer model in three stages (local, remote, local): every batch size,
/// including 1 and sizes not divisible by micro_batches, matches the unsplit model.
#[test]
fn split_model_answers_what_the_unsplit_model_answers() {
    // A 4-layer model with random weights: `maas-bench init-dense` writes it, the split copy
    // shares them.
    let repo = repo_with_digits("equal", &["digits", "digits_split"]);
    let output = workspace_bin("maas-bench")
        .args(["init-dense", "--repo"])
        .arg(&repo)
        .args(["--model", "wide", "--dims", "64,48,40,32,10", "--seed", "7"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    copy_model(&repo.join("wide"), &repo.join("wide_split"));
    let digits_stage = stage(&repo, "digits_split", "1..2");
    let wide_stage = stage(&repo, "wide_split", "1..3");
    write_split(
        &repo,
        "digits_split",
        "digits",
        4,
        &digits_stages(&digits_stage.addr),
    );
    write_split(
        &repo,
        "wide_split",
        "wide",
        3,
        &[
            (0, 1, "device = \"cpu\"".into()),
            (1, 3, format!("address = \"{}\"", wide_stage.addr)),
            (3, 4, "device = \"cpu\"".into()),
        ],
    );
    let front = Server::start(&repo, &[]);
    let ready = reqwest::blocking::get(front.url("/v2/health/ready")).unwrap();
    assert_eq!(ready.status().as_u16(), 200, "{}", front.log());

    let digits: Vec<Vec<f32>> = digits_rows(64).into_iter().map(|(x, _)| x).collect();
    for rows in [1usize, 2, 3, 4, 5, 7, 8, 13, 64] {
        let batch = &digits[..rows];
        for (whole, split) in [("digits", "digits_split"), ("wide", "wide_split")] {
            let (status, unsplit) = infer(&front, whole, batch);
            assert_eq!(status, 200, "{unsplit}");
            let (status, body) = infer(&front, split, batch);
            assert_eq!(status, 200, "{split} batch {rows}: {body}\n{}", front.log());
            assert_eq!(body["outputs"][0]["shape"], json!([rows, 10]));
            assert_close(
                &output_of(&body),
                &output_of(&unsplit),
                &format!("{split} batch {rows}"),
            );
        }
    }

    // Every stage counted busy time; the remote ones from their compute-time header.
    let metrics = reqwest::blocking::get(front.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for stage in 0..3 {
        let series = format!(
            "maas_pipeline_stage_busy_us_total{{model=\"wide_split\",version=\"1\",stage=\"{stage}\"}} "
        );
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .parse()
            .unwrap();
        assert!(value > 0, "{series}{value}");
    }
    // Nine batches of the wide model in at most 3 micro-batches each: 1 + 2 + 3 * 7.
    assert!(
        metrics.contains(
            "maas_pipeline_micro_batch_count_total{model=\"wide_split\",version=\"1\"} 24\n"
        ),
        "{metrics}"
    );
    // The stage serves its layers under their own name, with the activation shapes.
    let metadata: Value =
        reqwest::blocking::get(digits_stage.url("/v2/models/digits_split.layers-1-2"))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(
        metadata["inputs"][0]["shape"],
        json!([-1, 128]),
        "{metadata}"
    );
    assert_eq!(
        metadata["outputs"][0]["shape"],
        json!([-1, 10]),
        "{metadata}"
    );
}

/// A stage process that dies turns the split model's requests into a 503 that names the
/// stage and its address, quickly; the front keeps serving its other models, and a stage
/// that is down when the front starts leaves only the split model not ready, saying why.
#[test]
fn a_dead_stage_is_a_clear_error_and_the_front_keeps_serving() {
    let repo = repo_with_digits("dead", &["digits", "digits_split"]);
    let mut remote = stage(&repo, "digits_split", "1..2");
    write_split(
        &repo,
        "digits_split",
        "digits",
        2,
        &digits_stages(&remote.addr),
    );
    let front = Server::start(&repo, &[]);
    let rows: Vec<Vec<f32>> = digits_rows(5).into_iter().map(|(x, _)| x).collect();
    let (status, body) = infer(&front, "digits_split", &rows);
    assert_eq!(status, 200, "{body}");

    remote.child.kill().unwrap();
    remote.child.wait().unwrap();
    let address = remote.addr.clone();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let (status, body) = infer(&front, "digits_split", &rows);
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("pipeline stage 1 at {address} failed")),
            "{error}"
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "took {:?}",
            started.elapsed()
        );
        let (status, body) = infer(&front, "digits", &rows);
        assert_eq!(status, 200, "{body}");
    }
    drop(front);

    // Started while the stage is down: digits serves, digits_split is not ready and says why.
    let front = Server::start(&repo, &[]);
    let (status, body) = infer(&front, "digits", &rows);
    assert_eq!(status, 200, "{body}");
    let (status, body) = infer(&front, "digits_split", &rows);
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("pipeline stage 1 (layers 1..2)") && error.contains(&address),
        "{error}"
    );
}

/// A stage that accepts connections but never answers an infer request: the request fails
/// with 503 once the pipeline's `timeout_ms` has passed, instead of hanging.
#[test]
fn a_stage_that_never_answers_times_out() {
    use std::io::{Read, Write};
    let repo = repo_with_digits("hang", &["digits_split"]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // A fake stage: answers the metadata check, then holds every other request unanswered.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let read = stream.read(&mut buffer).unwrap_or(0);
            if !buffer[..read].starts_with(b"GET ") {
                held.push(stream);
                continue;
            }
            let tensor = |name: &str, width: i64| json!({"name": name, "datatype": "FP32", "shape": [-1, width]});
            let body = json!({
                "name": "digits_split.layers-1-2", "versions": ["1"], "platform": "dense",
                "inputs": [tensor("input", 128)], "outputs": [tensor("output", 10)],
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    write_split(
        &repo,
        "digits_split",
        "digits_split",
        2,
        &digits_stages(&address),
    );
    let config = repo.join("digits_split/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("timeout_ms = 10000", "timeout_ms = 500"),
    )
    .unwrap();
    let front = Server::start(&repo, &[]);
    let rows: Vec<Vec<f32>> = digits_rows(5).into_iter().map(|(x, _)| x).collect();
    let started = std::time::Instant::now();
    let (status, body) = infer(&front, "digits_split", &rows);
    assert_eq!(status, 503, "{body}\n{}", front.log());
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("pipeline stage 1 at {address} failed: timed out")),
        "{error}"
    );
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
}

/// A stage that is asked for layers the model does not have, or with a bad range, refuses to
/// start with a message saying so.
#[test]
fn serve_stage_refuses_a_bad_range() {
    let repo = repo_with_digits("range", &["digits"]);
    for (layers, expected) in [
        ("1..3", "not a non-empty range of the model's 2 layers"),
        ("2..1", "expected FIRST..END"),
        ("x", "expected FIRST..END"),
    ] {
        let output = Command::new(BIN)
            .args(["serve-stage", "--repo"])
            .arg(&repo)
            .args([
                "--model",
                "digits",
                "--layers",
                layers,
                "--listen",
                "127.0.0.1:0",
            ])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{layers}: {stderr}");
    }
}
