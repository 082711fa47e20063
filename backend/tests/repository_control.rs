//! Triton's model repository extension over real HTTP: index, load, unload; version policy and
//! warmup; a failed reload keeps the serving version; requests in flight during an unload or
//! reload finish.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{digits_rows, post_json, trained_repo, Server};
use serde_json::{json, Value};

struct TempRepo(std::path::PathBuf);

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A repository with model `m`: the trained digits weights as version 1, batching with a long
/// delay (so requests wait in the queue), `version_policy = { latest = 1 }` and a warmup of 2.
fn repo() -> TempRepo {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "control-repo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let model = dir.join("m");
    std::fs::create_dir_all(model.join("1")).unwrap();
    let trained = trained_repo();
    std::fs::copy(
        trained.join("digits/1/model.safetensors"),
        model.join("1/model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(trained.join("digits/config.toml")).unwrap();
    let config = config.replace(
        "max_batch_size = 0\n",
        "max_batch_size = 64\nversion_policy = { latest = 1 }\n\n[dynamic_batching]\nmax_queue_delay_us = 1000000\n\n[[warmup]]\nbatch_size = 3\ncount = 2\n",
    );
    std::fs::write(model.join("config.toml"), config).unwrap();
    TempRepo(dir)
}

async fn post(client: &reqwest::Client, url: String) -> (u16, Value) {
    let response = client.post(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn infer(client: &reqwest::Client, server: &Server) -> (u16, Value) {
    let pixels = digits_rows(1).remove(0).0;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]});
    post_json(client, server.url("/v2/models/m/infer"), &body).await
}

#[tokio::test]
async fn load_unload_and_index() {
    let repo = repo();
    let server = Server::start(&repo.0, &[]);
    let client = reqwest::Client::new();

    // Warmup ran before the version was ready: two forward passes of 3 rows.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("maas_inference_exec_count_total{model=\"m\",version=\"1\"} 2\n")
            && metrics.contains("maas_inference_count_total{model=\"m\",version=\"1\"} 6\n"),
        "{metrics}"
    );

    let (status, index) = post(&client, server.url("/v2/repository/index")).await;
    assert_eq!(status, 200);
    assert_eq!(
        index,
        json!([{"name": "m", "version": "1", "state": "READY", "reason": ""}])
    );

    // Version 2 appears on disk; a load picks it (latest 1 policy: only version 2 serves).
    std::fs::create_dir_all(repo.0.join("m/2")).unwrap();
    std::fs::copy(
        repo.0.join("m/1/model.safetensors"),
        repo.0.join("m/2/model.safetensors"),
    )
    .unwrap();
    let (status, _) = post(&client, server.url("/v2/repository/models/m/load")).await;
    assert_eq!(status, 200);
    let metadata: Value = client
        .get(server.url("/v2/models/m"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["versions"], json!(["2"]));

    // A broken version 3: the load fails, saying why, and version 2 keeps serving.
    std::fs::create_dir_all(repo.0.join("m/3")).unwrap();
    std::fs::write(repo.0.join("m/3/model.safetensors"), b"not safetensors").unwrap();
    let (status, body) = post(&client, server.url("/v2/repository/models/m/load")).await;
    assert_eq!(status, 400);
    let e = body["error"].as_str().unwrap();
    assert!(
        e.contains("failed to load model 'm'") && e.contains("version 3"),
        "{e}"
    );
    assert!(e.contains("the version that was serving stays"), "{e}");
    let (status, body) = infer(&client, &server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "2");
    std::fs::remove_dir_all(repo.0.join("m/3")).unwrap();

    // Requests waiting in the batcher's queue when the model is reloaded, then unloaded, finish.
    for action in ["load", "unload"] {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let client = client.clone();
            let url = server.url("/v2/models/m/infer");
            let pixels = digits_rows(1).remove(0).0;
            tasks.push(tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]});
                let response = client.post(url).json(&body).send().await.unwrap();
                response.status().as_u16()
            }));
        }
        // All four wait in the batcher's queue (1 s delay, 4 rows < 64) before the action.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = client
                .get(server.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metrics
                .contains("maas_inference_pending_request_count{model=\"m\",version=\"2\"} 4\n")
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "requests did not queue:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, _) = post(
            &client,
            server.url(&format!("/v2/repository/models/m/{action}")),
        )
        .await;
        assert_eq!(status, 200, "{action}");
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                200,
                "a request in flight during {action} finished"
            );
        }
    }

    // Unloaded: 503 with a reason; the server stays ready; the index says so.
    let (status, body) = infer(&client, &server).await;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().contains("unloaded"),
        "{body}"
    );
    let ready = client
        .get(server.url("/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let (_, index) = post(&client, server.url("/v2/repository/index")).await;
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    assert_eq!(index[0]["reason"], "unloaded");

    // Load again; unknown models and unsupported parameters are clean errors.
    let (status, _) = post(&client, server.url("/v2/repository/models/m/load")).await;
    assert_eq!(status, 200);
    let (status, _) = infer(&client, &server).await;
    assert_eq!(status, 200);
    let (status, body) = post(&client, server.url("/v2/repository/models/nope/load")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no model folder 'nope'"),
        "{body}"
    );
    let (status, _) = post(&client, server.url("/v2/repository/models/nope/unload")).await;
    assert_eq!(status, 404);
    let response = client
        .post(server.url("/v2/repository/models/m/load"))
        .json(&json!({"parameters": {"config": "{}"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = client
        .post(server.url("/v2/repository/index"))
        .json(&json!({"ready": true}))
        .send()
        .await
        .unwrap();
    let index: Value = response.json().await.unwrap();
    assert_eq!(
        index,
        json!([{"name": "m", "version": "2", "state": "READY", "reason": ""}])
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
