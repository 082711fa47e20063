//! Converting tensor elements of any numeric Open Inference Protocol datatype to the `f32` the
//! models compute in: JSON numbers ([`ElementToF32::number_to_f32`]) and binary tensor data
//! ([`ElementToF32::decode_binary_to_f32`]).
//!
//! In the JSON form a tensor's `data` is a list of JSON numbers; each must be a valid value of
//! the declared datatype (integers for the integer types, within range). In the binary form
//! (Triton's binary tensor data extension) elements are little-endian, row-major.

use maas_protocol::{decode, Datatype, Element};

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

/// Why one binary element cannot feed a model that computes in `f32`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BinaryElementError {
    /// A `BOOL` byte other than 0 or 1.
    #[error("binary element {index} of BOOL is byte {byte}, expected 0 or 1")]
    NotABool {
        /// The element's row-major index.
        index: usize,
        /// The byte sent.
        byte: u8,
    },
    /// An `FP64` value beyond the `f32` range.
    #[error("binary element {index} of FP64 ({value}) is out of range for the model's FP32")]
    OutOfRange {
        /// The element's row-major index.
        index: usize,
        /// The value sent.
        value: f64,
    },
    /// The datatype has no numeric binary form (`BYTES`).
    #[error("datatype {0} is not supported for this input")]
    Unsupported(Datatype),
}

/// The conversions of elements of a [`Datatype`] to `f32`.
pub trait ElementToF32 {
    /// Decodes binary tensor data (little-endian, row-major, [`Datatype::element_size`] bytes
    /// per element) into `f32`, appending to `out`.
    ///
    /// `bytes.len()` must be a multiple of the element size (the caller checked it against the
    /// shape). Errors name the element's row-major index: a `BOOL` byte other than 0 or 1, an
    /// `FP64` value beyond the `f32` range. Floating-point NaN and infinities pass through, as
    /// the client sent them. `BYTES` is [`BinaryElementError::Unsupported`].
    fn decode_binary_to_f32(
        self,
        bytes: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<(), BinaryElementError>;

    /// Checks that one JSON element is a value of this datatype and converts it to `f32`.
    ///
    /// Integer datatypes take only integer literals (`3`, not `3.0`) within the type's range;
    /// floating-point datatypes take any number whose magnitude fits the type. Integers beyond
    /// 2^24 lose precision in `f32`, as they would in any FP32 model.
    fn number_to_f32(self, value: &serde_json::Value) -> Result<f32, ElementError>;
}

/// Appends the elements of `bytes` as `T`, converted by `convert`.
fn each<T: Element>(bytes: &[u8], out: &mut Vec<f32>, convert: impl Fn(T) -> f32) {
    out.extend(decode::<T>(bytes).into_iter().flatten().map(convert));
}

impl ElementToF32 for Datatype {
    fn decode_binary_to_f32(
        self,
        bytes: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<(), BinaryElementError> {
        match self {
            Datatype::Bool => {
                if let Some(index) = bytes.iter().position(|&b| b > 1) {
                    return Err(BinaryElementError::NotABool {
                        index,
                        byte: bytes[index],
                    });
                }
                out.extend(bytes.iter().map(|&b| f32::from(b)));
            }
            Datatype::Uint8 => each::<u8>(bytes, out, f32::from),
            Datatype::Int8 => each::<i8>(bytes, out, f32::from),
            Datatype::Uint16 => each::<u16>(bytes, out, f32::from),
            Datatype::Int16 => each::<i16>(bytes, out, f32::from),
            Datatype::Uint32 => each::<u32>(bytes, out, |v| v as f32),
            Datatype::Int32 => each::<i32>(bytes, out, |v| v as f32),
            Datatype::Uint64 => each::<u64>(bytes, out, |v| v as f32),
            Datatype::Int64 => each::<i64>(bytes, out, |v| v as f32),
            Datatype::Fp16 => each::<u16>(bytes, out, |b| half::f16::from_bits(b).to_f32()),
            Datatype::Bf16 => each::<u16>(bytes, out, |b| half::bf16::from_bits(b).to_f32()),
            Datatype::Fp32 => each::<f32>(bytes, out, |v| v),
            Datatype::Fp64 => {
                let start = out.len();
                for (index, value) in decode::<f64>(bytes).into_iter().flatten().enumerate() {
                    let single = value as f32;
                    if value.is_finite() && !single.is_finite() {
                        out.truncate(start);
                        return Err(BinaryElementError::OutOfRange { index, value });
                    }
                    out.push(single);
                }
            }
            Datatype::Bytes => return Err(BinaryElementError::Unsupported(self)),
        }
        Ok(())
    }

    fn number_to_f32(self, value: &serde_json::Value) -> Result<f32, ElementError> {
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
        if let Some((min, max)) = integer_range(self) {
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
        if let Some(max) = float_max(self) {
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

/// Inclusive integer range of an integer datatype; `None` for the others.
fn integer_range(datatype: Datatype) -> Option<(i128, i128)> {
    Some(match datatype {
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
fn float_max(datatype: Datatype) -> Option<f64> {
    match datatype {
        // IEEE 754 binary16: (2 - 2^-10) * 2^15.
        Datatype::Fp16 => Some(65504.0),
        Datatype::Fp32 => Some(f32::MAX.into()),
        Datatype::Fp64 => Some(f64::MAX),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            .unwrap_err()
            .to_string();
        assert!(e.contains("binary element 1 of BOOL is byte 2"), "{e}");
        let e = Datatype::Fp64
            .decode_binary_to_f32(&1e300f64.to_le_bytes(), &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
        for d in Datatype::ALL {
            assert_eq!(d.element_size().is_none(), d == Datatype::Bytes);
        }
    }
}
