//! Property tests of the request decoder (`split_body` → `parse_json_part` → `validate`):
//! whatever the body, header and shape, it answers a value or a 400, never a panic and never
//! an internal error; and binary data decodes to the same values as
//! the JSON form of the same tensor.

use axum::http::{HeaderMap, HeaderValue};
use maas_backend::{dense_classifier, parse_json_part, split_body, validate, ValidationError};
use maas_protocol::{InferRequest, HEADER_CONTENT_LENGTH};
use proptest::prelude::*;
use serde_json::json;

/// Runs the whole decoder on one body; a 400 or success, nothing else.
fn decode(header: Option<&str>, body: &[u8]) -> Result<Vec<f32>, String> {
    let mut headers = HeaderMap::new();
    if let Some(value) = header.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(HEADER_CONTENT_LENGTH, value);
    }
    let config = dense_classifier(4, 3, 2);
    let result = split_body(&headers, body).and_then(|(json, binary)| {
        let request: InferRequest = parse_json_part(json, header.is_some())?;
        validate(request, binary, &config)
    });
    match result {
        Ok(v) => Ok(v.input),
        Err(other @ ValidationError::UnsupportedModel(_)) => panic!("not a 400: {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

const DATATYPES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512),
                                   header in proptest::option::of("-?[0-9]{0,4}|[a-z]{1,3}")) {
        let _ = decode(header.as_deref(), &body);
    }

    #[test]
    fn arbitrary_headers_shapes_and_sizes_never_panic(
        shape in proptest::collection::vec(any::<i64>(), 0..4),
        datatype in proptest::sample::select(DATATYPES.to_vec()),
        size in any::<i64>(),
        header_delta in -3i64..3,
        extra in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let json_part = json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                           "parameters": {"binary_data_size": size}}]}).to_string();
        let mut body = json_part.clone().into_bytes();
        body.extend_from_slice(&extra);
        let header = (json_part.len() as i64 + header_delta).to_string();
        let _ = decode(Some(&header), &body);
    }

    #[test]
    fn binary_and_json_forms_agree(rows in 1usize..4, values in proptest::collection::vec(-1000i16..1000, 16)) {
        let values = &values[..rows * 4];
        for datatype in ["INT16", "INT32", "INT64", "FP32", "FP64", "FP16"] {
            let mut bytes = Vec::new();
            for &v in values {
                match datatype {
                    "INT16" => bytes.extend_from_slice(&v.to_le_bytes()),
                    "INT32" => bytes.extend_from_slice(&i32::from(v).to_le_bytes()),
                    "INT64" => bytes.extend_from_slice(&i64::from(v).to_le_bytes()),
                    "FP32" => bytes.extend_from_slice(&f32::from(v).to_le_bytes()),
                    "FP64" => bytes.extend_from_slice(&f64::from(v).to_le_bytes()),
                    _ => bytes.extend_from_slice(&half::f16::from_f32(f32::from(v)).to_le_bytes()),
                }
            }
            let header = json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": datatype,
                                            "parameters": {"binary_data_size": bytes.len()}}]}).to_string();
            let mut body = header.clone().into_bytes();
            body.extend_from_slice(&bytes);
            let binary = decode(Some(&header.len().to_string()), &body).unwrap();
            let json_body = json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": datatype,
                                               "data": values}]}).to_string();
            let from_json = decode(None, json_body.as_bytes()).unwrap();
            prop_assert_eq!(&binary, &from_json, "{}", datatype);
            prop_assert_eq!(binary.len(), rows * 4);
        }
    }

    /// A valid binary request with some bytes overwritten and possibly cut short.
    #[test]
    fn mutated_valid_requests_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let header = json!({"id": "x", "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 32}}],
                            "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]})
            .to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&[0u8; 32]);
        for (index, byte) in edits {
            let i = index.index(body.len());
            body[i] = byte;
        }
        if truncate {
            body.truncate(cut.index(body.len()));
        }
        let _ = decode(Some(&header.len().to_string()), &body);
        let _ = decode(None, &body);
    }

    /// One byte more or less than the shape needs is always a 400 naming the input.
    #[test]
    fn a_wrong_byte_count_is_a_named_400(rows in 1usize..4, delta in prop_oneof![Just(-1i64), Just(1i64)]) {
        let size = (rows * 4 * 4) as i64 + delta;
        let header = json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32",
                                        "parameters": {"binary_data_size": size}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend(std::iter::repeat_n(0u8, size as usize));
        let e = decode(Some(&header.len().to_string()), &body).unwrap_err();
        prop_assert!(e.contains("input 'input'"), "{}", e);
    }
}
