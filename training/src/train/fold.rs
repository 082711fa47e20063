//! The served weights of a trained network: its parameters under their `model.safetensors`
//! names, with the input standardization folded into the first layer so that the served
//! model takes raw feature values.

use std::collections::HashMap;

use anyhow::{bail, ensure};
use maas_backend::{bias_name, weight_name, ModelConfig};
use tch::Tensor;

use crate::net::Net;

/// The parameters by their `model.safetensors` names.
pub(super) fn named_tensors(net: &Net, params: Vec<Tensor>) -> HashMap<String, Tensor> {
    net.param_shapes()
        .into_iter()
        .zip(params)
        .map(|((layer, is_bias, _), p)| {
            let name = if is_bias {
                bias_name(layer)
            } else {
                weight_name(layer)
            };
            (name, p)
        })
        .collect()
}

/// Folds `x' = (x - mean) / std` into the first layer, so the model takes raw `x`:
/// `W x' + b = (W / std) x + (b - (W / std) mean)`. A first layer without bias cannot absorb the
/// shift, so for such a layer [`super::split::Split`] does not centre and `mean` is zero.
pub(super) fn fold_standardization(
    config: &ModelConfig,
    mut tensors: HashMap<String, Tensor>,
    mean: &Tensor,
    std: &Tensor,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let weight_key = weight_name(0);
    let Some(weight) = tensors.remove(&weight_key) else {
        bail!("no tensor {weight_key}")
    };
    let folded = weight.f_div(std)?;
    let shift = folded.f_matmul(mean)?;
    match tensors.remove(&bias_name(0)) {
        Some(bias) => {
            tensors.insert(bias_name(0), bias.f_sub(&shift)?);
        }
        None => {
            ensure!(
                !config.layers[0].bias && shift.f_abs()?.f_max()?.f_double_value(&[])? < 1e-6,
                "cannot fold a non-zero input mean into layers[0], which has no bias"
            );
        }
    }
    tensors.insert(weight_key, folded);
    Ok(tensors)
}

/// Deep copies of `tensors` (a `DenseModel` takes its tensors by value).
pub(super) fn clone_tensors(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors.iter().map(|(k, v)| (k.clone(), v.copy())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_backend::{dense_classifier, DenseModel};
    use tch::{Device, Kind};

    #[test]
    fn folding_standardization_keeps_the_function() {
        tch::manual_seed(7);
        let config = dense_classifier(5, 4, 3);
        let options = (Kind::Float, Device::Cpu);
        let mut tensors = HashMap::new();
        for (i, layer) in config.layers.iter().enumerate() {
            tensors.insert(
                weight_name(i),
                Tensor::randn([layer.out_features, layer.in_features], options),
            );
            tensors.insert(bias_name(i), Tensor::randn([layer.out_features], options));
        }
        let mean = Tensor::randn([5], options);
        let std = Tensor::rand([5], options) + 0.5;
        let x = Tensor::randn([6, 5], options) * 4.0;

        let standardized =
            DenseModel::from_tensors(&config, clone_tensors(&tensors), Device::Cpu).unwrap();
        let expected = standardized.forward(&((&x - &mean) / &std)).unwrap();
        let folded = fold_standardization(&config, tensors, &mean, &std).unwrap();
        let raw = DenseModel::from_tensors(&config, folded, Device::Cpu).unwrap();
        let got = raw.forward(&x).unwrap();
        let gap = (got - expected).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "folded model differs by {gap}");
    }
}
