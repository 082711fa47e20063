//! The optimizers of `maas-train train`, written over plain tensors so that their state can
//! be saved in a checkpoint and loaded again (tch's `nn::Optimizer` keeps its state inside
//! libtorch, out of reach).
//!
//! Both follow libtorch's C++ `torch::optim` (`torch/csrc/api/src/optim/adam.cpp`, `sgd.cpp`),
//! which is what tch's `nn::Adam` and `nn::Sgd` run; the tests below check that they give the
//! same weights as those after several steps. Adam is Kingma and Ba's, bias-corrected
//! ("Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 1, with libtorch's
//! placement of epsilon), without weight decay or AMSGrad; SGD has classical momentum without
//! dampening or Nesterov.

use std::collections::HashMap;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Adam's `beta1`: decay of the first-moment (mean of the gradient) estimate.
pub const ADAM_BETA1: f64 = 0.9;
/// Adam's `beta2`: decay of the second-moment (uncentred variance) estimate.
pub const ADAM_BETA2: f64 = 0.999;
/// Adam's `epsilon`, added to the bias-corrected root of the second moment.
pub const ADAM_EPS: f64 = 1e-8;

/// Which update rule `--optimizer` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with libtorch's defaults (`beta1` 0.9, `beta2` 0.999, `eps` 1e-8).
    Adam,
    /// Stochastic gradient descent, with `--momentum` (0: plain SGD).
    Sgd,
}

impl OptimizerKind {
    /// The name as `--optimizer` and `metrics.json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::Sgd => "sgd",
        }
    }
}

/// The per-parameter state, each vector parallel to the parameters.
enum State {
    Adam {
        /// First-moment estimates `m`.
        exp_avg: Vec<Tensor>,
        /// Second-moment estimates `v`.
        exp_avg_sq: Vec<Tensor>,
    },
    Sgd {
        /// Momentum buffers; `None` before the first step (libtorch starts a buffer as a copy of
        /// the first gradient) and always when the momentum is 0.
        buffers: Vec<Option<Tensor>>,
    },
}

/// An optimizer over a list of parameters (the same list, in the same order, at every step).
pub struct Optimizer {
    lr: f64,
    momentum: f64,
    steps: i64,
    state: State,
}

impl Optimizer {
    /// A fresh optimizer for parameters shaped like `params` (zero moments, no buffers).
    /// `lr` is the learning rate; `momentum` is used by SGD only. Errors: a non-positive or
    /// non-finite `lr`, a momentum outside `[0, 1)`, or a momentum given to Adam.
    pub fn new(
        kind: OptimizerKind,
        lr: f64,
        momentum: f64,
        params: &[Tensor],
    ) -> anyhow::Result<Optimizer> {
        ensure!(
            lr > 0.0 && lr.is_finite(),
            "--lr must be positive, got {lr}"
        );
        ensure!(
            (0.0..1.0).contains(&momentum),
            "--momentum must be in [0, 1), got {momentum}"
        );
        let state = match kind {
            OptimizerKind::Adam => {
                ensure!(
                    momentum == 0.0,
                    "--momentum is for --optimizer sgd (Adam's moments are fixed: beta1 {ADAM_BETA1}, beta2 {ADAM_BETA2})"
                );
                let zeros = || -> Result<Vec<Tensor>, tch::TchError> {
                    params.iter().map(Tensor::f_zeros_like).collect()
                };
                State::Adam {
                    exp_avg: zeros()?,
                    exp_avg_sq: zeros()?,
                }
            }
            OptimizerKind::Sgd => State::Sgd {
                buffers: params.iter().map(|_| None).collect(),
            },
        };
        Ok(Optimizer {
            lr,
            momentum,
            steps: 0,
            state,
        })
    }

    /// Steps taken so far (Adam's `t`).
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// One update of `params` in place from `grads` (parallel to `params`, same shapes and
    /// devices), without recording it for autograd.
    pub fn step(&mut self, params: &mut [Tensor], grads: &[Tensor]) -> anyhow::Result<()> {
        ensure!(
            params.len() == grads.len(),
            "{} parameters but {} gradients",
            params.len(),
            grads.len()
        );
        self.steps += 1;
        let lr = self.lr;
        let momentum = self.momentum;
        let steps = self.steps;
        tch::no_grad(|| -> Result<(), tch::TchError> {
            match &mut self.state {
                State::Adam {
                    exp_avg,
                    exp_avg_sq,
                } => {
                    let bias_correction1 = 1.0 - ADAM_BETA1.powi(steps as i32);
                    let bias_correction2 = 1.0 - ADAM_BETA2.powi(steps as i32);
                    let step_size = lr / bias_correction1;
                    for (((p, g), m), v) in params
                        .iter_mut()
                        .zip(grads)
                        .zip(exp_avg.iter_mut())
                        .zip(exp_avg_sq.iter_mut())
                    {
                        // m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
                        let _ = m.f_mul_scalar_(ADAM_BETA1)?;
                        let _ = m.f_add_(&g.f_mul_scalar(1.0 - ADAM_BETA1)?)?;
                        let _ = v.f_mul_scalar_(ADAM_BETA2)?;
                        let _ = v.f_add_(&g.f_mul(g)?.f_mul_scalar(1.0 - ADAM_BETA2)?)?;
                        // p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
                        let denom = v
                            .f_sqrt()?
                            .f_div_scalar(bias_correction2.sqrt())?
                            .f_add_scalar(ADAM_EPS)?;
                        let _ = p.f_sub_(&m.f_div(&denom)?.f_mul_scalar(step_size)?)?;
                    }
                }
                State::Sgd { buffers } => {
                    for ((p, g), buffer) in params.iter_mut().zip(grads).zip(buffers.iter_mut()) {
                        let direction = if momentum == 0.0 {
                            g.shallow_clone()
                        } else if let Some(b) = buffer {
                            // b = momentum b + g
                            let _ = b.f_mul_scalar_(momentum)?;
                            let _ = b.f_add_(g)?;
                            b.shallow_clone()
                        } else {
                            let b = g.f_detach_copy()?;
                            *buffer = Some(b.shallow_clone());
                            b
                        };
                        let _ = p.f_sub_(&direction.f_mul_scalar(lr)?)?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The state as named tensors for a checkpoint: `adam.exp_avg.<i>`, `adam.exp_avg_sq.<i>`
    /// or `sgd.momentum.<i>` (`i`: the parameter's position; SGD buffers that do not exist yet
    /// are left out). The step count is not a tensor: see [`Optimizer::steps`].
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut named = Vec::new();
        match &self.state {
            State::Adam {
                exp_avg,
                exp_avg_sq,
            } => {
                for (i, (m, v)) in exp_avg.iter().zip(exp_avg_sq).enumerate() {
                    named.push((format!("adam.exp_avg.{i}"), m.shallow_clone()));
                    named.push((format!("adam.exp_avg_sq.{i}"), v.shallow_clone()));
                }
            }
            State::Sgd { buffers } => {
                for (i, b) in buffers.iter().enumerate() {
                    if let Some(b) = b {
                        named.push((format!("sgd.momentum.{i}"), b.shallow_clone()));
                    }
                }
            }
        }
        named
    }

    /// An optimizer that continues from a checkpoint: `tensors` as [`Optimizer::state_tensors`]
    /// wrote them (taken out of the map), `steps` as [`Optimizer::steps`] returned. Each state
    /// tensor is moved to its parameter's device. Errors: a missing tensor or one whose shape
    /// differs from its parameter's.
    pub fn restore(
        kind: OptimizerKind,
        lr: f64,
        momentum: f64,
        params: &[Tensor],
        steps: i64,
        tensors: &mut HashMap<String, Tensor>,
    ) -> anyhow::Result<Optimizer> {
        ensure!(steps >= 0, "a negative step count {steps}");
        let mut optimizer = Optimizer::new(kind, lr, momentum, params)?;
        optimizer.steps = steps;
        let mut take = |name: String, like: &Tensor| -> anyhow::Result<Option<Tensor>> {
            let Some(t) = tensors.remove(&name) else {
                return Ok(None);
            };
            if t.size() != like.size() {
                bail!(
                    "optimizer state {name} is {:?}, its parameter {:?}",
                    t.size(),
                    like.size()
                );
            }
            Ok(Some(t.f_to_device(like.device())?))
        };
        match &mut optimizer.state {
            State::Adam {
                exp_avg,
                exp_avg_sq,
            } => {
                for (i, p) in params.iter().enumerate() {
                    for (name, slot) in [
                        ("exp_avg", &mut exp_avg[i]),
                        ("exp_avg_sq", &mut exp_avg_sq[i]),
                    ] {
                        let key = format!("adam.{name}.{i}");
                        match take(key.clone(), p)? {
                            Some(t) => *slot = t,
                            None => bail!("the checkpoint has no optimizer state {key}"),
                        }
                    }
                }
            }
            State::Sgd { buffers } => {
                for (i, p) in params.iter().enumerate() {
                    buffers[i] = take(format!("sgd.momentum.{i}"), p)?;
                    if momentum != 0.0 && steps > 0 && buffers[i].is_none() {
                        bail!("the checkpoint has no momentum buffer sgd.momentum.{i}");
                    }
                }
            }
        }
        Ok(optimizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, OptimizerConfig};
    use tch::{Device, Kind};

    /// Runs `steps` steps of a tch optimizer and of ours on the same small regression problem
    /// from the same weights; returns the largest weight difference at the end.
    fn gap_after(
        steps: usize,
        library: impl OptimizerConfig,
        kind: OptimizerKind,
        lr: f64,
        momentum: f64,
    ) -> f64 {
        tch::manual_seed(3);
        let x = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([16, 3], (Kind::Float, Device::Cpu));
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root(), 5, 3, Default::default());
        let mut theirs = library.build(&vs, lr).unwrap();
        let mut ours_params: Vec<Tensor> = [&layer.ws, layer.bs.as_ref().unwrap()]
            .iter()
            .map(|t| t.detach().copy().set_requires_grad(true))
            .collect();
        let mut ours = Optimizer::new(kind, lr, momentum, &ours_params).unwrap();
        let loss_of = |w: &Tensor, b: &Tensor| {
            x.linear(w, Some(b))
                .tanh()
                .mse_loss(&y, tch::Reduction::Mean)
        };
        for _ in 0..steps {
            theirs.backward_step(&loss_of(&layer.ws, layer.bs.as_ref().unwrap()));
            for p in &mut ours_params {
                p.zero_grad();
            }
            loss_of(&ours_params[0], &ours_params[1]).backward();
            let grads: Vec<Tensor> = ours_params.iter().map(|p| p.grad().copy()).collect();
            ours.step(&mut ours_params, &grads).unwrap();
        }
        let gap_w = (&layer.ws - &ours_params[0]).abs().max().double_value(&[]);
        let gap_b = (layer.bs.as_ref().unwrap() - &ours_params[1])
            .abs()
            .max()
            .double_value(&[]);
        gap_w.max(gap_b)
    }

    #[test]
    fn adam_matches_tch_adam() {
        let gap = gap_after(8, nn::Adam::default(), OptimizerKind::Adam, 0.01, 0.0);
        assert!(gap < 1e-6, "weights differ by {gap}");
    }

    #[test]
    fn sgd_with_momentum_matches_tch_sgd() {
        let sgd = nn::Sgd {
            momentum: 0.9,
            ..Default::default()
        };
        let gap = gap_after(8, sgd, OptimizerKind::Sgd, 0.05, 0.9);
        assert!(gap < 1e-6, "weights differ by {gap}");
        let gap = gap_after(8, nn::Sgd::default(), OptimizerKind::Sgd, 0.05, 0.0);
        assert!(gap < 1e-6, "weights differ by {gap}");
    }

    #[test]
    fn state_survives_a_round_trip() {
        let mut params = vec![Tensor::ones([2, 3], (Kind::Float, Device::Cpu))];
        let grads = vec![Tensor::full([2, 3], 0.5, (Kind::Float, Device::Cpu))];
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
            let momentum = if kind == OptimizerKind::Sgd { 0.9 } else { 0.0 };
            let mut a = Optimizer::new(kind, 0.1, momentum, &params).unwrap();
            a.step(&mut params, &grads).unwrap();
            let mut named: HashMap<String, Tensor> = a
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.copy()))
                .collect();
            let mut b =
                Optimizer::restore(kind, 0.1, momentum, &params, a.steps(), &mut named).unwrap();
            assert!(named.is_empty());
            let mut pa: Vec<Tensor> = params.iter().map(Tensor::copy).collect();
            let mut pb: Vec<Tensor> = params.iter().map(Tensor::copy).collect();
            a.step(&mut pa, &grads).unwrap();
            b.step(&mut pb, &grads).unwrap();
            assert_eq!((&pa[0] - &pb[0]).abs().max().double_value(&[]), 0.0);
        }
        let e = Optimizer::restore(
            OptimizerKind::Adam,
            0.1,
            0.0,
            &params,
            1,
            &mut HashMap::new(),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("adam.exp_avg.0"), "{e}");
        let e = Optimizer::new(OptimizerKind::Adam, 0.1, 0.5, &params)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("--momentum is for --optimizer sgd"),
            "{e}"
        );
    }
}
