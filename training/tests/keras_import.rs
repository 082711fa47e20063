//! `maas-train import keras`: the seed's real Keras file imports and the
//! served model reproduces Keras's own predictions; Sequential models, Keras 2 weight names and
//! layers without bias import too; anything else is refused with a message naming the layer.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hdf5_metno as h5;
use maas_backend::{Activation, DenseModel, ModelConfig};
use maas_train::{import_keras, read_keras_h5};
use serde_json::{json, Value};
use tch::Device;

use common::{workspace, Server, TempDir, TRAIN_BIN};

/// One test at a time uses HDF5 in this process. The HDF5 library's object ids are global and
/// reused once closed; with files created and opened from several test threads at once, a
/// file was sometimes still open (and locked) when the next step opened it.
///
/// Even so, a file written by a test was once still locked (HDF5's own `flock`, errno 11) when
/// the import opened it, in a clean-clone CI run: HDF5 file locking is turned off for this test
/// process (`HDF5_USE_FILE_LOCKING`, read by libhdf5 >= 1.10.7 at every open). The files are
/// private to each test, so the lock protects nothing here; the CLI keeps HDF5's default.
fn hdf5_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    // Set while holding the lock: no other test is inside libhdf5 (which reads it with getenv).
    std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
    guard
}

fn seed_dir() -> PathBuf {
    workspace().join("data/seed-keras")
}

/// A CSV of floats, one row per line.
fn read_csv(path: &Path) -> Vec<Vec<f32>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test]
async fn the_seed_keras_file_reproduces_keras_predictions() {
    let repo = TempDir::new("seed");
    let output = Command::new(TRAIN_BIN)
        .args(["import", "keras"])
        .arg(seed_dir().join("model.h5"))
        .arg("--repo")
        .arg(repo.path())
        .args(["--name", "seed-keras"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("seed-keras/1"), "{stdout}");

    // The written configuration: Input(100) -> Dense(128, relu) -> Dense(10, softmax).
    let model_dir = repo.path().join("seed-keras");
    let config = ModelConfig::from_file(&model_dir.join("config.toml")).unwrap();
    assert_eq!(config.inputs[0].name, "input");
    assert_eq!(config.inputs[0].dims, vec![100]);
    assert_eq!(config.outputs[0].name, "probabilities");
    assert_eq!(config.outputs[0].dims, vec![10]);
    let layers: Vec<_> = config
        .layers
        .iter()
        .map(|l| (l.in_features, l.out_features, l.activation, l.bias))
        .collect();
    assert_eq!(
        layers,
        vec![
            (100, 128, Activation::Relu, true),
            (128, 10, Activation::Softmax, true)
        ]
    );
    let source: Value =
        serde_json::from_slice(&std::fs::read(model_dir.join("1/keras.json")).unwrap()).unwrap();
    assert_eq!(source["keras_version"], "3.15.1");
    assert_eq!(source["layers"], json!(["dense", "dense_1"]));

    // Keras's own predictions for the probe rows, in process ...
    let probes = read_csv(&seed_dir().join("probe_inputs.csv"));
    let expected = read_csv(&seed_dir().join("probe_outputs.csv"));
    assert_eq!((probes.len(), expected.len()), (4, 4));
    let model =
        DenseModel::load(&config, &model_dir.join("1/model.safetensors"), Device::Cpu).unwrap();
    let flat: Vec<f32> = probes.concat();
    let got = model.forward_rows(&flat, 4).unwrap();
    let diff = max_abs_diff(&got, &expected.concat());
    eprintln!("seed-keras: max abs difference to Keras's predictions over 4 probe rows: {diff:e}");
    assert!(diff <= 1e-5, "max abs difference {diff} > 1e-5");

    // ... and over HTTP from the real server, row by row.
    let server = Server::start(repo.path(), &[]);
    let client = reqwest::Client::new();
    for (row, want) in probes.iter().zip(&expected) {
        let body = json!({"inputs": [{"name": "input", "shape": [1, 100], "datatype": "FP32", "data": row}]});
        let response = client
            .post(server.url("/v2/models/seed-keras/infer"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", server.log());
        let answer: Value = response.json().await.unwrap();
        let output = &answer["outputs"][0];
        assert_eq!(output["name"], "probabilities");
        assert_eq!(output["shape"], json!([1, 10]));
        let got: Vec<f32> = output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = max_abs_diff(&got, want);
        assert!(diff <= 1e-5, "max abs difference {diff} > 1e-5 over HTTP");
        let best = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        };
        assert_eq!(best(&got), best(want));
    }

    // A second import is the next version of the same model.
    let report = {
        let _h5 = hdf5_lock();
        import_keras(&seed_dir().join("model.h5"), repo.path(), "seed-keras").unwrap()
    };
    assert_eq!(report.version, 2);
    assert!(model_dir.join("2/model.safetensors").is_file());
}

/// One layer of a synthetic model: (Keras class, name, config, weights as (path, shape, data)).
type Layer = (
    &'static str,
    &'static str,
    Value,
    Vec<(&'static str, Vec<usize>, Vec<f32>)>,
);

/// How `model_config` is stored: Keras 3 / h5py `str` (variable-length UTF-8) or old Keras
/// 2 `bytes` (fixed-length ASCII).
#[derive(Clone, Copy, PartialEq)]
enum StringKind {
    VarLen,
    Fixed,
}

/// Writes a Keras-style HDF5 model: `model_config` (a Sequential or Functional model of
/// `layers`) and `model_weights/<layer>/<path>` datasets.
fn write_h5(path: &Path, class_name: &str, layers: &[Layer]) {
    write_h5_as(path, class_name, layers, StringKind::VarLen)
}

fn write_h5_as(path: &Path, class_name: &str, layers: &[Layer], kind: StringKind) {
    let file = h5::File::create(path).unwrap();
    let mut json_layers = Vec::new();
    let mut previous: Option<&str> = None;
    for (class, name, config, _) in layers {
        let mut config = config.clone();
        config["name"] = json!(name);
        let mut layer = json!({"class_name": class, "config": config, "name": name});
        if class_name == "Functional" {
            layer["inbound_nodes"] = match previous {
                None => json!([]),
                Some(p) => json!([{"args": [{"class_name": "__keras_tensor__",
                    "config": {"shape": [null, 4], "dtype": "float32", "keras_history": [p, 0, 0]}}],
                    "kwargs": {}}]),
            };
        }
        json_layers.push(layer);
        previous = Some(name);
    }
    let mut config = json!({"name": "m", "layers": json_layers});
    if class_name == "Functional" {
        config["input_layers"] = json!([layers[0].1, 0, 0]);
        config["output_layers"] = json!([layers[layers.len() - 1].1, 0, 0]);
    }
    let model_config = json!({"class_name": class_name, "config": config}).to_string();
    if kind == StringKind::VarLen {
        let text: h5::types::VarLenUnicode = model_config.parse().unwrap();
        file.new_attr::<h5::types::VarLenUnicode>()
            .create("model_config")
            .unwrap()
            .write_scalar(&text)
            .unwrap();
    } else {
        let text = h5::types::FixedAscii::<4096>::from_ascii(model_config.as_bytes()).unwrap();
        file.new_attr::<h5::types::FixedAscii<4096>>()
            .create("model_config")
            .unwrap()
            .write_scalar(&text)
            .unwrap();
    }
    let weights = file.create_group("model_weights").unwrap();
    for (_, name, _, tensors) in layers {
        let group = weights.create_group(name).unwrap();
        for (tensor_path, shape, data) in tensors {
            let (dirs, leaf) = match tensor_path.rsplit_once('/') {
                Some((dirs, leaf)) => (Some(dirs), leaf),
                None => (None, *tensor_path),
            };
            let parent = match dirs {
                Some(dirs) => group
                    .group(dirs)
                    .or_else(|_| group.create_group(dirs))
                    .unwrap(),
                None => group.clone(),
            };
            parent
                .new_dataset::<f32>()
                .shape(shape.clone())
                .create(leaf)
                .unwrap()
                .write_raw(data)
                .unwrap();
        }
    }
    drop(weights);
    file.close().unwrap();
}

fn dense(units: i64, activation: &str, use_bias: bool) -> Value {
    json!({"units": units, "activation": activation, "use_bias": use_bias, "trainable": true})
}

fn input(features: i64) -> Layer {
    (
        "InputLayer",
        "input_layer",
        json!({"batch_shape": [null, features], "dtype": "float32"}),
        vec![],
    )
}

/// The import error for a synthetic model.
fn import_error(label: &str, class_name: &str, layers: &[Layer]) -> String {
    let dir = TempDir::new(label);
    let file = dir.path().join("model.h5");
    write_h5(&file, class_name, layers);
    let error = import_keras(&file, &dir.path().join("repo"), "m").unwrap_err();
    assert!(
        !dir.path().join("repo/m").exists(),
        "a refused import wrote nothing"
    );
    format!("{error:#}")
}

#[test]
fn a_keras2_sequential_model_without_bias_imports_and_computes_keras_math() {
    let _h5 = hdf5_lock();
    // Keras 2 layout: model_config as fixed-length bytes, no InputLayer (batch_input_shape on
    // the first layer), weights named `<layer>/kernel:0`; a tanh layer without bias, then
    // sigmoid, then linear.
    let k1: Vec<f32> = vec![0.5, -1.0, 0.25, 2.0, -0.5, 1.5]; // [in 2, out 3], row-major
    let k2: Vec<f32> = vec![1.0, -2.0, 0.5]; // [3, 1]
    let b2 = vec![0.1];
    let k3 = vec![3.0, -1.0]; // [1, 2]
    let b3 = vec![0.5, 0.25];
    let mut first = dense(3, "tanh", false);
    first["batch_input_shape"] = json!([null, 2]);
    let layers: Vec<Layer> = vec![
        (
            "Dense",
            "dense",
            first,
            vec![("dense/kernel:0", vec![2, 3], k1.clone())],
        ),
        (
            "Dense",
            "dense_1",
            dense(1, "sigmoid", true),
            vec![
                ("dense_1/kernel:0", vec![3, 1], k2.clone()),
                ("dense_1/bias:0", vec![1], b2.clone()),
            ],
        ),
        (
            "Dense",
            "dense_2",
            dense(2, "linear", true),
            vec![
                ("dense_2/kernel:0", vec![1, 2], k3.clone()),
                ("dense_2/bias:0", vec![2], b3.clone()),
            ],
        ),
    ];
    let dir = TempDir::new("seq");
    let file = dir.path().join("model.h5");
    write_h5_as(&file, "Sequential", &layers, StringKind::Fixed);
    let keras = read_keras_h5(&file).unwrap();
    assert_eq!(keras.class_name, "Sequential");
    let config = keras.config().unwrap();
    assert_eq!(config.outputs[0].name, "output");
    let shape: Vec<_> = config
        .layers
        .iter()
        .map(|l| (l.in_features, l.out_features, l.activation, l.bias))
        .collect();
    assert_eq!(
        shape,
        vec![
            (2, 3, Activation::Tanh, false),
            (3, 1, Activation::Sigmoid, true),
            (1, 2, Activation::None, true)
        ]
    );
    // Keras: y = act(x @ kernel + bias), by hand.
    let x = [0.3f32, -0.7];
    let h1: Vec<f32> = (0..3)
        .map(|j| (x[0] * k1[j] + x[1] * k1[3 + j]).tanh())
        .collect();
    let z2 = h1[0] * k2[0] + h1[1] * k2[1] + h1[2] * k2[2] + b2[0];
    let h2 = 1.0 / (1.0 + (-z2).exp());
    let want = [h2 * k3[0] + b3[0], h2 * k3[1] + b3[1]];

    let report = import_keras(&file, &dir.path().join("repo"), "seq").unwrap();
    assert_eq!(report.version, 1);
    let model = DenseModel::load(
        &report.config,
        &report.dir.join("model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let got = model.forward_rows(&x, 1).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-6, "{got:?} vs {want:?}");
}

#[test]
fn a_functional_chain_with_keras3_names_imports() {
    let _h5 = hdf5_lock();
    let layers: Vec<Layer> = vec![
        input(4),
        (
            "Dense",
            "hidden",
            dense(2, "relu", true),
            vec![
                ("hidden/kernel", vec![4, 2], vec![1.0; 8]),
                ("hidden/bias", vec![2], vec![0.0, -10.0]),
            ],
        ),
        (
            "Dense",
            "out",
            dense(2, "softmax", false),
            vec![("out/kernel", vec![2, 2], vec![1.0, 0.0, 0.0, 1.0])],
        ),
    ];
    let dir = TempDir::new("fn");
    let file = dir.path().join("model.h5");
    write_h5(&file, "Functional", &layers);
    let report = import_keras(&file, &dir.path().join("repo"), "fn").unwrap();
    let model = DenseModel::load(
        &report.config,
        &report.dir.join("model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    // hidden = relu([1, 1] * sum(x) + [0, -10]) = [1, 0] for x summing to 1; softmax([1, 0]).
    let got = model.forward_rows(&[0.25, 0.25, 0.25, 0.25], 1).unwrap();
    let e = 1f32.exp();
    assert!(
        max_abs_diff(&got, &[e / (e + 1.0), 1.0 / (e + 1.0)]) < 1e-6,
        "{got:?}"
    );
}

#[test]
fn other_layers_and_activations_are_refused_naming_the_layer() {
    let _h5 = hdf5_lock();
    // A convolution.
    let conv: Vec<Layer> = vec![
        input(4),
        (
            "Conv1D",
            "conv1d_7",
            json!({"filters": 2, "kernel_size": [3], "activation": "relu"}),
            vec![
                ("conv1d_7/kernel", vec![3, 1, 2], vec![0.0; 6]),
                ("conv1d_7/bias", vec![2], vec![0.0; 2]),
            ],
        ),
    ];
    let e = import_error("conv", "Functional", &conv);
    assert!(e.contains("layer 'conv1d_7' is a Conv1D"), "{e}");

    // A Dense layer with an activation not supported (selu), after a good one.
    let selu: Vec<Layer> = vec![
        (
            "Dense",
            "dense",
            dense(3, "relu", true),
            vec![
                ("dense/kernel", vec![4, 3], vec![0.0; 12]),
                ("dense/bias", vec![3], vec![0.0; 3]),
            ],
        ),
        (
            "Dense",
            "dense_selu",
            dense(2, "selu", true),
            vec![
                ("dense_selu/kernel", vec![3, 2], vec![0.0; 6]),
                ("dense_selu/bias", vec![2], vec![0.0; 2]),
            ],
        ),
    ];
    let e = import_error("selu", "Sequential", &selu);
    assert!(
        e.contains("layer 'dense_selu': activation 'selu' is not supported"),
        "{e}"
    );

    // Dropout is not a Dense layer either (nothing is silently skipped).
    let dropout: Vec<Layer> = vec![
        (
            "Dense",
            "dense",
            dense(3, "relu", true),
            vec![
                ("dense/kernel", vec![4, 3], vec![0.0; 12]),
                ("dense/bias", vec![3], vec![0.0; 3]),
            ],
        ),
        ("Dropout", "dropout", json!({"rate": 0.5}), vec![]),
    ];
    let e = import_error("dropout", "Sequential", &dropout);
    assert!(e.contains("layer 'dropout' is a Dropout"), "{e}");

    // A kernel whose shape disagrees with units.
    let bad_shape: Vec<Layer> = vec![(
        "Dense",
        "dense_bad",
        dense(3, "relu", true),
        vec![
            ("dense_bad/kernel", vec![4, 2], vec![0.0; 8]),
            ("dense_bad/bias", vec![3], vec![0.0; 3]),
        ],
    )];
    let e = import_error("shape", "Sequential", &bad_shape);
    assert!(
        e.contains("layer 'dense_bad': kernel has shape [4, 2], expected [in, 3]"),
        "{e}"
    );

    // use_bias true without a bias weight.
    let no_bias: Vec<Layer> = vec![(
        "Dense",
        "dense_nb",
        dense(3, "relu", true),
        vec![("dense_nb/kernel", vec![4, 3], vec![0.0; 12])],
    )];
    let e = import_error("nobias", "Sequential", &no_bias);
    assert!(
        e.contains("layer 'dense_nb': use_bias is true but there is no bias weight"),
        "{e}"
    );

    // An input of images, not rows of features.
    let images: Vec<Layer> = vec![
        (
            "InputLayer",
            "pixels",
            json!({"batch_shape": [null, 28, 28]}),
            vec![],
        ),
        (
            "Dense",
            "dense",
            dense(3, "relu", true),
            vec![
                ("dense/kernel", vec![28, 3], vec![0.0; 84]),
                ("dense/bias", vec![3], vec![0.0; 3]),
            ],
        ),
    ];
    let e = import_error("images", "Functional", &images);
    assert!(
        e.contains("layer 'pixels': input shape [null,28,28]"),
        "{e}"
    );
}

#[test]
fn a_file_without_model_config_is_refused() {
    let _h5 = hdf5_lock();
    let dir = TempDir::new("weights-only");
    let file = dir.path().join("weights.h5");
    h5::File::create(&file)
        .unwrap()
        .create_group("dense")
        .unwrap();
    let e = format!("{:#}", read_keras_h5(&file).unwrap_err());
    assert!(e.contains("no root attribute 'model_config'"), "{e}");
    let e = format!(
        "{:#}",
        read_keras_h5(&workspace().join("data/seed-keras/probe_inputs.csv")).unwrap_err()
    );
    assert!(e.contains("cannot open as HDF5"), "{e}");
}
