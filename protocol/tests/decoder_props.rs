//! Property tests of the wire decoders a client feeds: the OIP v2 JSON bodies (requests and
//! the other bodies a server reads), `Inference-Header-Content-Length` splitting and the binary
//! tensor codec. Whatever the bytes: a value or a typed error, never a panic; what decodes
//! is exactly what was encoded.

use maas_protocol::{
    decode, encode, split_body, BinaryBody, BinaryDataError, Datatype, InferRequest, InferResponse,
    RequestInput,
};
use proptest::prelude::*;

/// A JSON text of an infer request whose parts come from the generator: valid or nearly.
fn request_like() -> impl Strategy<Value = String> {
    let datatype = prop_oneof![
        Just("FP32".to_string()),
        Just("INT64".to_string()),
        Just("BYTES".to_string()),
        "[A-Z0-9]{0,6}",
    ];
    (
        proptest::collection::vec(any::<i64>(), 0..4),
        datatype,
        proptest::collection::vec(any::<f32>().prop_filter("finite", |v| v.is_finite()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(shape, datatype, data, binary)| {
            let shape: Vec<String> = shape.iter().map(i64::to_string).collect();
            let data: Vec<String> = data.iter().map(f32::to_string).collect();
            let tail = if binary {
                r#""parameters": {"binary_data_size": 16}"#.to_string()
            } else {
                format!(r#""data": [{}]"#, data.join(","))
            };
            format!(
                r#"{{"id": "p", "inputs": [{{"name": "x", "shape": [{}], "datatype": "{datatype}", {tail}}}]}}"#,
                shape.join(",")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes into every JSON body type: an error or a value, and a value
    /// serializes back to JSON that decodes to the same value.
    #[test]
    fn arbitrary_bytes_into_json_bodies(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(request) = serde_json::from_slice::<InferRequest>(&bytes) {
            let again: InferRequest = serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
            prop_assert_eq!(again, request);
        }
        let _ = serde_json::from_slice::<InferResponse>(&bytes);
        let _ = serde_json::from_slice::<RequestInput>(&bytes);
    }

    /// Request-shaped text with some bytes overwritten or cut: never a panic; intact, it
    /// decodes with its shape and datatype as sent.
    #[test]
    fn mutated_requests(text in request_like(),
                        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                        cut in proptest::option::of(any::<prop::sample::Index>())) {
        let mut bytes = text.clone().into_bytes();
        for (index, byte) in &edits {
            let i = index.index(bytes.len());
            bytes[i] = *byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let decoded = serde_json::from_slice::<InferRequest>(&bytes);
        if edits.is_empty() && cut.is_none() {
            let request = decoded.expect("an intact request decodes");
            prop_assert_eq!(request.inputs.len(), 1);
            let sent = format!("\"datatype\": \"{}\"", request.inputs[0].datatype);
            prop_assert!(text.contains(&sent), "{} not in {}", sent, text);
        }
    }

    /// Any header value and body: either the header is a length within the body and the two
    /// parts are the body cut there, or a typed error that says which rule failed.
    #[test]
    fn splitting_at_any_header(header in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
                               number in proptest::option::of(-5i64..300),
                               body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let header = number.map(|n| n.to_string().into_bytes()).or(header);
        match split_body(header.as_deref(), &body) {
            Ok((json, binary)) => {
                prop_assert_eq!([json, binary].concat(), body.clone());
                if let Some(h) = &header {
                    let n: usize = std::str::from_utf8(h).unwrap().trim().parse().unwrap();
                    prop_assert_eq!(json.len(), n);
                } else {
                    prop_assert!(binary.is_empty());
                }
            }
            Err(BinaryDataError::BeyondBody { length, body: len }) => {
                prop_assert_eq!(len, body.len());
                prop_assert!(length > len as i128);
            }
            Err(BinaryDataError::Negative { length }) => prop_assert!(length < 0),
            Err(BinaryDataError::NotAnInteger { .. }) => {
                let text = header.as_deref().and_then(|h| std::str::from_utf8(h).ok());
                prop_assert!(text.is_none_or(|t| t.trim().parse::<i128>().is_err()));
            }
        }
    }

    /// The binary codec over arbitrary bytes: whole elements decode (and encode back to the
    /// same bytes), anything else is `None`.
    #[test]
    fn binary_tensors_from_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        fn round_trip<T: maas_protocol::Element>(bytes: &[u8]) -> Option<Vec<u8>> {
            let values: Vec<T> = decode::<T>(bytes)?.collect();
            let mut out = Vec::new();
            encode(&values, &mut out);
            Some(out)
        }
        for (size, again) in [
            (1, round_trip::<u8>(&bytes)), (2, round_trip::<i16>(&bytes)),
            (4, round_trip::<u32>(&bytes)), (4, round_trip::<f32>(&bytes)),
            (8, round_trip::<i64>(&bytes)), (8, round_trip::<f64>(&bytes)),
        ] {
            match again {
                Some(out) => prop_assert_eq!(&out, &bytes),
                None => prop_assert!(bytes.len() % size != 0),
            }
        }
    }

    /// A binary body built from a request and tensor bytes splits back into the same JSON and
    /// bytes at its own header length.
    #[test]
    fn binary_bodies_split_back(rows in 1i64..5, data in proptest::collection::vec(any::<f32>(), 0..20)) {
        let request = InferRequest::new(vec![RequestInput::binary("x", vec![rows, 4], Datatype::Fp32, data.len() * 4)]);
        let mut bytes = Vec::new();
        encode(&data, &mut bytes);
        let body = BinaryBody::new(&request, &bytes).unwrap();
        let header = body.json_len.to_string();
        let (json, binary) = split_body(Some(header.as_bytes()), &body.bytes).unwrap();
        prop_assert_eq!(serde_json::from_slice::<InferRequest>(json).unwrap(), request);
        let back: Vec<u32> = decode::<f32>(binary).unwrap().map(f32::to_bits).collect();
        prop_assert_eq!(back, data.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
}
