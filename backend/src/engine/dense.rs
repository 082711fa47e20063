//! A dense model: a stack of fully connected layers on libtorch.
//!
//! Weights come from one version folder's `model.safetensors`, with the tensors
//! `layers.{i}.weight` (FP32, shape `[out, in]`, the layout of `torch.nn.Linear`) and
//! `layers.{i}.bias` (FP32, shape `[out]`) for every layer `i` of the model's
//! [`ModelConfig`]. The forward pass maps `x: [batch, in]` through `x.linear(W, b)` and the
//! layer's activation, layer after layer.
//!
//! The model's `precision` decides the format the weights are kept in on the device (cast once
//! at load) and the forward pass computes in; the input is cast to it on the device and the
//! output back to FP32 there (`transfer.rs`).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::safetensors::read_safetensors_subset;
use super::transfer::{device_to_host, host_to_device};
use super::{Forward, ForwardError, LoadError};
use crate::config::{Activation, LayerConfig, ModelConfig, Precision};

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
    /// `[out, in]`, in the model's precision, on the model's device.
    weight: Tensor,
    /// `[out]`, in the model's precision, on the model's device; `None` for a layer without
    /// bias.
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
    precision: Precision,
}

impl DenseModel {
    /// Loads the weights of `config`'s layers from a `model.safetensors` file onto `device`.
    ///
    /// Errors ([`LoadError`], naming the tensor and the expected shape) when the file cannot be
    /// read, a tensor is missing, is not FP32, or has the wrong shape, or when the file holds
    /// tensors that no layer uses (a sign that the file and the config disagree).
    pub fn load(
        config: &ModelConfig,
        weights: &Path,
        device: Device,
    ) -> Result<DenseModel, LoadError> {
        let tensors = Tensor::read_safetensors(weights).map_err(LoadError::WeightsLibtorch)?;
        let tensors: HashMap<String, Tensor> = tensors.into_iter().collect();
        DenseModel::from_tensors(config, tensors, device)
    }

    /// Loads only the layers `range` of `config` (a pipeline stage) from a `model.safetensors`
    /// file onto `device`, reading from the file only those layers' tensors: layer
    /// `range.start + i` of the file becomes layer `i` of the returned model, whose
    /// [`DenseModel::in_features`] is `in` of layer `range.start` and
    /// [`DenseModel::out_features`] is `out` of layer `range.end - 1`.
    ///
    /// Errors ([`LoadError::Config`]) when the range is empty or past the layers, and as
    /// [`DenseModel::load`] for the tensors of the range.
    pub fn load_range(
        config: &ModelConfig,
        weights: &Path,
        range: Range<usize>,
        device: Device,
    ) -> Result<DenseModel, LoadError> {
        let layers = config.layer_range(range.clone())?;
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

    /// Builds a model from named tensors (as in `model.safetensors`, FP32) on `device` in
    /// `config.precision`; see [`DenseModel::load`]. Errors besides:
    /// [`LoadError::Precision`] when the device cannot run the precision.
    pub fn from_tensors(
        config: &ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        device: Device,
    ) -> Result<DenseModel, LoadError> {
        config.precision.check(device)?;
        let kind = config.precision.kind();
        let mut layers = Vec::with_capacity(config.layers.len());
        for (index, layer) in config.layers.iter().enumerate() {
            layers.push(load_layer(index, layer, &mut tensors, device, kind)?);
        }
        if !tensors.is_empty() {
            let mut names: Vec<_> = tensors.into_keys().collect();
            names.sort();
            return Err(LoadError::UnusedTensors {
                names,
                layers: config.layers.len(),
            });
        }
        let (Some(first), Some(last)) = (config.layers.first(), config.layers.last()) else {
            return Err(LoadError::NoLayers);
        };
        Ok(DenseModel {
            layers,
            in_features: first.in_features,
            out_features: last.out_features,
            device,
            precision: config.precision,
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

    /// The format the weights are kept and computed in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs the layers on `x: [batch, in]` (any floating kind, on [`DenseModel::device`]; cast
    /// to the model's precision first) and returns `[batch, out]` in the model's precision.
    /// Call inside `tch::no_grad` when serving.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        let mut x = x.f_to_kind(self.precision.kind())?;
        for layer in &self.layers {
            x = x.f_linear(&layer.weight, layer.bias.as_ref())?;
            x = activate(&x, layer.activation)?;
        }
        Ok(x)
    }

    /// Runs the model on `rows` rows of row-major `data` (length `rows * in`) and returns the
    /// output row-major (length `rows * out`), as FP32 on the host (values of the model's
    /// precision: exact BF16 or FP16 numbers for `bf16` or `fp16`).
    pub fn forward_rows(&self, data: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        let x = host_to_device(
            data,
            &[rows, self.in_features],
            self.device,
            self.precision.kind(),
        )?;
        let y = tch::no_grad(|| self.forward(&x))?;
        Ok(device_to_host(&y)?)
    }
}

impl Forward for DenseModel {
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        DenseModel::forward_rows(self, input, rows)
    }

    fn out_features(&self) -> i64 {
        DenseModel::out_features(self)
    }
}

/// Applies one activation; softmax is over the features of each row (dim 1), accumulated in
/// FP32 and returned in `x`'s kind.
pub fn activate(x: &Tensor, activation: Activation) -> Result<Tensor, tch::TchError> {
    match activation {
        Activation::Relu => x.f_relu(),
        Activation::Tanh => x.f_tanh(),
        Activation::Sigmoid => x.f_sigmoid(),
        Activation::Softmax => x.f_softmax(1, Kind::Float)?.f_to_kind(x.kind()),
        Activation::None => Ok(x.shallow_clone()),
    }
}

fn load_layer(
    index: usize,
    layer: &LayerConfig,
    tensors: &mut HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
) -> Result<DenseLayer, LoadError> {
    let weight = take_tensor(
        tensors,
        &weight_name(index),
        &[layer.out_features, layer.in_features],
    )?;
    let bias_key = bias_name(index);
    let bias = if layer.bias {
        Some(take_tensor(tensors, &bias_key, &[layer.out_features])?)
    } else if tensors.contains_key(&bias_key) {
        return Err(LoadError::UnexpectedBias {
            name: bias_key,
            layer: index,
        });
    } else {
        None
    };
    // One copy to the device and one cast, at load; a no-op cast for FP32.
    let to_device = |t: Tensor| {
        t.f_to_device_(device, kind, false, false)
            .map_err(|source| LoadError::ToDevice {
                layer: index,
                device,
                source,
            })
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
) -> Result<Tensor, LoadError> {
    let Some(tensor) = tensors.remove(name) else {
        return Err(LoadError::MissingTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
        });
    };
    if tensor.kind() != Kind::Float {
        return Err(LoadError::NotFp32 {
            name: name.to_string(),
            found: format!("{:?}", tensor.kind()),
            fp32: "Float",
        });
    }
    if tensor.size() != shape {
        return Err(LoadError::ShapeMismatch {
            name: name.to_string(),
            found: tensor.size(),
            expected: shape.to_vec(),
        });
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
        let e = DenseModel::load_range(&config, &file, 1..3, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a non-empty range of the model's 2 layers"),
            "{e}"
        );
    }

    /// A random 64-128-10 classifier in `precision`, and the same weights in FP32.
    fn random_pair(precision: Precision) -> (DenseModel, DenseModel) {
        let fp32 = dense_classifier(64, 128, 10);
        tch::manual_seed(7);
        let tensors: Vec<(String, Tensor)> = fp32
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let options = (Kind::Float, Device::Cpu);
                let scale = 1.0 / (l.in_features as f64).sqrt();
                [
                    (
                        weight_name(i),
                        Tensor::randn([l.out_features, l.in_features], options) * scale,
                    ),
                    (bias_name(i), Tensor::randn([l.out_features], options) * 0.1),
                ]
            })
            .collect();
        let copy = |t: &[(String, Tensor)]| t.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let reduced = ModelConfig {
            precision,
            ..fp32.clone()
        };
        (
            DenseModel::from_tensors(&reduced, copy(&tensors), Device::Cpu).unwrap(),
            DenseModel::from_tensors(&fp32, copy(&tensors), Device::Cpu).unwrap(),
        )
    }

    /// BF16 on the CPU: weights are BF16 after load, and the softmax outputs of 32 random rows
    /// are within 0.02 (absolute, per probability) of FP32's. bfloat16 keeps 8 significant
    /// bits (relative rounding error 2^-8 ~ 0.4% per operation); through two layers of 64 and
    /// 128 terms the logits move by a few hundredths, and the probabilities by less.
    #[test]
    fn bf16_on_cpu_is_within_tolerance_of_fp32() {
        let (bf16, fp32) = random_pair(Precision::Bf16);
        assert_eq!(bf16.layers[0].weight.kind(), Kind::BFloat16);
        assert_eq!(bf16.precision(), Precision::Bf16);
        let x: Vec<f32> =
            Vec::try_from(Tensor::randn([32 * 64], (Kind::Float, Device::Cpu))).unwrap();
        let reduced = bf16.forward_rows(&x, 32).unwrap();
        let full = fp32.forward_rows(&x, 32).unwrap();
        assert_eq!(reduced.len(), 320);
        let worst = reduced
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.02, "largest difference {worst}");
        // Every output is a BF16 number (its low 16 bits are zero), and rows still sum to 1.
        assert!(reduced.iter().all(|v| v.to_bits() & 0xffff == 0));
        for row in reduced.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 0.05, "{row:?}");
        }
        // Not the FP32 result by accident.
        assert_ne!(reduced, full);
    }

    /// FP16 on the CPU: libtorch 2.11's CPU kernels run it, within 0.01 of FP32 (10 stored
    /// mantissa bits, relative rounding 2^-11).
    #[test]
    fn fp16_on_cpu_is_within_tolerance_of_fp32() {
        let (fp16, fp32) = random_pair(Precision::Fp16);
        assert_eq!(fp16.layers[1].weight.kind(), Kind::Half);
        let x: Vec<f32> =
            Vec::try_from(Tensor::randn([8 * 64], (Kind::Float, Device::Cpu))).unwrap();
        let reduced = fp16.forward_rows(&x, 8).unwrap();
        let full = fp32.forward_rows(&x, 8).unwrap();
        let worst = reduced
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.01, "largest difference {worst}");
    }

    /// GPU half: the same weights in BF16 and FP16 on cuda:0 are within the CPU tests'
    /// tolerances of FP32 on the CPU, and FP32 on cuda:0 within 1e-4 (cuBLAS sums in another
    /// order; TF32 is off unless the environment turns it on).
    #[test]
    fn reduced_precision_on_cuda_is_within_tolerance_of_fp32_on_cpu() {
        let test =
            "engine::dense::tests::reduced_precision_on_cuda_is_within_tolerance_of_fp32_on_cpu";
        let Some(cuda) = crate::testutil::cuda_or_skip(test) else {
            return;
        };
        let (_, cpu) = random_pair(Precision::Fp32);
        let x: Vec<f32> =
            Vec::try_from(Tensor::randn([64 * 64], (Kind::Float, Device::Cpu))).unwrap();
        let full = cpu.forward_rows(&x, 64).unwrap();
        for (precision, tolerance) in [
            (Precision::Fp32, 1e-4f32),
            (Precision::Bf16, 0.02),
            (Precision::Fp16, 0.01),
        ] {
            let config = ModelConfig {
                precision,
                ..dense_classifier(64, 128, 10)
            };
            let tensors = cpu
                .layers
                .iter()
                .enumerate()
                .flat_map(|(i, l)| {
                    let b = l.bias.as_ref().map(|b| b.copy());
                    [(weight_name(i), Some(l.weight.copy())), (bias_name(i), b)]
                })
                .filter_map(|(n, t)| Some((n, t?)))
                .collect();
            let model = DenseModel::from_tensors(&config, tensors, cuda).unwrap();
            assert_eq!(model.layers[0].weight.device(), cuda);
            let got = model.forward_rows(&x, 64).unwrap();
            let worst = got
                .iter()
                .zip(&full)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < tolerance, "{precision}: largest difference {worst}");
        }
    }

    #[test]
    fn tf32_is_refused_on_cpu() {
        let config = ModelConfig {
            precision: Precision::Tf32,
            ..dense_classifier(3, 4, 2)
        };
        let e = DenseModel::from_tensors(&config, tensors_for(&config), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"tf32\" is a CUDA tensor-core mode"), "{e}");
    }

    #[test]
    fn wrong_shape_is_named() {
        let config = dense_classifier(3, 4, 2);
        let mut tensors = tensors_for(&config);
        tensors.insert(
            weight_name(1),
            Tensor::ones([2, 5], (Kind::Float, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu)
            .unwrap_err()
            .to_string();
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
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing tensor 'layers.0.bias'"), "{e}");

        let mut tensors = tensors_for(&config);
        tensors.insert(
            weight_name(0),
            Tensor::ones([4, 3], (Kind::Double, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected FP32"), "{e}");

        let mut tensors = tensors_for(&config);
        tensors.insert(
            "layers.2.weight".into(),
            Tensor::ones([1], (Kind::Float, Device::Cpu)),
        );
        let e = DenseModel::from_tensors(&config, tensors, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not used by any configured layer: layers.2.weight"),
            "{e}"
        );
    }
}
