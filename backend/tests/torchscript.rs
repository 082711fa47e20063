//! TorchScript models: a `model.pt` scripted and saved by the `.venv`'s PyTorch, served through
//! the batcher, checked against PyTorch's own output; a file libtorch cannot load fails its
//! version with the reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::{workspace, Server};
use serde_json::{json, Value};

const SCRIPT: &str = r#"
import json, sys
import torch

class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.arange(12.0).reshape(3, 4) / 10)
            self.linear.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return torch.tanh(self.linear(x)) * 2

module = torch.jit.script(Small())
module.save(sys.argv[1])
x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
print(json.dumps(module(x).tolist()))
"#;

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
    let python = workspace().join(".venv/bin/python");
    let repo =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torchscript-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    std::fs::create_dir_all(repo.join("small/1")).unwrap();
    std::fs::create_dir_all(repo.join("small/2")).unwrap();
    std::fs::write(repo.join("small/config.toml"), CONFIG).unwrap();
    // torch.jit.script reads the module's source, so the script must be a file.
    let script = repo.join("make_model.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let output = Command::new(&python)
        .arg(&script)
        .arg(repo.join("small/1/model.pt"))
        .output()
        .expect("run the .venv python (make setup installs torch there)");
    assert!(
        output.status.success(),
        "scripting failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: Vec<Vec<f64>> = serde_json::from_slice(&output.stdout).unwrap();
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
        "data": [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]]}]});
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
    let got: Vec<f64> = body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = expected.into_iter().flatten().collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }

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
