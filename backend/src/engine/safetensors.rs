//! Reading some of the tensors of a safetensors file without reading the whole file (the
//! layers of one pipeline stage out of a model's `model.safetensors`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use tch::Tensor;

use super::LoadError;

/// Reads the FP32 tensors named in `wanted` (`(name in the file, name to return)`) from a
/// safetensors file, seeking to each one's bytes instead of reading the whole file (format:
/// <https://github.com/huggingface/safetensors#format>: an 8-byte little-endian header length,
/// a JSON header of `name: {dtype, shape, data_offsets}`, then the data). A name missing from
/// the file is left out (the caller reports it with the expected shape).
pub(super) fn read_safetensors_subset(
    path: &Path,
    wanted: &[(String, String)],
) -> Result<HashMap<String, Tensor>, LoadError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<i64>,
        data_offsets: [u64; 2],
    }
    let mut file = std::fs::File::open(path)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)?;
    let length = u64::from_le_bytes(length);
    // The format caps the header at 100 MB.
    if length > 100_000_000 {
        return Err(LoadError::WeightsFormat(format!(
            "safetensors header of {length} bytes (at most 100 MB)"
        )));
    }
    let mut header = vec![0u8; usize::try_from(length).unwrap_or(0)];
    file.read_exact(&mut header)?;
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| LoadError::WeightsFormat(format!("bad safetensors header: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, rename) in wanted {
        let Some(value) = entries.remove(name) else {
            continue;
        };
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| LoadError::WeightsFormat(format!("tensor '{name}': {e}")))?;
        if entry.dtype != "F32" {
            return Err(LoadError::NotFp32 {
                name: name.clone(),
                found: entry.dtype,
                fp32: "F32",
            });
        }
        let [start, end] = entry.data_offsets;
        let elements: i64 = entry.shape.iter().product();
        if end < start || Some(end - start) != u64::try_from(elements).ok().map(|n| n * 4) {
            return Err(LoadError::WeightsFormat(format!(
                "tensor '{name}' has data_offsets [{start}, {end}] for shape {:?}",
                entry.shape
            )));
        }
        let mut bytes = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(8 + length + start))?;
        file.read_exact(&mut bytes)?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let tensor = Tensor::f_from_slice(&values)
            .and_then(|t| t.f_view(entry.shape.as_slice()))
            .map_err(|e| LoadError::WeightsFormat(format!("tensor '{name}': {e}")))?;
        tensors.insert(rename.clone(), tensor);
    }
    Ok(tensors)
}
