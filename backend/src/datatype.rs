//! Tensor datatypes of the Open Inference Protocol v2 and the conversion of JSON numbers to `f32`.
//!
//! The names (`FP32`, `INT64`, ...) are the ones of the KServe Open Inference Protocol v2,
//! section "Tensor Data Types". In the JSON form a tensor's `data` is a list of JSON numbers;
//! [`Datatype::number_to_f32`] checks that one such number is a valid value of the declared
//! datatype (integers for the integer types, within range) and converts it to the `f32` the
//! dense models compute in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tensor element type, named as in the Open Inference Protocol v2.
///
/// Every datatype but `BYTES` can feed a model that computes in `f32` (`BOOL` as 0 or 1).
/// `BYTES` is parsed so that an error can say "unsupported" instead of "unknown". `BF16` (Triton's
/// extension) has no JSON form: it travels as binary tensor data only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Datatype {
    /// `BOOL`: true or false (not numeric here).
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

/// Why one JSON element could not be converted to `f32`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ElementError {
    /// The element is not a JSON number (a string, a bool, null, an object).
    #[error("is not a number")]
    NotANumber,
    /// A `BOOL` element is not `true` or `false`.
    #[error("is not a JSON boolean (true or false), as BOOL requires")]
    NotABool,
    /// An integer datatype was declared but the element has a fraction or an exponent.
    #[error("{value} is not an integer, as {datatype} requires")]
    NotAnInteger {
        /// The element as sent.
        value: String,
        /// The declared datatype.
        datatype: Datatype,
    },
    /// The element does not fit the declared datatype.
    #[error("{value} is out of range for {datatype}")]
    OutOfRange {
        /// The element as sent.
        value: String,
        /// The declared datatype.
        datatype: Datatype,
    },
    /// The datatype has no JSON form here (`BYTES`, `BF16`).
    #[error("datatype {0} is not supported for this input")]
    Unsupported(Datatype),
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

    /// Inclusive integer range of an integer datatype; `None` for the others.
    fn integer_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Datatype::Uint8 => (0, u8::MAX.into()),
            Datatype::Uint16 => (0, u16::MAX.into()),
            Datatype::Uint32 => (0, u32::MAX.into()),
            Datatype::Uint64 => (0, u64::MAX.into()),
            Datatype::Int8 => (i8::MIN.into(), i8::MAX.into()),
            Datatype::Int16 => (i16::MIN.into(), i16::MAX.into()),
            Datatype::Int32 => (i32::MIN.into(), i32::MAX.into()),
            Datatype::Int64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }

    /// Largest finite magnitude of a floating-point datatype; `None` for the others.
    fn float_max(self) -> Option<f64> {
        match self {
            // IEEE 754 binary16: (2 - 2^-10) * 2^15.
            Datatype::Fp16 => Some(65504.0),
            Datatype::Fp32 => Some(f32::MAX.into()),
            Datatype::Fp64 => Some(f64::MAX),
            _ => None,
        }
    }

    /// Whether a request tensor of this datatype can feed a model input computed in `f32`:
    /// every datatype but `BYTES` (`BOOL` as 0 or 1).
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

    /// Decodes binary tensor data (Triton's binary data extension: little-endian, row-major,
    /// [`Datatype::element_size`] bytes per element) into `f32`, appending to `out`.
    ///
    /// `bytes.len()` must be a multiple of the element size (the caller checked it against the
    /// shape). Errors name the element's row-major index: a `BOOL` byte other than 0 or 1, an
    /// `FP64` value beyond the `f32` range. Floating-point NaN and infinities pass through, as
    /// the client sent them. `BYTES` is [`ElementError::Unsupported`].
    pub fn decode_binary_to_f32(self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        fn each<const N: usize>(
            bytes: &[u8],
            out: &mut Vec<f32>,
            convert: impl Fn([u8; N]) -> f32,
        ) {
            out.extend(bytes.chunks_exact(N).map(|chunk| {
                let mut array = [0u8; N];
                array.copy_from_slice(chunk);
                convert(array)
            }));
        }
        match self {
            Datatype::Bool => {
                if let Some(index) = bytes.iter().position(|&b| b > 1) {
                    return Err(format!(
                        "binary element {index} of BOOL is byte {}, expected 0 or 1",
                        bytes[index]
                    ));
                }
                out.extend(bytes.iter().map(|&b| f32::from(b)));
            }
            Datatype::Uint8 => out.extend(bytes.iter().map(|&b| f32::from(b))),
            Datatype::Int8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
            Datatype::Uint16 => each::<2>(bytes, out, |b| f32::from(u16::from_le_bytes(b))),
            Datatype::Int16 => each::<2>(bytes, out, |b| f32::from(i16::from_le_bytes(b))),
            Datatype::Uint32 => each::<4>(bytes, out, |b| u32::from_le_bytes(b) as f32),
            Datatype::Int32 => each::<4>(bytes, out, |b| i32::from_le_bytes(b) as f32),
            Datatype::Uint64 => each::<8>(bytes, out, |b| u64::from_le_bytes(b) as f32),
            Datatype::Int64 => each::<8>(bytes, out, |b| i64::from_le_bytes(b) as f32),
            Datatype::Fp16 => each::<2>(bytes, out, |b| half::f16::from_le_bytes(b).to_f32()),
            Datatype::Bf16 => each::<2>(bytes, out, |b| half::bf16::from_le_bytes(b).to_f32()),
            Datatype::Fp32 => each::<4>(bytes, out, f32::from_le_bytes),
            Datatype::Fp64 => {
                let start = out.len();
                for (index, chunk) in bytes.chunks_exact(8).enumerate() {
                    let mut array = [0u8; 8];
                    array.copy_from_slice(chunk);
                    let value = f64::from_le_bytes(array);
                    let single = value as f32;
                    if value.is_finite() && !single.is_finite() {
                        out.truncate(start);
                        return Err(format!(
                            "binary element {index} of FP64 ({value}) is out of range for the model's FP32"
                        ));
                    }
                    out.push(single);
                }
            }
            Datatype::Bytes => return Err(ElementError::Unsupported(self).to_string()),
        }
        Ok(())
    }

    /// Checks that one JSON element is a value of this datatype and converts it to `f32`.
    ///
    /// Integer datatypes take only integer literals (`3`, not `3.0`) within the type's range;
    /// floating-point datatypes take any number whose magnitude fits the type. Integers beyond
    /// 2^24 lose precision in `f32`, as they would in any FP32 model.
    pub fn number_to_f32(self, value: &serde_json::Value) -> Result<f32, ElementError> {
        if self == Datatype::Bool {
            return match value {
                serde_json::Value::Bool(b) => Ok(f32::from(u8::from(*b))),
                _ => Err(ElementError::NotABool),
            };
        }
        let serde_json::Value::Number(number) = value else {
            return if self.is_numeric() {
                Err(ElementError::NotANumber)
            } else {
                Err(ElementError::Unsupported(self))
            };
        };
        if let Some((min, max)) = self.integer_range() {
            let integer = number
                .as_i64()
                .map(i128::from)
                .or_else(|| number.as_u64().map(i128::from));
            let Some(integer) = integer else {
                return Err(ElementError::NotAnInteger {
                    value: number.to_string(),
                    datatype: self,
                });
            };
            if integer < min || integer > max {
                return Err(ElementError::OutOfRange {
                    value: number.to_string(),
                    datatype: self,
                });
            }
            return Ok(integer as f32);
        }
        if let Some(max) = self.float_max() {
            // Every JSON number has an f64 form (serde_json rejects NaN and infinities).
            let float = number.as_f64().unwrap_or(f64::INFINITY);
            if !float.is_finite() || float.abs() > max {
                return Err(ElementError::OutOfRange {
                    value: number.to_string(),
                    datatype: self,
                });
            }
            let single = float as f32;
            if !single.is_finite() {
                return Err(ElementError::OutOfRange {
                    value: number.to_string(),
                    datatype: self,
                });
            }
            return Ok(single);
        }
        Err(ElementError::Unsupported(self))
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a datatype name that the protocol does not define.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    use serde_json::json;

    #[test]
    fn names_round_trip() {
        for d in Datatype::ALL {
            assert_eq!(d.as_str().parse::<Datatype>().unwrap(), d);
        }
        assert!("fp32".parse::<Datatype>().is_err());
        assert!("FLOAT".parse::<Datatype>().is_err());
    }

    #[test]
    fn floats_convert() {
        assert_eq!(Datatype::Fp32.number_to_f32(&json!(1.5)).unwrap(), 1.5);
        assert_eq!(Datatype::Fp64.number_to_f32(&json!(-2)).unwrap(), -2.0);
        assert_eq!(
            Datatype::Fp16.number_to_f32(&json!(65504)).unwrap(),
            65504.0
        );
        assert!(matches!(
            Datatype::Fp16.number_to_f32(&json!(70000.0)),
            Err(ElementError::OutOfRange { .. })
        ));
        assert!(matches!(
            Datatype::Fp32.number_to_f32(&json!(1e300)),
            Err(ElementError::OutOfRange { .. })
        ));
        // FP64 values beyond f32 range cannot feed an FP32 model either.
        assert!(matches!(
            Datatype::Fp64.number_to_f32(&json!(1e300)),
            Err(ElementError::OutOfRange { .. })
        ));
    }

    #[test]
    fn integers_must_be_integers_in_range() {
        assert_eq!(Datatype::Int8.number_to_f32(&json!(-128)).unwrap(), -128.0);
        assert_eq!(Datatype::Uint8.number_to_f32(&json!(255)).unwrap(), 255.0);
        assert_eq!(
            Datatype::Uint64.number_to_f32(&json!(u64::MAX)).unwrap(),
            u64::MAX as f32
        );
        assert_eq!(
            Datatype::Int64.number_to_f32(&json!(i64::MIN)).unwrap(),
            i64::MIN as f32
        );
        assert!(matches!(
            Datatype::Int32.number_to_f32(&json!(1.5)),
            Err(ElementError::NotAnInteger { .. })
        ));
        assert!(matches!(
            Datatype::Int32.number_to_f32(&json!(3.0)),
            Err(ElementError::NotAnInteger { .. })
        ));
        assert!(matches!(
            Datatype::Uint8.number_to_f32(&json!(256)),
            Err(ElementError::OutOfRange { .. })
        ));
        assert!(matches!(
            Datatype::Uint16.number_to_f32(&json!(-1)),
            Err(ElementError::OutOfRange { .. })
        ));
        assert!(matches!(
            Datatype::Int8.number_to_f32(&json!(-129)),
            Err(ElementError::OutOfRange { .. })
        ));
    }

    #[test]
    fn non_numbers_are_rejected() {
        assert_eq!(
            Datatype::Fp32.number_to_f32(&json!("1")),
            Err(ElementError::NotANumber)
        );
        assert_eq!(
            Datatype::Int64.number_to_f32(&json!(null)),
            Err(ElementError::NotANumber)
        );
        assert_eq!(Datatype::Bool.number_to_f32(&json!(true)), Ok(1.0));
        assert_eq!(Datatype::Bool.number_to_f32(&json!(false)), Ok(0.0));
        assert_eq!(
            Datatype::Bool.number_to_f32(&json!(1)),
            Err(ElementError::NotABool)
        );
        assert_eq!(
            Datatype::Bf16.number_to_f32(&json!(1)),
            Err(ElementError::Unsupported(Datatype::Bf16))
        );
        assert_eq!(
            Datatype::Bytes.number_to_f32(&json!(1)),
            Err(ElementError::Unsupported(Datatype::Bytes))
        );
    }

    #[test]
    fn binary_decodes_little_endian() {
        let mut out = Vec::new();
        Datatype::Fp32
            .decode_binary_to_f32(
                &[1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat(),
                &mut out,
            )
            .unwrap();
        assert_eq!(out, vec![1.5, -2.0]);
        out.clear();
        Datatype::Int16
            .decode_binary_to_f32(&(-300i16).to_le_bytes(), &mut out)
            .unwrap();
        Datatype::Uint64
            .decode_binary_to_f32(&7u64.to_le_bytes(), &mut out)
            .unwrap();
        Datatype::Fp16
            .decode_binary_to_f32(&half::f16::from_f32(0.5).to_le_bytes(), &mut out)
            .unwrap();
        Datatype::Bf16
            .decode_binary_to_f32(&half::bf16::from_f32(-4.0).to_le_bytes(), &mut out)
            .unwrap();
        Datatype::Bool
            .decode_binary_to_f32(&[1, 0], &mut out)
            .unwrap();
        Datatype::Int8
            .decode_binary_to_f32(&[0xff], &mut out)
            .unwrap();
        Datatype::Fp64
            .decode_binary_to_f32(&0.25f64.to_le_bytes(), &mut out)
            .unwrap();
        assert_eq!(out, vec![-300.0, 7.0, 0.5, -4.0, 1.0, 0.0, -1.0, 0.25]);
        let e = Datatype::Bool
            .decode_binary_to_f32(&[0, 2], &mut out)
            .unwrap_err();
        assert!(e.contains("binary element 1 of BOOL is byte 2"), "{e}");
        let e = Datatype::Fp64
            .decode_binary_to_f32(&1e300f64.to_le_bytes(), &mut out)
            .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        for d in Datatype::ALL {
            assert_eq!(d.element_size().is_none(), d == Datatype::Bytes);
        }
    }
}
