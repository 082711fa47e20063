//! Import of a Keras model saved as HDF5 (`model.save("model.h5")`, Keras 2 or 3) as a dense
//! model version (`maas-backend import keras`).
//!
//! What is read, as Keras's legacy H5 format writes it
//! (`keras/src/legacy/saving/legacy_h5_format.py`):
//! - the root attribute `model_config`: the architecture as JSON,
//!   `{"class_name": "Functional" | "Sequential" | "Model", "config": {"layers": [...]}}`;
//! - the group `model_weights/<layer name>/`: each layer's weights as datasets at any depth
//!   (`<layer>/kernel`, Keras 3; `<layer>/kernel:0`, Keras 2), the kernel `[in, out]` and the
//!   bias `[out]`.
//!
//! Accepted: a chain of `Dense` layers (after an optional `InputLayer` with shape
//! `[batch, features]`), each with the activation `relu`, `tanh`, `sigmoid`, `softmax` or
//! `linear` and with or without bias; a functional model must be that same chain (one input,
//! one output, every layer fed by the one before). Anything else is refused with an error that
//! names the layer (and its class or activation): the served model must compute exactly what
//! Keras computes, so nothing is skipped or approximated.
//!
//! What is written: `<repo>/<model>/config.toml` (when the model has none yet; an existing one
//! must have the same layers) and a new version folder `<N>/` with `model.safetensors`
//! (`layers.{i}.weight` = the kernel transposed to `[out, in]`, `layers.{i}.bias`, FP32, the
//! layout of [`crate::dense`]) and `keras.json` (where it came from).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context};
use hdf5_metno as h5;
use serde::Serialize;
use serde_json::Value;
use tch::{Device, Tensor};

use crate::config::{dense_classifier, Activation, LayerConfig, ModelConfig, CONFIG_FILE};
use crate::dense::{bias_name, weight_name, DenseModel};
use crate::train::{write_atomically, write_version_folder};

/// The provenance file written into each imported version folder.
pub const SOURCE_FILE: &str = "keras.json";

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

/// Reads a Keras HDF5 model file. Errors name the file and, for an unsupported or malformed
/// model, the layer at fault.
pub fn read_keras_h5(path: &Path) -> anyhow::Result<KerasModel> {
    let file =
        h5::File::open(path).with_context(|| format!("{}: cannot open as HDF5", path.display()))?;
    let context = || path.display().to_string();
    let config_text = read_string_attr(&file, "model_config")
        .with_context(context)?
        .ok_or_else(|| {
            anyhow!(
                "{}: no root attribute 'model_config': not a Keras model file (a weights-only file from save_weights has no architecture)",
                path.display()
            )
        })?;
    let config: Value = serde_json::from_str(&config_text)
        .with_context(|| format!("{}: model_config is not valid JSON", path.display()))?;
    let (class_name, chain) = layer_chain(&config).with_context(context)?;
    let weights = file.group("model_weights").map_err(|_| {
        anyhow!(
            "{}: no group 'model_weights' (the file holds no weights for model_config)",
            path.display()
        )
    })?;
    let layers = read_dense_layers(&chain, &weights).with_context(context)?;
    ensure!(
        !layers.is_empty(),
        "{}: the model has no Dense layer",
        path.display()
    );
    Ok(KerasModel {
        keras_version: read_string_attr(&file, "keras_version").ok().flatten(),
        backend: read_string_attr(&file, "backend").ok().flatten(),
        class_name,
        layers,
    })
}

/// Where an import went.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The version number written.
    pub version: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// The model's configuration (as in `config.toml`).
    pub config: ModelConfig,
}

/// `maas-backend import keras`: reads `file` ([`read_keras_h5`]) and writes it as the next
/// version of `<repo>/<model>`. Writes `config.toml` when the model has none; errors when an
/// existing `config.toml` has other inputs, outputs or layers than the file (a new version
/// must fit the model it joins).
pub fn import_keras(file: &Path, repo: &Path, model: &str) -> anyhow::Result<ImportReport> {
    ensure!(
        !model.is_empty()
            && !model.starts_with('.')
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "model name '{model}': use letters, digits, '-', '_' and '.', not starting with '.'"
    );
    let keras = read_keras_h5(file)?;
    let imported = keras.config()?;
    // The weights must load as the server will load them.
    keras
        .dense_model()
        .with_context(|| format!("{}: the weights do not load", file.display()))?;

    let model_dir = repo.join(model);
    let config_path = model_dir.join(CONFIG_FILE);
    let config = if config_path.exists() {
        let existing = ModelConfig::from_file(&config_path)
            .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
        let dims = |c: &ModelConfig| {
            (
                c.inputs.iter().map(|t| t.dims.clone()).collect::<Vec<_>>(),
                c.outputs.iter().map(|t| t.dims.clone()).collect::<Vec<_>>(),
            )
        };
        ensure!(
            existing.platform == imported.platform
                && existing.layers == imported.layers
                && dims(&existing) == dims(&imported),
            "{} exists and describes another model than {} ({} layers; the file has {}): choose another --name",
            config_path.display(),
            file.display(),
            describe(&existing.layers),
            describe(&imported.layers)
        );
        existing
    } else {
        std::fs::create_dir_all(&model_dir)
            .with_context(|| format!("cannot create {}", model_dir.display()))?;
        write_atomically(&config_path, imported.to_toml().as_bytes())?;
        imported
    };

    let tensors = keras.tensors()?;
    let source = Source {
        source_file: file.display().to_string(),
        keras_version: keras.keras_version.clone(),
        backend: keras.backend.clone(),
        class_name: keras.class_name.clone(),
        layers: keras.layers.iter().map(|l| l.name.clone()).collect(),
    };
    let (version, dir) = write_version_folder(&model_dir, "import", |dir| {
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&named, dir.join(crate::dense::WEIGHTS_FILE))
            .context("cannot write model.safetensors")?;
        std::fs::write(dir.join(SOURCE_FILE), serde_json::to_vec_pretty(&source)?)
            .with_context(|| format!("cannot write {SOURCE_FILE}"))?;
        Ok(())
    })?;
    Ok(ImportReport {
        version,
        dir,
        config,
    })
}

/// `keras.json` in an imported version folder.
#[derive(Debug, Serialize)]
struct Source {
    source_file: String,
    keras_version: Option<String>,
    backend: Option<String>,
    class_name: String,
    /// The Keras names of the dense layers, in order (`layers.{i}` is the i-th).
    layers: Vec<String>,
}

/// `in -> out activation` for each layer, for messages.
fn describe(layers: &[LayerConfig]) -> String {
    let parts: Vec<String> = layers
        .iter()
        .map(|l| format!("{} -> {} {}", l.in_features, l.out_features, l.activation))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// One layer of `model_config`, as needed here.
#[derive(Debug, Clone)]
struct ConfigLayer {
    class_name: String,
    name: String,
    config: Value,
}

/// The layers of `model_config` in the order data flows through them (a chain), with the
/// model's class name. Errors name the first layer that is not part of a plain chain.
fn layer_chain(model: &Value) -> anyhow::Result<(String, Vec<ConfigLayer>)> {
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

/// Checks each layer's configuration and reads its weights from `model_weights/<name>`.
fn read_dense_layers(
    chain: &[ConfigLayer],
    weights: &h5::Group,
) -> anyhow::Result<Vec<KerasDense>> {
    let mut dense_layers: Vec<KerasDense> = Vec::new();
    let mut input_features: Option<i64> = None;
    for (position, layer) in chain.iter().enumerate() {
        let name = &layer.name;
        if layer.class_name == "InputLayer" {
            ensure!(
                position == 0,
                "layer '{name}' is an InputLayer after other layers"
            );
            input_features = input_layer_features(layer)?;
            continue;
        }
        let dense = read_dense(layer, weights)?;
        let expected_in = dense_layers
            .last()
            .map(|l| l.layer.out_features)
            .or(input_features);
        if let Some(expected) = expected_in {
            ensure!(
                dense.layer.in_features == expected,
                "layer '{name}': kernel has {} input features, but the layer before gives {expected}",
                dense.layer.in_features
            );
        }
        dense_layers.push(dense);
    }
    // Layers with weights in the file that the architecture does not mention: a sign that
    // file and model_config disagree.
    let known: BTreeSet<&str> = chain.iter().map(|l| l.name.as_str()).collect();
    for member in weights.member_names()? {
        if known.contains(member.as_str()) {
            continue;
        }
        let group = weights.group(&member);
        if let Ok(group) = group {
            let mut found = Vec::new();
            datasets(&group, "", &mut found)?;
            if !found.is_empty() {
                bail!(
                    "model_weights has weights for '{member}' ({}), a layer model_config does not have",
                    found.join(", ")
                );
            }
        }
    }
    Ok(dense_layers)
}

/// The features of an InputLayer of shape `[batch, features]`; `None` when it gives no shape.
fn input_layer_features(layer: &ConfigLayer) -> anyhow::Result<Option<i64>> {
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

/// One Dense layer: its configuration checked, its kernel and bias read.
fn read_dense(layer: &ConfigLayer, weights: &h5::Group) -> anyhow::Result<KerasDense> {
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

    let group = weights
        .group(name)
        .map_err(|_| anyhow!("layer '{name}': no weights in model_weights/{name}"))?;
    let mut found = Vec::new();
    datasets(&group, "", &mut found)?;
    let mut kernel = None;
    let mut bias = None;
    for path in &found {
        let leaf = path.rsplit('/').next().unwrap_or(path);
        let leaf = leaf.strip_suffix(":0").unwrap_or(leaf);
        let slot = match leaf {
            "kernel" => &mut kernel,
            "bias" => &mut bias,
            _ => bail!("layer '{name}': unexpected weight '{path}' (a Dense layer has a kernel and a bias)"),
        };
        if slot.is_some() {
            bail!("layer '{name}': two weights named {leaf}");
        }
        *slot = Some(path.clone());
    }
    let kernel_path =
        kernel.ok_or_else(|| anyhow!("layer '{name}': no kernel in model_weights/{name}"))?;
    let (kernel_shape, kernel_data) =
        read_f32(&group, &kernel_path).with_context(|| format!("layer '{name}': kernel"))?;
    let [in_features, out_features] = kernel_shape.as_slice() else {
        bail!("layer '{name}': kernel has shape {kernel_shape:?}, expected [in, {units}]");
    };
    let (in_features, out_features) = (to_i64(*in_features)?, to_i64(*out_features)?);
    ensure!(
        out_features == units && in_features > 0,
        "layer '{name}': kernel has shape {kernel_shape:?}, expected [in, {units}] (units = {units})"
    );
    let bias = match (use_bias, bias) {
        (true, Some(path)) => {
            let (shape, data) =
                read_f32(&group, &path).with_context(|| format!("layer '{name}': bias"))?;
            ensure!(
                shape == [units as usize],
                "layer '{name}': bias has shape {shape:?}, expected [{units}]"
            );
            Some(data)
        }
        (true, None) => bail!("layer '{name}': use_bias is true but there is no bias weight"),
        (false, Some(path)) => {
            bail!("layer '{name}': use_bias is false but the file has a bias weight '{path}'")
        }
        (false, None) => None,
    };
    // Keras multiplies x [batch, in] by the kernel [in, out]; a dense layer here holds the
    // weight [out, in] (torch.nn.Linear's layout): transpose.
    let kernel = Tensor::f_from_slice(&kernel_data)?.f_reshape([in_features, out_features])?;
    let weight = kernel.f_transpose(0, 1)?.f_contiguous()?;
    let weight = Vec::<f32>::try_from(&weight.f_reshape([-1])?)?;
    Ok(KerasDense {
        name: name.clone(),
        layer: LayerConfig {
            in_features,
            out_features,
            activation,
            bias: use_bias,
        },
        weight,
        bias,
    })
}

fn to_i64(n: usize) -> anyhow::Result<i64> {
    i64::try_from(n).map_err(|_| anyhow!("dimension {n} is too large"))
}

/// The paths (relative to `group`) of every dataset under it.
fn datasets(group: &h5::Group, prefix: &str, out: &mut Vec<String>) -> anyhow::Result<()> {
    for member in group.member_names()? {
        let path = if prefix.is_empty() {
            member.clone()
        } else {
            format!("{prefix}/{member}")
        };
        if let Ok(sub) = group.group(&member) {
            datasets(&sub, &path, out)?;
        } else if group.dataset(&member).is_ok() {
            out.push(path);
        }
    }
    Ok(())
}

/// A floating-point dataset's shape and elements as FP32 (HDF5 converts FP64 or FP16).
fn read_f32(group: &h5::Group, path: &str) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let dataset = group.dataset(path)?;
    let descriptor = dataset.dtype()?.to_descriptor()?;
    ensure!(
        matches!(descriptor, h5::types::TypeDescriptor::Float(_)),
        "'{path}' holds {descriptor:?}, not floating-point numbers"
    );
    let shape = dataset.shape();
    let data = dataset.read_raw::<f32>()?;
    ensure!(
        data.len() == shape.iter().product::<usize>(),
        "'{path}': read {} elements for shape {shape:?}",
        data.len()
    );
    Ok((shape, data))
}

/// A scalar string attribute of `location` (variable- or fixed-length, ASCII or UTF-8, as h5py
/// writes a Python `str` or `bytes`); `None` when there is no such attribute.
fn read_string_attr(location: &h5::Location, name: &str) -> anyhow::Result<Option<String>> {
    use h5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
    if !location.attr_names()?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let attr = location.attr(name)?;
    ensure!(
        attr.shape().iter().product::<usize>() == 1,
        "attribute '{name}' has shape {:?}, expected a single string",
        attr.shape()
    );
    let descriptor = attr.dtype()?.to_descriptor()?;
    let text = match descriptor {
        TypeDescriptor::VarLenUnicode => first(attr.read_raw::<VarLenUnicode>()?)?.to_string(),
        TypeDescriptor::VarLenAscii => first(attr.read_raw::<VarLenAscii>()?)?.to_string(),
        // Fixed-length strings (h5py stores Python bytes so): read into the smallest buffer
        // that holds them, on the heap.
        TypeDescriptor::FixedAscii(n) | TypeDescriptor::FixedUnicode(n) => {
            let unicode = matches!(descriptor, TypeDescriptor::FixedUnicode(_));
            match n {
                0..=1024 => read_fixed::<1024>(&attr, unicode)?,
                1025..=65536 => read_fixed::<65536>(&attr, unicode)?,
                65537..=1048576 => read_fixed::<1048576>(&attr, unicode)?,
                _ => bail!(
                    "attribute '{name}' is a fixed-length string of {n} bytes, longer than supported (1 MiB)"
                ),
            }
        }
        other => bail!("attribute '{name}' is {other:?}, not a string"),
    };
    Ok(Some(text))
}

/// A fixed-length string attribute read into `N`-byte buffers. The buffers stay in the
/// `Vec` (on the heap): only references to them are taken.
fn read_fixed<const N: usize>(attr: &h5::Attribute, unicode: bool) -> anyhow::Result<String> {
    use h5::types::{FixedAscii, FixedUnicode};
    let text = if unicode {
        attr.read_raw::<FixedUnicode<N>>()?
            .first()
            .map(|s| s.as_str().to_string())
    } else {
        attr.read_raw::<FixedAscii<N>>()?
            .first()
            .map(|s| s.as_str().to_string())
    };
    text.ok_or_else(|| anyhow!("empty attribute"))
}

fn first<T>(values: Vec<T>) -> anyhow::Result<T> {
    values
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("empty attribute"))
}
