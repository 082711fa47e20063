//! Triton's binary tensor data extension, HTTP side
//! (<https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md>).
//!
//! A body (request or response) may be a JSON header followed by raw tensor bytes; the HTTP
//! header `Inference-Header-Content-Length` gives the JSON header's length in bytes. Tensors
//! with the parameter `binary_data_size` take their bytes from what follows, in the order of the
//! tensors in the JSON. Elements are little-endian and row-major, [`crate::Datatype::element_size`]
//! bytes each.
//!
//! This module splits such a body ([`split_body`]), joins one ([`BinaryBody`]) and encodes and
//! decodes the elements of fixed-size datatypes ([`Element`]).

use serde::Serialize;

use crate::Datatype;

/// The HTTP header that gives the length of the JSON part of a body, in bytes (lower case, as
/// HTTP/2 requires).
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Input (and response output) parameter: the number of bytes of this tensor in the binary part
/// of the body (a non-negative integer).
pub const BINARY_DATA_SIZE: &str = "binary_data_size";

/// Request parameter: return every output as binary tensor data unless an output says
/// otherwise (a boolean).
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Requested-output parameter: return this output as binary tensor data (a boolean).
pub const BINARY_DATA: &str = "binary_data";

/// Why a body does not split at its `Inference-Header-Content-Length`. The messages name the
/// header and say what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryDataError {
    /// The header is not a decimal integer (`value` as sent, or `(not text)`).
    #[error("header Inference-Header-Content-Length must be a decimal integer (the JSON part's length in bytes), got '{value}'")]
    NotAnInteger {
        /// The header's value, trimmed.
        value: String,
    },
    /// The header is a negative number.
    #[error("header Inference-Header-Content-Length must not be negative, got {length}")]
    Negative {
        /// The header's value.
        length: i128,
    },
    /// The header promises more JSON than the body holds.
    #[error(
        "header Inference-Header-Content-Length is {length} but the body has only {body} bytes"
    )]
    BeyondBody {
        /// The header's value.
        length: i128,
        /// The body's length in bytes.
        body: usize,
    },
}

/// Splits a body into its JSON header and its binary part. `header` is the value of
/// `Inference-Header-Content-Length`, when the message has one; without it, the whole body is
/// JSON and the binary part is empty.
///
/// # Errors
/// The header is not a decimal integer, is negative, or is larger than the body.
pub fn split_body<'a>(
    header: Option<&[u8]>,
    body: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), BinaryDataError> {
    let Some(value) = header else {
        return Ok((body, &[]));
    };
    let text = std::str::from_utf8(value).unwrap_or("(not text)").trim();
    let length: i128 = text.parse().map_err(|_| BinaryDataError::NotAnInteger {
        value: text.to_string(),
    })?;
    if length < 0 {
        return Err(BinaryDataError::Negative { length });
    }
    let length = usize::try_from(length)
        .ok()
        .filter(|&n| n <= body.len())
        .ok_or(BinaryDataError::BeyondBody {
            length,
            body: body.len(),
        })?;
    Ok(body.split_at(length))
}

/// A body of the binary tensor data extension: the JSON header, then the binary parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryBody {
    /// The JSON header followed by the binary parts.
    pub bytes: Vec<u8>,
    /// The length of the JSON header at the start of `bytes`: the value of
    /// `Inference-Header-Content-Length`.
    pub json_len: usize,
}

impl BinaryBody {
    /// Serializes `header` (an [`crate::InferRequest`] or [`crate::InferResponse`] whose binary
    /// tensors carry `binary_data_size`) and appends `binary`, the tensors' bytes in the order
    /// of the JSON.
    ///
    /// # Errors
    /// `header` does not serialize to JSON (a map with non-string keys; not the protocol's
    /// types).
    pub fn new(header: &impl Serialize, binary: &[u8]) -> serde_json::Result<BinaryBody> {
        let mut bytes = serde_json::to_vec(header)?;
        let json_len = bytes.len();
        bytes.extend_from_slice(binary);
        Ok(BinaryBody { bytes, json_len })
    }
}

/// An element type of fixed size in binary tensor data: its datatype and its little-endian
/// bytes. Implemented for the Rust types of `BOOL`'s bytes (`u8`), the integer datatypes,
/// `FP32` and `FP64`; `FP16` and `BF16` elements read as `u16` bit patterns.
pub trait Element: Copy + 'static {
    /// Bytes per element.
    const SIZE: usize;
    /// The datatype whose elements these are (`u16` is `UINT16`).
    const DATATYPE: Datatype;
    /// Appends the element's little-endian bytes.
    fn write_le(self, out: &mut Vec<u8>);
    /// Reads an element from exactly [`Element::SIZE`] little-endian bytes.
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty => $datatype:ident),* $(,)?) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const DATATYPE: Datatype = Datatype::$datatype;

            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            fn read_le(bytes: &[u8]) -> Self {
                let mut array = [0u8; std::mem::size_of::<$t>()];
                array.copy_from_slice(bytes);
                <$t>::from_le_bytes(array)
            }
        }
    )*};
}

element!(
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Fp32, f64 => Fp64,
);

/// Appends `values` little-endian to `out` (a tensor in binary form).
pub fn encode<T: Element>(values: &[T], out: &mut Vec<u8>) {
    out.reserve(values.len() * T::SIZE);
    for &value in values {
        value.write_le(out);
    }
}

/// The elements of a tensor in binary form; `None` when `bytes` is not a whole number of
/// elements.
pub fn decode<T: Element>(bytes: &[u8]) -> Option<impl ExactSizeIterator<Item = T> + '_> {
    bytes
        .len()
        .is_multiple_of(T::SIZE)
        .then(|| bytes.chunks_exact(T::SIZE).map(T::read_le))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InferRequest;

    fn split<'a>(value: &str, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), String> {
        split_body(Some(value.as_bytes()), body).map_err(|e| e.to_string())
    }

    #[test]
    fn splits_at_the_header_length() {
        let body = b"{\"a\":1}\x01\x02";
        assert_eq!(split_body(None, body).unwrap().1, b"");
        let (json, binary) = split("7", body).unwrap();
        assert_eq!(json, b"{\"a\":1}");
        assert_eq!(binary, b"\x01\x02");
        assert!(split("-1", body)
            .unwrap_err()
            .contains("must not be negative"));
        assert!(split("ten", body).unwrap_err().contains("decimal integer"));
        assert!(split("99999999999999999999999999999", body)
            .unwrap_err()
            .contains("but the body has only 9 bytes"));
        assert!(split("1.5", body).unwrap_err().contains("decimal integer"));
        assert!(split("10", body).unwrap_err().contains("only 9 bytes"));
        assert!(split_body(Some(&[0xff]), body)
            .unwrap_err()
            .to_string()
            .contains("got '(not text)'"));
    }

    #[test]
    fn elements_round_trip_little_endian() {
        let mut out = Vec::new();
        encode(&[1.5f32, -2.0], &mut out);
        assert_eq!(out, [1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat());
        encode(&[-300i16], &mut out);
        assert_eq!(&out[8..], &(-300i16).to_le_bytes());
        let floats: Vec<f32> = decode(&out[..8]).unwrap().collect();
        assert_eq!(floats, vec![1.5, -2.0]);
        assert!(decode::<f32>(&out[..7]).is_none());
        assert_eq!(decode::<i16>(&out[8..]).unwrap().next(), Some(-300));
        assert_eq!(<u64 as Element>::DATATYPE.element_size(), Some(u64::SIZE));
    }

    #[test]
    fn a_binary_body_is_its_json_header_then_the_bytes() {
        let request: InferRequest =
            serde_json::from_value(serde_json::json!({"inputs": []})).expect("an infer request");
        let body = BinaryBody::new(&request, &[1, 2, 3]).unwrap();
        assert_eq!(&body.bytes[body.json_len..], &[1, 2, 3]);
        let (json, binary) =
            split_body(Some(body.json_len.to_string().as_bytes()), &body.bytes).expect("splits");
        assert_eq!(binary, &[1, 2, 3]);
        let back: InferRequest = serde_json::from_slice(json).unwrap();
        assert_eq!(back, request);
    }
}
