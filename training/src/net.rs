//! The dense network being trained, as a function of an explicit parameter list (not of a
//! `tch::nn::VarStore`), so that the optimizer, the checkpoints and every data-parallel
//! replica can hold the parameters as plain tensors.

use maas_backend::{activate, Activation, LayerConfig};
use tch::Tensor;

use crate::loss::Objective;

/// The layers' shapes and activations, without weights: shared by every worker (plain data,
/// so `Sync`).
#[derive(Debug, Clone)]
pub(crate) struct Net {
    /// The layers, input first.
    pub layers: Vec<LayerConfig>,
    /// The loss, bound to the last layer.
    pub objective: Objective,
}

impl Net {
    /// The last layer's output before its activation, `[rows, outputs]`, for `x`
    /// `[rows, inputs]`. `params` are `[w0, b0?, w1, b1?, ...]` (a bias only where the layer
    /// has one), as [`Net::param_shapes`] lists them.
    pub fn logits(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor, tch::TchError> {
        let mut x = x.shallow_clone();
        let mut next = params.iter();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let (Some(w), b) = (next.next(), if layer.bias { next.next() } else { None }) else {
                return Err(tch::TchError::Shape(format!("no weight for layer {i}")));
            };
            x = x.f_linear(w, b)?;
            if i < last {
                x = activate(&x, layer.activation)?;
            }
        }
        Ok(x)
    }

    /// The served output: [`Net::logits`] then the last layer's activation.
    pub fn outputs(&self, params: &[Tensor], x: &Tensor) -> Result<Tensor, tch::TchError> {
        let last = self
            .layers
            .last()
            .map_or(Activation::None, |l| l.activation);
        activate(&self.logits(params, x)?, last)
    }

    /// `(layer index, is bias, shape)` of each parameter, in the order [`Net::logits`] takes.
    pub fn param_shapes(&self) -> Vec<(usize, bool, Vec<i64>)> {
        let mut shapes = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            shapes.push((i, false, vec![layer.out_features, layer.in_features]));
            if layer.bias {
                shapes.push((i, true, vec![layer.out_features]));
            }
        }
        shapes
    }
}
