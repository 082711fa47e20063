//! `maas-train train`'s options on the real digits data: data-parallel training equals
//! single-device training, a resumed run equals the uninterrupted one, the other losses and
//! optimizers learn, and mistakes are refused with clear messages.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use maas_train::{train, LossKind, OptimizerKind, TrainOptions, TrainReport};
use tch::Tensor;

use common::TempDir;

fn digits() -> PathBuf {
    common::data_path()
}

/// Options for digits into `repo`, checkpoints in `repo/ckpt-<model>`.
fn options(repo: &Path, model: &str, epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        checkpoint_dir: Some(repo.join(format!("ckpt-{model}"))),
        ..TrainOptions::new(digits(), repo.to_path_buf(), model.into())
    }
}

/// One libtorch thread, as `maas-train train` uses by default (`--threads 1`).
fn one_thread() {
    tch::set_num_threads(1);
}

fn weights(report: &TrainReport) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(report.dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Training with `options` fails with an error whose chain contains `expected`.
fn assert_refused(options: &TrainOptions, expected: &str) {
    let e = train(options).unwrap_err();
    assert!(format!("{e:#}").contains(expected), "{e:#}");
}

/// The largest absolute difference between two versions' weights.
fn max_gap(a: &TrainReport, b: &TrainReport) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, t)| (t - &b[name]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn two_cpu_workers_match_one_device() {
    one_thread();
    let repo = TempDir::new("parallel");
    let epochs = 5;
    let started = std::time::Instant::now();
    let one = train(&options(repo.path(), "one", epochs)).unwrap();
    let one_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let two = train(&TrainOptions {
        devices: vec!["cpu".into(), "cpu".into()],
        ..options(repo.path(), "two", epochs)
    })
    .unwrap();
    let two_s = started.elapsed().as_secs_f64();
    let gap = max_gap(&one, &two);
    eprintln!(
        "1 device {one_s:.2} s, 2 CPU workers {two_s:.2} s; test accuracy {} vs {}; max weight gap {gap:e}",
        one.metrics.test_accuracy, two.metrics.test_accuracy
    );
    assert!(gap < 1e-4, "2 workers differ from 1 device by {gap}");
    assert!(
        two.metrics.test_accuracy >= 0.95,
        "test accuracy {}",
        two.metrics.test_accuracy
    );
    assert_eq!(two.metrics.devices, ["cpu", "cpu"]);
    // Three workers cut a batch of 32 unevenly (11, 11, 10 rows): the weighting still makes it
    // the batch's mean gradient.
    let three = train(&TrainOptions {
        devices: vec!["cpu".into(); 3],
        ..options(repo.path(), "three", epochs)
    })
    .unwrap();
    let gap = max_gap(&one, &three);
    assert!(gap < 1e-4, "3 workers differ from 1 device by {gap}");
    assert_eq!(two.metrics.history.len(), epochs);
}

#[test]
fn a_resumed_run_is_the_uninterrupted_run() {
    for (optimizer, lr, momentum) in [
        (OptimizerKind::Adam, 0.001, 0.0),
        (OptimizerKind::Sgd, 0.05, 0.9),
    ] {
        one_thread();
        let repo = TempDir::new("resume");
        let settings = |model: &str, epochs| TrainOptions {
            optimizer,
            lr,
            momentum,
            ..options(repo.path(), model, epochs)
        };
        let straight = train(&settings("straight", 4)).unwrap();
        // The latest 3 checkpoints are kept.
        let kept = repo.path().join("ckpt-straight");
        assert!(!kept.join("epoch-0001").exists() && kept.join("epoch-0002").is_dir());
        let first = train(&settings("resumed", 2)).unwrap();
        let checkpoint = repo.path().join("ckpt-resumed/epoch-0002");
        assert!(checkpoint.join("state.safetensors").is_file());
        assert_eq!(first.metrics.history.len(), 2);

        let resumed = train(&TrainOptions {
            resume: Some(checkpoint.clone()),
            checkpoint_dir: Some(repo.path().join("ckpt-resumed-2")),
            ..settings("resumed", 4)
        })
        .unwrap();
        let gap = max_gap(&straight, &resumed);
        assert!(gap < 1e-6, "{optimizer:?}: resumed run differs by {gap}");
        assert_eq!(
            resumed.metrics.resumed_from.as_deref(),
            Some(checkpoint.as_path())
        );
        // The same epochs with the same losses and accuracies (wall times differ; the
        // checkpoint's JSON may round the last bit of a float).
        assert_eq!(resumed.metrics.history.len(), 4);
        for (r, s) in resumed
            .metrics
            .history
            .iter()
            .zip(&straight.metrics.history)
        {
            assert_eq!(r.epoch, s.epoch);
            for (a, b) in [
                (r.loss, s.loss),
                (r.train_accuracy, s.train_accuracy),
                (r.test_accuracy, s.test_accuracy),
            ] {
                assert!((a - b).abs() < 1e-12, "epoch {}: {a} vs {b}", r.epoch);
            }
        }
        assert!(repo.path().join("ckpt-resumed-2/epoch-0004").is_dir());

        // Another learning rate is another run.
        assert_refused(
            &TrainOptions {
                resume: Some(checkpoint.clone()),
                lr: lr * 2.0,
                ..settings("resumed", 4)
            },
            "--lr: checkpoint",
        );
        assert_refused(
            &TrainOptions {
                resume: Some(checkpoint.clone()),
                ..settings("resumed", 2)
            },
            "nothing to train",
        );
    }
}

#[test]
fn every_loss_and_optimizer_learns_digits() {
    one_thread();
    let repo = TempDir::new("losses");
    for (model, loss, optimizer, lr, momentum, last) in [
        (
            "bce",
            LossKind::BinaryCrossentropy,
            OptimizerKind::Adam,
            0.003,
            0.0,
            "sigmoid",
        ),
        (
            "mse",
            LossKind::Mse,
            OptimizerKind::Adam,
            0.003,
            0.0,
            "softmax",
        ),
        (
            "sgd",
            LossKind::CategoricalCrossentropy,
            OptimizerKind::Sgd,
            0.05,
            0.9,
            "softmax",
        ),
    ] {
        let report = train(&TrainOptions {
            loss,
            optimizer,
            lr,
            momentum,
            ..options(repo.path(), model, 5)
        })
        .unwrap();
        eprintln!("{model}: test accuracy {}", report.metrics.test_accuracy);
        assert!(
            report.metrics.test_accuracy >= 0.9,
            "{model}: test accuracy {}",
            report.metrics.test_accuracy
        );
        let config = std::fs::read_to_string(repo.path().join(model).join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("activation = \"{last}\"")),
            "{config}"
        );
        assert_eq!(report.metrics.loss, loss);
    }
    // A softmax model cannot be trained with the binary cross-entropy.
    assert_refused(
        &TrainOptions {
            loss: LossKind::BinaryCrossentropy,
            ..options(repo.path(), "sgd", 1)
        },
        "to be sigmoid",
    );
}

#[test]
fn a_single_sigmoid_output_learns_two_classes() {
    one_thread();
    let repo = TempDir::new("binary");
    // Two Gaussian-ish blobs from a fixed formula: label 1 when x0 + x1 > 0.
    let mut csv = String::new();
    for i in 0..400 {
        let a = ((i * 37 % 101) as f64 / 50.0) - 1.0;
        let b = ((i * 53 % 97) as f64 / 48.0) - 1.0;
        csv.push_str(&format!("{a},{b},{}\n", u8::from(a + b > 0.0)));
    }
    std::fs::write(repo.path().join("blobs.csv"), csv).unwrap();
    std::fs::create_dir_all(repo.path().join("blobs")).unwrap();
    std::fs::write(
        repo.path().join("blobs/config.toml"),
        "platform = \"dense\"\n[[inputs]]\nname = \"input\"\ndatatype = \"FP32\"\ndims = [2]\n\
         [[outputs]]\nname = \"probability\"\ndatatype = \"FP32\"\ndims = [1]\n\
         [[layers]]\nin = 2\nout = 8\nactivation = \"relu\"\n\
         [[layers]]\nin = 8\nout = 1\nactivation = \"sigmoid\"\n",
    )
    .unwrap();
    let report = train(&TrainOptions {
        data: repo.path().join("blobs.csv"),
        loss: LossKind::BinaryCrossentropy,
        lr: 0.01,
        ..options(repo.path(), "blobs", 20)
    })
    .unwrap();
    assert!(
        report.metrics.test_accuracy >= 0.9,
        "test accuracy {}",
        report.metrics.test_accuracy
    );
    assert_refused(
        &TrainOptions {
            data: repo.path().join("blobs.csv"),
            ..options(repo.path(), "blobs", 1)
        },
        "to be softmax",
    );
}

#[test]
fn devices_that_are_not_there_are_refused() {
    let repo = TempDir::new("devices");
    let absent = format!("cuda:{}", tch::Cuda::device_count());
    for (device, expected) in [
        (absent.as_str(), "requested but"),
        ("gpu", "expected \"cpu\", \"cuda\" or \"cuda:N\""),
    ] {
        assert_refused(
            &TrainOptions {
                devices: vec!["cpu".into(), device.into()],
                ..options(repo.path(), "digits", 1)
            },
            expected,
        );
    }
}

/// The command line: the new flags reach the run and `metrics.json`; a bad value is a clap
/// error naming the choices.
#[test]
fn the_command_line_takes_the_new_flags() {
    let repo = TempDir::new("cli");
    let output = Command::new(env!("CARGO_BIN_EXE_maas-train"))
        .args(["train", "--data"])
        .arg(digits())
        .arg("--repo")
        .arg(repo.path())
        .args([
            "--model",
            "digits",
            "--epochs",
            "2",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--loss",
            "mse",
            "--devices",
            "cpu,cpu",
            "--batch-size",
            "64",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("epoch   2/2: loss"), "{stderr}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.path().join("digits/1/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["optimizer"], "sgd");
    assert_eq!(metrics["loss"], "mse");
    assert_eq!(metrics["momentum"], 0.9);
    assert_eq!(metrics["devices"], serde_json::json!(["cpu", "cpu"]));
    assert_eq!(metrics["history"].as_array().unwrap().len(), 2);
    assert!(metrics["resumed_from"].is_null());
    let checkpoints = repo.path().join("digits/.checkpoints");
    let run = std::fs::read_dir(&checkpoints)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(run.join("epoch-0002/checkpoint.json").is_file());
    assert!(run.join("epoch-0001").is_dir(), "the latest 3 are kept");

    let output = Command::new(env!("CARGO_BIN_EXE_maas-train"))
        .args(["train", "--data"])
        .arg(digits())
        .arg("--repo")
        .arg(repo.path())
        .args(["--model", "digits", "--loss", "hinge"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("categorical-crossentropy"), "{stderr}");
}
