//! A Keras model's architecture: the root attribute `model_config` (JSON), read into the chain
//! of layers data flows through and, for each Dense layer, the settings the import supports.
//! Errors name the layer at fault.

use std::collections::{BTreeSet, HashMap};

use anyhow::{anyhow, bail, ensure};
use maas_backend::Activation;
use serde_json::Value;

/// One layer of `model_config`, as needed here.
#[derive(Debug, Clone)]
pub(super) struct ConfigLayer {
    /// The layer's class (`Dense`, `InputLayer`, ...).
    pub class_name: String,
    /// The layer's name, which is also its group in `model_weights`.
    pub name: String,
    /// The layer's own `config` object.
    config: Value,
}

/// The layers of `model_config` in the order data flows through them (a chain), with the
/// model's class name. Errors name the first layer that is not part of a plain chain.
pub(super) fn layer_chain(model: &Value) -> anyhow::Result<(String, Vec<ConfigLayer>)> {
    let class_name = model
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("model_config has no class_name"))?
        .to_string();
    let config = model
        .get("config")
        .ok_or_else(|| anyhow!("model_config has no config"))?;
    // Keras 2.0-2.2 Sequential: "config" is the list of layers itself.
    let layers = config
        .as_array()
        .or_else(|| config.get("layers").and_then(Value::as_array))
        .ok_or_else(|| anyhow!("model_config of class {class_name} has no layer list"))?;
    let parsed: Vec<ConfigLayer> = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let class_name = layer
                .get("class_name")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("model_config: layer {i} has no class_name"))?;
            let inner = layer.get("config").cloned().unwrap_or(Value::Null);
            let name = layer
                .get("name")
                .or_else(|| inner.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)");
            Ok(ConfigLayer {
                class_name: class_name.to_string(),
                name: name.to_string(),
                config: inner,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // Refuse other layer types first: that is the most useful message.
    for layer in &parsed {
        if layer.class_name != "Dense" && layer.class_name != "InputLayer" {
            bail!(
                "layer '{}' is a {}: only Dense layers (and an InputLayer) can be imported",
                layer.name,
                layer.class_name
            );
        }
    }
    match class_name.as_str() {
        "Sequential" => {
            if let Some((i, input)) = parsed
                .iter()
                .enumerate()
                .find(|(i, l)| *i > 0 && l.class_name == "InputLayer")
            {
                bail!(
                    "layer '{}' is an InputLayer at position {i}: a Sequential model may only start with one",
                    input.name
                );
            }
            Ok((class_name, parsed))
        }
        "Functional" | "Model" => {
            let chain = functional_chain(config, layers, &parsed)?;
            Ok((class_name, chain))
        }
        other => bail!(
            "model class {other} is not supported: a Sequential or Functional model of Dense layers can be imported"
        ),
    }
}

/// Orders a functional model's layers from its input to its output, checking that they form a
/// chain: one input, one output, every layer called once on the previous one's output.
fn functional_chain(
    config: &Value,
    raw: &[Value],
    layers: &[ConfigLayer],
) -> anyhow::Result<Vec<ConfigLayer>> {
    let endpoints = |key: &str| -> anyhow::Result<Vec<String>> {
        let value = config
            .get(key)
            .ok_or_else(|| anyhow!("model_config has no {key}"))?;
        Ok(history_names(value))
    };
    let inputs = endpoints("input_layers")?;
    let outputs = endpoints("output_layers")?;
    let [input] = inputs.as_slice() else {
        bail!(
            "the model has {} inputs ({inputs:?}); only a single input can be imported",
            inputs.len()
        );
    };
    let [output] = outputs.as_slice() else {
        bail!(
            "the model has {} outputs ({outputs:?}); only a single output can be imported",
            outputs.len()
        );
    };
    // The layer each layer is called on.
    let mut previous: HashMap<&str, String> = HashMap::new();
    for (layer, json) in layers.iter().zip(raw) {
        let nodes = json
            .get("inbound_nodes")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if layer.class_name == "InputLayer" {
            continue;
        }
        let [node] = nodes else {
            bail!(
                "layer '{}' is called {} times; only layers called once, in a chain, can be imported",
                layer.name,
                nodes.len()
            );
        };
        let sources = history_names(node);
        let [source] = sources.as_slice() else {
            bail!(
                "layer '{}' takes {} inputs ({sources:?}); only a chain of layers can be imported",
                layer.name,
                sources.len()
            );
        };
        previous.insert(layer.name.as_str(), source.clone());
    }
    // Walk back from the output to the input.
    let by_name: HashMap<&str, &ConfigLayer> =
        layers.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut chain = Vec::new();
    let mut seen = BTreeSet::new();
    let mut current = output.clone();
    loop {
        let layer = by_name.get(current.as_str()).ok_or_else(|| {
            anyhow!("model_config refers to layer '{current}', which it does not define")
        })?;
        ensure!(
            seen.insert(current.clone()),
            "layer '{current}' appears twice on the path from the input to the output"
        );
        chain.push((*layer).clone());
        if current == *input {
            break;
        }
        current = previous
            .get(current.as_str())
            .cloned()
            .ok_or_else(|| anyhow!("layer '{current}' is not connected to the input '{input}'"))?;
    }
    chain.reverse();
    if let Some(extra) = layers.iter().find(|l| !seen.contains(&l.name)) {
        bail!(
            "layer '{}' is not on the path from the input '{input}' to the output '{output}'; only a chain of layers can be imported",
            extra.name
        );
    }
    Ok(chain)
}

/// The layer names a node or endpoint list refers to: Keras 3's `keras_history` arrays
/// (`["dense", 0, 0]`) and Keras 2's `[name, node, tensor, kwargs]` lists, at any depth.
fn history_names(value: &Value) -> Vec<String> {
    let mut names = Vec::new();
    collect_history(value, &mut names);
    names
}

fn collect_history(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(history) = map.get("keras_history") {
                if let Some(name) = history.get(0).and_then(Value::as_str) {
                    names.push(name.to_string());
                }
                return;
            }
            for v in map.values() {
                collect_history(v, names);
            }
        }
        Value::Array(items) => {
            // [name, node index, tensor index, ...]: a reference to a layer's output.
            if let (Some(Value::String(name)), Some(Value::Number(_))) =
                (items.first(), items.get(1))
            {
                names.push(name.clone());
                return;
            }
            for v in items {
                collect_history(v, names);
            }
        }
        _ => {}
    }
}

/// The features of an InputLayer of shape `[batch, features]`; `None` when it gives no shape.
pub(super) fn input_layer_features(layer: &ConfigLayer) -> anyhow::Result<Option<i64>> {
    let shape = layer
        .config
        .get("batch_shape")
        .or_else(|| layer.config.get("batch_input_shape"));
    let Some(shape) = shape.and_then(Value::as_array) else {
        return Ok(None);
    };
    match shape.as_slice() {
        [_, features] => match features.as_i64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => bail!(
                "layer '{}': input shape {} has no fixed feature count",
                layer.name,
                Value::Array(shape.clone())
            ),
        },
        _ => bail!(
            "layer '{}': input shape {} is not [batch, features]; only rows of features can be imported",
            layer.name,
            Value::Array(shape.clone())
        ),
    }
}

/// What a Dense layer's `config` says, as far as the import supports it.
#[derive(Debug, Clone, Copy)]
pub(super) struct DenseSettings {
    /// `units`: the output features.
    pub units: i64,
    /// `activation`, as a dense model layer's.
    pub activation: Activation,
    /// `use_bias` (default true).
    pub use_bias: bool,
}

/// A Dense layer's settings: a positive `units`, a supported activation (`relu`, `tanh`,
/// `sigmoid`, `softmax`, `linear` or none), a boolean `use_bias`, no quantization or LoRA.
pub(super) fn dense_settings(layer: &ConfigLayer) -> anyhow::Result<DenseSettings> {
    let name = &layer.name;
    let config = &layer.config;
    let units = config
        .get("units")
        .and_then(Value::as_i64)
        .filter(|&u| u > 0)
        .ok_or_else(|| anyhow!("layer '{name}': Dense without a positive 'units'"))?;
    let activation = match config.get("activation") {
        None | Some(Value::Null) => Activation::None,
        Some(Value::String(a)) => match a.as_str() {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "softmax" => Activation::Softmax,
            "linear" => Activation::None,
            other => bail!(
                "layer '{name}': activation '{other}' is not supported (relu, tanh, sigmoid, softmax or linear)"
            ),
        },
        Some(other) => bail!(
            "layer '{name}': activation {other} is not supported (relu, tanh, sigmoid, softmax or linear)"
        ),
    };
    let use_bias = match config.get("use_bias") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| anyhow!("layer '{name}': use_bias is {v}, not true or false"))?,
    };
    for key in ["quantization_config", "lora_rank"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            bail!("layer '{name}': {key} {v} is not supported (plain FP32 weights only)");
        }
    }
    Ok(DenseSettings {
        units,
        activation,
        use_bias,
    })
}
