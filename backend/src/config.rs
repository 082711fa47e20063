//! A model's `config.toml`: what the model is, its inputs and outputs, and (for a dense model)
//! its stack of layers.
//!
//! The file lives at `<repository>/<model>/config.toml` and is shared by every version of the
//! model; the weights of each version live in `<repository>/<model>/<N>/model.safetensors`
//! (see [`crate::repository`]). Example:
//!
//! ```toml
//! platform = "dense"
//! max_batch_size = 0
//! [[inputs]]
//! name = "input"
//! datatype = "FP32"
//! dims = [64]
//! [[outputs]]
//! name = "probabilities"
//! datatype = "FP32"
//! dims = [10]
//! [[layers]]
//! in = 64
//! out = 128
//! activation = "relu"
//! [[layers]]
//! in = 128
//! out = 10
//! activation = "softmax"
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::datatype::Datatype;

/// The file name of a model's configuration inside its model folder.
pub const CONFIG_FILE: &str = "config.toml";

/// The contents of a model's `config.toml`. Unknown keys are an error, so a misspelt key is
/// caught at load instead of silently ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `platform`: the kind of model, which decides how its version folders are loaded and
    /// run. Required. Only `"dense"` exists for now (a stack of fully connected layers whose
    /// weights are in `model.safetensors`).
    pub platform: Platform,
    /// `max_batch_size`: reserved for the dynamic batcher: the most rows it may gather into
    /// one forward pass. `0` (the default) means no batching: each request is its own forward
    /// pass. Requests are always shaped `[batch, ...dims]` whatever this value.
    #[serde(default)]
    pub max_batch_size: u32,
    /// `[[inputs]]`: the model's input tensors. A dense model has exactly one.
    pub inputs: Vec<TensorConfig>,
    /// `[[outputs]]`: the model's output tensors. A dense model has exactly one.
    pub outputs: Vec<TensorConfig>,
    /// `[[layers]]`: for a dense model, the fully connected layers, applied in order; layer `i`
    /// reads its weights from the tensors `layers.{i}.weight` and `layers.{i}.bias`.
    #[serde(default)]
    pub layers: Vec<LayerConfig>,
}

/// The kind of a model (`platform` in `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// A stack of fully connected layers ([`crate::dense`]).
    Dense,
}

impl Platform {
    /// The name used in `config.toml` and in model metadata (`"dense"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Dense => "dense",
        }
    }
}

/// One input or output tensor of a model (`[[inputs]]` / `[[outputs]]` in `config.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    /// `name`: the tensor's name in infer requests and responses (`"input"`).
    pub name: String,
    /// `datatype`: the element type, an Open Inference Protocol name. A dense model computes in
    /// `"FP32"`, the only datatype it accepts here; a request may still send its input in any
    /// numeric datatype (see [`crate::validation`]).
    pub datatype: Datatype,
    /// `dims`: the shape of one row, without the batch dimension; every entry at least 1. A
    /// request's shape is `[batch, ...dims]`; metadata reports `[-1, ...dims]`.
    pub dims: Vec<i64>,
}

impl TensorConfig {
    /// The number of elements in one row: the product of `dims` (1 for `dims = []`).
    pub fn row_elements(&self) -> i64 {
        self.dims.iter().product()
    }

    /// The shape clients see in metadata: `[-1, ...dims]`, `-1` standing for the batch.
    pub fn batched_shape(&self) -> Vec<i64> {
        std::iter::once(-1)
            .chain(self.dims.iter().copied())
            .collect()
    }
}

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

/// Why a `config.toml` cannot be used. The message says what was expected; the caller adds the
/// file name (see [`crate::repository::LoadError`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ModelConfig {
    /// Reads and validates a `config.toml`.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read: {e}")))?;
        ModelConfig::from_toml(&text)
    }

    /// Parses and validates the text of a `config.toml`.
    pub fn from_toml(text: &str) -> Result<ModelConfig, ConfigError> {
        let config: ModelConfig =
            toml::from_str(text).map_err(|e| ConfigError(e.message().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, integers and arrays cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks the rules a usable configuration follows: for a dense model, one FP32 input and
    /// one FP32 output with positive dims, at least one layer, each layer's `in` equal to the
    /// previous `out`, the first `in` equal to the input's row size and the last `out` equal to
    /// the output's row size.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.platform {
            Platform::Dense => self.validate_dense(),
        }
    }

    fn validate_dense(&self) -> Result<(), ConfigError> {
        let input = single_tensor("inputs", &self.inputs)?;
        let output = single_tensor("outputs", &self.outputs)?;
        if input.name == output.name {
            return Err(ConfigError(format!(
                "input and output are both named '{}'; names must differ",
                input.name
            )));
        }
        if self.layers.is_empty() {
            return Err(ConfigError(
                "a dense model needs at least one [[layers]] entry".into(),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.in_features < 1 || layer.out_features < 1 {
                return Err(ConfigError(format!(
                    "layers[{i}]: in and out must be at least 1, got in = {}, out = {}",
                    layer.in_features, layer.out_features
                )));
            }
            if i > 0 {
                let previous = self.layers[i - 1].out_features;
                if layer.in_features != previous {
                    return Err(ConfigError(format!(
                        "layers[{i}]: in = {} does not match layers[{}].out = {previous}",
                        layer.in_features,
                        i - 1
                    )));
                }
            }
        }
        let first = &self.layers[0];
        let input_size = input.row_elements();
        if first.in_features != input_size {
            return Err(ConfigError(format!(
                "layers[0]: in = {} does not match input '{}' with dims {:?} ({input_size} elements per row)",
                first.in_features, input.name, input.dims
            )));
        }
        let last_index = self.layers.len() - 1;
        let last = &self.layers[last_index];
        let output_size = output.row_elements();
        if last.out_features != output_size {
            return Err(ConfigError(format!(
                "layers[{last_index}]: out = {} does not match output '{}' with dims {:?} ({output_size} elements per row)",
                last.out_features, output.name, output.dims
            )));
        }
        Ok(())
    }
}

/// The one tensor of a dense model's `inputs` or `outputs`, checked to be FP32 with positive dims.
fn single_tensor<'a>(
    key: &str,
    tensors: &'a [TensorConfig],
) -> Result<&'a TensorConfig, ConfigError> {
    let [tensor] = tensors else {
        return Err(ConfigError(format!(
            "a dense model has exactly one [[{key}]] entry, found {}",
            tensors.len()
        )));
    };
    if tensor.name.is_empty() {
        return Err(ConfigError(format!("[[{key}]]: name must not be empty")));
    }
    if tensor.datatype != Datatype::Fp32 {
        return Err(ConfigError(format!(
            "[[{key}]] '{}': a dense model computes in FP32, got datatype {}",
            tensor.name, tensor.datatype
        )));
    }
    if let Some(bad) = tensor.dims.iter().find(|&&d| d < 1) {
        return Err(ConfigError(format!(
            "[[{key}]] '{}': every dim must be at least 1, got {bad} in {:?}",
            tensor.name, tensor.dims
        )));
    }
    if tensor
        .dims
        .iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        return Err(ConfigError(format!(
            "[[{key}]] '{}': dims {:?} have too many elements",
            tensor.name, tensor.dims
        )));
    }
    Ok(tensor)
}

/// The configuration the trainer writes for a new dense classifier:
/// `input [features] -> hidden relu -> classes softmax`.
pub fn dense_classifier(features: i64, hidden: i64, classes: i64) -> ModelConfig {
    ModelConfig {
        platform: Platform::Dense,
        max_batch_size: 0,
        inputs: vec![TensorConfig {
            name: "input".into(),
            datatype: Datatype::Fp32,
            dims: vec![features],
        }],
        outputs: vec![TensorConfig {
            name: "probabilities".into(),
            datatype: Datatype::Fp32,
            dims: vec![classes],
        }],
        layers: vec![
            LayerConfig {
                in_features: features,
                out_features: hidden,
                activation: Activation::Relu,
                bias: true,
            },
            LayerConfig {
                in_features: hidden,
                out_features: classes,
                activation: Activation::Softmax,
                bias: true,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGITS: &str = r#"
platform = "dense"
max_batch_size = 0
[[inputs]]
name = "input"
datatype = "FP32"
dims = [64]
[[outputs]]
name = "probabilities"
datatype = "FP32"
dims = [10]
[[layers]]
in = 64
out = 128
activation = "relu"
bias = true
[[layers]]
in = 128
out = 10
activation = "softmax"
bias = true
"#;

    fn error_of(text: &str) -> String {
        ModelConfig::from_toml(text).unwrap_err().0
    }

    #[test]
    fn parses_the_documented_example() {
        let config = ModelConfig::from_toml(DIGITS).unwrap();
        assert_eq!(config, dense_classifier(64, 128, 10));
        assert_eq!(config.inputs[0].batched_shape(), vec![-1, 64]);
    }

    #[test]
    fn written_config_parses_back() {
        let config = dense_classifier(4, 8, 3);
        assert_eq!(ModelConfig::from_toml(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn defaults_apply() {
        let text = DIGITS
            .replace("max_batch_size = 0\n", "")
            .replace("bias = true\n", "");
        let config = ModelConfig::from_toml(&text).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert!(config.layers.iter().all(|l| l.bias));
    }

    #[test]
    fn broken_layer_chain_is_named() {
        let text = DIGITS.replace("in = 128", "in = 100");
        let e = error_of(&text);
        assert!(
            e.contains("layers[1]: in = 100 does not match layers[0].out = 128"),
            "{e}"
        );
    }

    #[test]
    fn first_layer_must_match_input() {
        let text = DIGITS.replace("dims = [64]", "dims = [8, 9]");
        let e = error_of(&text);
        assert!(
            e.contains("layers[0]: in = 64 does not match input 'input'"),
            "{e}"
        );
        assert!(e.contains("72 elements per row"), "{e}");
        // A multi-dimensional input whose product matches is fine.
        let text = DIGITS.replace("dims = [64]", "dims = [8, 8]");
        assert!(ModelConfig::from_toml(&text).is_ok());
    }

    #[test]
    fn last_layer_must_match_output() {
        let text = DIGITS.replace("dims = [10]", "dims = [11]");
        let e = error_of(&text);
        assert!(
            e.contains("layers[1]: out = 10 does not match output 'probabilities'"),
            "{e}"
        );
    }

    #[test]
    fn unknown_values_and_keys_are_rejected() {
        let e = error_of(&DIGITS.replace("\"dense\"", "\"torchscript\""));
        assert!(e.contains("torchscript"), "{e}");
        let e = error_of(&DIGITS.replace("\"relu\"", "\"gelu\""));
        assert!(e.contains("gelu"), "{e}");
        let e = error_of(&DIGITS.replace("bias = true", "biass = true"));
        assert!(e.contains("biass"), "{e}");
        let e = error_of(&DIGITS.replace(
            "datatype = \"FP32\"\ndims = [64]",
            "datatype = \"FLOAT\"\ndims = [64]",
        ));
        assert!(e.contains("unknown datatype 'FLOAT'"), "{e}");
    }

    #[test]
    fn dense_rules() {
        let e = error_of(&DIGITS.replace(
            "datatype = \"FP32\"\ndims = [64]",
            "datatype = \"INT32\"\ndims = [64]",
        ));
        assert!(e.contains("computes in FP32, got datatype INT32"), "{e}");
        let e = error_of(&DIGITS.replace("dims = [10]", "dims = [0]"));
        assert!(e.contains("at least 1"), "{e}");
        let e = error_of(&DIGITS.replace("name = \"probabilities\"", "name = \"input\""));
        assert!(e.contains("names must differ"), "{e}");
        let no_layers = DIGITS.split("[[layers]]").next().unwrap();
        let e = error_of(no_layers);
        assert!(e.contains("at least one [[layers]]"), "{e}");
        let two_inputs = DIGITS.replacen(
            "[[outputs]]",
            "[[inputs]]\nname = \"b\"\ndatatype = \"FP32\"\ndims = [1]\n[[outputs]]",
            1,
        );
        let e = error_of(&two_inputs);
        assert!(e.contains("exactly one [[inputs]] entry, found 2"), "{e}");
    }
}
