//! A TorchScript model: `model.pt` in a version folder, saved by `torch.jit.save` (or
//! `torch.jit.script(module).save(path)`), run through libtorch's `torch::jit::Module`
//! (`tch::CModule`).
//!
//! The module takes one FP32 tensor `[batch, ...input dims]` and returns one FP32 tensor
//! `[batch, ...output dims]`, the dims being those of the model's single `[[inputs]]` and
//! `[[outputs]]` in `config.toml`. It runs in eval mode, without gradients.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

use super::{Forward, ForwardError, LoadError};
use crate::config::ModelConfig;

/// The file name of a TorchScript version's module inside its version folder.
pub const MODULE_FILE: &str = "model.pt";

/// A loaded TorchScript module with the shapes its configuration promises.
#[derive(Debug)]
pub struct TorchScriptModel {
    module: CModule,
    input_dims: Vec<i64>,
    output_dims: Vec<i64>,
    out_features: i64,
    device: Device,
}

impl TorchScriptModel {
    /// Loads `model.pt` onto `device` in eval mode. Errors when libtorch cannot load the file
    /// ([`LoadError::TorchScript`]) or the configuration lacks its input or output.
    pub fn load(
        config: &ModelConfig,
        path: &Path,
        device: Device,
    ) -> Result<TorchScriptModel, LoadError> {
        let (Some(input), Some(output)) = (config.inputs.first(), config.outputs.first()) else {
            return Err(LoadError::TorchScriptTensors);
        };
        let mut module = CModule::load_on_device(path, device).map_err(LoadError::TorchScript)?;
        module.set_eval();
        Ok(TorchScriptModel {
            module,
            input_dims: input.dims.clone(),
            output_dims: output.dims.clone(),
            out_features: output.row_elements(),
            device,
        })
    }
}

impl Forward for TorchScriptModel {
    /// `input` as `[rows, ...input dims]` through the module; the output must be FP32-castable
    /// and shaped `[rows, ...output dims]`, else an error naming the shape it had.
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        let shape: Vec<i64> = std::iter::once(rows)
            .chain(self.input_dims.iter().copied())
            .collect();
        let run = || -> Result<Tensor, tch::TchError> {
            let x = Tensor::f_from_slice(input)?
                .f_view(shape.as_slice())?
                .f_to_device(self.device)?;
            tch::no_grad(|| self.module.forward_ts(&[x]))
        };
        let y = run().map_err(|e| ForwardError::TorchScript(e.to_string()))?;
        let expected: Vec<i64> = std::iter::once(rows)
            .chain(self.output_dims.iter().copied())
            .collect();
        if y.size() != expected {
            return Err(ForwardError::OutputShape {
                found: y.size(),
                expected,
            });
        }
        let unreadable = |e: tch::TchError| ForwardError::ReadOutput(e.to_string());
        let y = y
            .f_to_device(Device::Cpu)
            .and_then(|y| y.f_to_kind(Kind::Float))
            .and_then(|y| y.f_contiguous())
            .and_then(|y| y.f_view([-1]))
            .map_err(unreadable)?;
        Vec::<f32>::try_from(&y).map_err(unreadable)
    }

    fn out_features(&self) -> i64 {
        self.out_features
    }
}
