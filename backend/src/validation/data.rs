//! The JSON `data` of an input: a flat or nested array flattened row-major into FP32, as many
//! elements as the shape promises and not one more.

use maas_protocol::Datatype;
use serde_json::Value;

use super::element::{ElementError, ElementToF32};

/// Why an input's JSON `data` does not fit its shape and datatype.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// `data` is not an array.
    #[error("data must be a JSON array of {expected} numbers ({datatype}), flat or nested")]
    NotAnArray {
        /// Elements of the shape.
        expected: usize,
        /// The declared datatype.
        datatype: Datatype,
    },
    /// Fewer elements than the shape has.
    #[error("expected {expected} elements from the shape, got {found} in data")]
    TooFew {
        /// Elements of the shape.
        expected: usize,
        /// Elements in `data`.
        found: usize,
    },
    /// More elements than the shape has.
    #[error("expected {0} elements from the shape, got more in data")]
    TooMany(usize),
    /// An element is not a value of the datatype.
    #[error("data element {index} ({value}): {problem}")]
    Element {
        /// The element's row-major index.
        index: usize,
        /// The element as sent.
        value: Value,
        /// Why it does not fit.
        problem: ElementError,
    },
}

/// Flattens a flat or nested JSON array row-major into `expected` FP32 values of `datatype`.
///
/// Errors name the element's row-major index. Stops at the first element beyond `expected`, so
/// a huge body cannot make the server allocate more than the shape promised.
pub(super) fn flatten(
    data: &Value,
    datatype: Datatype,
    expected: usize,
) -> Result<Vec<f32>, DataError> {
    if !data.is_array() {
        return Err(DataError::NotAnArray { expected, datatype });
    }
    // The shape is the client's word: reserve no more than the data can hold (every JSON
    // element takes at least two bytes, "0,"), so a shape like [10^9, 64] with little data
    // cannot make the server reserve gigabytes.
    let mut out = Vec::with_capacity(expected.min(count_leaves(data)));
    push_flat(data, datatype, expected, &mut out)?;
    if out.len() != expected {
        return Err(DataError::TooFew {
            expected,
            found: out.len(),
        });
    }
    Ok(out)
}

/// The number of non-array values in a (nested) JSON array.
fn count_leaves(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(count_leaves).sum(),
        _ => 1,
    }
}

fn push_flat(
    value: &Value,
    datatype: Datatype,
    expected: usize,
    out: &mut Vec<f32>,
) -> Result<(), DataError> {
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
                return Err(DataError::TooMany(expected));
            }
            let v = datatype
                .number_to_f32(element)
                .map_err(|problem| DataError::Element {
                    index,
                    value: element.clone(),
                    problem,
                })?;
            out.push(v);
            Ok(())
        }
    }
}
