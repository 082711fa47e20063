//! A Keras model as read from its file, a chain of dense layers, and its conversion to a dense
//! model of `maas-backend`: the configuration, the named weight tensors, the loaded model.

use std::collections::HashMap;

use anyhow::{anyhow, bail};
use maas_backend::{
    bias_name, dense_classifier, weight_name, Activation, DenseModel, LayerConfig, ModelConfig,
};
use tch::{Device, Tensor};

/// One `Dense` layer as read from the file, in serving order.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasDense {
    /// The layer's Keras name (`dense`, `dense_1`, ...).
    pub name: String,
    /// The layer as a dense model layer (`in`, `out`, activation, bias).
    pub layer: LayerConfig,
    /// The kernel transposed to `[out, in]`, row-major, FP32.
    pub weight: Vec<f32>,
    /// The bias, `[out]`; `None` for `use_bias: false`.
    pub bias: Option<Vec<f32>>,
}

/// A Keras model read from an HDF5 file: a chain of dense layers.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasModel {
    /// The root attribute `keras_version`, when present.
    pub keras_version: Option<String>,
    /// The root attribute `backend`, when present (`tensorflow`, `torch`, `jax`).
    pub backend: Option<String>,
    /// The model's class (`Functional`, `Sequential`, `Model`).
    pub class_name: String,
    /// The dense layers, input first.
    pub layers: Vec<KerasDense>,
}

impl KerasModel {
    /// The dense model configuration for these layers: input `input` FP32 `[in]`, output
    /// `probabilities` (when the last activation is softmax) or `output`, FP32 `[out]`.
    pub fn config(&self) -> anyhow::Result<ModelConfig> {
        let (Some(first), Some(last)) = (self.layers.first(), self.layers.last()) else {
            bail!("the model has no Dense layer");
        };
        let mut config = dense_classifier(
            first.layer.in_features,
            first.layer.out_features,
            last.layer.out_features,
        );
        config.layers = self.layers.iter().map(|l| l.layer.clone()).collect();
        if last.layer.activation != Activation::Softmax {
            if let Some(output) = config.outputs.first_mut() {
                output.name = "output".into();
            }
        }
        config.validate().map_err(|e| anyhow!("{e}"))?;
        Ok(config)
    }

    /// The weights as named tensors (`layers.{i}.weight` `[out, in]`, `layers.{i}.bias`
    /// `[out]`), the contents of `model.safetensors`.
    pub fn tensors(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut tensors = Vec::new();
        for (i, dense) in self.layers.iter().enumerate() {
            let shape = [dense.layer.out_features, dense.layer.in_features];
            tensors.push((
                weight_name(i),
                Tensor::f_from_slice(&dense.weight)?.f_reshape(shape)?,
            ));
            if let Some(bias) = &dense.bias {
                tensors.push((bias_name(i), Tensor::f_from_slice(bias)?));
            }
        }
        Ok(tensors)
    }

    /// The model ready to run on the CPU (to check it before writing).
    pub fn dense_model(&self) -> anyhow::Result<DenseModel> {
        let tensors: HashMap<String, Tensor> = self.tensors()?.into_iter().collect();
        DenseModel::from_tensors(&self.config()?, tensors, Device::Cpu).map_err(|e| anyhow!(e))
    }
}
