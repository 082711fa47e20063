//! Reading a Keras HDF5 file: the root attributes, and each Dense layer's kernel and bias from
//! the group `model_weights/<layer name>/` (at any depth, Keras 2 or 3 names), checked against
//! the architecture.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context};
use hdf5_metno as h5;
use maas_backend::LayerConfig;
use serde_json::Value;
use tch::Tensor;

use super::architecture::{
    dense_settings, input_layer_features, layer_chain, ConfigLayer, DenseSettings,
};
use super::model::{KerasDense, KerasModel};

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

/// One Dense layer: its configuration checked, its kernel and bias read.
fn read_dense(layer: &ConfigLayer, weights: &h5::Group) -> anyhow::Result<KerasDense> {
    let name = &layer.name;
    let DenseSettings {
        units,
        activation,
        use_bias,
    } = dense_settings(layer)?;

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
