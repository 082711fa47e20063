//! Training of a dense classifier from a CSV table into a new version of a model in the
//! repository (`maas-train train`).
//!
//! The recipe is the seed document's: `input -> hidden relu -> classes softmax`, mini-batches
//! reshuffled every epoch, by default Adam and categorical cross-entropy (computed on the
//! logits; the softmax is the served model's last layer). `--optimizer sgd` (with
//! `--momentum`) and `--loss binary-crossentropy|mse` are the alternatives ([`crate::optim`],
//! [`crate::loss`] say exactly what each computes and which last activation each needs).
//! Inputs are standardized during training (per feature, with the training rows' mean and
//! standard deviation), and the standardization is then folded into the first layer
//! (`W' = W / std`, `b' = b - W' mean`), so the served model takes raw feature values, exactly
//! as clients send them.
//!
//! Reproducible: one `--seed` drives the train/test split, the initial weights and the per-epoch
//! shuffles, through a generator of this crate ([`crate::rng`]) whose draws depend only on `(seed,
//! purpose, index)`: epoch `e`'s order is the same in a fresh and in a resumed run.
//!
//! Each epoch ends with a checkpoint ([`crate::checkpoint`]); `--resume` continues from one, and
//! the result is the uninterrupted run's. `--devices` trains data-parallel ([`crate::parallel`]):
//! one replica per device, each computing the gradient of its shard of every batch.
//!
//! The new version is written to a hidden temporary folder in the model folder (ignored by the
//! repository loader) and renamed to `<N>` when complete, so no half-written version is ever
//! visible.
//!
//! The run, in the order of its submodules: [`options`] are checked; [`split`] holds out the
//! test rows and measures the standardization; [`mod@fit`] runs the epochs (from scratch or from
//! a checkpoint); [`fold`] folds the standardization into the first layer; [`report`] writes
//! the version folder and says what was written.

mod fit;
mod fold;
mod options;
mod report;
mod split;

use anyhow::{bail, ensure, Context};
use maas_backend::{dense_classifier, DenseModel, ModelConfig, CONFIG_FILE};
use tch::Device;

use crate::checkpoint::{self, RunSettings};
use crate::dataset::Dataset;
use crate::loss::{LossKind, Objective};
use crate::metrics::Metrics;
use crate::net::Net;
use crate::parallel::{device_name, parse_device};
use crate::version_writer::write_atomically;
use fit::fit;
use fold::{clone_tensors, fold_standardization, named_tensors};
use options::check_options;
use split::{Rows, Split};

pub use options::TrainOptions;
pub use report::TrainReport;

/// The folder in a model folder that holds checkpoints by default (hidden: the repository
/// loader ignores it).
pub const CHECKPOINTS_FOLDER: &str = ".checkpoints";

/// Trains a model version and writes it to the repository. Progress goes to stderr: a
/// progress bar while an epoch runs (on a terminal), then one line per epoch.
///
/// Errors: bad options, unreadable data, a config that does not fit the data or the loss, an
/// absent device, a checkpoint that does not match the run, a diverging loss, I/O.
pub fn train(options: &TrainOptions) -> anyhow::Result<TrainReport> {
    let started = std::time::Instant::now();
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
    let metrics = Metrics {
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
    report::write_version(&model_dir, &tensors, metrics, started)
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

/// Accuracy of the served model on raw rows.
fn served_accuracy(model: &DenseModel, objective: &Objective, rows: &Rows) -> anyhow::Result<f64> {
    let scores = tch::no_grad(|| model.forward(&rows.x))?;
    let correct = objective.correct(&scores, &rows.y)?;
    Ok(correct as f64 / rows.rows().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_backend::Activation;

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
}
