//! TorchScript models: a `model.pt` scripted and saved by the `.venv`'s PyTorch, served through
//! the batcher, checked against PyTorch's own output; a file libtorch cannot load fails its
//! version with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{workspace, Server};
use serde_json::{json, Value};

/// `make_model.py KIND OUT.pt...`: a small module whose forward returns `tanh(linear(x)) * 2`
/// (KIND `tensor`) or the tuple `(linear(x), linear(x).sum(1))` (KIND `pair`), saved to each
/// path; prints its first output tensor for three rows of input.
const SCRIPT: &str = r#"
import json, sys
import torch
from typing import Tuple

class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.arange(12.0).reshape(3, 4) / 10)
            self.linear.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return torch.tanh(self.linear(x)) * 2

class Pair(Small):
    def forward(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.linear(x)
        return y, y.sum(1)

module = torch.jit.script(Small() if sys.argv[1] == "tensor" else Pair())
for path in sys.argv[2:]:
    module.save(path)
x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
y = module(x)
print(json.dumps((y if sys.argv[1] == "tensor" else y[0]).tolist()))
"#;

/// Scripts the module of `kind` into each of `paths` with the `.venv`'s PyTorch (the script
/// must be a file: torch.jit.script reads the module's source); PyTorch's output for the three
/// rows of [`ROWS`], flat.
fn script(repo: &Path, kind: &str, paths: &[PathBuf]) -> Vec<f64> {
    let python = workspace().join(".venv/bin/python");
    let script = repo.join("make_model.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let output = Command::new(&python)
        .arg(&script)
        .arg(kind)
        .args(paths)
        .output()
        .expect("run the .venv python (make setup installs torch there)");
    assert!(
        output.status.success(),
        "scripting failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: Vec<Vec<f64>> = serde_json::from_slice(&output.stdout).unwrap();
    expected.into_iter().flatten().collect()
}

/// The input rows the script printed the output of.
const ROWS: [[f64; 4]; 3] = [
    [1.0, 2.0, 3.0, 4.0],
    [-1.0, 0.0, 0.5, 2.0],
    [0.0, 0.0, 0.0, 0.0],
];

/// The first output's data of an infer response equals `want` within 1e-5.
fn assert_output(body: &Value, want: &[f64]) {
    let got: Vec<f64> = body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "{body}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

const CONFIG: &str = r#"
platform = "torchscript"
max_batch_size = 8

[dynamic_batching]
max_queue_delay_us = 1000

[[inputs]]
name = "x"
datatype = "FP32"
dims = [4]

[[outputs]]
name = "y"
datatype = "FP32"
dims = [3]
"#;

#[tokio::test]
async fn a_scripted_module_serves_like_pytorch() {
    let repo =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torchscript-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(repo.join("small/1")).unwrap();
    std::fs::create_dir_all(repo.join("small/2")).unwrap();
    std::fs::write(repo.join("small/config.toml"), CONFIG).unwrap();
    let want = script(&repo, "tensor", &[repo.join("small/1/model.pt")]);
    // Version 2 is not a TorchScript file: it fails to load, version 1 serves.
    std::fs::write(repo.join("small/2/model.pt"), b"not a zip archive").unwrap();

    let server = Server::start(&repo, &[]);
    let client = reqwest::Client::new();
    let metadata: Value = client
        .get(server.url("/v2/models/small"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["platform"], "torchscript");
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 4]));

    let request = json!({"id": "ts", "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
        "data": ROWS}]});
    let response = client
        .post(server.url("/v2/models/small/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-maas-inference-count"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "ts");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["outputs"][0]["name"], "y");
    assert_eq!(body["outputs"][0]["shape"], json!([3, 3]));
    assert_output(&body, &want);

    let response = client
        .get(server.url("/v2/models/small/versions/2/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("model.pt"),
        "{body}"
    );
    let response = client.post(server.url("/v2/models/small/infer"))
        .json(&json!({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}))
        .send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    drop(server);
    let _ = std::fs::remove_dir_all(&repo);
}

/// A module returning a tuple: refused at load unless `torchscript_output = "first"` says to
/// serve its first tensor; requests to the refused one are 503 and leave no log line each.
#[tokio::test]
async fn a_module_returning_a_tuple_is_refused_or_serves_its_first_tensor() {
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("torchscript-pair-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    for model in ["pair", "pair_first"] {
        std::fs::create_dir_all(repo.join(model).join("1")).unwrap();
    }
    std::fs::write(repo.join("pair/config.toml"), CONFIG).unwrap();
    std::fs::write(
        repo.join("pair_first/config.toml"),
        format!("torchscript_output = \"first\"\n{CONFIG}"),
    )
    .unwrap();
    let want = script(
        &repo,
        "pair",
        &[
            repo.join("pair/1/model.pt"),
            repo.join("pair_first/1/model.pt"),
        ],
    );

    let server = Server::start(&repo, &[]);
    let client = reqwest::Client::new();
    let response = client
        .get(server.url("/v2/models/pair/versions/1/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(
            r#"the TorchScript module returns a tuple of 2 values; set torchscript_output = "first""#
        ),
        "{body}"
    );

    let request = json!({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
        "data": ROWS}]});
    let log_lines = server.log().lines().count();
    for _ in 0..20 {
        let response = client
            .post(server.url("/v2/models/pair/infer"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503);
    }
    assert_eq!(server.log().lines().count(), log_lines, "{}", server.log());

    let response = client
        .post(server.url("/v2/models/pair_first/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outputs"][0]["shape"], json!([3, 3]));
    assert_output(&body, &want);
    drop(server);
    let _ = std::fs::remove_dir_all(&repo);
}

/// `precision = "bf16"` with a BF16 output: the module's parameters are cast to BF16 at load and
/// each batch on the device; the output comes back as BF16 (binary: 2 bytes per element, JSON:
/// numbers that are BF16 values) within 0.04 of PyTorch's FP32 output. The module's outputs are
/// in [-2, 2], where bfloat16's spacing is at most 2^-6 (0.016); the error of the cast weights
/// and inputs through tanh adds about as much again. `tf32` on this CPU is refused naming the
/// mode.
#[tokio::test]
async fn a_module_in_bf16_serves_bf16_outputs_close_to_fp32() {
    let repo = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("torchscript-bf16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    for model in ["small_bf16", "small_tf32"] {
        std::fs::create_dir_all(repo.join(model).join("1")).unwrap();
    }
    let bf16_config = format!("precision = \"bf16\"\n{CONFIG}").replace(
        "name = \"y\"\ndatatype = \"FP32\"",
        "name = \"y\"\ndatatype = \"BF16\"",
    );
    std::fs::write(repo.join("small_bf16/config.toml"), bf16_config).unwrap();
    std::fs::write(
        repo.join("small_tf32/config.toml"),
        format!("precision = \"tf32\"\n{CONFIG}"),
    )
    .unwrap();
    let want = script(
        &repo,
        "tensor",
        &[
            repo.join("small_bf16/1/model.pt"),
            repo.join("small_tf32/1/model.pt"),
        ],
    );

    let server = Server::start(&repo, &[]);
    let client = reqwest::Client::new();
    let close = |got: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.04, "{got:?} vs {want:?}");
            assert_eq!((*g as f32).to_bits() & 0xffff, 0, "{g} is not a BF16 value");
        }
    };
    let request = json!({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
        "data": ROWS}]});
    let response = client
        .post(server.url("/v2/models/small_bf16/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outputs"][0]["datatype"], "BF16");
    let got: Vec<f64> = body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    close(&got);

    // Binary output: 9 BF16 elements are 18 bytes after the JSON header.
    let mut binary = request.clone();
    binary["outputs"] = json!([{"name": "y", "parameters": {"binary_data": true}}]);
    let response = client
        .post(server.url("/v2/models/small_bf16/infer"))
        .json(&binary)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let json_len: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let header: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(header["outputs"][0]["datatype"], "BF16");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 18);
    let decoded: Vec<f64> = bytes[json_len..]
        .chunks(2)
        .map(|b| {
            f64::from(f32::from_bits(
                u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
            ))
        })
        .collect();
    assert_eq!(decoded, got, "binary and JSON outputs differ");

    let response = client
        .get(server.url("/v2/models/small_tf32/versions/1/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("precision \"tf32\" is a CUDA tensor-core mode"),
        "{body}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&repo);
}
