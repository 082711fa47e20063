//! Request bodies: Open Inference Protocol v2 infer requests, JSON or binary encoded.
//!
//! A body pool is built once before the run and cycled, so generating bodies costs nothing
//! while measuring.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use maas_protocol::{encode as encode_le, BinaryBody, Datatype, InferRequest, RequestInput};
use rand::Rng;

use crate::scenario::{BodySource, BodySpec, Encoding};

/// One ready-to-send request body.
#[derive(Debug, Clone)]
pub struct PreparedBody {
    /// The bytes to send.
    pub bytes: Bytes,
    /// For the binary encoding: the length of the JSON header at the start of `bytes`
    /// (sent as `Inference-Header-Content-Length`).
    pub header_len: Option<usize>,
}

/// A tensor to send: name, shape `[batch, ...dims]`, OIP datatype and values (row-major).
/// The datatype stays text, as the model's metadata gave it, so that one the load tester
/// cannot generate gets a precise error at [`encode`].
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Input name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Values, already cast to the datatype's range.
    pub values: Vec<f64>,
    /// Datatype: FP32, FP64, INT32 or INT64.
    pub datatype: String,
}

/// Reads the digits data set (gzip CSV, 64 features then the label) as rows of features.
///
/// # Errors
/// The file is missing, not gzip, or a row is not 65 numbers.
pub fn digits_rows(path: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Vec<f64> = line
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} line {}: not numeric", path.display(), i + 1))?;
            if v.len() != 65 {
                bail!(
                    "{} line {}: {} columns, expected 65",
                    path.display(),
                    i + 1,
                    v.len()
                );
            }
            Ok(v[..64].to_vec())
        })
        .collect()
}

/// Encodes one tensor as an infer request (`maas-protocol`'s request types).
///
/// JSON: `{"inputs":[{"name","shape","datatype","data":[...]}]}`.
/// Binary (Triton's binary tensor data extension): the same JSON without `data` and with
/// `"parameters":{"binary_data_size":N}`, followed by N little-endian bytes; the request also
/// asks for its outputs as binary data (`"parameters":{"binary_data_output":true}`), which is
/// what Triton's Python client `tritonclient.http` sends when no output is named.
pub fn encode(t: &TensorData, encoding: Encoding) -> anyhow::Result<PreparedBody> {
    let Some(datatype) = t.datatype.parse::<Datatype>().ok().filter(|d| {
        matches!(
            d,
            Datatype::Fp32 | Datatype::Fp64 | Datatype::Int32 | Datatype::Int64
        )
    }) else {
        bail!(
            "cannot generate datatype {} (FP32, FP64, INT32, INT64 only)",
            t.datatype
        )
    };
    let shape = t
        .shape
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .context("shape too large")?;
    match encoding {
        Encoding::Json => {
            let data: Vec<serde_json::Value> = t
                .values
                .iter()
                .map(|&v| match datatype {
                    Datatype::Int32 | Datatype::Int64 => serde_json::Value::from(v as i64),
                    _ => serde_json::Value::from(v),
                })
                .collect();
            let request = InferRequest::new(vec![RequestInput::json(
                t.name.clone(),
                shape,
                datatype,
                serde_json::Value::Array(data),
            )]);
            Ok(PreparedBody {
                bytes: Bytes::from(serde_json::to_vec(&request)?),
                header_len: None,
            })
        }
        Encoding::Binary => {
            let mut raw = Vec::new();
            let values = t.values.as_slice();
            match datatype {
                Datatype::Fp32 => {
                    let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                    encode_le(&v, &mut raw);
                }
                Datatype::Fp64 => encode_le(values, &mut raw),
                Datatype::Int32 => {
                    let v: Vec<i32> = values.iter().map(|&v| v as i32).collect();
                    encode_le(&v, &mut raw);
                }
                _ => {
                    let v: Vec<i64> = values.iter().map(|&v| v as i64).collect();
                    encode_le(&v, &mut raw);
                }
            }
            let request = InferRequest::new(vec![RequestInput::binary(
                t.name.clone(),
                shape,
                datatype,
                raw.len(),
            )])
            .binary_data_output();
            let body = BinaryBody::new(&request, &raw)?;
            Ok(PreparedBody {
                bytes: Bytes::from(body.bytes),
                header_len: Some(body.json_len),
            })
        }
    }
}

/// The input of a model as its metadata describes it (`GET /v2/models/{model}`), read leniently
/// (the datatype as text, see [`TensorData`]), so that any OIP server's metadata will do.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct InputMetadata {
    /// Input name.
    pub name: String,
    /// OIP datatype.
    pub datatype: String,
    /// Shape, `-1` for variable dimensions (the batch).
    pub shape: Vec<i64>,
}

/// Random values for `batch` rows of `input`: uniform in [0, 1) for floats, [0, 16] for ints.
/// Variable dimensions other than the first become 1.
pub fn random_tensor(input: &InputMetadata, batch: usize, rng: &mut impl Rng) -> TensorData {
    let mut shape: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| if d < 0 { 1 } else { d as usize })
        .collect();
    if shape.is_empty() {
        shape.push(batch);
    } else {
        shape[0] = batch;
    }
    let n: usize = shape.iter().product();
    let int = input.datatype.starts_with("INT");
    let values = (0..n)
        .map(|_| {
            if int {
                f64::from(rng.random_range(0..=16u8))
            } else {
                rng.random::<f64>()
            }
        })
        .collect();
    TensorData {
        name: input.name.clone(),
        shape,
        values,
        datatype: input.datatype.clone(),
    }
}

/// Builds the pool of bodies for a run (up to 64 distinct bodies, cycled).
///
/// `metadata` is needed for `BodySource::Random` only.
///
/// # Errors
/// Unreadable data or body file, or a datatype that cannot be generated.
pub fn build_pool(
    spec: &BodySpec,
    metadata: Option<&InputMetadata>,
) -> anyhow::Result<Vec<PreparedBody>> {
    match spec.source {
        BodySource::File => {
            let path = spec
                .body_file
                .as_ref()
                .context("body.source = \"file\" needs body.body_file")?;
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(vec![PreparedBody {
                bytes: Bytes::from(bytes),
                header_len: None,
            }])
        }
        BodySource::Digits => {
            let rows = digits_rows(&spec.digits_path)?;
            if rows.is_empty() {
                bail!("{} has no rows", spec.digits_path.display());
            }
            (0..64)
                .map(|i| {
                    let values: Vec<f64> = (0..spec.batch)
                        .flat_map(|r| rows[(i * spec.batch + r) % rows.len()].iter().copied())
                        .collect();
                    let t = TensorData {
                        name: spec.input_name.clone(),
                        shape: vec![spec.batch, 64],
                        values,
                        datatype: "FP32".to_string(),
                    };
                    encode(&t, spec.encoding)
                })
                .collect()
        }
        BodySource::Random => {
            let input = metadata.context("random bodies need the model's metadata")?;
            let mut rng = rand::rng();
            (0..64)
                .map(|_| encode(&random_tensor(input, spec.batch, &mut rng), spec.encoding))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor() -> TensorData {
        TensorData {
            name: "input".into(),
            shape: vec![2, 2],
            values: vec![1.0, 2.5, -3.0, 4.0],
            datatype: "FP32".into(),
        }
    }

    #[test]
    fn json_encoding_carries_shape_datatype_and_data() {
        let b = encode(&tensor(), Encoding::Json).expect("encode");
        assert_eq!(b.header_len, None);
        let v: serde_json::Value = serde_json::from_slice(&b.bytes).expect("json");
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([2, 2]));
        assert_eq!(v["inputs"][0]["datatype"], "FP32");
        assert_eq!(
            v["inputs"][0]["data"],
            serde_json::json!([1.0, 2.5, -3.0, 4.0])
        );
    }

    #[test]
    fn binary_encoding_is_a_json_header_then_little_endian_values() {
        let b = encode(&tensor(), Encoding::Binary).expect("encode");
        let h = b.header_len.expect("header length");
        let header: serde_json::Value = serde_json::from_slice(&b.bytes[..h]).expect("header");
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 16);
        assert!(header["inputs"][0].get("data").is_none());
        assert_eq!(header["parameters"]["binary_data_output"], true);
        let raw = &b.bytes[h..];
        assert_eq!(raw.len(), 16);
        assert_eq!(&raw[4..8], &2.5f32.to_le_bytes());
        assert_eq!(&raw[8..12], &(-3.0f32).to_le_bytes());
    }

    #[test]
    fn random_tensors_follow_the_metadata_with_the_batch_first() {
        let meta = InputMetadata {
            name: "x".into(),
            datatype: "INT64".into(),
            shape: vec![-1, 3, 2],
        };
        let t = random_tensor(&meta, 5, &mut rand::rng());
        assert_eq!(t.shape, vec![5, 3, 2]);
        assert_eq!(t.values.len(), 30);
        assert!(t
            .values
            .iter()
            .all(|v| (0.0..=16.0).contains(v) && v.fract() == 0.0));
        let err = encode(
            &TensorData {
                datatype: "BF16".into(),
                ..t
            },
            Encoding::Json,
        )
        .expect_err("BF16 is not generated");
        assert!(err.to_string().contains("BF16"));
    }

    #[test]
    fn digits_bodies_hold_real_rows_in_batches() {
        let spec = BodySpec {
            batch: 3,
            digits_path: Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits.csv.gz"),
            ..BodySpec::default()
        };
        let pool = build_pool(&spec, None).expect("pool");
        assert_eq!(pool.len(), 64);
        let v: serde_json::Value = serde_json::from_slice(&pool[0].bytes).expect("json");
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([3, 64]));
        let data = v["inputs"][0]["data"].as_array().expect("data");
        assert_eq!(data.len(), 192);
        // First row of the data set starts 0,0,5,13,9,1
        assert_eq!(data[2].as_f64(), Some(5.0));
        assert_eq!(data[3].as_f64(), Some(13.0));
    }
}
