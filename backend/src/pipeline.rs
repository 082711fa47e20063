//! A dense model split into pipeline stages (GPipe: Huang et al. 2019,
//! <https://arxiv.org/abs/1811.06965>), as its `config.toml` declares in `[pipeline]`
//! ([`crate::config::Pipeline`]).
//!
//! ```text
//! instance thread ──micro-batches 0..m──▶ stage 0 thread ──▶ stage 1 thread ──▶ ... ──▶ results
//!  (forward_rows: cut the batch,          (local: its layers    (remote: POST each micro-batch    (reassembled
//!   wait for every micro-batch)            on cpu / cuda:N)      to a serve-stage process)         in order)
//! ```
//!
//! [`PipelineModel`] implements [`Forward`], so the batcher, metrics and usage headers of
//! [`crate::worker`] work unchanged: a forward batch of `B` rows is cut into
//! `min(micro_batches, B)` micro-batches of near-equal rows, which go through one thread per
//! stage connected by channels; stage `k` computes micro-batch `i` while stage `k + 1` computes
//! `i - 1`. A local stage owns its layers on its device; a remote stage's thread posts each
//! micro-batch's activations as a binary tensor (Triton's binary tensor data extension,
//! [`crate::binary`]) to `POST /v2/models/{model}.layers-{first}-{end}/versions/{N}/infer` of a
//! `maas-backend serve-stage` process ([`load_stage`]), with the pipeline's `timeout_ms`.
//!
//! A stage that fails a micro-batch passes the error down instead of activations and skips the
//! rest of that batch, so every batch ends with exactly one answer per micro-batch: the first
//! error in micro-batch order, or the outputs concatenated in order. A remote stage that is
//! down, times out or answers an error is [`ForwardFailure::Unavailable`] (503 naming the
//! stage and its address); the pipeline stays in step for the next batch.
//!
//! Each stage's busy time goes to [`PipelineMetrics`] (for a remote stage, the compute time in
//! its `x-maas-compute-us` answer header), from which the bubble fraction is measured.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::binary::{encode_f32, HEADER_CONTENT_LENGTH};
use crate::config::{
    DeviceSpec, Instances, ModelConfig, Pipeline, Platform, TensorConfig, VersionPolicy,
    CONFIG_FILE,
};
use crate::datatype::Datatype;
use crate::dense::{DenseModel, WEIGHTS_FILE};
use crate::metrics::{PipelineMetrics, VersionMetrics};
use crate::repository::{
    batch_policy, version_numbers, LoadError, LoadedModel, ModelRepository, RepositoryOptions,
};
use crate::usage::COMPUTE_US_HEADER;
use crate::worker::{Forward, ForwardFailure, Worker};

/// The input tensor's name of a stage model (activations in, FP32 `[rows, in]`).
pub const STAGE_INPUT: &str = "input";
/// The output tensor's name of a stage model (activations out, FP32 `[rows, out]`).
pub const STAGE_OUTPUT: &str = "output";

/// How long a remote stage may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The name under which `serve-stage` serves layers `range` of `model`:
/// `{model}.layers-{first}-{end}` (`dense8.layers-4-8`). The range is in the name so that a
/// front whose config expects other layers at that address gets 404 at load instead of wrong
/// answers.
pub fn stage_model_name(model: &str, range: &Range<usize>) -> String {
    format!("{model}.layers-{}-{}", range.start, range.end)
}

/// The configuration of a stage model: layers `range` of the dense model `config`, input
/// [`STAGE_INPUT`] with dims `[in of layer first]`, output [`STAGE_OUTPUT`] with dims
/// `[out of layer end - 1]`, on `device`, one instance, no batching (each micro-batch is its
/// own forward pass). Errors when `config` is not dense or the range is not in its layers.
pub fn stage_config(
    config: &ModelConfig,
    range: Range<usize>,
    device: DeviceSpec,
) -> Result<ModelConfig, String> {
    if config.platform != Platform::Dense {
        return Err(format!(
            "only a dense model can be split into stages, this one is {}",
            config.platform.as_str()
        ));
    }
    let layers = config
        .layers
        .get(range.clone())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            format!(
                "layers {}..{} are not a non-empty range of the model's {} layers",
                range.start,
                range.end,
                config.layers.len()
            )
        })?;
    let tensor = |name: &str, features: i64| TensorConfig {
        name: name.to_string(),
        datatype: Datatype::Fp32,
        dims: vec![features],
    };
    let (Some(first), Some(last)) = (layers.first(), layers.last()) else {
        return Err("empty layer range".into());
    };
    let stage = ModelConfig {
        platform: Platform::Dense,
        max_batch_size: 0,
        dynamic_batching: None,
        instances: Instances {
            count: 1,
            device,
            intra_op_threads: None,
        },
        version_policy: VersionPolicy::All,
        warmup: Vec::new(),
        inputs: vec![tensor(STAGE_INPUT, first.in_features)],
        outputs: vec![tensor(STAGE_OUTPUT, last.out_features)],
        layers: layers.to_vec(),
        pipeline: None,
    };
    stage.validate().map_err(|e| e.0)?;
    Ok(stage)
}

/// Loads layers `range` of version `version` (default: the highest version folder) of the
/// dense model `model` in the repository `root` onto `device`, reading only those layers'
/// weights, and returns a repository that serves it alone under [`stage_model_name`] (what
/// `maas-backend serve-stage` serves). The model's own `[pipeline]`, batching and instances
/// are not used.
///
/// Errors name the file at fault: no such model or version, a config that is not dense, a
/// range outside its layers, weights that do not match, a device that is not present.
pub fn load_stage(
    root: &Path,
    model: &str,
    version: Option<u64>,
    range: Range<usize>,
    device: DeviceSpec,
    options: RepositoryOptions,
) -> Result<ModelRepository, LoadError> {
    let dir = root.join(model);
    let config_path = dir.join(CONFIG_FILE);
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |problem: String| LoadError { path, problem }
    };
    let config = ModelConfig::from_file(&config_path).map_err(|e| at(&config_path)(e.0))?;
    let version = match version {
        Some(v) => v,
        None => version_numbers(&dir)?.last().copied().ok_or_else(|| {
            at(&dir)("no version folders (expected numbered folders 1, 2, ...)".into())
        })?,
    };
    let weights = dir.join(version.to_string()).join(WEIGHTS_FILE);
    let stage = stage_config(&config, range.clone(), device).map_err(at(&config_path))?;
    let torch_device = device.resolve().map_err(at(&config_path))?;
    let dense = DenseModel::load_range(&config, &weights, range.clone(), torch_device)
        .map_err(at(&weights))?;
    let name = stage_model_name(model, &range);
    let worker = Worker::spawn(
        format!("{name}/{version}"),
        vec![Box::new(dense)],
        batch_policy(&stage, options.worker),
        Arc::new(VersionMetrics::default()),
    )
    .map_err(|e| at(&weights)(format!("cannot start the worker threads: {e}")))?;
    tracing::info!(model, version, first = range.start, end = range.end, %device, "stage loaded");
    let loaded = LoadedModel::ready(&name, stage, version, worker);
    Ok(ModelRepository::fixed(root, options, loaded))
}

/// The model version a [`PipelineModel`] serves: where its weights are and how remote stages
/// name it.
#[derive(Debug, Clone, Copy)]
pub struct PipelineVersion<'a> {
    /// The model's name (remote stages serve it as [`stage_model_name`]).
    pub model: &'a str,
    /// The version number (remote stages must serve the same one).
    pub version: u64,
    /// The version's `model.safetensors` (local stages read their layers from it).
    pub weights: &'a Path,
    /// libtorch intra-op threads of each local stage's thread.
    pub intra_op_threads: i32,
}

/// One micro-batch on its way through the stages.
#[derive(Debug)]
struct MicroBatch {
    /// Which forward batch it belongs to (stale answers are told apart by it).
    batch: u64,
    /// Its position in the batch.
    index: usize,
    /// Its rows.
    rows: i64,
    /// Row-major activations, or why an earlier stage failed it.
    data: Result<Vec<f32>, ForwardFailure>,
}

/// A dense model split into stages, one thread per stage (see the module documentation).
/// Dropping it stops and joins the stage threads.
#[derive(Debug)]
pub struct PipelineModel {
    /// To the first stage; `None` once dropping.
    first: Option<Sender<MicroBatch>>,
    /// From the last stage.
    last: Receiver<MicroBatch>,
    threads: Vec<JoinHandle<()>>,
    micro_batches: i64,
    in_features: i64,
    out_features: i64,
    next_batch: AtomicU64,
    metrics: Arc<PipelineMetrics>,
}

impl PipelineModel {
    /// Starts one thread per stage of `config`'s `[pipeline]`: a local stage loads its layers
    /// from `version.weights` onto its device; a remote stage checks, with
    /// `GET /v2/models/{stage}/versions/{N}`, that its address serves those layers of this
    /// version with the expected input and output shapes. `metrics` gets each stage's busy
    /// time (shared by the version's instances).
    ///
    /// Errors (as text naming the stage) when the config has no `[pipeline]`, a stage's
    /// layers or device cannot be loaded, or a remote stage does not answer as expected.
    pub fn start(
        config: &ModelConfig,
        version: PipelineVersion<'_>,
        metrics: Arc<PipelineMetrics>,
    ) -> Result<PipelineModel, String> {
        let Some(pipeline) = &config.pipeline else {
            return Err("the model has no [pipeline]".into());
        };
        let (Some(first), Some(last)) = (config.layers.first(), config.layers.last()) else {
            return Err("a dense model needs at least one layer".into());
        };
        let (first_tx, mut rx) = channel::<MicroBatch>();
        let mut threads = Vec::with_capacity(pipeline.stages.len());
        for (index, stage) in pipeline.stages.iter().enumerate() {
            let (tx, next_rx) = channel::<MicroBatch>();
            let make = stage_maker(config, pipeline, index, version)?;
            match spawn_stage(index, version, make, rx, tx, metrics.clone()) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    drop(first_tx);
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(format!(
                        "pipeline stage {index} (layers {}..{}): {e}",
                        stage.layers[0], stage.layers[1]
                    ));
                }
            }
            rx = next_rx;
        }
        Ok(PipelineModel {
            first: Some(first_tx),
            last: rx,
            threads,
            micro_batches: i64::from(pipeline.micro_batches.max(1)),
            in_features: first.in_features,
            out_features: last.out_features,
            next_batch: AtomicU64::new(0),
            metrics,
        })
    }
}

/// What a stage thread runs on each micro-batch: `rows` rows of activations in, the next
/// activations out, with the time the stage computed.
trait Stage {
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardFailure>;
}

/// Builds a stage on its own thread (libtorch state and the HTTP client stay on it).
type StageMaker = Box<dyn FnOnce() -> Result<Box<dyn Stage>, String> + Send>;

/// The constructor of stage `index` of `pipeline`, to run on the stage's thread.
fn stage_maker(
    config: &ModelConfig,
    pipeline: &Pipeline,
    index: usize,
    version: PipelineVersion<'_>,
) -> Result<StageMaker, String> {
    let stage = &pipeline.stages[index];
    let range = stage.range();
    match (&stage.device, &stage.address) {
        (Some(device), _) => {
            let device = device.resolve()?;
            let config = config.clone();
            let weights = version.weights.to_path_buf();
            Ok(Box::new(move || {
                let model = DenseModel::load_range(&config, &weights, range, device)?;
                Ok(Box::new(LocalStage { index, model }) as Box<dyn Stage>)
            }))
        }
        (None, Some(address)) => {
            let expected = stage_config(config, range.clone(), DeviceSpec::Cpu)?;
            let name = stage_model_name(version.model, &range);
            let base = format!(
                "http://{address}/v2/models/{name}/versions/{}",
                version.version
            );
            let address = address.clone();
            let timeout = Duration::from_millis(pipeline.timeout_ms);
            Ok(Box::new(move || {
                let stage = RemoteStage::connect(index, address, base, &expected, timeout)?;
                Ok(Box::new(stage) as Box<dyn Stage>)
            }))
        }
        (None, None) => Err(format!(
            "pipeline.stages[{index}] has neither device nor address"
        )),
    }
}

/// Spawns stage `index`'s thread: builds the stage there (waiting for it, so that a load error
/// is returned here), then runs micro-batches from `rx` into `tx` until `rx` closes.
fn spawn_stage(
    index: usize,
    version: PipelineVersion<'_>,
    make: StageMaker,
    rx: Receiver<MicroBatch>,
    tx: Sender<MicroBatch>,
    metrics: Arc<PipelineMetrics>,
) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
    let threads = version.intra_op_threads.max(1);
    let thread = std::thread::Builder::new()
        .name(format!(
            "stage {}/{}#{index}",
            version.model, version.version
        ))
        .spawn(move || {
            tch::set_num_threads(threads);
            let _no_grad = tch::no_grad_guard();
            let stage = match std::panic::catch_unwind(AssertUnwindSafe(make)) {
                Ok(Ok(stage)) => stage,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = ready_tx.send(Err("loading the stage panicked".into()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            run_stage(index, stage.as_ref(), &rx, &tx, &metrics);
        })
        .map_err(|e| format!("cannot start the stage thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err("the stage thread stopped while loading".into())
        }
    }
}

/// The loop of a stage thread: runs each micro-batch that still has activations, passes errors
/// on, and after a failure skips the rest of that batch (with the same error).
fn run_stage(
    index: usize,
    stage: &dyn Stage,
    rx: &Receiver<MicroBatch>,
    tx: &Sender<MicroBatch>,
    metrics: &PipelineMetrics,
) {
    let mut failed: Option<(u64, ForwardFailure)> = None;
    while let Ok(mut micro) = rx.recv() {
        if let Ok(input) = &micro.data {
            micro.data = match &failed {
                Some((batch, failure)) if *batch == micro.batch => Err(failure.clone()),
                _ => {
                    let started = Instant::now();
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(|| stage.run(input, micro.rows)))
                            .unwrap_or_else(|_| {
                                Err(ForwardFailure::Compute(format!(
                                    "pipeline stage {index} panicked"
                                )))
                            });
                    add_us(&metrics.stage_wall_us, index, started.elapsed());
                    match result {
                        Ok((output, busy)) => {
                            add_us(&metrics.stage_busy_us, index, busy);
                            Ok(output)
                        }
                        Err(failure) => {
                            failed = Some((micro.batch, failure.clone()));
                            Err(failure)
                        }
                    }
                }
            };
        }
        if tx.send(micro).is_err() {
            break;
        }
    }
}

fn add_us(counters: &[AtomicU64], index: usize, duration: Duration) {
    if let Some(counter) = counters.get(index) {
        VersionMetrics::add_us(counter, duration);
    }
}

impl Forward for PipelineModel {
    /// Cuts the `rows` rows into micro-batches, sends them all into the first stage, and
    /// reassembles the last stage's answers in order (or returns the first micro-batch's error).
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardFailure> {
        let started = Instant::now();
        let width = usize::try_from(self.in_features).unwrap_or(0);
        if rows <= 0 {
            return Ok(Vec::new());
        }
        if Some(input.len()) != usize::try_from(rows).ok().map(|r| r * width) {
            return Err(ForwardFailure::Compute(format!(
                "pipeline input has {} elements, expected {rows} rows of {width}",
                input.len()
            )));
        }
        let stopped = || ForwardFailure::Compute("the pipeline's stage threads stopped".into());
        let first = self.first.as_ref().ok_or_else(stopped)?;
        let parts = self.micro_batches.min(rows);
        let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let mut offset = 0usize;
        for index in 0..parts {
            let part_rows = rows / parts + i64::from(index < rows % parts);
            let len = usize::try_from(part_rows).unwrap_or(0) * width;
            let data = input.get(offset..offset + len).unwrap_or_default().to_vec();
            offset += len;
            first
                .send(MicroBatch {
                    batch,
                    index: usize::try_from(index).unwrap_or(0),
                    rows: part_rows,
                    data: Ok(data),
                })
                .map_err(|_| stopped())?;
        }
        let parts = usize::try_from(parts).unwrap_or(0);
        let mut answers: Vec<Option<Result<Vec<f32>, ForwardFailure>>> = vec![None; parts];
        let mut received = 0;
        while received < parts {
            let micro = self.last.recv().map_err(|_| stopped())?;
            if micro.batch != batch {
                continue;
            }
            if let Some(slot) = answers.get_mut(micro.index) {
                *slot = Some(micro.data);
                received += 1;
            }
        }
        VersionMetrics::add_us(&self.metrics.duration_us, started.elapsed());
        self.metrics
            .micro_batches
            .fetch_add(parts as u64, Ordering::Relaxed);
        let mut output = Vec::with_capacity(usize::try_from(rows * self.out_features).unwrap_or(0));
        for answer in answers {
            output.extend(answer.ok_or_else(stopped)??);
        }
        Ok(output)
    }

    fn out_features(&self) -> i64 {
        self.out_features
    }
}

impl Drop for PipelineModel {
    fn drop(&mut self) {
        // Closing the first channel ends the first stage, whose end closes the next one.
        self.first = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("pipeline stage thread panicked");
            }
        }
    }
}

/// A stage in this process: its layers on its device.
struct LocalStage {
    index: usize,
    model: DenseModel,
}

impl Stage for LocalStage {
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardFailure> {
        let started = Instant::now();
        let output = self
            .model
            .forward_rows(input, rows)
            .map_err(|e| ForwardFailure::Compute(format!("pipeline stage {}: {e}", self.index)))?;
        Ok((output, started.elapsed()))
    }
}

/// A stage in another process (`maas-backend serve-stage`), reached over HTTP.
struct RemoteStage {
    index: usize,
    address: String,
    /// `http://{address}/v2/models/{stage}/versions/{N}/infer`.
    infer_url: String,
    client: reqwest::blocking::Client,
    in_features: i64,
    out_features: i64,
}

impl RemoteStage {
    /// Builds the client (on the stage thread) and checks the stage's metadata at `base`
    /// (`http://{address}/v2/models/{stage}/versions/{N}`) against `expected`'s shapes.
    fn connect(
        index: usize,
        address: String,
        base: String,
        expected: &ModelConfig,
        timeout: Duration,
    ) -> Result<RemoteStage, String> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let in_features = expected
            .inputs
            .first()
            .map_or(0, TensorConfig::row_elements);
        let out_features = expected
            .outputs
            .first()
            .map_or(0, TensorConfig::row_elements);
        let response = client
            .get(base.as_str())
            .send()
            .map_err(|e| format!("stage at {address} does not answer {base}: {e}"))?;
        let status = response.status();
        let body = response.text().unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "stage at {address} answered {status} to {base} (is `maas-backend serve-stage` running there with these layers and this version?): {}",
                error_message(&body)
            ));
        }
        let metadata: crate::oip::ModelMetadata = serde_json::from_str(&body)
            .map_err(|e| format!("stage at {address}: metadata is not OIP model metadata: {e}"))?;
        let shape = |list: &[crate::oip::TensorMetadata]| {
            list.first().map(|t| (t.shape.clone(), t.datatype))
        };
        let want_in = (vec![-1, in_features], Datatype::Fp32);
        let want_out = (vec![-1, out_features], Datatype::Fp32);
        if shape(&metadata.inputs) != Some(want_in.clone())
            || shape(&metadata.outputs) != Some(want_out.clone())
        {
            return Err(format!(
                "stage at {address} serves inputs {:?} and outputs {:?}, expected FP32 {:?} in and {:?} out",
                shape(&metadata.inputs),
                shape(&metadata.outputs),
                want_in.0,
                want_out.0
            ));
        }
        Ok(RemoteStage {
            index,
            address,
            infer_url: format!("{base}/infer"),
            client,
            in_features,
            out_features,
        })
    }

    /// A failure of this stage (503), naming it and its address.
    fn unavailable(&self, why: impl std::fmt::Display) -> ForwardFailure {
        ForwardFailure::Unavailable(format!(
            "pipeline stage {} at {} failed: {why}",
            self.index, self.address
        ))
    }
}

impl Stage for RemoteStage {
    /// Posts `[rows, in]` FP32 as binary tensor data and reads `[rows, out]` back; busy time is
    /// the stage's `x-maas-compute-us` answer header.
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardFailure> {
        let mut binary = Vec::new();
        encode_f32(input, &mut binary);
        let header = serde_json::json!({
            "inputs": [{
                "name": STAGE_INPUT,
                "datatype": "FP32",
                "shape": [rows, self.in_features],
                "parameters": {"binary_data_size": binary.len()},
            }],
            "outputs": [{"name": STAGE_OUTPUT, "parameters": {"binary_data": true}}],
        });
        let mut body = serde_json::to_vec(&header).map_err(|e| self.unavailable(e))?;
        let json_len = body.len();
        body.extend_from_slice(&binary);
        let response = self
            .client
            .post(self.infer_url.as_str())
            .header(HEADER_CONTENT_LENGTH.as_str(), json_len)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .map_err(|e| self.unavailable(describe(&e)))?;
        let status = response.status();
        let compute_us = response
            .headers()
            .get(COMPUTE_US_HEADER.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let json_len = response
            .headers()
            .get(HEADER_CONTENT_LENGTH.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = response
            .bytes()
            .map_err(|e| self.unavailable(describe(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(self.unavailable(format!("{status}: {}", error_message(&text))));
        }
        let expected = usize::try_from(rows * self.out_features).unwrap_or(0) * 4;
        let binary = json_len
            .and_then(|n| bytes.get(n..))
            .filter(|b| b.len() == expected)
            .ok_or_else(|| {
                self.unavailable(format!(
                    "answer is not {expected} bytes of binary FP32 output after the JSON header"
                ))
            })?;
        let output = binary
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let busy = compute_us
            .map(Duration::from_micros)
            .ok_or_else(|| self.unavailable(format!("answer has no {COMPUTE_US_HEADER} header")))?;
        Ok((output, busy))
    }
}

/// The `error` of a JSON error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// A reqwest error with its kind spelled out (reqwest's own text hides the cause).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
