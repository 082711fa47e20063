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
//! [`PipelineModel`] implements [`Forward`], so the batcher, worker, metrics and usage
//! headers work unchanged: a forward batch of `B` rows is cut into
//! `min(micro_batches, B)` micro-batches of near-equal rows, which go through one thread per
//! stage connected by channels; stage `k` computes micro-batch `i` while stage `k + 1` computes
//! `i - 1`. A local stage owns its layers on its device; a remote stage's thread posts each
//! micro-batch's activations as a binary tensor (Triton's binary tensor data extension) to
//! `POST /v2/models/{model}.layers-{first}-{end}/versions/{N}/infer` of a
//! `maas-backend serve-stage` process (module `remote`), with the pipeline's `timeout_ms`.
//!
//! A stage that fails a micro-batch passes the error down instead of activations and skips the
//! rest of that batch, so every batch ends with exactly one answer per micro-batch: the first
//! error in micro-batch order, or the outputs concatenated in order. A remote stage that is
//! down, times out or answers an error is [`ForwardError::StageUnavailable`] (503 naming the
//! stage and its address); the pipeline stays in step for the next batch.
//!
//! Each stage's busy time goes to [`PipelineMetrics`] (for a remote stage, the compute time in
//! its `x-maas-compute-us` answer header), from which the bubble fraction is measured.

mod remote;

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DenseModel, Forward, ForwardError, LoadError};
use crate::config::{
    stage_config, stage_model_name, ConfigError, DeviceSpec, ModelConfig, Pipeline,
};
use crate::metrics::{PipelineMetrics, VersionMetrics};
use remote::RemoteStage;

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
    data: Result<Vec<f32>, ForwardError>,
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
    /// Errors ([`LoadError::Stage`], naming the stage) when a stage's layers or device cannot
    /// be loaded or a remote stage does not answer as expected; [`LoadError::NoPipeline`] when
    /// the config has no `[pipeline]`.
    pub fn start(
        config: &ModelConfig,
        version: PipelineVersion<'_>,
        metrics: Arc<PipelineMetrics>,
    ) -> Result<PipelineModel, LoadError> {
        let Some(pipeline) = &config.pipeline else {
            return Err(LoadError::NoPipeline);
        };
        let (Some(first), Some(last)) = (config.layers.first(), config.layers.last()) else {
            return Err(LoadError::NoLayers);
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
                    return Err(LoadError::Stage {
                        index,
                        first: stage.layers[0],
                        end: stage.layers[1],
                        source: Box::new(e),
                    });
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
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardError>;
}

/// Builds a stage on its own thread (libtorch state and the HTTP client stay on it).
type StageMaker = Box<dyn FnOnce() -> Result<Box<dyn Stage>, LoadError> + Send>;

/// The constructor of stage `index` of `pipeline`, to run on the stage's thread.
fn stage_maker(
    config: &ModelConfig,
    pipeline: &Pipeline,
    index: usize,
    version: PipelineVersion<'_>,
) -> Result<StageMaker, LoadError> {
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
        (None, None) => Err(LoadError::Config(ConfigError::Invalid(format!(
            "pipeline.stages[{index}] has neither device nor address"
        )))),
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
) -> Result<JoinHandle<()>, LoadError> {
    let (ready_tx, ready_rx) = sync_channel::<Result<(), LoadError>>(1);
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
                    let _ = ready_tx.send(Err(LoadError::StagePanicked));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            run_stage(index, stage.as_ref(), &rx, &tx, &metrics);
        })
        .map_err(LoadError::StageThread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(LoadError::StageStopped)
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
    let mut failed: Option<(u64, ForwardError)> = None;
    while let Ok(mut micro) = rx.recv() {
        if let Ok(input) = &micro.data {
            micro.data = match &failed {
                Some((batch, failure)) if *batch == micro.batch => Err(failure.clone()),
                _ => {
                    let started = Instant::now();
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(|| stage.run(input, micro.rows)))
                            .unwrap_or(Err(ForwardError::StagePanicked(index)));
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
    fn forward_rows(&self, input: &[f32], rows: i64) -> Result<Vec<f32>, ForwardError> {
        let started = Instant::now();
        let width = usize::try_from(self.in_features).unwrap_or(0);
        if rows <= 0 {
            return Ok(Vec::new());
        }
        if Some(input.len()) != usize::try_from(rows).ok().map(|r| r * width) {
            return Err(ForwardError::PipelineInput {
                found: input.len(),
                rows,
                width,
            });
        }
        let stopped = || ForwardError::PipelineStopped;
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
        let mut answers: Vec<Option<Result<Vec<f32>, ForwardError>>> = vec![None; parts];
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
    fn run(&self, input: &[f32], rows: i64) -> Result<(Vec<f32>, Duration), ForwardError> {
        let started = Instant::now();
        let output = self
            .model
            .forward_rows(input, rows)
            .map_err(|e| ForwardError::Stage {
                index: self.index,
                source: Box::new(e),
            })?;
        Ok((output, started.elapsed()))
    }
}
