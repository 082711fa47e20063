//! `POST /v2/models/{model}[/versions/{version}]/infer`: resolve the model version (404 and
//! 503 before 400), validate the body, run it on the version's worker, and answer with the
//! outputs (JSON, or Triton's binary tensor data as asked) and the usage headers.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use half::{bf16, f16};
use maas_protocol::{
    encode, BinaryBody, Datatype, InferRequest, InferResponse, ResponseOutput,
    HEADER_CONTENT_LENGTH,
};

use super::extract::{Body, ModelPath, PathParams};
use super::fairness::fairness_of;
use super::usage::Usage;
use super::{AppState, Error};
use crate::engine::{Fairness, Worker};
use crate::repository::LoadedModel;
use crate::validation::{parse_json_part, split_body, validate};

pub(super) async fn infer(
    State(state): State<AppState>,
    PathParams(path): PathParams<ModelPath>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, Error> {
    run_infer(
        &state,
        &path.model,
        path.version.as_deref(),
        &headers,
        &body,
    )
    .await
}

/// Resolves the model version (404/503 first), then infers on it and counts the outcome in the
/// version's metrics.
async fn run_infer(
    state: &AppState,
    model_name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Error> {
    let model = state.repository.model(model_name)?;
    let (number, worker) = model.version(version)?;
    let started = Instant::now();
    let fairness = fairness_of(headers, state.gateway_secret.as_ref());
    let result = infer_version(&model, number, worker, fairness, headers, body).await;
    let metrics = worker.metrics();
    let counter = match &result {
        Ok(_) => &metrics.success,
        Err(_) => &metrics.failure,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Validates the body (400), runs the forward pass on the version's worker and answers with
/// the outputs (JSON or binary, as asked) and the usage headers.
async fn infer_version(
    model: &LoadedModel,
    number: u64,
    worker: &Worker,
    fairness: Fairness,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Error> {
    let model_name = model.name();
    let (json, binary) = split_body(headers, body)?;
    let has_binary_header = headers.contains_key(HEADER_CONTENT_LENGTH);
    let request: InferRequest = parse_json_part(json, has_binary_header)?;
    let request = validate(request, binary, model.config())?;
    let rows = request.rows;
    let forward = worker.infer_as(fairness, rows, request.input).await?;

    let config = model.config();
    let [output] = config.outputs.as_slice() else {
        return Err(Error::Internal(format!(
            "model '{model_name}' has {} outputs",
            config.outputs.len()
        )));
    };
    let expected = rows
        .checked_mul(output.row_elements())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    if forward.data.len() != expected {
        return Err(Error::Internal(format!(
            "model '{model_name}' version {number} returned {} elements, expected {expected}",
            forward.data.len()
        )));
    }
    let mut outputs = Vec::new();
    let mut binary_part = Vec::new();
    for requested in &request.outputs {
        if requested.name != output.name {
            continue;
        }
        let shape = std::iter::once(rows)
            .chain(output.dims.iter().copied())
            .collect();
        if requested.binary {
            let before = binary_part.len();
            encode_as(output.datatype, &forward.data, &mut binary_part)?;
            outputs.push(ResponseOutput::binary(
                output.name.clone(),
                output.datatype,
                shape,
                binary_part.len() - before,
            ));
        } else {
            outputs.push(ResponseOutput::json(
                output.name.clone(),
                output.datatype,
                shape,
                forward.data.clone(),
            ));
        }
    }
    let usage = Usage {
        inference_count: u64::try_from(rows).unwrap_or(0),
        compute: forward.compute,
        model_version: number,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    tracing::debug!(
        request_id = header(maas_protocol::REQUEST_ID),
        traceparent = header(maas_protocol::TRACEPARENT),
        model = model_name,
        version = number,
        rows,
        batch_rows = forward.batch_rows,
        queue_us = forward.queue.as_micros(),
        compute_us = usage.compute_us(),
        "infer"
    );
    let response = InferResponse {
        model_name: model_name.to_string(),
        model_version: number.to_string(),
        id: request.id,
        outputs,
    };
    if binary_part.is_empty() {
        return Ok((usage.headers(), Json(response)).into_response());
    }
    let body = BinaryBody::new(&response, &binary_part)
        .map_err(|e| Error::Internal(format!("cannot encode the response: {e}")))?;
    Ok(binary_response(body, usage.headers()))
}

/// Appends `data` to a binary part in `datatype`, the output's declared datatype: FP32 as is;
/// FP16 and BF16 as their 16-bit patterns, little-endian (Triton's binary tensor data
/// extension), from values the model computed in that format, so the conversion is exact.
fn encode_as(datatype: Datatype, data: &[f32], out: &mut Vec<u8>) -> Result<(), Error> {
    match datatype {
        Datatype::Fp32 => encode(data, out),
        Datatype::Fp16 => {
            let bits: Vec<u16> = data.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            encode(&bits, out);
        }
        Datatype::Bf16 => {
            let bits: Vec<u16> = data.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            encode(&bits, out);
        }
        other => {
            return Err(Error::Internal(format!(
                "output datatype {other} is not one a model computes in"
            )))
        }
    }
    Ok(())
}

/// A response of a JSON header and binary output bytes: `Content-Type:
/// application/octet-stream` and `Inference-Header-Content-Length: json_len`.
fn binary_response(body: BinaryBody, extra: HeaderMap) -> Response {
    let mut headers = extra;
    headers.insert(
        HeaderName::from_static(HEADER_CONTENT_LENGTH),
        HeaderValue::from(body.json_len),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    (headers, body.bytes).into_response()
}
