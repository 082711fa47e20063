//! Turns an [`InferRequest`] into a [`ValidatedInfer`] for one model before any worker sees it
//! (as text-generation-inference's `router/src/validation.rs` does): names, datatypes, shapes,
//! binary sizes and every element are checked, and the input is flattened to row-major FP32.
//! A request that fails here never reaches the batcher, so it cannot disturb the rows of
//! another request in the same batch.
//!
//! Every error is a [`ValidationError`] whose message names the input (or output) and says
//! what was expected; the HTTP server maps it to a status once.
//!
//! Modules: `body` (split and parse the body), `element` (one element to FP32), `data` (a JSON
//! array to FP32), `error`.

mod body;
mod data;
mod element;
mod error;

use std::collections::HashSet;

use maas_protocol::{Datatype, InferRequest, BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE};
use serde_json::{Map, Value};

use crate::config::{ModelConfig, TensorConfig};
use data::flatten;
use element::ElementToF32;

pub use body::{parse_json_part, split_body};
pub use error::{InputError, ValidationError};

/// An infer request checked against a model's configuration (one input).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedInfer {
    /// The request's `id`, to echo.
    pub id: Option<String>,
    /// The batch dimension: rows in `input`, at least 1.
    pub rows: i64,
    /// The input, row-major FP32, `rows * row_elements` long.
    pub input: Vec<f32>,
    /// The outputs to return, in the order asked (all outputs when none were named).
    pub outputs: Vec<OutputRequest>,
}

/// One output to return and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRequest {
    /// The output's name, as configured.
    pub name: String,
    /// Whether to return it as binary tensor data (output parameter `binary_data`, else the
    /// request parameter `binary_data_output`, else JSON).
    pub binary: bool,
}

/// Checks `request` against `config` (a model with one input and one or more outputs: dense or
/// TorchScript).
///
/// `binary` is the part of the body after the JSON header (Triton's binary tensor data
/// extension; empty for a plain JSON request): inputs with the parameter `binary_data_size`
/// take their bytes from it in the order of the inputs, and every byte must be used.
///
/// Rules: exactly the configured input, once; any datatype but `BYTES` (converted to FP32;
/// JSON integers must be integer literals in range, `BOOL` is `true`/`false`, `BF16` is binary
/// only); shape `[batch, ...dims]` with `1 <= batch` and, when the model's `max_batch_size` is
/// positive, `batch <= max_batch_size`, else `batch <= max_request_rows` when set; either JSON `data` (flat or nested, exactly
/// `product(shape)` elements) or `binary_data_size` equal to `product(shape)` times the
/// element size; requested outputs must exist, each once.
pub fn validate(
    request: InferRequest,
    binary: &[u8],
    config: &ModelConfig,
) -> Result<ValidatedInfer, ValidationError> {
    let [input_config] = config.inputs.as_slice() else {
        return Err(ValidationError::UnsupportedModel(config.inputs.len()));
    };

    let binary_output_default =
        bool_parameter(request.parameters.as_ref(), BINARY_DATA_OUTPUT, "request")?
            .unwrap_or(false);

    let mut inputs = request.inputs.into_iter();
    let Some(input) = inputs.next() else {
        return Err(ValidationError::NoInput {
            expected: input_config.name.clone(),
        });
    };
    if let Some(extra) = inputs.next() {
        return Err(ValidationError::ExtraInput {
            expected: input_config.name.clone(),
            second: extra.name,
        });
    }
    if input.name != input_config.name {
        return Err(ValidationError::UnknownInput {
            name: input.name,
            expected: input_config.name.clone(),
        });
    }
    let name = input.name.as_str();
    let bad = |problem: InputError| ValidationError::input(name, problem);

    let datatype: Datatype = input
        .datatype
        .parse()
        .map_err(|e| bad(InputError::from(e)))?;
    if !datatype.is_numeric() {
        return Err(bad(InputError::NotNumeric(datatype)));
    }

    let rows = check_shape(&input.shape, input_config, config).map_err(bad)?;
    let too_many = || bad(InputError::TooManyElements(input.shape.clone()));
    let expected = element_count(&input.shape).ok_or_else(too_many)?;

    let binary_size = binary_data_size(input.parameters.as_ref()).map_err(bad)?;
    let data = match (binary_size, &input.data) {
        (Some(_), Some(_)) => return Err(bad(InputError::DataAndBinary)),
        (None, None) => return Err(bad(InputError::NoData)),
        (Some(size), None) => {
            let element_size = datatype.element_size().unwrap_or(1);
            let expected_bytes = expected.checked_mul(element_size).ok_or_else(too_many)?;
            if size != expected_bytes {
                return Err(bad(InputError::BinarySize {
                    size,
                    expected: expected_bytes,
                    elements: expected,
                    datatype,
                    element_size,
                    shape: input.shape.clone(),
                }));
            }
            if binary.len() != size {
                return Err(bad(InputError::BinaryLength {
                    size,
                    available: binary.len(),
                }));
            }
            let mut out = Vec::with_capacity(expected);
            datatype
                .decode_binary_to_f32(binary, &mut out)
                .map_err(|e| bad(e.into()))?;
            out
        }
        (None, Some(data)) => {
            if !binary.is_empty() {
                return Err(ValidationError::UnusedBinary(binary.len()));
            }
            if datatype == Datatype::Bf16 {
                return Err(bad(InputError::Bf16Json));
            }
            flatten(data, datatype, expected).map_err(|e| bad(e.into()))?
        }
    };

    let outputs = match request.outputs {
        None => config
            .outputs
            .iter()
            .map(|o| OutputRequest {
                name: o.name.clone(),
                binary: binary_output_default,
            })
            .collect(),
        Some(requested) => {
            let mut seen = HashSet::new();
            let mut names = Vec::with_capacity(requested.len());
            for output in requested {
                if !config.outputs.iter().any(|o| o.name == output.name) {
                    return Err(ValidationError::UnknownOutput {
                        name: output.name,
                        known: config.outputs.iter().map(|o| o.name.clone()).collect(),
                    });
                }
                if !seen.insert(output.name.clone()) {
                    return Err(ValidationError::DuplicateOutput(output.name));
                }
                let context = format!("output '{}'", output.name);
                let binary = bool_parameter(output.parameters.as_ref(), BINARY_DATA, &context)?
                    .unwrap_or(binary_output_default);
                names.push(OutputRequest {
                    name: output.name,
                    binary,
                });
            }
            names
        }
    };

    Ok(ValidatedInfer {
        id: request.id,
        rows,
        input: data,
        outputs,
    })
}

/// A boolean parameter: `None` when absent, [`ValidationError::BoolParameter`] when not a
/// JSON boolean.
fn bool_parameter(
    parameters: Option<&Map<String, Value>>,
    key: &'static str,
    context: &str,
) -> Result<Option<bool>, ValidationError> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ValidationError::BoolParameter {
            context: context.to_string(),
            key,
            value: other.clone(),
        }),
    }
}

/// The input parameter `binary_data_size`: `None` when absent, an error unless a
/// non-negative integer that fits in memory.
fn binary_data_size(parameters: Option<&Map<String, Value>>) -> Result<Option<usize>, InputError> {
    match parameters.and_then(|p| p.get(BINARY_DATA_SIZE)) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| InputError::BadBinaryDataSize(value.clone())),
    }
}

/// Checks `shape == [batch, ...dims]` with `batch >= 1` and `batch` within the model's row
/// limit ([`ModelConfig::request_row_limit`]); returns the batch.
fn check_shape(
    shape: &[i64],
    input: &TensorConfig,
    model: &ModelConfig,
) -> Result<i64, InputError> {
    let expected = input.batched_shape();
    if shape.len() != expected.len() || shape[1..] != input.dims[..] {
        return Err(InputError::Shape {
            expected,
            shape: shape.to_vec(),
        });
    }
    let batch = shape[0];
    if batch < 1 {
        return Err(InputError::EmptyBatch {
            expected,
            shape: shape.to_vec(),
        });
    }
    if model.max_batch_size > 0 && batch > i64::from(model.max_batch_size) {
        return Err(InputError::OverMaxBatch {
            batch,
            max_batch_size: model.max_batch_size,
            shape: shape.to_vec(),
        });
    }
    if let Some(limit) = model.max_request_rows.filter(|_| model.max_batch_size == 0) {
        if batch > i64::from(limit) {
            return Err(InputError::OverMaxRequestRows {
                batch,
                limit,
                shape: shape.to_vec(),
            });
        }
    }
    Ok(batch)
}

/// The product of `shape`, `None` on overflow or a negative entry.
fn element_count(shape: &[i64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dense_classifier;
    use serde_json::json;

    fn request(value: Value) -> InferRequest {
        serde_json::from_value(value).unwrap()
    }

    fn error(value: Value) -> String {
        match validate(request(value), &[], &dense_classifier(4, 3, 2)) {
            Err(ValidationError::UnsupportedModel(n)) => panic!("not a bad request: {n} inputs"),
            Err(e) => e.to_string(),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn flat_and_nested_data_flatten_row_major() {
        let config = dense_classifier(4, 3, 2);
        let flat = validate(
            request(
                json!({"id": "a", "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32",
                "data": [1, 2, 3, 4, 5, 6, 7, 8.5]}]}),
            ),
            &[],
            &config,
        )
        .unwrap();
        let nested = validate(
            request(
                json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64",
                "data": [[1, 2, 3, 4], [5, 6, 7, 8.5]]}]}),
            ),
            &[],
            &config,
        )
        .unwrap();
        assert_eq!(flat.input, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.5]);
        assert_eq!(flat.input, nested.input);
        assert_eq!(flat.rows, 2);
        assert_eq!(flat.id.as_deref(), Some("a"));
        assert_eq!(
            flat.outputs,
            vec![OutputRequest {
                name: "probabilities".to_string(),
                binary: false
            }]
        );
        assert_eq!(nested.id, None);
    }

    #[test]
    fn integer_datatypes_convert() {
        let config = dense_classifier(4, 3, 2);
        for datatype in [
            "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
        ] {
            let v = validate(
                request(
                    json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": datatype,
                    "data": [[0, 1, 16, 100]]}]}),
                ),
                &[],
                &config,
            )
            .unwrap();
            assert_eq!(v.input, vec![0.0, 1.0, 16.0, 100.0], "{datatype}");
        }
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT32",
            "data": [0, 1.5, 2, 3]}]}),
        );
        assert_eq!(
            e,
            "input 'input': data element 1 (1.5): 1.5 is not an integer, as INT32 requires"
        );
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "UINT8",
            "data": [0, 1, 2, 300]}]}),
        );
        assert!(
            e.contains("data element 3 (300): 300 is out of range for UINT8"),
            "{e}"
        );
    }

    #[test]
    fn a_huge_shape_with_little_data_is_a_400_not_an_allocation() {
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1_000_000_000_000i64, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        );
        assert!(
            e.contains("expected 4000000000000 elements from the shape, got 4"),
            "{e}"
        );
    }

    #[test]
    fn shape_errors_say_what_was_expected() {
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
        );
        assert_eq!(e, "input 'input': expected shape [-1, 4], got [1, 3]");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        );
        assert_eq!(e, "input 'input': expected shape [-1, 4], got [4]");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}),
        );
        assert!(e.contains("batch of at least 1"), "{e}");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [-2, 4], "datatype": "FP32", "data": []}]}),
        );
        assert!(e.contains("batch of at least 1"), "{e}");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [4611686018427387904i64, 4], "datatype": "FP32", "data": []}]}),
        );
        assert!(e.contains("too many elements"), "{e}");
    }

    #[test]
    fn element_count_must_match() {
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        );
        assert_eq!(
            e,
            "input 'input': expected 8 elements from the shape, got 4 in data"
        );
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}),
        );
        assert_eq!(
            e,
            "input 'input': expected 4 elements from the shape, got more in data"
        );
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": 1}]}),
        );
        assert!(e.contains("data must be a JSON array"), "{e}");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, "2", 3, 4]}]}),
        );
        assert_eq!(e, "input 'input': data element 1 (\"2\"): is not a number");
    }

    #[test]
    fn names_and_datatypes_are_checked() {
        let e = error(json!({"inputs": []}));
        assert_eq!(e, "expected 1 input 'input', got none");
        let e = error(
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
        );
        assert_eq!(e, "unknown input 'x' (expected 'input')");
        let one =
            json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]});
        let e = error(json!({"inputs": [one.clone(), one.clone()]}));
        assert!(e.contains("got more"), "{e}");
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FLOAT32", "data": [1, 2, 3, 4]}]}),
        );
        assert!(
            e.starts_with("input 'input': unknown datatype 'FLOAT32'"),
            "{e}"
        );
        let e = error(
            json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}),
        );
        assert!(e.contains("datatype BYTES is not supported"), "{e}");
        let e = error(json!({"inputs": [one.clone()], "outputs": [{"name": "logits"}]}));
        assert_eq!(
            e,
            "unknown output 'logits' (expected one of 'probabilities')"
        );
        let e = error(
            json!({"inputs": [one.clone()], "outputs": [{"name": "probabilities"}, {"name": "probabilities"}]}),
        );
        assert!(e.contains("requested twice"), "{e}");
    }
}
