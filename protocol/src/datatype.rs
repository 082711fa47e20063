//! Tensor datatypes of the Open Inference Protocol v2: their wire names and, for the binary
//! tensor data extension, their element sizes.
//!
//! The names (`FP32`, `INT64`, ...) are the ones of the KServe Open Inference Protocol v2,
//! section "Tensor Data Types"
//! (<https://github.com/kserve/open-inference-protocol/blob/main/specification/protocol/inference_rest.md>);
//! `BF16` is Triton's addition. Converting elements to what a model computes in is the
//! server's business, not the wire's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tensor element type, named as in the Open Inference Protocol v2.
///
/// Serialized as its protocol name (`"FP32"`); names are case-sensitive. `BF16` (Triton's
/// extension) has no JSON form: it travels as binary tensor data only. `BYTES` elements are
/// length-prefixed strings, not numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Datatype {
    /// `BOOL`: true or false (one byte, 0 or 1, in binary form).
    Bool,
    /// `UINT8`: 8-bit unsigned integer.
    Uint8,
    /// `UINT16`: 16-bit unsigned integer.
    Uint16,
    /// `UINT32`: 32-bit unsigned integer.
    Uint32,
    /// `UINT64`: 64-bit unsigned integer.
    Uint64,
    /// `INT8`: 8-bit signed integer.
    Int8,
    /// `INT16`: 16-bit signed integer.
    Int16,
    /// `INT32`: 32-bit signed integer.
    Int32,
    /// `INT64`: 64-bit signed integer.
    Int64,
    /// `FP16`: IEEE 754 half precision (sent as JSON numbers).
    Fp16,
    /// `FP32`: IEEE 754 single precision.
    Fp32,
    /// `FP64`: IEEE 754 double precision.
    Fp64,
    /// `BF16`: bfloat16, the upper half of an FP32 (binary tensor data only).
    Bf16,
    /// `BYTES`: byte strings (not numeric).
    Bytes,
}

impl Datatype {
    /// Every datatype, in the order of the protocol's table.
    pub const ALL: [Datatype; 14] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bf16,
        Datatype::Bytes,
    ];

    /// The protocol's name of this datatype (`"FP32"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bf16 => "BF16",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Whether elements are numbers (every datatype but `BYTES`; `BOOL` as 0 or 1).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Datatype::Bytes)
    }

    /// Bytes per element in the binary tensor data extension (little-endian, row-major);
    /// `None` for `BYTES`, whose elements are length-prefixed strings.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a datatype name that the protocol does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown datatype '{0}' (expected one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BF16, BYTES)")]
pub struct UnknownDatatype(pub String);

impl FromStr for Datatype {
    type Err = UnknownDatatype;

    /// Parses a protocol name; names are case-sensitive, as in the protocol.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Datatype::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDatatype(s.to_string()))
    }
}

impl TryFrom<String> for Datatype {
    type Error = UnknownDatatype;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Datatype> for String {
    fn from(d: Datatype) -> String {
        d.as_str().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Datatype::ALL {
            assert_eq!(d.as_str().parse::<Datatype>().unwrap(), d);
        }
        assert!("fp32".parse::<Datatype>().is_err());
        assert!("FLOAT".parse::<Datatype>().is_err());
    }

    #[test]
    fn only_bytes_has_no_element_size() {
        for d in Datatype::ALL {
            assert_eq!(d.element_size().is_none(), d == Datatype::Bytes);
        }
    }
}
