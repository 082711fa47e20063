//! The losses of `maas-train train` and what each asks of the model's last layer.
//!
//! The data are class labels (`0..classes`, the CSV's last column); each loss turns them into
//! the targets it compares with the model's `[rows, outputs]` output:
//!
//! | `--loss` | targets | compared with | last activation |
//! |---|---|---|---|
//! | `categorical-crossentropy` | the label (class index) | `softmax(z)`, `-log p[label]` | `softmax` (or `none`: the served model then returns the logits `z`) |
//! | `binary-crossentropy` | one-hot of the label over the outputs; with a single output, the label itself (0 or 1) | `sigmoid(z)` per output, `-(t log p + (1 - t) log(1 - p))` | `sigmoid` |
//! | `mse` | as binary cross-entropy | the model's output (after its last activation), `(y - t)^2` | any but `softmax` on a single output |
//!
//! Every loss is the mean over the rows (and, for the binary cross-entropy and the squared
//! error, over the outputs too, as Keras averages them), so a batch's loss is the row-weighted
//! mean of its shards' losses, which the data-parallel trainer relies on. Cross-entropies are
//! computed from the logits `z` (log-softmax, log-sigmoid), never from rounded probabilities.
//!
//! A prediction is the output with the largest value, or, for a single output, `y > 0.5`.

use anyhow::ensure;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use maas_backend::{activate, Activation};

/// What `--loss` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Softmax cross-entropy against the class index.
    CategoricalCrossentropy,
    /// Sigmoid cross-entropy per output against one-hot targets (or the 0/1 label for one
    /// output).
    BinaryCrossentropy,
    /// Mean squared error of the output against one-hot targets (or the 0/1 label).
    Mse,
}

impl LossKind {
    /// The name as `--loss` and `metrics.json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CategoricalCrossentropy => "categorical-crossentropy",
            LossKind::BinaryCrossentropy => "binary-crossentropy",
            LossKind::Mse => "mse",
        }
    }

    /// The last activation a new model gets for this loss: softmax, or sigmoid for the
    /// binary cross-entropy.
    pub fn default_last_activation(self) -> Activation {
        match self {
            LossKind::BinaryCrossentropy => Activation::Sigmoid,
            LossKind::CategoricalCrossentropy | LossKind::Mse => Activation::Softmax,
        }
    }
}

/// A loss bound to the model's last layer: its activation and its output count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    /// The loss.
    pub loss: LossKind,
    /// The last layer's activation.
    pub last: Activation,
    /// The last layer's outputs per row.
    pub outputs: i64,
}

impl Objective {
    /// Checks that the loss suits a last layer with `last` activation and `outputs` outputs,
    /// for labels in `0..classes`. Errors say which combination is refused and why.
    pub fn new(
        loss: LossKind,
        last: Activation,
        outputs: i64,
        classes: i64,
    ) -> anyhow::Result<Objective> {
        let name = loss.name();
        match loss {
            LossKind::CategoricalCrossentropy => {
                ensure!(
                    matches!(last, Activation::Softmax | Activation::None),
                    "--loss {name} needs the last layer's activation to be softmax (or none, for \
                     logits), got {last}; use --loss binary-crossentropy for sigmoid outputs or \
                     --loss mse"
                );
                ensure!(
                    outputs >= 2,
                    "--loss {name} needs at least 2 outputs, the last layer has {outputs}; use \
                     --loss binary-crossentropy for a single sigmoid output"
                );
            }
            LossKind::BinaryCrossentropy => ensure!(
                last == Activation::Sigmoid,
                "--loss {name} needs the last layer's activation to be sigmoid (each output a \
                 probability of its own), got {last}; use --loss categorical-crossentropy for \
                 softmax"
            ),
            LossKind::Mse => ensure!(
                !(outputs == 1 && last == Activation::Softmax),
                "--loss {name}: a softmax over a single output is always 1; use sigmoid or none"
            ),
        }
        if outputs == 1 {
            ensure!(
                classes <= 2,
                "a single output can only learn labels 0 and 1, the data has labels up to {}",
                classes - 1
            );
        } else {
            ensure!(
                classes <= outputs,
                "the output has {outputs} classes, the data has labels up to {}",
                classes - 1
            );
        }
        Ok(Objective {
            loss,
            last,
            outputs,
        })
    }

    /// The mean loss of `logits` (`[rows, outputs]`, the last layer before its activation)
    /// against `labels` (`[rows]` INT64): a scalar tensor that autograd can differentiate.
    pub fn loss(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
        match self.loss {
            LossKind::CategoricalCrossentropy => {
                logits.f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)
            }
            LossKind::BinaryCrossentropy => logits.f_binary_cross_entropy_with_logits::<Tensor>(
                &self.targets(labels)?,
                None,
                None,
                tch::Reduction::Mean,
            ),
            LossKind::Mse => activate(logits, self.last)?
                .f_mse_loss(&self.targets(labels)?, tch::Reduction::Mean),
        }
    }

    /// `[rows, outputs]` FP32 targets: one-hot rows, or the label itself for one output.
    fn targets(&self, labels: &Tensor) -> Result<Tensor, tch::TchError> {
        if self.outputs == 1 {
            labels.f_to_kind(Kind::Float)?.f_unsqueeze(1)
        } else {
            labels.f_one_hot(self.outputs)?.f_to_kind(Kind::Float)
        }
    }

    /// How many rows of `outputs` (`[rows, outputs]`, after the last activation, as served)
    /// predict their label: the largest output, or `y > 0.5` for a single output.
    pub fn correct(&self, outputs: &Tensor, labels: &Tensor) -> Result<i64, tch::TchError> {
        let predicted = if self.outputs == 1 {
            outputs
                .f_squeeze_dim(1)?
                .f_gt(0.5)?
                .f_to_kind(Kind::Int64)?
        } else {
            outputs.f_argmax(1, false)?
        };
        predicted
            .f_eq_tensor(labels)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn activations_must_suit_the_loss() {
        use Activation::*;
        use LossKind::*;
        let refused = |loss, last, outputs, classes| {
            Objective::new(loss, last, outputs, classes)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(CategoricalCrossentropy, Sigmoid, 10, 10).contains("softmax"));
        assert!(refused(CategoricalCrossentropy, Softmax, 1, 2).contains("at least 2 outputs"));
        assert!(refused(BinaryCrossentropy, Softmax, 10, 10).contains("sigmoid"));
        assert!(refused(Mse, Softmax, 1, 2).contains("always 1"));
        assert!(refused(BinaryCrossentropy, Sigmoid, 1, 3).contains("labels 0 and 1"));
        assert!(refused(Mse, None, 4, 5).contains("labels up to 4"));
        assert!(Objective::new(CategoricalCrossentropy, None, 10, 10).is_ok());
        assert!(Objective::new(BinaryCrossentropy, Sigmoid, 1, 2).is_ok());
        assert!(Objective::new(Mse, Tanh, 3, 3).is_ok());
    }

    #[test]
    fn losses_match_their_definitions() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.0, 1.0, -2.0]).view([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]);
        let value = |loss, last| {
            Objective::new(loss, last, 3, 3)
                .unwrap()
                .loss(&logits, &labels)
                .unwrap()
                .double_value(&[])
        };
        let z = [[2.0f64, -1.0, 0.5], [0.0, 1.0, -2.0]];
        let t = [[1.0f64, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let softmax = |row: &[f64; 3]| {
            let s: f64 = row.iter().map(|v| v.exp()).sum();
            row.map(|v| v.exp() / s)
        };
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let cce = -(softmax(&z[0])[0].ln() + softmax(&z[1])[2].ln()) / 2.0;
        let mut bce = 0.0;
        let mut mse = 0.0;
        for r in 0..2 {
            let p = softmax(&z[r]);
            for c in 0..3 {
                let s = sigmoid(z[r][c]);
                bce -= t[r][c] * s.ln() + (1.0 - t[r][c]) * (1.0 - s).ln();
                mse += (p[c] - t[r][c]).powi(2);
            }
        }
        let close = |a: f64, b: f64| (a - b).abs() < 1e-5;
        assert!(close(
            value(LossKind::CategoricalCrossentropy, Activation::Softmax),
            cce
        ));
        assert!(close(
            value(LossKind::BinaryCrossentropy, Activation::Sigmoid),
            bce / 6.0
        ));
        assert!(close(value(LossKind::Mse, Activation::Softmax), mse / 6.0));
    }

    #[test]
    fn a_single_output_predicts_by_threshold() {
        let objective =
            Objective::new(LossKind::BinaryCrossentropy, Activation::Sigmoid, 1, 2).unwrap();
        let outputs = Tensor::from_slice(&[0.9f32, 0.2, 0.6, 0.4]).view([4, 1]);
        let labels = Tensor::from_slice(&[1i64, 0, 0, 0]);
        assert_eq!(objective.correct(&outputs, &labels).unwrap(), 3);
        let loss = objective
            .loss(&Tensor::zeros([4, 1], (Kind::Float, Device::Cpu)), &labels)
            .unwrap()
            .double_value(&[]);
        assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "{loss}");
    }
}
