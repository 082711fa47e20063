//! The queue timeout per priority level through the real HTTP server: a model whose batcher
//! holds a lone request 400 ms for others to join, where level 1 may wait 50 ms and level 2
//! has no timeout (`[dynamic_batching] default_timeout_us`, `priority_timeout_us`). A level-1
//! request is answered 503 with a JSON error at its timeout; the gateway's level 2 (with the
//! shared secret) is served; a client's own `x-maas-priority` without the secret stays level 1.

mod common;

use std::time::{Duration, Instant};

use common::{digits_rows, trained_repo, Server, TempDir};
use maas_protocol::{GATEWAY_SECRET, PRIORITY};
use serde_json::{json, Value};

const SECRET: &str = "queue-timeout-secret";

/// A repository with `digits_timeout`: the trained digits weights, batched, with the timeouts.
fn repo() -> TempDir {
    let dir = TempDir::new("queue-timeout");
    let trained = trained_repo();
    let model = dir.path().join("digits_timeout");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(
        trained.join("digits/1/model.safetensors"),
        model.join("1/model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(trained.join("digits/config.toml")).unwrap();
    let config = config.replace(
        "max_batch_size = 0\n",
        "max_batch_size = 64\n\n[dynamic_batching]\nmax_queue_delay_us = 400000\n\
         default_timeout_us = 50000\npriority_timeout_us = { 2 = 0 }\n",
    );
    assert!(config.contains("default_timeout_us"), "{config}");
    std::fs::write(model.join("config.toml"), config).unwrap();
    dir
}

/// One request of one row; its status, JSON body and how long it took.
async fn infer(
    client: &reqwest::Client,
    server: &Server,
    headers: &[(&str, &str)],
) -> (u16, Value, Duration) {
    let (pixels, _) = digits_rows(1).remove(0);
    let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]});
    let mut request = client
        .post(server.url("/v2/models/digits_timeout/infer"))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].clone();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type, "application/json", "{body}");
    (status, body, started.elapsed())
}

#[tokio::test]
async fn a_request_past_its_levels_queue_timeout_is_a_503_and_counted() {
    let repo = repo();
    let server = Server::start(repo.path(), &["--gateway-secret", SECRET]);
    let client = reqwest::Client::new();

    // Level 1 (no headers): refused at 50 ms, long before the 400 ms batching delay ends.
    let (status, body, took) = infer(&client, &server, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"],
        "digits_timeout/1: waited longer than the queue timeout of priority level 1 (50 ms); retry later"
    );
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(350),
        "{took:?}"
    );

    // A client's own level without the gateway's secret is not honoured: still level 1.
    let (status, body, _) = infer(&client, &server, &[(PRIORITY, "2")]).await;
    assert_eq!(status, 503, "{body}");

    // The gateway's level 2 has no timeout: served after the batching delay.
    let gateway = [(PRIORITY, "2"), (GATEWAY_SECRET, SECRET)];
    let (status, body, took) = infer(&client, &server, &gateway).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 10]));
    assert!(took >= Duration::from_millis(400), "{took:?}");

    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = |reason: &str| -> u64 {
        let prefix = format!(
            "maas_inference_refused_total{{model=\"digits_timeout\",version=\"1\",reason=\"{reason}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(refused("timeout"), 2);
    assert_eq!(refused("queue_full"), 0);
    let success = "maas_inference_request_success_total{model=\"digits_timeout\",version=\"1\"} 1";
    assert!(text.contains(success), "{text}");
}
