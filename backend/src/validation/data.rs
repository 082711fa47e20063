//! The JSON `data` of an input: a flat or nested array flattened row-major into FP32, as many
//! elements as the shape promises and not one more.

use std::fmt;

use maas_protocol::{Datatype, JsonData};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
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
/// `data` is the array's JSON text ([`JsonData`]); it is converted in one pass as it is parsed,
/// without building a JSON tree, so the memory it takes is the output (4 bytes per element)
/// and no more. Errors name the element's row-major index. Stops at the first element beyond
/// `expected`, so a huge body cannot make the server allocate more than the shape promised.
pub(super) fn flatten(
    data: &JsonData,
    datatype: Datatype,
    expected: usize,
) -> Result<Vec<f32>, DataError> {
    let text = data.json();
    if !text.trim_start().starts_with('[') {
        return Err(DataError::NotAnArray { expected, datatype });
    }
    // The shape is the client's word: reserve no more than the data can hold (every JSON
    // element takes at least two bytes, "0,"), so a shape like [10^9, 64] with little data
    // cannot make the server reserve gigabytes.
    let mut out = Vec::with_capacity(expected.min(text.len() / 2 + 1));
    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let sink = Sink {
        datatype,
        expected,
        out: &mut out,
        failure: &mut failure,
    };
    let parsed = sink.deserialize(&mut de);
    if let Some(e) = failure {
        return Err(e);
    }
    // The text was valid JSON when the request was parsed, so the only errors left are the
    // ones the sink raised (recorded above).
    if parsed.is_err() {
        return Err(DataError::NotAnArray { expected, datatype });
    }
    if out.len() != expected {
        return Err(DataError::TooFew {
            expected,
            found: out.len(),
        });
    }
    Ok(out)
}

/// Pushes the leaves of a (nested) JSON array into `out` as they are parsed; the first
/// problem goes into `failure` and stops the parse.
struct Sink<'a> {
    datatype: Datatype,
    expected: usize,
    out: &'a mut Vec<f32>,
    failure: &'a mut Option<DataError>,
}

impl Sink<'_> {
    fn reborrow(&mut self) -> Sink<'_> {
        Sink {
            datatype: self.datatype,
            expected: self.expected,
            out: self.out,
            failure: self.failure,
        }
    }

    /// One leaf: converted and pushed, or the parse stops with its error.
    fn leaf<E: de::Error>(&mut self, element: Value) -> Result<(), E> {
        let index = self.out.len();
        if index >= self.expected {
            *self.failure = Some(DataError::TooMany(self.expected));
            return Err(E::custom("too many elements"));
        }
        match self.datatype.number_to_f32(&element) {
            Ok(v) => {
                self.out.push(v);
                Ok(())
            }
            Err(problem) => {
                *self.failure = Some(DataError::Element {
                    index,
                    value: element,
                    problem,
                });
                Err(E::custom("bad element"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Sink<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Sink<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a JSON array of {} numbers, flat or nested",
            self.expected
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.reborrow())?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        self.leaf(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        self.leaf(Value::from(v))
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.leaf(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, map: A) -> Result<(), A::Error> {
        let object = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.leaf(object)
    }
}
