//! Training of a dense classifier from a CSV table into a new version of a model in the
//! repository (`maas-backend train`).
//!
//! The recipe is the seed document's: `input -> hidden relu -> classes softmax`, mini-batches
//! reshuffled every epoch, by default Adam and categorical cross-entropy (computed on the
//! logits; the softmax is the served model's last layer). `--optimizer sgd` (with
//! `--momentum`) and `--loss binary-crossentropy|mse` are the alternatives ([`optim`],
//! [`loss`] say exactly what each computes and which last activation each needs). Inputs are
//! standardized during training (per feature, with the training rows' mean and standard
//! deviation), and the standardization is then folded into the first layer
//! (`W' = W / std`, `b' = b - W' mean`), so the served model takes raw feature values, exactly
//! as clients send them.
//!
//! Reproducible: one `--seed` drives the train/test split, the initial weights and the
//! per-epoch shuffles, through a generator of this crate ([`rng`]) whose draws depend only on
//! `(seed, purpose, index)`: epoch `e`'s order is the same in a fresh and in a resumed run.
//!
//! Each epoch ends with a checkpoint ([`checkpoint`]); `--resume` continues from one, and the
//! result is the uninterrupted run's. `--devices` trains data-parallel ([`parallel`]): one
//! replica per device, each computing the gradient of its shard of every batch.
//!
//! The new version is written to a hidden temporary folder in the model folder (ignored by the
//! repository loader) and renamed to `<N>` when complete, so no half-written version is ever
//! visible.

pub mod checkpoint;
pub mod loss;
pub mod optim;
pub mod parallel;
mod rng;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::{dense_classifier, ModelConfig, CONFIG_FILE};
use crate::dataset::Dataset;
use crate::dense::{bias_name, weight_name, DenseModel, WEIGHTS_FILE};
use crate::repository::version_numbers;
use checkpoint::{CheckpointInfo, RunSettings};
use loss::{LossKind, Objective};
use optim::{Optimizer, OptimizerKind};
use parallel::{device_name, parse_device, DataParallel, Net};
use rng::Purpose;

/// The file name of a version's training metrics.
pub const METRICS_FILE: &str = "metrics.json";

/// The folder in a model folder that holds checkpoints by default (hidden: the repository
/// loader ignores it).
pub const CHECKPOINTS_FOLDER: &str = ".checkpoints";

/// Settings of one training run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The CSV table (gzip when the name ends in `.gz`).
    pub data: PathBuf,
    /// The model repository to write into.
    pub repo: PathBuf,
    /// The model's name: its folder in the repository.
    pub model: String,
    /// Hidden layer width, when a new config is written.
    pub hidden: i64,
    /// Passes over the training rows, in all (a resumed run counts the checkpoint's epochs).
    pub epochs: usize,
    /// Rows per optimizer step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// The update rule.
    pub optimizer: OptimizerKind,
    /// The learning rate.
    pub lr: f64,
    /// SGD's momentum, in `[0, 1)`; must be 0 for Adam.
    pub momentum: f64,
    /// The loss minimized.
    pub loss: LossKind,
    /// Seed of the split, the initialization and the shuffles; at most `i64::MAX`.
    pub seed: u64,
    /// Share of rows held out for the test accuracy, in (0, 1).
    pub test_fraction: f64,
    /// Devices to train on, data-parallel: `cpu` (repeat it for several CPU workers), `cuda`
    /// or `cuda:N`. The first holds the master weights and the optimizer state.
    pub devices: Vec<String>,
    /// Where each epoch's checkpoint goes; `None`:
    /// `<repo>/<model>/.checkpoints/run-<unix seconds>-<pid>`.
    pub checkpoint_dir: Option<PathBuf>,
    /// A checkpoint folder (`.../epoch-NNNN`) to continue from.
    pub resume: Option<PathBuf>,
    /// How many of this run's latest checkpoints to keep (older ones are removed as new ones
    /// are written); 0 keeps every one.
    pub keep_checkpoints: usize,
}

impl TrainOptions {
    /// The defaults of `maas-backend train`: hidden 128, 30 epochs, batches of 32, Adam with
    /// learning rate 0.001, categorical cross-entropy, seed 42, 20 % held out, one CPU device,
    /// checkpoints in the model folder (the latest 3 kept), no resume.
    pub fn new(data: PathBuf, repo: PathBuf, model: String) -> TrainOptions {
        TrainOptions {
            data,
            repo,
            model,
            hidden: 128,
            epochs: 30,
            batch_size: 32,
            optimizer: OptimizerKind::Adam,
            lr: 0.001,
            momentum: 0.0,
            loss: LossKind::CategoricalCrossentropy,
            seed: 42,
            test_fraction: 0.2,
            devices: vec!["cpu".into()],
            checkpoint_dir: None,
            resume: None,
            keep_checkpoints: 3,
        }
    }
}

/// One epoch of a run, as `metrics.json` and the checkpoints record it. Accuracies are shares
/// of rows in `[0, 1]`, of the model being trained (standardized inputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean loss over the epoch's batches (weighted by rows), as the weights moved.
    pub loss: f64,
    /// Accuracy on the training rows at the end of the epoch.
    pub train_accuracy: f64,
    /// Accuracy on the held-out rows at the end of the epoch.
    pub test_accuracy: f64,
    /// Wall time of the epoch, in seconds.
    pub seconds: f64,
}

/// What a training run measured; written to `<N>/metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy of the written (served) model on the held-out rows, raw inputs.
    pub test_accuracy: f64,
    /// Accuracy of the written model on the training rows.
    pub train_accuracy: f64,
    /// Passes over the training rows, in all (including a resumed checkpoint's).
    pub epochs: usize,
    /// The seed of the run.
    pub seed: u64,
    /// Rows trained on.
    pub rows_train: usize,
    /// Rows held out.
    pub rows_test: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// The optimizer: `adam` or `sgd`.
    pub optimizer: OptimizerKind,
    /// The learning rate.
    pub lr: f64,
    /// SGD's momentum (0 for Adam).
    pub momentum: f64,
    /// The loss: `categorical-crossentropy`, `binary-crossentropy` or `mse`.
    pub loss: LossKind,
    /// The devices trained on (`cpu`, `cuda:N`), the first holding the master weights.
    pub devices: Vec<String>,
    /// The checkpoint the run continued from, if any.
    pub resumed_from: Option<PathBuf>,
    /// Where this run wrote its checkpoints.
    pub checkpoint_dir: PathBuf,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Wall time of loading, training and writing in this process, in seconds.
    pub train_seconds: f64,
    /// Every epoch, the resumed checkpoint's included.
    pub history: Vec<EpochMetrics>,
}

/// The outcome of a training run.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The version written.
    pub version: u64,
    /// Its folder.
    pub dir: PathBuf,
    /// What the run measured (as in the version's `metrics.json`).
    pub metrics: Metrics,
}

/// Trains a model version and writes it to the repository. Progress goes to stderr: a
/// progress bar while an epoch runs (on a terminal), then one line per epoch.
///
/// Errors: bad options, unreadable data, a config that does not fit the data or the loss, an
/// absent device, a checkpoint that does not match the run, a diverging loss, I/O.
pub fn train(options: &TrainOptions) -> anyhow::Result<TrainReport> {
    let started = Instant::now();
    check_options(options)?;
    let devices = options
        .devices
        .iter()
        .map(|d| parse_device(d))
        .collect::<anyhow::Result<Vec<Device>>>()
        .context("--devices")?;
    ensure!(!devices.is_empty(), "--devices names no device");
    let data = Dataset::from_path(&options.data)?;
    ensure!(
        data.rows() >= 2,
        "{}: need at least 2 rows, got {}",
        options.data.display(),
        data.rows()
    );

    let model_dir = options.repo.join(&options.model);
    let config_path = model_dir.join(CONFIG_FILE);
    let (config, write_config) = if config_path.exists() {
        let config = ModelConfig::from_file(&config_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        eprintln!("using the layers of {}", config_path.display());
        (config, false)
    } else {
        let classes = data.classes();
        ensure!(
            classes >= 2,
            "the labels have only {classes} class; need at least 2"
        );
        let features = i64::try_from(data.feature_count)?;
        let mut config = dense_classifier(features, options.hidden, classes);
        if let Some(last) = config.layers.last_mut() {
            last.activation = options.loss.default_last_activation();
        }
        (config, true)
    };
    let objective = check_config_fits(&config, &data, options.loss)
        .with_context(|| format!("{}", config_path.display()))?;
    let net = Net {
        layers: config.layers.clone(),
        objective,
    };

    let split = Split::new(
        &data,
        options.test_fraction,
        config.layers[0].bias,
        options.seed,
    )?;
    let settings = RunSettings {
        layers: config.layers.clone(),
        optimizer: options.optimizer,
        lr: options.lr,
        momentum: options.momentum,
        loss: options.loss,
        batch_size: options.batch_size,
        seed: options.seed,
        test_fraction: options.test_fraction,
        data: checkpoint::data_fingerprint(&data),
    };
    let checkpoint_dir = match &options.checkpoint_dir {
        Some(dir) => dir.clone(),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            model_dir
                .join(CHECKPOINTS_FOLDER)
                .join(format!("run-{secs}-{}", std::process::id()))
        }
    };
    let trained = fit(&net, &split, options, &devices, &settings, &checkpoint_dir)?;
    let tensors = named_tensors(&net, trained.params);
    let tensors = fold_standardization(&config, tensors, &split.mean, &split.std)?;

    // Measure the artifact that will be served: folded weights, raw inputs.
    let served = DenseModel::from_tensors(&config, clone_tensors(&tensors), Device::Cpu)
        .map_err(|e| anyhow::anyhow!("the trained weights do not load: {e}"))?;
    let test_accuracy = served_accuracy(&served, &objective, &split.test)?;
    let train_accuracy = served_accuracy(&served, &objective, &split.train)?;

    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("cannot create {}", model_dir.display()))?;
    if write_config {
        write_atomically(&config_path, config.to_toml().as_bytes())?;
    }
    let mut metrics = Metrics {
        test_accuracy,
        train_accuracy,
        epochs: options.epochs,
        seed: options.seed,
        rows_train: split.train.rows(),
        rows_test: split.test.rows(),
        batch_size: options.batch_size,
        optimizer: options.optimizer,
        lr: options.lr,
        momentum: options.momentum,
        loss: options.loss,
        devices: devices.iter().map(|&d| device_name(d)).collect(),
        resumed_from: options.resume.clone(),
        checkpoint_dir,
        final_loss: trained.history.last().map_or(f64::NAN, |h| h.loss),
        train_seconds: 0.0,
        history: trained.history,
    };
    let (version, dir) = write_version(&model_dir, &tensors, &mut metrics, started)?;
    Ok(TrainReport {
        version,
        dir,
        metrics,
    })
}

fn check_options(options: &TrainOptions) -> anyhow::Result<()> {
    let name = &options.model;
    ensure!(
        !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
        "model name '{name}' must be letters, digits, '_', '-' or '.', not starting with '.'"
    );
    ensure!(
        options.hidden >= 1,
        "--hidden must be at least 1, got {}",
        options.hidden
    );
    ensure!(
        options.epochs >= 1,
        "--epochs must be at least 1, got {}",
        options.epochs
    );
    ensure!(
        options.batch_size >= 1,
        "--batch-size must be at least 1, got {}",
        options.batch_size
    );
    ensure!(
        options.lr > 0.0 && options.lr.is_finite(),
        "--lr must be positive, got {}",
        options.lr
    );
    ensure!(
        (0.0..1.0).contains(&options.momentum),
        "--momentum must be in [0, 1), got {}",
        options.momentum
    );
    ensure!(
        options.momentum == 0.0 || options.optimizer == OptimizerKind::Sgd,
        "--momentum is for --optimizer sgd"
    );
    ensure!(
        options.test_fraction > 0.0 && options.test_fraction < 1.0,
        "--test-fraction must be between 0 and 1 (exclusive), got {}",
        options.test_fraction
    );
    ensure!(
        options.seed <= i64::MAX as u64,
        "--seed must be at most {}",
        i64::MAX
    );
    Ok(())
}

/// An existing config must take the data's features, have room for its classes, and end in
/// an activation that suits the loss ([`Objective::new`]). Returns the loss bound to the last
/// layer.
fn check_config_fits(
    config: &ModelConfig,
    data: &Dataset,
    loss: LossKind,
) -> anyhow::Result<Objective> {
    let features = config.inputs[0].row_elements();
    ensure!(
        usize::try_from(features).ok() == Some(data.feature_count),
        "the input takes {features} features per row, the data has {}",
        data.feature_count
    );
    let Some(last) = config.layers.last() else {
        bail!("the config has no layers")
    };
    Objective::new(loss, last.activation, last.out_features, data.classes())
}

/// Rows as tensors: features `[rows, features]` FP32 and labels `[rows]` INT64.
struct Rows {
    x: Tensor,
    y: Tensor,
}

impl Rows {
    fn rows(&self) -> usize {
        self.y.size()[0] as usize
    }
}

/// The seeded train/test split and the training rows' per-feature statistics.
struct Split {
    train: Rows,
    test: Rows,
    /// `[features]` mean of the training rows (zeros when not centring).
    mean: Tensor,
    /// `[features]` standard deviation of the training rows, 1 where a feature is constant.
    std: Tensor,
}

impl Split {
    /// Shuffles with the seed's split stream and holds out `round(rows * test_fraction)` rows
    /// (at least 1, at most rows - 1). `center`: whether to subtract the mean, which only a
    /// first layer with a bias can absorb.
    fn new(data: &Dataset, test_fraction: f64, center: bool, seed: u64) -> anyhow::Result<Split> {
        let rows = data.rows() as i64;
        let x = Tensor::f_from_slice(&data.features)?.f_view([rows, data.feature_count as i64])?;
        let y = Tensor::f_from_slice(&data.labels)?;
        let order = Tensor::f_from_slice(&rng::permutation(data.rows(), seed, Purpose::Split, 0))?;
        let test_rows = ((rows as f64 * test_fraction).round() as i64).clamp(1, rows - 1);
        let test_index = order.f_narrow(0, 0, test_rows)?;
        let train_index = order.f_narrow(0, test_rows, rows - test_rows)?;
        let take = |index: &Tensor| -> anyhow::Result<Rows> {
            Ok(Rows {
                x: x.f_index_select(0, index)?,
                y: y.f_index_select(0, index)?,
            })
        };
        let train = take(&train_index)?;
        let test = take(&test_index)?;
        let mean = train.x.f_mean_dim(0, false, Kind::Float)?;
        let mean = if center { mean } else { mean.f_zeros_like()? };
        let std = train.x.f_std_dim(0, false, false)?;
        let std = std.f_where_scalarother(&std.f_gt(1e-6)?, 1.0)?;
        Ok(Split {
            train,
            test,
            mean,
            std,
        })
    }
}

struct Trained {
    /// The parameters in [`Net::param_shapes`] order, on the CPU, not yet folded.
    params: Vec<Tensor>,
    history: Vec<EpochMetrics>,
}

/// The initial parameters, tch's `nn::linear` initialization drawn from the seed: weights
/// Kaiming-uniform for ReLU (`U(-sqrt(6 / in), sqrt(6 / in))`), biases `U(-1/sqrt(in),
/// 1/sqrt(in))`.
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
fn fit(
    net: &Net,
    split: &Split,
    options: &TrainOptions,
    devices: &[Device],
    settings: &RunSettings,
    checkpoint_dir: &Path,
) -> anyhow::Result<Trained> {
    let master_device = devices[0];
    let to_master = |params: Vec<Tensor>| -> Result<Vec<Tensor>, tch::TchError> {
        params
            .iter()
            .map(|p| p.f_to_device(master_device))
            .collect()
    };
    let param_count = net.param_shapes().len();
    let (mut master, mut optimizer, mut history) = match &options.resume {
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
            (master, optimizer, saved.info.history)
        }
        None => {
            let master = to_master(initial_params(net, options.seed)?)?;
            let optimizer =
                Optimizer::new(options.optimizer, options.lr, options.momentum, &master)?;
            (master, optimizer, Vec::new())
        }
    };
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

/// The parameters by their `model.safetensors` names.
fn named_tensors(net: &Net, params: Vec<Tensor>) -> HashMap<String, Tensor> {
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
/// shift, so for such a layer [`Split`] does not centre and `mean` is zero.
fn fold_standardization(
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

fn clone_tensors(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors.iter().map(|(k, v)| (k.clone(), v.copy())).collect()
}

/// Accuracy of the served model on raw rows.
fn served_accuracy(model: &DenseModel, objective: &Objective, rows: &Rows) -> anyhow::Result<f64> {
    let scores = tch::no_grad(|| model.forward(&rows.x))?;
    let correct = objective.correct(&scores, &rows.y)?;
    Ok(correct as f64 / rows.rows().max(1) as f64)
}

/// Writes `model.safetensors` and `metrics.json` as the next version of `model_dir`
/// ([`write_version_folder`]). Returns the version and its folder.
fn write_version(
    model_dir: &Path,
    tensors: &HashMap<String, Tensor>,
    metrics: &mut Metrics,
    started: Instant,
) -> anyhow::Result<(u64, PathBuf)> {
    write_version_folder(model_dir, "train", |temp| {
        let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        Tensor::write_safetensors(&named, temp.join(WEIGHTS_FILE))
            .with_context(|| format!("cannot write {}", temp.join(WEIGHTS_FILE).display()))?;
        metrics.train_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        std::fs::write(
            temp.join(METRICS_FILE),
            serde_json::to_vec_pretty(&*metrics)?,
        )?;
        Ok(())
    })
}

/// Creates a new version folder of `model_dir` without a window in which the server could see
/// it half written: `fill` writes the files into a temporary folder `.tmp-<purpose>-...`
/// (ignored by the repository), which is then renamed to the next free version number.
/// Returns the version and its folder; on error the temporary folder is removed.
pub(crate) fn write_version_folder(
    model_dir: &Path,
    purpose: &str,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, PathBuf)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temp = model_dir.join(format!(".tmp-{purpose}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    let result = (|| -> anyhow::Result<(u64, PathBuf)> {
        fill(&temp)?;
        // Another writer may take a number between our look and our rename: try the next one.
        for _ in 0..16 {
            let version = version_numbers(model_dir)?.last().copied().unwrap_or(0) + 1;
            let dir = model_dir.join(version.to_string());
            if dir.exists() {
                continue;
            }
            match std::fs::rename(&temp, &dir) {
                Ok(()) => return Ok((version, dir)),
                Err(_) if dir.exists() => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot rename {} to {}", temp.display(), dir.display())
                    })
                }
            }
        }
        bail!(
            "cannot find a free version number in {}",
            model_dir.display()
        )
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Writes a file through a temporary sibling and a rename.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, contents).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Activation;

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

    #[test]
    fn existing_config_must_fit_the_data() {
        let data = Dataset {
            features: vec![0.0; 12],
            labels: vec![0, 1, 2, 3],
            feature_count: 3,
        };
        let cce = LossKind::CategoricalCrossentropy;
        let e = check_config_fits(&dense_classifier(4, 8, 4), &data, cce).unwrap_err();
        assert!(
            e.to_string()
                .contains("takes 4 features per row, the data has 3"),
            "{e}"
        );
        let e = check_config_fits(&dense_classifier(3, 8, 3), &data, cce).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 classes, the data has labels up to 3"),
            "{e}"
        );
        let mut relu_last = dense_classifier(3, 8, 4);
        relu_last.layers[1].activation = Activation::Relu;
        let e = check_config_fits(&relu_last, &data, cce).unwrap_err();
        assert!(
            e.to_string()
                .contains("softmax (or none, for logits), got relu"),
            "{e}"
        );
        assert!(check_config_fits(&dense_classifier(3, 8, 4), &data, cce).is_ok());
        let e = check_config_fits(
            &dense_classifier(3, 8, 4),
            &data,
            LossKind::BinaryCrossentropy,
        )
        .unwrap_err();
        assert!(e.to_string().contains("to be sigmoid"), "{e}");
    }

    #[test]
    fn options_are_checked() {
        let options = TrainOptions::new("x.csv".into(), "repo".into(), "../escape".into());
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("model name"));
        let options = TrainOptions {
            model: "ok".into(),
            test_fraction: 1.0,
            ..options
        };
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("--test-fraction"));
        let options = TrainOptions {
            test_fraction: 0.2,
            momentum: 0.9,
            ..options
        };
        assert!(check_options(&options)
            .unwrap_err()
            .to_string()
            .contains("--momentum is for --optimizer sgd"));
    }
}
