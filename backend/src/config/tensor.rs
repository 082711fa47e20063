//! One input or output tensor of a model (`[[inputs]]` / `[[outputs]]` in `config.toml`).

use maas_protocol::Datatype;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Precision};

/// One input or output tensor of a model (`[[inputs]]` / `[[outputs]]` in `config.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    /// `name`: the tensor's name in infer requests and responses (`"input"`).
    pub name: String,
    /// `datatype`: the element type, an Open Inference Protocol name. `"FP32"`, or the model's
    /// `precision` format (`"BF16"` for `bf16`, `"FP16"` for `fp16`): an output is written in
    /// it; a request may still send its input in any numeric datatype (see the validation of
    /// requests).
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

/// The one tensor of a model's `inputs` or `outputs`, checked to have a datatype its precision
/// allows and positive dims; `kind` ("a dense model") names the model in errors.
pub(super) fn single_tensor<'a>(
    key: &str,
    tensors: &'a [TensorConfig],
    kind: &str,
    precision: Precision,
) -> Result<&'a TensorConfig, ConfigError> {
    let [tensor] = tensors else {
        return Err(ConfigError::Invalid(format!(
            "{kind} has exactly one [[{key}]] entry, found {}",
            tensors.len()
        )));
    };
    if tensor.name.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "[[{key}]]: name must not be empty"
        )));
    }
    let allowed = precision.datatypes();
    if !allowed.contains(&tensor.datatype) {
        let names: Vec<String> = allowed.iter().map(|d| d.to_string()).collect();
        return Err(ConfigError::Invalid(format!(
            "[[{key}]] '{}': {kind} with precision = \"{precision}\" takes datatype {}, got {}",
            tensor.name,
            names.join(" or "),
            tensor.datatype
        )));
    }
    if let Some(bad) = tensor.dims.iter().find(|&&d| d < 1) {
        return Err(ConfigError::Invalid(format!(
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
        return Err(ConfigError::Invalid(format!(
            "[[{key}]] '{}': dims {:?} have too many elements",
            tensor.name, tensor.dims
        )));
    }
    Ok(tensor)
}

/// The input and output of a model with one of each (dense and TorchScript models), checked by
/// [`single_tensor`] and with different names.
pub(super) fn single_input_and_output<'a>(
    inputs: &'a [TensorConfig],
    outputs: &'a [TensorConfig],
    kind: &str,
    precision: Precision,
) -> Result<(&'a TensorConfig, &'a TensorConfig), ConfigError> {
    let input = single_tensor("inputs", inputs, kind, precision)?;
    let output = single_tensor("outputs", outputs, kind, precision)?;
    if input.name == output.name {
        return Err(ConfigError::Invalid(format!(
            "input and output are both named '{}'; names must differ",
            input.name
        )));
    }
    Ok((input, output))
}
