//! Training of a dense classifier from a CSV table into a new version of a model in the
//! repository (`maas-backend train`).
//!
//! The recipe is the seed document's: `input -> hidden relu -> classes softmax`, Adam,
//! categorical cross-entropy (computed on the logits; the softmax is the served model's last
//! layer), mini-batches reshuffled every epoch. Inputs are standardized during training (per
//! feature, with the training rows' mean and standard deviation), and the standardization is
//! then folded into the first layer (`W' = W / std`, `b' = b - W' mean`), so the served model
//! takes raw feature values, exactly as clients send them.
//!
//! Reproducible: one `--seed` drives the train/test split, the initial weights and the
//! per-epoch shuffles (`tch::manual_seed`).
//!
//! The new version is written to a hidden temporary folder in the model folder (ignored by the
//! repository loader) and renamed to `<N>` when complete, so no half-written version is ever
//! visible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::config::{dense_classifier, Activation, ModelConfig, CONFIG_FILE};
use crate::dataset::Dataset;
use crate::dense::{activate, bias_name, weight_name, DenseModel, WEIGHTS_FILE};
use crate::repository::version_numbers;

/// The file name of a version's training metrics.
pub const METRICS_FILE: &str = "metrics.json";

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
    /// Passes over the training rows.
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the split, the initialization and the shuffles.
    pub seed: u64,
    /// Share of rows held out for the test accuracy, in (0, 1).
    pub test_fraction: f64,
}

/// What a training run measured; written to `<N>/metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy of the written (served) model on the held-out rows, raw inputs.
    pub test_accuracy: f64,
    /// Accuracy of the written model on the training rows.
    pub train_accuracy: f64,
    /// Passes over the training rows.
    pub epochs: usize,
    /// The seed of the run.
    pub seed: u64,
    /// Rows trained on.
    pub rows_train: usize,
    /// Rows held out.
    pub rows_test: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Mean cross-entropy of the last epoch.
    pub final_loss: f64,
    /// Wall time of loading, training and writing, in seconds.
    pub train_seconds: f64,
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

/// Trains a model version and writes it to the repository. Progress goes to stderr.
pub fn train(options: &TrainOptions) -> anyhow::Result<TrainReport> {
    let started = Instant::now();
    check_options(options)?;
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
        check_config_fits(&config, &data)
            .with_context(|| format!("{} does not fit the data", config_path.display()))?;
        eprintln!("using the layers of {}", config_path.display());
        (config, false)
    } else {
        let classes = data.classes();
        ensure!(
            classes >= 2,
            "the labels have only {classes} class; need at least 2"
        );
        let features = i64::try_from(data.feature_count)?;
        (dense_classifier(features, options.hidden, classes), true)
    };

    tch::manual_seed(options.seed as i64);
    let split = Split::new(&data, options.test_fraction, config.layers[0].bias)?;
    let trained = fit(&config, &split, options)?;
    let tensors = fold_standardization(&config, trained.tensors, &split.mean, &split.std)?;

    // Measure the artifact that will be served: folded weights, raw inputs.
    let served = DenseModel::from_tensors(&config, clone_tensors(&tensors), Device::Cpu)
        .map_err(|e| anyhow::anyhow!("the trained weights do not load: {e}"))?;
    let test_accuracy = served_accuracy(&served, &split.test)?;
    let train_accuracy = served_accuracy(&served, &split.train)?;

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
        lr: options.lr,
        final_loss: trained.final_loss,
        train_seconds: 0.0,
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
/// softmax or no activation (training optimizes cross-entropy on the last layer's logits).
fn check_config_fits(config: &ModelConfig, data: &Dataset) -> anyhow::Result<()> {
    let features = config.inputs[0].row_elements();
    ensure!(
        usize::try_from(features).ok() == Some(data.feature_count),
        "the input takes {features} features per row, the data has {}",
        data.feature_count
    );
    let classes = config.outputs[0].row_elements();
    ensure!(
        data.classes() <= classes,
        "the output has {classes} classes, the data has labels up to {}",
        data.classes() - 1
    );
    let last = config.layers.last().map(|l| l.activation);
    ensure!(
        matches!(last, Some(Activation::Softmax | Activation::None)),
        "training needs the last layer's activation to be softmax or none, got {}",
        last.unwrap_or_default()
    );
    Ok(())
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
    /// Shuffles with the seeded RNG and holds out `round(rows * test_fraction)` rows
    /// (at least 1, at most rows - 1). `center`: whether to subtract the mean, which only a
    /// first layer with a bias can absorb.
    fn new(data: &Dataset, test_fraction: f64, center: bool) -> anyhow::Result<Split> {
        let rows = data.rows() as i64;
        let x = Tensor::f_from_slice(&data.features)?.f_view([rows, data.feature_count as i64])?;
        let y = Tensor::f_from_slice(&data.labels)?;
        let order = Tensor::f_randperm(rows, (Kind::Int64, Device::Cpu))?;
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
    tensors: HashMap<String, Tensor>,
    final_loss: f64,
}

/// Trains the config's layers on standardized inputs; returns the weights (named as in
/// `model.safetensors`, not yet folded).
fn fit(config: &ModelConfig, split: &Split, options: &TrainOptions) -> anyhow::Result<Trained> {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let layers: Vec<nn::Linear> = config
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            nn::linear(
                &root / "layers" / i,
                layer.in_features,
                layer.out_features,
                nn::LinearConfig {
                    bias: layer.bias,
                    ..Default::default()
                },
            )
        })
        .collect();
    let logits = |x: &Tensor| -> Result<Tensor, tch::TchError> {
        let mut x = x.shallow_clone();
        let last = layers.len() - 1;
        for (i, (layer, layer_config)) in layers.iter().zip(&config.layers).enumerate() {
            x = x.f_linear(&layer.ws, layer.bs.as_ref())?;
            if i < last {
                x = activate(&x, layer_config.activation)?;
            }
        }
        Ok(x)
    };
    let standardize =
        |x: &Tensor| -> Result<Tensor, tch::TchError> { x.f_sub(&split.mean)?.f_div(&split.std) };
    let train_x = standardize(&split.train.x)?;
    let test_x = standardize(&split.test.x)?;
    let train_y = &split.train.y;
    let mut optimizer = nn::Adam::default().build(&vs, options.lr)?;

    let rows = split.train.rows() as i64;
    let batch = options.batch_size as i64;
    let mut final_loss = f64::NAN;
    for epoch in 1..=options.epochs {
        let order = Tensor::f_randperm(rows, (Kind::Int64, Device::Cpu))?;
        let mut loss_sum = 0.0;
        let mut start = 0;
        while start < rows {
            let size = batch.min(rows - start);
            let index = order.f_narrow(0, start, size)?;
            let xb = train_x.f_index_select(0, &index)?;
            let yb = train_y.f_index_select(0, &index)?;
            let loss = logits(&xb)?.f_cross_entropy_loss::<Tensor>(
                &yb,
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            )?;
            optimizer.backward_step(&loss);
            loss_sum += loss.f_double_value(&[])? * size as f64;
            start += size;
        }
        final_loss = loss_sum / rows as f64;
        let (train_accuracy, test_accuracy) =
            tch::no_grad(|| -> Result<(f64, f64), tch::TchError> {
                Ok((
                    accuracy(&logits(&train_x)?, train_y)?,
                    accuracy(&logits(&test_x)?, &split.test.y)?,
                ))
            })?;
        eprintln!(
            "epoch {epoch:>3}/{}: loss {final_loss:.4}, train accuracy {train_accuracy:.4}, test accuracy {test_accuracy:.4}",
            options.epochs
        );
    }
    ensure!(
        final_loss.is_finite(),
        "training diverged (loss {final_loss}); try a smaller --lr"
    );

    let mut tensors = HashMap::new();
    for (i, layer) in layers.iter().enumerate() {
        tensors.insert(weight_name(i), layer.ws.detach().copy());
        if let Some(bias) = &layer.bs {
            tensors.insert(bias_name(i), bias.detach().copy());
        }
    }
    Ok(Trained {
        tensors,
        final_loss,
    })
}

/// Share of rows whose argmax matches the label.
fn accuracy(scores: &Tensor, labels: &Tensor) -> Result<f64, tch::TchError> {
    scores
        .f_argmax(1, false)?
        .f_eq_tensor(labels)?
        .f_to_kind(Kind::Float)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])
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
fn served_accuracy(model: &DenseModel, rows: &Rows) -> anyhow::Result<f64> {
    let scores = tch::no_grad(|| model.forward(&rows.x))?;
    Ok(accuracy(&scores, &rows.y)?)
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
        let e = check_config_fits(&dense_classifier(4, 8, 4), &data).unwrap_err();
        assert!(
            e.to_string()
                .contains("takes 4 features per row, the data has 3"),
            "{e}"
        );
        let e = check_config_fits(&dense_classifier(3, 8, 3), &data).unwrap_err();
        assert!(
            e.to_string()
                .contains("3 classes, the data has labels up to 3"),
            "{e}"
        );
        let mut relu_last = dense_classifier(3, 8, 4);
        relu_last.layers[1].activation = Activation::Relu;
        let e = check_config_fits(&relu_last, &data).unwrap_err();
        assert!(e.to_string().contains("softmax or none, got relu"), "{e}");
        assert!(check_config_fits(&dense_classifier(3, 8, 4), &data).is_ok());
    }

    #[test]
    fn options_are_checked() {
        let options = TrainOptions {
            data: "x.csv".into(),
            repo: "repo".into(),
            model: "../escape".into(),
            hidden: 8,
            epochs: 1,
            batch_size: 1,
            lr: 0.001,
            seed: 1,
            test_fraction: 0.2,
        };
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
    }
}
