//! The wire contract as a client and a server see it: the examples of the Open Inference
//! Protocol's REST specification (kserve/open-inference-protocol
//! `specification/protocol/inference_rest.md`) parse into the protocol's types, and a request
//! with binary tensor data (Triton's binary data extension) built by a client splits and
//! decodes back to the same tensor on the server's side.

use maas_protocol::{
    decode, encode, split_body, BinaryBody, Datatype, InferRequest, InferResponse, ModelMetadata,
    RequestInput, RequestOutput, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE,
};
use serde_json::json;

#[test]
fn the_specification_examples_parse() {
    let request: InferRequest = serde_json::from_value(json!({
        "id": "42",
        "inputs": [
            {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
            {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [true]}
        ],
        "outputs": [{"name": "output0"}]
    }))
    .expect("the spec's infer request");
    assert_eq!(request.id.as_deref(), Some("42"));
    assert_eq!(request.inputs[1].datatype, "BOOL");
    assert_eq!(request.outputs.expect("outputs")[0].name, "output0");

    let response: InferResponse = serde_json::from_value(json!({
        "id": "42",
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "output0", "shape": [3, 2], "datatype": "FP32",
                     "data": [1.0, 1.1, 2.0, 2.1, 3.0, 3.1]}]
    }))
    .expect("the spec's infer response");
    assert_eq!(response.outputs[0].datatype, Datatype::Fp32);

    let metadata: ModelMetadata = serde_json::from_value(json!({
        "name": "m", "versions": ["1", "2"], "platform": "dense",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    }))
    .expect("model metadata");
    assert_eq!(metadata.inputs[0].shape, vec![-1, 64]);
    let unknown = serde_json::from_value::<ModelMetadata>(json!({
        "name": "m", "versions": [], "platform": "dense",
        "inputs": [{"name": "input", "datatype": "FLOAT", "shape": [-1]}], "outputs": []
    }))
    .expect_err("FLOAT is no protocol datatype");
    assert!(
        unknown.to_string().contains("unknown datatype 'FLOAT'"),
        "{unknown}"
    );
}

#[test]
fn a_binary_request_round_trips() {
    let values = [0.5f32, -1.0, 2.25, 8.0, 0.0, 3.5];
    let mut binary = Vec::new();
    encode(&values, &mut binary);
    let request = InferRequest {
        outputs: Some(vec![RequestOutput::binary("y")]),
        ..InferRequest::new(vec![RequestInput::binary(
            "x",
            vec![2, 3],
            Datatype::Fp32,
            binary.len(),
        )])
        .binary_data_output()
    };
    let body = BinaryBody::new(&request, &binary).expect("serializes");

    let header = body.json_len.to_string();
    let (json, tail) = split_body(Some(header.as_bytes()), &body.bytes).expect("splits");
    let parsed: InferRequest = serde_json::from_slice(json).expect("the JSON part");
    assert_eq!(parsed, request);
    let input = &parsed.inputs[0];
    let size = input.parameters.as_ref().expect("parameters")[BINARY_DATA_SIZE]
        .as_u64()
        .expect("a size");
    assert_eq!(size as usize, tail.len());
    assert_eq!(
        parsed.parameters.expect("parameters")[BINARY_DATA_OUTPUT],
        json!(true)
    );
    let back: Vec<f32> = decode(tail).expect("whole elements").collect();
    assert_eq!(back, values);
    assert_eq!(
        Datatype::Fp32.element_size(),
        Some(tail.len() / values.len())
    );
}
