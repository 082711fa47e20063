//! Turns an [`InferRequest`] into a [`ValidatedInfer`] for one model before any worker sees it
//! (as text-generation-inference's `router/src/validation.rs` does): names, datatypes, shapes
//! and every element are checked, and the input is flattened to row-major FP32.
//!
//! Every error is a [`Error::BadRequest`] whose message says what was expected.

use std::collections::HashSet;

use serde_json::Value;

use crate::config::{ModelConfig, TensorConfig};
use crate::datatype::Datatype;
use crate::error::Error;
use crate::oip::InferRequest;

/// An infer request checked against a dense model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedInfer {
    /// The request's `id`, to echo.
    pub id: Option<String>,
    /// The batch dimension: rows in `input`, at least 1.
    pub rows: i64,
    /// The input, row-major FP32, `rows * row_elements` long.
    pub input: Vec<f32>,
    /// Names of the outputs to return, in the order asked (all outputs when none were named).
    pub outputs: Vec<String>,
}

/// Checks `request` against `config` (a dense model: one input, one or more outputs).
///
/// Rules: exactly the configured input, once; a numeric datatype (FP16/FP32/FP64, INT8..INT64,
/// UINT8..UINT64: converted to FP32, integers must be integer literals in range); shape
/// `[batch, ...dims]` with `batch >= 1`; `data` a flat or nested array with exactly
/// `product(shape)` numbers; requested outputs must exist, each once.
pub fn validate(request: InferRequest, config: &ModelConfig) -> Result<ValidatedInfer, Error> {
    let [input_config] = config.inputs.as_slice() else {
        return Err(Error::Internal(format!(
            "dense model with {} inputs",
            config.inputs.len()
        )));
    };
    let bad = |message: String| Error::BadRequest(message);

    let mut inputs = request.inputs.into_iter();
    let Some(input) = inputs.next() else {
        return Err(bad(format!(
            "expected 1 input '{}', got none",
            input_config.name
        )));
    };
    if let Some(extra) = inputs.next() {
        return Err(bad(format!(
            "expected 1 input '{}', got more (second: '{}')",
            input_config.name, extra.name
        )));
    }
    if input.name != input_config.name {
        return Err(bad(format!(
            "unknown input '{}' (expected '{}')",
            input.name, input_config.name
        )));
    }
    let name = &input.name;

    let datatype: Datatype = input
        .datatype
        .parse()
        .map_err(|e| bad(format!("input '{name}': {e}")))?;
    if !datatype.is_numeric() {
        return Err(bad(format!(
            "input '{name}': datatype {datatype} is not supported (expected a numeric datatype: FP32, FP64, FP16, INT8..INT64, UINT8..UINT64)"
        )));
    }

    let rows = check_shape(&input.shape, input_config)?;
    let expected = element_count(&input.shape).ok_or_else(|| {
        bad(format!(
            "input '{name}': shape {:?} has too many elements",
            input.shape
        ))
    })?;
    let data = flatten(&input.data, datatype, expected)
        .map_err(|e| bad(format!("input '{name}': {e}")))?;

    let outputs = match request.outputs {
        None => config.outputs.iter().map(|o| o.name.clone()).collect(),
        Some(requested) => {
            let mut seen = HashSet::new();
            let mut names = Vec::with_capacity(requested.len());
            for output in requested {
                if !config.outputs.iter().any(|o| o.name == output.name) {
                    let known: Vec<_> = config
                        .outputs
                        .iter()
                        .map(|o| format!("'{}'", o.name))
                        .collect();
                    return Err(bad(format!(
                        "unknown output '{}' (expected one of {})",
                        output.name,
                        known.join(", ")
                    )));
                }
                if !seen.insert(output.name.clone()) {
                    return Err(bad(format!("output '{}' is requested twice", output.name)));
                }
                names.push(output.name);
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

/// Checks `shape == [batch, ...dims]` with `batch >= 1`; returns the batch.
fn check_shape(shape: &[i64], config: &TensorConfig) -> Result<i64, Error> {
    let expected = config.batched_shape();
    let name = &config.name;
    if shape.len() != expected.len() || shape[1..] != config.dims[..] {
        return Err(Error::BadRequest(format!(
            "input '{name}': expected shape {expected:?}, got {shape:?}"
        )));
    }
    let batch = shape[0];
    if batch < 1 {
        return Err(Error::BadRequest(format!(
            "input '{name}': expected shape {expected:?} with a batch of at least 1, got {shape:?}"
        )));
    }
    Ok(batch)
}

/// The product of `shape`, `None` on overflow or a negative entry.
fn element_count(shape: &[i64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

/// Flattens a flat or nested JSON array row-major into `expected` FP32 values of `datatype`.
///
/// Errors name the element's row-major index. Stops at the first element beyond `expected`, so
/// a huge body cannot make the server allocate more than the shape promised.
pub fn flatten(data: &Value, datatype: Datatype, expected: usize) -> Result<Vec<f32>, String> {
    if !data.is_array() {
        return Err(format!(
            "data must be a JSON array of {expected} numbers ({datatype}), flat or nested"
        ));
    }
    let mut out = Vec::with_capacity(expected);
    push_flat(data, datatype, expected, &mut out)?;
    if out.len() != expected {
        return Err(format!(
            "expected {expected} elements from the shape, got {} in data",
            out.len()
        ));
    }
    Ok(out)
}

fn push_flat(
    value: &Value,
    datatype: Datatype,
    expected: usize,
    out: &mut Vec<f32>,
) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                push_flat(item, datatype, expected, out)?;
            }
            Ok(())
        }
        element => {
            let index = out.len();
            if index >= expected {
                return Err(format!(
                    "expected {expected} elements from the shape, got more in data"
                ));
            }
            let v = datatype
                .number_to_f32(element)
                .map_err(|e| format!("data element {index} ({element}): {e}"))?;
            out.push(v);
            Ok(())
        }
    }
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
        match validate(request(value), &dense_classifier(4, 3, 2)) {
            Err(Error::BadRequest(message)) => message,
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
            &config,
        )
        .unwrap();
        let nested = validate(
            request(
                json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64",
                "data": [[1, 2, 3, 4], [5, 6, 7, 8.5]]}]}),
            ),
            &config,
        )
        .unwrap();
        assert_eq!(flat.input, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.5]);
        assert_eq!(flat.input, nested.input);
        assert_eq!(flat.rows, 2);
        assert_eq!(flat.id.as_deref(), Some("a"));
        assert_eq!(flat.outputs, vec!["probabilities".to_string()]);
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
