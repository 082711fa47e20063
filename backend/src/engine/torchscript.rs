//! A TorchScript model: `model.pt` in a version folder, saved by `torch.jit.save` (or
//! `torch.jit.script(module).save(path)`), run through libtorch's `torch::jit::Module`
//! (`tch::CModule`).
//!
//! The module takes one FP32 tensor `[batch, ...input dims]` and returns one FP32 tensor
//! `[batch, ...output dims]`, the dims being those of the model's single `[[inputs]]` and
//! `[[outputs]]` in `config.toml`; with `torchscript_output = "first"` it returns a tuple or
//! list whose first element is that tensor. It runs in eval mode, without gradients.
//!
//! With `precision = "bf16"` or `"fp16"` the module's floating-point parameters and buffers are
//! cast to it once at load (`torch::jit::Module::to`), each batch is cast to it on the device,
//! and the output is cast back to FP32 on the device (`transfer.rs`).
//!
//! What the module returns is checked once at load, by a forward pass of one row of zeros: a
//! module returning a tuple where one tensor is configured (or the reverse) is refused then,
//! with the key to set, instead of failing (and being logged) on every request.

use std::path::Path;

use tch::{CModule, Device, IValue, Kind, Tensor};

use super::transfer::{device_to_host, host_to_device};
use super::{Forward, ForwardError, LoadError};
use crate::config::{ModelConfig, TorchScriptOutput};

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
    kind: Kind,
    returns: TorchScriptOutput,
}

/// The output tensor of a module's return value `value` under `returns`, or what it was
/// instead (`a tuple of 2 values`) and what to set.
fn output_tensor(
    value: IValue,
    returns: TorchScriptOutput,
) -> Result<Tensor, (String, &'static str)> {
    const SET_FIRST: &str =
        "set torchscript_output = \"first\" in config.toml to serve its first tensor";
    const SET_TENSOR: &str = "it returns one tensor: remove torchscript_output = \"first\"";
    let described = |v: &IValue| match v {
        IValue::Tuple(items) => format!("a tuple of {} values", items.len()),
        IValue::GenericList(items) => format!("a list of {} values", items.len()),
        IValue::TensorList(items) => format!("a list of {} tensors", items.len()),
        IValue::Tensor(_) => "a tensor".to_string(),
        _ => "a value that is not a tensor".to_string(),
    };
    match (returns, value) {
        (TorchScriptOutput::Tensor, IValue::Tensor(t)) => Ok(t),
        (TorchScriptOutput::First, IValue::TensorList(mut items)) if !items.is_empty() => {
            Ok(items.swap_remove(0))
        }
        (TorchScriptOutput::First, IValue::Tuple(mut items) | IValue::GenericList(mut items))
            if matches!(items.first(), Some(IValue::Tensor(_))) =>
        {
            match items.swap_remove(0) {
                IValue::Tensor(t) => Ok(t),
                _ => unreachable!("matched a tensor first"),
            }
        }
        (TorchScriptOutput::Tensor, other) => Err((
            described(&other),
            if matches!(
                other,
                IValue::Tuple(_) | IValue::GenericList(_) | IValue::TensorList(_)
            ) {
                SET_FIRST
            } else {
                "it must return one FP32 tensor"
            },
        )),
        (TorchScriptOutput::First, IValue::Tensor(_)) => Err(("a tensor".into(), SET_TENSOR)),
        (TorchScriptOutput::First, other) => Err((
            described(&other),
            "torchscript_output = \"first\" needs a tuple or list whose first element is a tensor",
        )),
    }
}

impl TorchScriptModel {
    /// Loads `model.pt` onto `device` in eval mode, in the configuration's precision. Errors
    /// when libtorch cannot load the file ([`LoadError::TorchScript`]), the device cannot run
    /// the precision ([`LoadError::Precision`]) or the configuration lacks its input or output.
    pub fn load(
        config: &ModelConfig,
        path: &Path,
        device: Device,
    ) -> Result<TorchScriptModel, LoadError> {
        let (Some(input), Some(output)) = (config.inputs.first(), config.outputs.first()) else {
            return Err(LoadError::TorchScriptTensors);
        };
        config.precision.check(device)?;
        let kind = config.precision.kind();
        let mut module = CModule::load_on_device(path, device).map_err(LoadError::TorchScript)?;
        module.set_eval();
        if kind != Kind::Float {
            module.to(device, kind, false);
        }
        let model = TorchScriptModel {
            module,
            input_dims: input.dims.clone(),
            output_dims: output.dims.clone(),
            out_features: output.row_elements(),
            device,
            kind,
            returns: config.torchscript_output,
        };
        model.probe()?;
        Ok(model)
    }

    /// One row of zeros through the module: what it returns must be what `torchscript_output`
    /// says.
    fn probe(&self) -> Result<(), LoadError> {
        let zeros = vec![0.0f32; self.input_dims.iter().product::<i64>().max(0) as usize];
        let value = self
            .run(&zeros, 1)
            .map_err(|e| LoadError::TorchScriptProbe(e.to_string()))?;
        output_tensor(value, self.returns)
            .map(drop)
            .map_err(|(found, hint)| LoadError::TorchScriptOutput { found, hint })
    }

    /// `input` as `[rows, ...input dims]` through the module's `forward`, without gradients.
    fn run(&self, input: &[f32], rows: i64) -> Result<IValue, tch::TchError> {
        let shape: Vec<i64> = std::iter::once(rows)
            .chain(self.input_dims.iter().copied())
            .collect();
        let x = host_to_device(input, &shape, self.device, self.kind)?;
        tch::no_grad(|| self.module.forward_is(&[IValue::Tensor(x)]))
    }
}

impl Forward for TorchScriptModel {
    /// `input` as `[rows, ...input dims]` through the module; the output must be FP32-castable
    /// and shaped `[rows, ...output dims]`, else an error naming the shape it had.
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        let value = self
            .run(input, rows)
            .map_err(|e| ForwardError::TorchScript(e.to_string()))?;
        let y = output_tensor(value, self.returns).map_err(|(found, hint)| {
            ForwardError::TorchScript(format!("the module returned {found}; {hint}"))
        })?;
        let expected: Vec<i64> = std::iter::once(rows)
            .chain(self.output_dims.iter().copied())
            .collect();
        if y.size() != expected {
            return Err(ForwardError::OutputShape {
                found: y.size(),
                expected,
            });
        }
        device_to_host(&y).map_err(|e| ForwardError::ReadOutput(e.to_string()))
    }

    fn out_features(&self) -> i64 {
        self.out_features
    }
}
