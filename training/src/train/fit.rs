//! The epochs of a run: the initial parameters (or a checkpoint's), then for each epoch a
//! seeded shuffle, one optimizer step per mini-batch on the data-parallel gradient, the
//! epoch's accuracies and a checkpoint.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Tensor};

use super::options::TrainOptions;
use super::split::Split;
use crate::checkpoint::{self, CheckpointInfo, RunSettings};
use crate::metrics::EpochMetrics;
use crate::net::Net;
use crate::optim::Optimizer;
use crate::parallel::DataParallel;
use crate::rng::{self, Purpose};

/// What [`fit`] returns.
pub(super) struct Trained {
    /// The parameters in [`Net::param_shapes`] order, on the CPU, not yet folded.
    pub params: Vec<Tensor>,
    /// Every epoch, a resumed checkpoint's included.
    pub history: Vec<EpochMetrics>,
}

/// The initial parameters, tch's `nn::linear` initialization drawn from the seed: weights
/// Kaiming-uniform for ReLU (`U(-sqrt(6 / in), sqrt(6 / in))`; He, Zhang, Ren and Sun,
/// "Delving Deep into Rectifiers", ICCV 2015), biases `U(-1/sqrt(in), 1/sqrt(in))`.
fn initial_params(net: &Net, seed: u64) -> Result<Vec<Tensor>, tch::TchError> {
    net.param_shapes()
        .iter()
        .enumerate()
        .map(|(k, (layer, is_bias, shape))| {
            let fan_in = net.layers[*layer].in_features.max(1) as f64;
            let bound = if *is_bias {
                1.0 / fan_in.sqrt()
            } else {
                (6.0 / fan_in).sqrt()
            };
            rng::uniform(shape, bound, seed, k as u64)
        })
        .collect()
}

/// Trains `net` on standardized inputs from scratch or from `options.resume`, writing a
/// checkpoint into `checkpoint_dir` after every epoch.
pub(super) fn fit(
    net: &Net,
    split: &Split,
    options: &TrainOptions,
    devices: &[Device],
    settings: &RunSettings,
    checkpoint_dir: &Path,
) -> anyhow::Result<Trained> {
    let master_device = devices[0];
    let (mut master, mut optimizer, mut history) =
        start_or_resume(net, options, settings, master_device)?;
    let start_epoch = history.len();
    eprintln!("checkpoints go to {}", checkpoint_dir.display());

    let standardize =
        |x: &Tensor| -> Result<Tensor, tch::TchError> { x.f_sub(&split.mean)?.f_div(&split.std) };
    let train_x = standardize(&split.train.x)?;
    let train_y = &split.train.y;
    // For the per-epoch accuracies, on the master's device.
    let eval_sets = [
        (
            train_x.f_to_device(master_device)?,
            train_y.f_to_device(master_device)?,
        ),
        (
            standardize(&split.test.x)?.f_to_device(master_device)?,
            split.test.y.f_to_device(master_device)?,
        ),
    ];
    let mut workers = DataParallel::new(&master, devices, net)?;

    let rows = split.train.rows();
    let batch = options.batch_size.min(rows);
    let batches = rows.div_ceil(batch);
    for epoch in start_epoch + 1..=options.epochs {
        let epoch_started = Instant::now();
        let order = Tensor::f_from_slice(&rng::permutation(
            rows,
            options.seed,
            Purpose::Shuffle,
            epoch as u64,
        ))?;
        let bar = progress_bar(epoch, options.epochs, batches);
        let mut loss_sum = 0.0;
        let mut start = 0;
        while start < rows {
            let size = batch.min(rows - start);
            let index = order.f_narrow(0, start as i64, size as i64)?;
            let xb = train_x.f_index_select(0, &index)?;
            let yb = train_y.f_index_select(0, &index)?;
            let (grads, loss) = workers.gradients(&master, net, &xb, &yb)?;
            optimizer.step(&mut master, &grads)?;
            loss_sum += loss * size as f64;
            start += size;
            bar.inc(1);
            bar.set_message(format!("{:.4}", loss_sum / start as f64));
        }
        bar.finish_and_clear();
        let loss = loss_sum / rows as f64;
        ensure!(
            loss.is_finite(),
            "training diverged at epoch {epoch} (loss {loss}); try a smaller --lr"
        );
        let [train_accuracy, test_accuracy] = tch::no_grad(|| -> anyhow::Result<[f64; 2]> {
            let mut accuracies = [0.0; 2];
            for (accuracy, (x, y)) in accuracies.iter_mut().zip(&eval_sets) {
                let correct = net.objective.correct(&net.outputs(&master, x)?, y)?;
                *accuracy = correct as f64 / y.size()[0].max(1) as f64;
            }
            Ok(accuracies)
        })?;
        let seconds = epoch_started.elapsed().as_secs_f64();
        eprintln!(
            "epoch {epoch:>3}/{}: loss {loss:.4}, train accuracy {train_accuracy:.4}, test accuracy {test_accuracy:.4} ({seconds:.2} s)",
            options.epochs
        );
        history.push(EpochMetrics {
            epoch,
            loss,
            train_accuracy,
            test_accuracy,
            seconds: (seconds * 1000.0).round() / 1000.0,
        });
        let info = CheckpointInfo {
            epoch,
            optimizer_steps: optimizer.steps(),
            settings: settings.clone(),
            history: history.clone(),
        };
        checkpoint::save(checkpoint_dir, &info, &master, optimizer.state_tensors())?;
        // Only this run's own checkpoints are pruned, never the one it resumed from.
        if options.keep_checkpoints > 0 && epoch > start_epoch + options.keep_checkpoints {
            checkpoint::remove(checkpoint_dir, epoch - options.keep_checkpoints)?;
        }
    }
    let params = master
        .iter()
        .map(|p| p.f_to_device(Device::Cpu))
        .collect::<Result<_, _>>()?;
    Ok(Trained { params, history })
}

/// The state the first epoch of this process starts from: the master parameters on
/// `master_device`, the optimizer and the history so far; fresh from the seed, or read from
/// `options.resume` after checking that the checkpoint belongs to this run.
fn start_or_resume(
    net: &Net,
    options: &TrainOptions,
    settings: &RunSettings,
    master_device: Device,
) -> anyhow::Result<(Vec<Tensor>, Optimizer, Vec<EpochMetrics>)> {
    let to_master = |params: Vec<Tensor>| -> Result<Vec<Tensor>, tch::TchError> {
        params
            .iter()
            .map(|p| p.f_to_device(master_device))
            .collect()
    };
    let param_count = net.param_shapes().len();
    match &options.resume {
        Some(path) => {
            let mut saved = checkpoint::load(path, param_count)?;
            let differences = saved.info.settings.differences(settings);
            ensure!(
                differences.is_empty(),
                "{} is a checkpoint of another run; these differ: {}",
                path.display(),
                differences.join("; ")
            );
            ensure!(
                saved.info.epoch < options.epochs,
                "nothing to train: {} is at epoch {} and --epochs is {}; give a larger --epochs",
                path.display(),
                saved.info.epoch,
                options.epochs
            );
            for (p, (_, _, shape)) in saved.params.iter().zip(net.param_shapes()) {
                ensure!(
                    p.size() == shape,
                    "{}: a parameter is {:?}, the layers need {shape:?}",
                    path.display(),
                    p.size()
                );
            }
            let master = to_master(saved.params)?;
            let optimizer = Optimizer::restore(
                options.optimizer,
                options.lr,
                options.momentum,
                &master,
                saved.info.optimizer_steps,
                &mut saved.optimizer_state,
            )
            .with_context(|| format!("{}", path.display()))?;
            eprintln!(
                "resuming from {} (epoch {})",
                path.display(),
                saved.info.epoch
            );
            Ok((master, optimizer, saved.info.history))
        }
        None => {
            let master = to_master(initial_params(net, options.seed)?)?;
            let optimizer =
                Optimizer::new(options.optimizer, options.lr, options.momentum, &master)?;
            Ok((master, optimizer, Vec::new()))
        }
    }
}

/// A bar over the epoch's batches with the running mean loss; drawn only on a terminal.
fn progress_bar(epoch: usize, epochs: usize, batches: usize) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} batches, loss {msg} ({elapsed})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(batches as u64)
        .with_style(style)
        .with_prefix(format!("{epoch}/{epochs}"))
}
