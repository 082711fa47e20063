//! The per-request row limit of a model without batching limits (`max_batch_size = 0`, what
//! the trainer and the importer write): by default the server's 1024 rows, `--max-request-rows`
//! to change it; more is a 400 naming the limit, before any forward pass.

mod common;

use common::{get_json, post_json, trained_repo, Server};
use serde_json::{json, Value};

fn request(rows: usize) -> Value {
    json!({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
        "data": vec![0.5f32; rows * 64]}]})
}

async fn infer(client: &reqwest::Client, server: &Server, rows: usize) -> (u16, Value) {
    post_json(
        client,
        server.url("/v2/models/digits/infer"),
        &request(rows),
    )
    .await
}

#[tokio::test]
async fn unbatched_models_have_a_row_limit() {
    let client = reqwest::Client::new();
    let server = Server::start(trained_repo(), &[]);
    let (status, body) = infer(&client, &server, 1024).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([1024, 10]));
    let (status, body) = infer(&client, &server, 1025).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "input 'input': batch 1025 is over the 1024 rows a request may send to this model \
         (max_request_rows; shape [1025, 64]); split the request"
    );
    // The limit in the model's configuration as served.
    let config = get_json(&client, server.url("/v2/models/digits/config")).await;
    assert_eq!(config["max_request_rows"], 1024, "{config}");
    drop(server);

    let server = Server::start(trained_repo(), &["--max-request-rows", "10"]);
    let (status, _) = infer(&client, &server, 10).await;
    assert_eq!(status, 200);
    let (status, body) = infer(&client, &server, 11).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("over the 10 rows"),
        "{body}"
    );
}
