//! A pipeline stage in another process (`maas-backend serve-stage`), reached over HTTP: each
//! micro-batch's activations go to the stage's infer route as binary tensor data (Triton's
//! binary tensor data extension) and come back the same way.

use std::time::Duration;

use maas_protocol::{
    decode, encode, split_body, BinaryBody, Datatype, InferRequest, ModelMetadata, RequestInput,
    RequestOutput, TensorMetadata, COMPUTE_US, HEADER_CONTENT_LENGTH,
};

use super::Stage;
use crate::config::{ModelConfig, TensorConfig, STAGE_INPUT, STAGE_OUTPUT};
use crate::engine::{ForwardError, RemoteStageError};

/// How long a remote stage may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A stage in another process (`maas-backend serve-stage`), reached over HTTP.
pub(super) struct RemoteStage {
    index: usize,
    address: String,
    /// `http://{address}/v2/models/{stage}/versions/{N}/infer`.
    infer_url: String,
    client: reqwest::blocking::Client,
    in_features: i64,
    out_features: i64,
}

impl RemoteStage {
    /// Builds the client (on the stage thread) and checks the stage's metadata at `base`
    /// (`http://{address}/v2/models/{stage}/versions/{N}`) against `expected`'s shapes.
    pub(super) fn connect(
        index: usize,
        address: String,
        base: String,
        expected: &ModelConfig,
        timeout: Duration,
    ) -> Result<RemoteStage, Box<RemoteStageError>> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .build()
            .map_err(RemoteStageError::HttpClient)?;
        let in_features = expected
            .inputs
            .first()
            .map_or(0, TensorConfig::row_elements);
        let out_features = expected
            .outputs
            .first()
            .map_or(0, TensorConfig::row_elements);
        let response = client.get(base.as_str()).send().map_err(|source| {
            RemoteStageError::StageUnreachable {
                address: address.clone(),
                url: base.clone(),
                source,
            }
        })?;
        let status = response.status();
        let body = response.text().unwrap_or_default();
        if !status.is_success() {
            return Err(RemoteStageError::StageRefused {
                address,
                url: base,
                status,
                message: error_message(&body),
            }
            .into());
        }
        let metadata: ModelMetadata =
            serde_json::from_str(&body).map_err(|source| RemoteStageError::StageMetadata {
                address: address.clone(),
                source,
            })?;
        let shape = |list: &[TensorMetadata]| list.first().map(|t| (t.shape.clone(), t.datatype));
        let want_in = (vec![-1, in_features], Datatype::Fp32);
        let want_out = (vec![-1, out_features], Datatype::Fp32);
        if shape(&metadata.inputs) != Some(want_in.clone())
            || shape(&metadata.outputs) != Some(want_out.clone())
        {
            return Err(RemoteStageError::StageShapes {
                address,
                inputs: shape(&metadata.inputs),
                outputs: shape(&metadata.outputs),
                want_in: want_in.0,
                want_out: want_out.0,
            }
            .into());
        }
        Ok(RemoteStage {
            index,
            address,
            infer_url: format!("{base}/infer"),
            client,
            in_features,
            out_features,
        })
    }

    /// A failure of this stage (503), naming it and its address.
    fn unavailable(&self, why: impl std::fmt::Display) -> ForwardError {
        ForwardError::StageUnavailable {
            index: self.index,
            address: self.address.clone(),
            reason: why.to_string(),
        }
    }
}

impl Stage for RemoteStage {
    /// Posts `[rows, in]` FP32 as binary tensor data and reads `[rows, out]` back; busy time is
    /// the stage's `x-maas-compute-us` answer header.
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardError> {
        let mut binary = Vec::new();
        encode(input, &mut binary);
        let request = InferRequest {
            outputs: Some(vec![RequestOutput::binary(STAGE_OUTPUT)]),
            ..InferRequest::new(vec![RequestInput::binary(
                STAGE_INPUT,
                vec![rows, self.in_features],
                Datatype::Fp32,
                binary.len(),
            )])
        };
        let body = BinaryBody::new(&request, &binary).map_err(|e| self.unavailable(e))?;
        let response = self
            .client
            .post(self.infer_url.as_str())
            .header(HEADER_CONTENT_LENGTH, body.json_len)
            .header("content-type", "application/octet-stream")
            .body(body.bytes)
            .send()
            .map_err(|e| self.unavailable(describe(&e)))?;
        let status = response.status();
        let compute_us = response
            .headers()
            .get(COMPUTE_US)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let json_len = response
            .headers()
            .get(HEADER_CONTENT_LENGTH)
            .map(|v| v.as_bytes().to_vec());
        let bytes = response
            .bytes()
            .map_err(|e| self.unavailable(describe(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(self.unavailable(format!("{status}: {}", error_message(&text))));
        }
        let expected = usize::try_from(rows * self.out_features).unwrap_or(0);
        let output: Vec<f32> = split_body(json_len.as_deref(), &bytes)
            .ok()
            .filter(|_| json_len.is_some())
            .and_then(|(_, binary)| decode(binary))
            .filter(|values| values.len() == expected)
            .ok_or_else(|| {
                self.unavailable(format!(
                    "answer is not {} bytes of binary FP32 output after the JSON header",
                    expected * 4
                ))
            })?
            .collect();
        let busy = compute_us
            .map(Duration::from_micros)
            .ok_or_else(|| self.unavailable(format!("answer has no {COMPUTE_US} header")))?;
        Ok((output, busy))
    }
}

/// The `error` of a JSON error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// A reqwest error with its kind spelled out (reqwest's own text hides the cause).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
