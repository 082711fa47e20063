//! A dense model: a stack of fully connected layers on libtorch.
//!
//! Weights come from one version folder's `model.safetensors`, with the tensors
//! `layers.{i}.weight` (FP32, shape `[out, in]`, the layout of `torch.nn.Linear`) and
//! `layers.{i}.bias` (FP32, shape `[out]`) for every layer `i` of the model's
//! [`ModelConfig`]. The forward pass maps `x: [batch, in]` through `x.linear(W, b)` and the
//! layer's activation, layer after layer.

use std::collections::HashMap;
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
