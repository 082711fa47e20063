//! The fully connected layers of a dense model (`[[layers]]` in `config.toml`) and the rules
//! that chain them between the model's input and output.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ConfigError, TensorConfig};

/// One fully connected layer (`[[layers]]` in `config.toml`): `y = activation(x W^T + b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// `in`: the number of input features; the previous layer's `out`, or the product of the
    /// input's `dims` for the first layer.
    #[serde(rename = "in")]
    pub in_features: i64,
    /// `out`: the number of output features; the product of the output's `dims` for the last
    /// layer. The weight tensor is `[out, in]`, the bias `[out]`.
    #[serde(rename = "out")]
    pub out_features: i64,
    /// `activation`: applied after the affine map; `relu`, `tanh`, `sigmoid`, `softmax` (over
    /// the features of each row) or `none` (the default).
    #[serde(default)]
    pub activation: Activation,
    /// `bias`: whether the layer has a bias tensor `layers.{i}.bias`. Default `true`.
    #[serde(default = "default_bias")]
    pub bias: bool,
}

fn default_bias() -> bool {
    true
}

/// The nonlinearity after a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `e^x_i / sum_j e^x_j` over the features of each row.
    Softmax,
    /// The identity.
    #[default]
    None,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
            Activation::None => "none",
        })
    }
}

/// Checks that `layers` is not empty, every `in` and `out` is at least 1, each layer's `in`
/// is the previous `out`, the first `in` is the input's row size and the last `out` the
/// output's.
pub(super) fn check_chain(
    layers: &[LayerConfig],
    input: &TensorConfig,
    output: &TensorConfig,
) -> Result<(), ConfigError> {
    let (Some(first), Some(last)) = (layers.first(), layers.last()) else {
        return Err(ConfigError::Invalid(
            "a dense model needs at least one [[layers]] entry".into(),
        ));
    };
    for (i, layer) in layers.iter().enumerate() {
        if layer.in_features < 1 || layer.out_features < 1 {
            return Err(ConfigError::Invalid(format!(
                "layers[{i}]: in and out must be at least 1, got in = {}, out = {}",
                layer.in_features, layer.out_features
            )));
        }
        if i > 0 {
            let previous = layers[i - 1].out_features;
            if layer.in_features != previous {
                return Err(ConfigError::Invalid(format!(
                    "layers[{i}]: in = {} does not match layers[{}].out = {previous}",
                    layer.in_features,
                    i - 1
                )));
            }
        }
    }
    let input_size = input.row_elements();
    if first.in_features != input_size {
        return Err(ConfigError::Invalid(format!(
            "layers[0]: in = {} does not match input '{}' with dims {:?} ({input_size} elements per row)",
            first.in_features, input.name, input.dims
        )));
    }
    let last_index = layers.len() - 1;
    let output_size = output.row_elements();
    if last.out_features != output_size {
        return Err(ConfigError::Invalid(format!(
            "layers[{last_index}]: out = {} does not match output '{}' with dims {:?} ({output_size} elements per row)",
            last.out_features, output.name, output.dims
        )));
    }
    Ok(())
}
