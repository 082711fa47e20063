//! A dense model: a stack of fully connected layers on libtorch.
//!
//! Weights come from one version folder's `model.safetensors`, with the tensors
//! `layers.{i}.weight` (FP32, shape `[out, in]`, the layout of `torch.nn.Linear`) and
//! `layers.{i}.bias` (FP32, shape `[out]`) for every layer `i` of the model's
//! [`ModelConfig`]. The forward pass maps `x: [batch, in]` through `x.linear(W, b)` and the
//! layer's activation, layer after layer.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::config::{Activation, LayerConfig, ModelConfig};

/// The file name of a dense model version's weights inside its version folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The safetensors name of layer `index`'s weight tensor.
pub fn weight_name(index: usize) -> String {
    format!("layers.{index}.weight")
}

/// The safetensors name of layer `index`'s bias tensor.
pub fn bias_name(index: usize) -> String {
    format!("layers.{index}.bias")
}

/// One loaded fully connected layer.
#[derive(Debug)]
struct DenseLayer {
    /// `[out, in]`, FP32, on the model's device.
    weight: Tensor,
    /// `[out]`, FP32, on the model's device; `None` for a layer without bias.
    bias: Option<Tensor>,
    activation: Activation,
}

/// A dense model version ready to run: its layers on one device.
///
/// A `DenseModel` is `Send` (it moves to its worker thread) but not `Sync`: one thread runs it.
#[derive(Debug)]
pub struct DenseModel {
    layers: Vec<DenseLayer>,
    in_features: i64,
    out_features: i64,
    device: Device,
}

/// Why a forward pass failed (a libtorch error; the input itself was validated before).
#[derive(Debug, thiserror::Error)]
#[error("forward pass failed: {0}")]
pub struct ForwardError(#[from] tch::TchError);

impl DenseModel {
    /// Loads the weights of `config`'s layers from a `model.safetensors` file onto `device`.
    ///
    /// Errors (as text naming the tensor and the expected shape) when the file cannot be read,
    /// a tensor is missing, is not FP32, or has the wrong shape, or when the file holds tensors
    /// that no layer uses (a sign that the file and the config disagree).
    pub fn load(
        config: &ModelConfig,
        weights: &Path,
        device: Device,
    ) -> Result<DenseModel, String> {
        let tensors =
            Tensor::read_safetensors(weights).map_err(|e| format!("cannot read weights: {e}"))?;
        let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
        DenseModel::from_tensors(config, tensors, device)
    }

    /// Loads only the layers `range` of `config` (a pipeline stage) from a `model.safetensors`
    /// file onto `device`, reading from the file only those layers' tensors: layer
    /// `range.start + i` of the file becomes layer `i` of the returned model, whose
    /// [`DenseModel::in_features`] is `in` of layer `range.start` and
    /// [`DenseModel::out_features`] is `out` of layer `range.end - 1`.
    ///
    /// Errors (as text) when the range is empty or past the layers, and as [`DenseModel::load`]
    /// for the tensors of the range.
    pub fn load_range(
        config: &ModelConfig,
        weights: &Path,
        range: Range<usize>,
        device: Device,
    ) -> Result<DenseModel, String> {
        let Some(layers) = config.layers.get(range.clone()).filter(|l| !l.is_empty()) else {
            return Err(format!(
                "layers {}..{} are not a non-empty range of the model's {} layers",
                range.start,
                range.end,
                config.layers.len()
            ));
        };
        let mut wanted = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let index = range.start + i;
            wanted.push((weight_name(index), weight_name(i)));
            if layer.bias {
                wanted.push((bias_name(index), bias_name(i)));
            }
        }
        let tensors = read_safetensors_subset(weights, &wanted)?;
        let stage = ModelConfig {
            layers: layers.to_vec(),
            ..config.clone()
        };
        DenseModel::from_tensors(&stage, tensors, device)
    }

    /// Builds a model from named tensors (as in `model.safetensors`); see [`DenseModel::load`].
    pub fn from_tensors(
        config: &ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: Device,
    ) -> Result<DenseModel, String> {
        let mut layers = Vec::with_capacity(config.layers.len());
        for (index, layer) in config.layers.iter().enumerate() {
            layers.push(load_layer(index, layer, &mut tensors, device)?);
        }
        if !tensors.is_empty() {
            let mut unused: Vec<_> = tensors.into_keys().collect();
            unused.sort();
            return Err(format!(
                "tensors not used by any configured layer: {} (the config has {} layers)",
                unused.join(", "),
                config.layers.len()
            ));
        }
        let (Some(first), Some(last)) = (config.layers.first(), config.layers.last()) else {
            return Err("a dense model needs at least one layer".into());
        };
        Ok(DenseModel {
            layers,
            in_features: first.in_features,
            out_features: last.out_features,
            device,
        })
    }

    /// Input features per row (`in` of the first layer).
    pub fn in_features(&self) -> i64 {
        self.in_features
    }

    /// Output features per row (`out` of the last layer).
    pub fn out_features(&self) -> i64 {
        self.out_features
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs the layers on `x: [batch, in]` (FP32, on [`DenseModel::device`]) and returns
    /// `[batch, out]`. Call inside `tch::no_grad` when serving.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        let mut x = x.shallow_clone();
        for layer in &self.layers {
            x = x.f_linear(&layer.weight, layer.bias.as_ref())?;
            x = activate(&x, layer.activation)?;
        }
        Ok(x)
    }

    /// Runs the model on `rows` rows of row-major `data` (length `rows * in`) and returns the
    /// output row-major (length `rows * out`), copied back to the host.
    pub fn forward_rows(&self, data: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        let x = Tensor::f_from_slice(data)?
            .f_view([rows, self.in_features])?
            .f_to_device(self.device)?;
        let y = tch::no_grad(|| self.forward(&x))?;
        let y = y.f_to_device(Device::Cpu)?.f_contiguous()?;
        Ok(Vec::<f32>::try_from(&y.f_view([-1])?)?)
    }
}

/// Applies one activation; softmax is over the features of each row (dim 1).
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor, tch::TchError> {
    match activation {
        Activation::Relu => x.f_relu(),
        Activation::Tanh => x.f_tanh(),
        Activation::Sigmoid => x.f_sigmoid(),
        Activation::Softmax => x.f_softmax(1, Kind::Float),
        Activation::None => Ok(x.shallow_clone()),
    }
}

/// Reads the FP32 tensors named in `wanted` (`(name in the file, name to return)`) from a
/// safetensors file, seeking to each one's bytes instead of reading the whole file (format:
/// <https://github.com/huggingface/safetensors#format>: an 8-byte little-endian header length,
/// a JSON header of `name: {dtype, shape, data_offsets}`, then the data). A name missing from
/// the file is left out (the caller reports it with the expected shape).
fn read_safetensors_subset(
    path: &Path,
    wanted: &[(String, String)],
) -> Result<HashMap<String, Tensor>, String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<i64>,
        data_offsets: [u64; 2],
    }
    let cannot = |e: std::io::Error| format!("cannot read weights: {e}");
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(cannot)?;
    let length = u64::from_le_bytes(length);
    // The format caps the header at 100 MB.
    if length > 100_000_000 {
        return Err(format!(
            "cannot read weights: safetensors header of {length} bytes (at most 100 MB)"
        ));
    }
    let mut header = vec![0u8; usize::try_from(length).unwrap_or(0)];
    file.read_exact(&mut header).map_err(cannot)?;
    let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| format!("cannot read weights: bad safetensors header: {e}"))?;
    let mut tensors = HashMap::new();
    for (name, rename) in wanted {
        let Some(value) = entries.remove(name) else {
            continue;
        };
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| format!("cannot read weights: tensor '{name}': {e}"))?;
        if entry.dtype != "F32" {
            return Err(format!(
                "tensor '{name}' is {}, expected FP32 (F32)",
                entry.dtype
            ));
        }
        let [start, end] = entry.data_offsets;
        let elements: i64 = entry.shape.iter().product();
        if end < start || Some(end - start) != u64::try_from(elements).ok().map(|n| n * 4) {
            return Err(format!(
                "cannot read weights: tensor '{name}' has data_offsets [{start}, {end}] for shape {:?}",
                entry.shape
            ));
        }
        let mut bytes = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(8 + length + start))
            .map_err(cannot)?;
        file.read_exact(&mut bytes).map_err(cannot)?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let tensor = Tensor::f_from_slice(&values)
            .and_then(|t| t.f_view(entry.shape.as_slice()))
            .map_err(|e| format!("cannot read weights: tensor '{name}': {e}"))?;
        tensors.insert(rename.clone(), tensor);
    }
    Ok(tensors)
}

fn load_layer(
    index: usize,
    layer: &LayerConfig,
    tensors: &mut HashMap<String, Tensor>,
    device: Device,
) -> Result<DenseLayer, String> {
    let weight = take_tensor(
        tensors,
        &weight_name(index),
        &[layer.out_features, layer.in_features],
    )?;
    let bias_key = bias_name(index);
    let bias = if layer.bias {
        Some(take_tensor(tensors, &bias_key, &[layer.out_features])?)
    } else if tensors.contains_key(&bias_key) {
        return Err(format!(
            "tensor '{bias_key}' is present but layers[{index}] has bias = false"
        ));
    } else {
        None
    };
    let to_device = |t: Tensor| {
        t.f_to_device(device)
            .map_err(|e| format!("cannot move layers.{index} to {device:?}: {e}"))
    };
    Ok(DenseLayer {
        weight: to_device(weight)?,
        bias: bias.map(to_device).transpose()?,
        activation: layer.activation,
    })
}

fn take_tensor(
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    shape: &[i64],
) -> Result<Tensor, String> {
    let Some(tensor) = tensors.remove(name) else {
        return Err(format!("missing tensor '{name}' (expected FP32 {shape:?})"));
    };
    if tensor.kind() != Kind::Float {
        return Err(format!(
            "tensor '{name}' is {:?}, expected FP32 (Float)",
            tensor.kind()
        ));
    }
    if tensor.size() != shape {
        return Err(format!(
            "tensor '{name}' has shape {:?}, expected {shape:?}",
            tensor.size()
        ));
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dense_classifier;

    fn tensors_for(config: &ModelConfig) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::new();
        for (i, layer) in config.layers.iter().enumerate() {
            tensors.insert(
                weight_name(i),
                Tensor::ones(
                    [layer.out_features, layer.in_features],
                    (Kind::Float, Device::Cpu),
                ),
            );
            tensors.insert(
                bias_name(i),
                Tensor::zeros([layer.out_features], (Kind::Float, Device::Cpu)),
            );
        }
        tensors
    }

    #[test]
    fn forward_is_softmax_of_the_stack() {
        let config = dense_classifier(3, 4, 2);
        let model = DenseModel::from_tensors(&config, tensors_for(&config), Device::Cpu).unwrap();
        let out = model
            .forward_rows(&[1.0, 2.0, 3.0, -1.0, -2.0, -3.0], 2)
            .unwrap();
        // All-ones weights give equal logits, so the softmax is uniform.
        assert_eq!(out.len(), 4);
        for v in out {
            assert!((v - 0.5).abs() < 1e-6);
        }
    }

    /// Two stages loaded with `load_range` compose to the whole model, reading only their
    /// own layers (layer 1 of the file is layer 0 of the second stage).
    #[test]
    fn ranges_compose_to_the_whole_model() {
        let config = dense_classifier(3, 4, 2);
        tch::manual_seed(1);
        let tensors: Vec<(String, Tensor)> = config
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let options = (Kind::Float, Device::Cpu);
                [
                    (
                        weight_name(i),
                        Tensor::randn([l.out_features, l.in_features], options),
                    ),
                    (bias_name(i), Tensor::randn([l.out_features], options)),
                ]
            })
            .collect();
        let dir = crate::testutil::TempDir::new("dense-range");
        let file = dir.path().join(WEIGHTS_FILE);
        Tensor::write_safetensors(&tensors, &file).unwrap();
        let whole = DenseModel::load(&config, &file, Device::Cpu).unwrap();
        let first = DenseModel::load_range(&config, &file, 0..1, Device::Cpu).unwrap();
        let second = DenseModel::load_range(&config, &file, 1..2, Device::Cpu).unwrap();
        assert_eq!((first.out_features(), second.in_features()), (4, 4));
        let x = [0.5, -1.0, 2.0, 1.5, 0.0, -0.5];
        let hidden = first.forward_rows(&x, 2).unwrap();
        let split = second.forward_rows(&hidden, 2).unwrap();
        assert_eq!(split, whole.forward_rows(&x, 2).unwrap());
        let e = DenseModel::load_range(&config, &file, 1..3, Device::Cpu).unwrap_err();
        assert!(
            e.contains("not a non-empty range of the model's 2 layers"),
            "{e}"
        );
    }

    #[test]
    fn wrong_shape_is_named() {
        let config = dense_classifier(3, 4, 2);
        let mut tensors = tensors_for(&config);
        tensors.insert(
            weight_name(1),
            Tensor::ones([2, 5], (Kind::Float, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap_err();
        assert_eq!(
            e,
            "tensor 'layers.1.weight' has shape [2, 5], expected [2, 4]"
        );
    }

    #[test]
    fn missing_wrong_kind_and_extra_tensors_are_errors() {
        let config = dense_classifier(3, 4, 2);
        let mut tensors = tensors_for(&config);
        tensors.remove(&bias_name(0));
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap_err();
        assert!(e.contains("missing tensor 'layers.0.bias'"), "{e}");

        let mut tensors = tensors_for(&config);
        tensors.insert(
            weight_name(0),
            Tensor::ones([4, 3], (Kind::Double, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap_err();
        assert!(e.contains("expected FP32"), "{e}");

        let mut tensors = tensors_for(&config);
        tensors.insert(
            "layers.2.weight".into(),
            Tensor::ones([1], (Kind::Float, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu).unwrap_err();
        assert!(
            e.contains("not used by any configured layer: layers.2.weight"),
            "{e}"
        );
    }
}
