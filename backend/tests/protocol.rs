//! The Open Inference Protocol over real HTTP: PyPI's `tritonclient[http]` unmodified (binary
//! and JSON tensors), every kind of bad input (each a 400 naming what was expected), two
//! concurrent requests in one batch where one is malformed, a client that disconnects, and
//! the metrics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{digits_rows, trained_repo, workspace, Server};
use serde_json::{json, Value};

/// Asserts the status and a JSON `{"error": ...}` body; returns the message.
async fn error_of(response: reqwest::Response, status: u16) -> String {
    let got = response.status().as_u16();
    let content_type = response.headers()["content-type"].clone();
    let body = response.text().await.unwrap();
    let shown: String = body.chars().take(300).collect();
    assert_eq!(got, status, "body: {shown}");
    assert_eq!(content_type, "application/json");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_string()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

/// The JSON header and binary part of an FP32 binary request for `rows`.
fn binary_request(
    rows: &[Vec<f32>],
    declared_size: Option<i64>,
    extra: &[u8],
) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    for row in rows {
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let size = declared_size.unwrap_or(bytes.len() as i64);
    bytes.extend_from_slice(extra);
    let header = json!({
        "inputs": [{"name": "input", "shape": [rows.len(), 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": size}}],
        "parameters": {"binary_data_output": true},
    })
    .to_string();
    (header, bytes)
}

async fn post_binary(
    client: &reqwest::Client,
    url: &str,
    header: &str,
    binary: &[u8],
    length: Option<&str>,
) -> reqwest::Response {
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(binary);
    let mut request = client
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(body);
    let length = length
        .map(str::to_string)
        .unwrap_or(header.len().to_string());
    request = request.header("Inference-Header-Content-Length", length);
    request.send().await.unwrap()
}

/// Decodes a binary infer response: (JSON header, FP32 output).
async fn decode_binary(response: reqwest::Response) -> (Value, Vec<f32>) {
    assert_eq!(response.status().as_u16(), 200);
    let length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    let header: Value = serde_json::from_slice(&body[..length]).unwrap();
    let values = body[length..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (header, values)
}

#[test]
fn tritonclient_http_works_unmodified() {
    let python = workspace().join(".venv/bin/python");
    let importable = Command::new(&python)
        .args(["-c", "import tritonclient.http, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        importable,
        "{} cannot import tritonclient.http and numpy; run `make setup` (scripts/setup.sh installs them)",
        python.display()
    );
    let repo = trained_repo();
    let server = Server::start(repo, &[]);
    let script = workspace().join("backend/tests/tritonclient_check.py");
    for model in ["digits", "digits_batched"] {
        let output = Command::new(&python)
            .arg(&script)
            .arg(&server.addr)
            .arg(model)
            .arg(common::data_path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "tritonclient_check.py failed for {model}:\n{}\n{stdout}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
        let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(seen["server_live"], true);
        assert_eq!(seen["server_ready"], true);
        assert_eq!(seen["model_ready"], true);
        assert_eq!(seen["version_ready"], true);
        let extensions = seen["server_metadata"]["extensions"].as_array().unwrap();
        assert!(
            extensions.contains(&json!("binary_tensor_data")),
            "{extensions:?}"
        );
        assert_eq!(seen["server_metadata"]["name"], "maas-backend");
        assert_eq!(
            seen["model_metadata"]["inputs"][0]["shape"],
            json!([-1, 64])
        );
        assert_eq!(seen["model_metadata"]["versions"], json!(["1"]));
        assert_eq!(seen["model_config"]["platform"], "dense");

        let labels: Vec<u64> = seen["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let binary = &seen["binary"];
        assert_eq!(binary["id"], "tc-binary");
        assert_eq!(binary["shape"], json!([16, 10]));
        assert_eq!(binary["parameters"]["binary_data_size"], 16 * 10 * 4);
        let predicted: Vec<u64> = binary["argmax"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let correct = predicted
            .iter()
            .zip(&labels)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            correct >= 14,
            "{model}: {correct} of 16 right: {predicted:?} vs {labels:?}"
        );
        assert_eq!(
            seen["json"]["argmax"], binary["argmax"],
            "{model}: JSON and binary agree"
        );
        assert_eq!(seen["json"]["has_data"], true);
        assert_eq!(seen["json"]["version"], "1");
        for datatype in ["UINT8", "FP16", "FP64", "INT64"] {
            assert_eq!(
                seen["datatypes"][datatype], binary["argmax"],
                "{model}: {datatype} input gives the same labels"
            );
        }
        let shape_error = seen["errors"]["shape"].as_str().unwrap();
        assert!(
            shape_error.contains("expected shape [-1, 64]"),
            "{shape_error}"
        );
        let unknown = seen["errors"]["unknown_model"].as_str().unwrap();
        assert!(unknown.contains("unknown model 'nope'"), "{unknown}");
    }
}

#[tokio::test]
async fn bad_inputs_get_clean_errors() {
    let repo = trained_repo();
    let server = Server::start(repo, &["--max-body-bytes", "65536"]);
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/digits/infer");
    let batched = server.url("/v2/models/digits_batched/infer");
    let row = digits_rows(1).remove(0).0;

    let post = |url: String, body: Value| {
        let client = client.clone();
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    let input = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]});

    // Element count not matching the shape.
    let e = error_of(
        post(url.clone(), input(json!([2, 64]), "FP32", json!(row))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input'") && e.contains("expected 128 elements"),
        "{e}"
    );
    // Wrong or unsupported datatype; an element that does not fit the datatype.
    let e = error_of(
        post(url.clone(), input(json!([1, 64]), "FLOAT", json!(row))).await,
        400,
    )
    .await;
    assert!(e.contains("input 'input': unknown datatype 'FLOAT'"), "{e}");
    let e = error_of(
        post(url.clone(), input(json!([1, 64]), "BYTES", json!(row))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': datatype BYTES is not supported"),
        "{e}"
    );
    let e = error_of(
        post(url.clone(), input(json!([1, 64]), "BF16", json!(row))).await,
        400,
    )
    .await;
    assert!(e.contains("input 'input': BF16 has no JSON form"), "{e}");
    let mut strings = vec![json!(0); 64];
    strings[3] = json!("x");
    let e = error_of(
        post(url.clone(), input(json!([1, 64]), "FP32", json!(strings))).await,
        400,
    )
    .await;
    assert!(e.contains("input 'input': data element 3"), "{e}");
    // Unknown or missing input.
    let e = error_of(
        post(url.clone(), json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row}]})).await,
        400,
    )
    .await;
    assert!(
        e.contains("unknown input 'pixels' (expected 'input')"),
        "{e}"
    );
    let e = error_of(post(url.clone(), json!({"inputs": []})).await, 400).await;
    assert!(e.contains("expected 1 input 'input', got none"), "{e}");
    let e = error_of(
        post(
            url.clone(),
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}),
        )
        .await,
        400,
    )
    .await;
    assert!(e.contains("input 'input': has neither data nor"), "{e}");
    // Batch over max_batch_size.
    let big = vec![row.clone(); 65];
    let e = error_of(
        post(batched.clone(), input(json!([65, 64]), "FP32", json!(big))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': batch 65 is over the model's max_batch_size 64"),
        "{e}"
    );
    // A shape whose element count overflows, one promising far more rows than the data has:
    // both over the row limit of a model without batching limits; a zero-size dimension; a
    // negative one.
    let e = error_of(
        post(
            url.clone(),
            input(json!([1u64 << 60, 64]), "FP32", json!(row)),
        )
        .await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': batch 1152921504606846976 is over the 1024 rows a request may send to this model"),
        "{e}"
    );
    let e = error_of(
        post(
            url.clone(),
            input(json!([1_000_000_000, 64]), "FP32", json!(row)),
        )
        .await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': batch 1000000000 is over the 1024 rows"),
        "{e}"
    );
    let e = error_of(
        post(url.clone(), input(json!([0, 64]), "FP32", json!([]))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input'") && e.contains("batch of at least 1"),
        "{e}"
    );
    let e = error_of(
        post(url.clone(), input(json!([-1, 64]), "FP32", json!(row))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input'") && e.contains("batch of at least 1"),
        "{e}"
    );
    let e = error_of(
        post(url.clone(), input(json!([1, 0]), "FP32", json!([]))).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': expected shape [-1, 64], got [1, 0]"),
        "{e}"
    );
    // A body over the configured size: 413. The server answers before reading the whole body
    // and closes the connection, so this request gets a client (and connection) of its own.
    let huge = vec![row.clone(); 2000];
    let response = reqwest::Client::new()
        .post(&url)
        .json(&input(json!([2000, 64]), "FP32", json!(huge)))
        .send()
        .await
        .unwrap();
    let e = error_of(response, 413).await;
    assert!(e.contains("larger than the server accepts"), "{e}");
    // Malformed JSON.
    let response = client
        .post(&url)
        .body("{\"inputs\": [{\"name\": ")
        .send()
        .await
        .unwrap();
    let e = error_of(response, 400).await;
    assert!(e.contains("not valid JSON"), "{e}");

    // Binary: binary_data_size that disagrees with the shape, or with the body.
    let rows = vec![row.clone()];
    let (header, bytes) = binary_request(&rows, Some(252), &[]);
    let e = error_of(
        post_binary(&client, &url, &header, &bytes[..252], None).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': binary_data_size is 252 bytes, expected 256"),
        "{e}"
    );
    let (header, bytes) = binary_request(&rows, None, &[0, 0, 0, 0]);
    let e = error_of(post_binary(&client, &url, &header, &bytes, None).await, 400).await;
    assert!(
        e.contains("input 'input': binary_data_size is 256 bytes but the body has 260 bytes"),
        "{e}"
    );
    let (header, bytes) = binary_request(&rows, None, &[]);
    let e = error_of(
        post_binary(&client, &url, &header, &bytes[..200], None).await,
        400,
    )
    .await;
    assert!(e.contains("but the body has 200 bytes"), "{e}");
    let (header, bytes) = binary_request(&rows, Some(-4), &[]);
    let e = error_of(post_binary(&client, &url, &header, &bytes, None).await, 400).await;
    assert!(
        e.contains("input 'input': binary_data_size must be a non-negative integer"),
        "{e}"
    );
    // Inference-Header-Content-Length: missing, negative, not a number, larger than the body.
    let (header, bytes) = binary_request(&rows, None, &[]);
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&bytes);
    let response = client.post(&url).body(body.clone()).send().await.unwrap();
    let e = error_of(response, 400).await;
    assert!(
        e.contains("needs the header Inference-Header-Content-Length"),
        "{e}"
    );
    let e = error_of(
        post_binary(&client, &url, &header, &bytes, Some("-5")).await,
        400,
    )
    .await;
    assert!(
        e.contains("Inference-Header-Content-Length must not be negative"),
        "{e}"
    );
    let e = error_of(
        post_binary(&client, &url, &header, &bytes, Some("abc")).await,
        400,
    )
    .await;
    assert!(
        e.contains("Inference-Header-Content-Length must be a decimal integer"),
        "{e}"
    );
    let e = error_of(
        post_binary(&client, &url, &header, &bytes, Some("100000")).await,
        400,
    )
    .await;
    assert!(e.contains("is 100000 but the body has only"), "{e}");
    // JSON data and binary_data_size at once.
    let both = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row,
                                   "parameters": {"binary_data_size": 256}}]});
    let e = error_of(
        post_binary(&client, &url, &both.to_string(), &bytes, None).await,
        400,
    )
    .await;
    assert!(
        e.contains("input 'input': has both JSON data and binary_data_size"),
        "{e}"
    );

    // After all that the server serves, and never logged a panic.
    let (header, bytes) = binary_request(&rows, None, &[]);
    let (_, out) = decode_binary(post_binary(&client, &url, &header, &bytes, None).await).await;
    assert_eq!(out.len(), 10);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Two requests sent together to a batching model, one with more bytes than it declared: the
/// malformed one is refused before the batcher, the other gets exactly its own rows' result.
#[tokio::test]
async fn a_malformed_request_does_not_disturb_its_batch_neighbour() {
    let repo = trained_repo();
    let server = Server::start(repo, &[]);
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/digits_batched/infer");
    let rows: Vec<Vec<f32>> = digits_rows(5).into_iter().map(|(p, _)| p).collect();
    let (header, bytes) = binary_request(&rows, None, &[]);
    let (_, alone) = decode_binary(post_binary(&client, &url, &header, &bytes, None).await).await;
    assert_eq!(alone.len(), 50);

    let others: Vec<Vec<f32>> = digits_rows(10)[5..]
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    let (bad_header, bad_bytes) = binary_request(&others, Some(5 * 256), &[7u8; 256]);
    for _ in 0..10 {
        let good = post_binary(&client, &url, &header, &bytes, None);
        let bad = post_binary(&client, &url, &bad_header, &bad_bytes, None);
        let (good, bad) = tokio::join!(good, bad);
        let e = error_of(bad, 400).await;
        assert!(
            e.contains("input 'input': binary_data_size is 1280 bytes but the body has 1536"),
            "{e}"
        );
        let (_, out) = decode_binary(good).await;
        assert_eq!(out, alone);
    }
}

#[tokio::test]
async fn batches_form_and_metrics_count_them() {
    let repo = trained_repo();
    let server = Server::start(repo, &[]);
    let client = reqwest::Client::new();
    let url = server.url("/v2/models/digits_batched/infer");
    let rows = digits_rows(32);
    let mut tasks = Vec::new();
    for (pixels, label) in rows.clone() {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]});
            let response = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(response.headers()["x-maas-inference-count"], "1");
            let body: Value = response.json().await.unwrap();
            let out: Vec<f32> = body["outputs"][0]["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            usize::from(argmax(&out) == label)
        }));
    }
    let mut correct = 0;
    for task in tasks {
        correct += task.await.unwrap();
    }
    assert!(correct >= 28, "{correct} of 32");
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let _ = client.post(&url).json(&bad).send().await.unwrap();

    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{model=\"digits_batched\",version=\"1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("maas_inference_request_success_total"), 32);
    assert_eq!(value("maas_inference_request_failure_total"), 1);
    assert_eq!(value("maas_inference_count_total"), 32);
    let executions = value("maas_inference_exec_count_total");
    assert!((1..=32).contains(&executions), "{executions}");
    assert_eq!(value("maas_inference_pending_request_count"), 0);
    assert!(text.contains("maas_inference_request_success_total{model=\"digits\",version=\"1\"} 0"));

    // The histograms, read with a Prometheus text parser: 33 requests reached the version
    // (32 answered, 1 refused), 32 waited in the queue, one batch size and one compute time
    // per forward pass.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let count = |name: &str| -> f64 {
        let series = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("model") == Some("digits_batched")
                    && s.labels.get("version") == Some("1")
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        let prometheus_parse::Value::Histogram(buckets) = &series.value else {
            panic!("{name} is not a histogram");
        };
        buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count)
            .unwrap()
    };
    assert_eq!(count("maas_inference_request_duration_seconds"), 33.0);
    assert_eq!(count("maas_inference_queue_duration_seconds"), 32.0);
    assert_eq!(count("maas_inference_batch_size"), executions as f64);
    assert_eq!(
        count("maas_inference_compute_duration_seconds"),
        executions as f64
    );
    let rows_sum = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "maas_inference_batch_size_sum"
                && s.labels.get("model") == Some("digits_batched")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) => v,
            ref v => panic!("{v:?}"),
        });
    assert_eq!(
        rows_sum,
        Some(32.0),
        "every row in exactly one forward pass"
    );
    eprintln!("32 concurrent one-row requests ran in {executions} forward passes");
}

#[tokio::test]
async fn a_client_that_disconnects_leaves_the_server_serving() {
    let repo = trained_repo();
    let server = Server::start(repo, &[]);
    let url = server.url("/v2/models/digits/infer");
    let rows: Vec<Vec<f32>> = vec![digits_rows(1).remove(0).0; 20_000];
    let (header, bytes) = binary_request(&rows, None, &[]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    for _ in 0..5 {
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&bytes);
        let _ = impatient
            .post(&url)
            .header("Inference-Header-Content-Length", header.len())
            .body(body)
            .send()
            .await;
    }
    let client = reqwest::Client::new();
    let (header, bytes) = binary_request(&rows[..3], None, &[]);
    let (json_header, out) =
        decode_binary(post_binary(&client, &url, &header, &bytes, None).await).await;
    assert_eq!(out.len(), 30);
    assert_eq!(json_header["outputs"][0]["shape"], json!([3, 10]));
    let live = client
        .get(server.url("/v2/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
}
