//! The epoch loop of Keras's `fit`: batches in file order (or a seeded shuffle), one optimizer
//! update per batch, the epoch's loss as Keras's `history["loss"]` holds it (the
//! batch-size-weighted mean of each step's loss before its update, regularization included),
//! validation in inference mode, a NaN check after every step.

use std::time::Instant;

use ndarray::{ArrayD, Axis};

use super::loss::Loss;
use super::optim::{Optimizer, OptimizerSpec};
use super::step::TrainGraph;
use super::train_metrics::TrainMetrics;
use super::Rng;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::input::PreparedInput;

/// Inputs (one per model input) and targets (one per model output), all with the same rows.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub inputs: Vec<PreparedInput>,
    pub targets: Vec<ArrayD<f32>>,
}

impl TrainData {
    pub fn len(&self) -> usize {
        self.inputs.first().map_or(0, PreparedInput::batch)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> TrainData {
        TrainData {
            inputs: self.inputs.iter().map(|x| x.slice(start, end)).collect(),
            targets: self
                .targets
                .iter()
                .map(|y| {
                    y.slice_axis(Axis(0), (start..end).into())
                        .as_standard_layout()
                        .into_owned()
                })
                .collect(),
        }
    }

    /// The rows at `order`, in that order.
    pub fn select(&self, order: &[usize]) -> TrainData {
        TrainData {
            inputs: self
                .inputs
                .iter()
                .map(|x| match x {
                    PreparedInput::Float(a) => PreparedInput::Float(
                        a.select(Axis(0), order).as_standard_layout().into_owned(),
                    ),
                    PreparedInput::Ids(a) => PreparedInput::Ids(a.select(Axis(0), order)),
                })
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|y| y.select(Axis(0), order).as_standard_layout().into_owned())
                .collect(),
        }
    }

    /// Keras's `validation_split`: the last `fraction` of the rows (split at
    /// floor(n · (1 − fraction))), before any shuffling.
    pub fn split_validation(&self, fraction: f64) -> Result<(TrainData, TrainData)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::Usage(format!(
                "--validation-split {fraction} is not in [0, 1)"
            )));
        }
        let n = self.len();
        let at = (n as f64 * (1.0 - fraction)).floor() as usize;
        if at == 0 || at == n {
            return Err(Error::Usage(format!(
                "--validation-split {fraction} of {n} rows leaves {at} for training and {} for validation",
                n - at
            )));
        }
        Ok((self.slice(0, at), self.slice(at, n)))
    }

    fn check(&self, graph: &Graph) -> Result<()> {
        if self.inputs.len() != graph.inputs.len() {
            return Err(Error::Input(format!(
                "the model takes {} input(s), got {}",
                graph.inputs.len(),
                self.inputs.len()
            )));
        }
        if self.targets.len() != graph.outputs.len() {
            return Err(Error::Input(format!(
                "the model has {} output(s), got {} target array(s)",
                graph.outputs.len(),
                self.targets.len()
            )));
        }
        let n = crate::input::common_batch(&self.inputs)?;
        for (i, y) in self.targets.iter().enumerate() {
            if y.shape().first() != Some(&n) {
                return Err(Error::Input(format!(
                    "targets for output '{}' have {} rows, the inputs {n}",
                    graph.outputs[i].name,
                    y.shape().first().copied().unwrap_or(0)
                )));
            }
        }
        Ok(())
    }
}

/// How batches are ordered each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shuffle {
    /// File order, as Keras's `shuffle=False`.
    None,
    /// A fresh permutation each epoch from this seed.
    Seeded(u64),
}

/// Everything `fit` needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Keras's default is 32.
    pub batch_size: usize,
    pub shuffle: Shuffle,
    /// Seeds dropout and the noise layers.
    pub seed: u64,
    /// One loss per model output.
    pub losses: Vec<Loss>,
    pub loss_weights: Vec<f32>,
    pub optimizer: OptimizerSpec,
    /// The compile config's metrics (or the command line's), logged per epoch.
    pub metrics: TrainMetrics,
}

/// One epoch's results, as Keras's `history` records them.
#[derive(Debug, Clone)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    /// With several outputs, each output's own loss as Keras logs it: `{output}_loss`, that
    /// output's loss before its loss weight, without the regularizers, averaged over the
    /// epoch's steps with every step counting once (Keras's TensorFlow backend weights its
    /// `Mean` by the batch's static size, unknown in the traced step, so a short last batch
    /// counts as much as a full one; `loss` itself is weighted by batch size). Empty for a
    /// one-output model (Keras logs none there).
    pub output_losses: Vec<(String, f64)>,
    pub metrics: Vec<(String, f64)>,
    pub val_loss: Option<f64>,
    /// `output_losses` of the validation data (named without the `val_` prefix).
    pub val_output_losses: Vec<(String, f64)>,
    pub val_metrics: Vec<(String, f64)>,
    pub seconds: f64,
    pub items: usize,
    pub steps: usize,
}

/// `Trainer::evaluate`'s results.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub loss: f64,
    /// `{output}_loss` per output with several outputs, as in `EpochLog::output_losses`.
    pub output_losses: Vec<(String, f64)>,
    pub metrics: Vec<(String, f64)>,
}

/// The run's history: one log per epoch.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub epochs: Vec<EpochLog>,
    pub steps: usize,
}

impl History {
    /// The history as Keras's `History.history` dict holds it: `loss`, each output's
    /// `{output}_loss` (several outputs), the metrics, and with validation data the same again
    /// prefixed `val_`; one value per epoch (NaN where an epoch lacks the key).
    pub fn keras_history(&self) -> Vec<(String, Vec<f64>)> {
        let Some(first) = self.epochs.first() else {
            return Vec::new();
        };
        let column = |name: &str, get: &dyn Fn(&EpochLog) -> Option<f64>| {
            (
                name.to_string(),
                self.epochs
                    .iter()
                    .map(|e| get(e).unwrap_or(f64::NAN))
                    .collect::<Vec<f64>>(),
            )
        };
        let find = |list: &[(String, f64)], name: &str| {
            list.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
        };
        let mut out = vec![column("loss", &|e| Some(e.loss))];
        for (name, _) in &first.output_losses {
            out.push(column(name, &|e| find(&e.output_losses, name)));
        }
        for (name, _) in &first.metrics {
            out.push(column(name, &|e| find(&e.metrics, name)));
        }
        if self.epochs.iter().any(|e| e.val_loss.is_some()) {
            out.push(column("val_loss", &|e| e.val_loss));
            for (name, _) in &first.output_losses {
                out.push(column(&format!("val_{name}"), &|e| {
                    find(&e.val_output_losses, name)
                }));
            }
            for (name, _) in &first.metrics {
                out.push(column(&format!("val_{name}"), &|e| {
                    find(&e.val_metrics, name)
                }));
            }
        }
        out
    }
}

/// Hooks the loop calls: progress, per-step logs, checkpoints. All default to nothing.
pub trait Observer {
    /// After each step: its loss before the update and (several outputs) each output's own
    /// loss, named as in `EpochLog::output_losses`.
    fn on_step(
        &mut self,
        _epoch: usize,
        _step: usize,
        _steps: usize,
        _loss: f64,
        _output_losses: &[(String, f64)],
    ) -> Result<()> {
        Ok(())
    }
    /// After each epoch, with the weights as they now are.
    fn on_epoch(&mut self, _log: &EpochLog, _graph: &Graph, _optimizer: &Optimizer) -> Result<()> {
        Ok(())
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Where a `Trainer` runs its steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TrainBackend {
    /// The CPU reference path.
    #[default]
    Cpu,
    /// A GPU through wgpu: the adapter named (a case-insensitive substring), else env
    /// `WGNN_ADAPTER`, else the best one.
    Gpu { adapter: Option<String> },
}

/// A model being trained: its training graph (whose parameter store is updated in place),
/// losses and optimizer.
pub struct Trainer {
    pub train_graph: TrainGraph,
    pub config: TrainConfig,
    pub optimizer: Optimizer,
    rng: Rng,
    /// With the GPU backend: its state, whose weights and optimizer state are the current
    /// ones between `sync` calls.
    #[cfg(not(target_arch = "wasm32"))]
    gpu: Option<GpuSession>,
}

/// The GPU half of a trainer: which side holds the newest weights and optimizer state.
#[cfg(not(target_arch = "wasm32"))]
struct GpuSession {
    trainer: crate::gpu::train::GpuTrainer,
    /// The device holds what the host has (else upload before the next step).
    device_current: bool,
    /// The host holds what the device has (else download before the host reads them).
    host_current: bool,
}

impl Trainer {
    pub fn new(graph: &Graph, config: TrainConfig) -> Result<Trainer> {
        Self::on(graph, config, TrainBackend::Cpu)
    }

    /// A trainer whose steps run on `backend`. On the GPU it fails, naming the layer, when a
    /// layer or option has no GPU training yet.
    pub fn on(graph: &Graph, config: TrainConfig, backend: TrainBackend) -> Result<Trainer> {
        let train_graph = TrainGraph::new(graph)?;
        if config.losses.len() != graph.outputs.len() {
            return Err(Error::Train(format!(
                "the model has {} output(s) but {} loss(es) were given",
                graph.outputs.len(),
                config.losses.len()
            )));
        }
        if config.batch_size == 0 {
            return Err(Error::Usage("--batch-size must be at least 1".into()));
        }
        if !train_graph.has_trainable_path() {
            return Err(Error::Train(
                "no trainable weight reaches the loss (every layer is frozen?)".into(),
            ));
        }
        let optimizer = Optimizer::new(config.optimizer.clone(), &train_graph.graph.params);
        let rng = Rng::new(config.seed);
        #[cfg(not(target_arch = "wasm32"))]
        let gpu = match backend {
            TrainBackend::Cpu => None,
            TrainBackend::Gpu { adapter } => {
                let trainer = crate::gpu::train::GpuTrainer::new(
                    &train_graph,
                    optimizer.slot_names().len(),
                    adapter.as_deref(),
                )?;
                let session = GpuSession {
                    trainer,
                    device_current: false,
                    host_current: true,
                };
                // Plan the step now, so an unsupported layer fails here, not mid-epoch.
                let spec = crate::gpu::train::StepSpec {
                    losses: &config.losses,
                    loss_weights: &config.loss_weights,
                    optimizer: Some(&config.optimizer),
                };
                session.trainer.describe_plan(
                    &train_graph,
                    &spec,
                    config.batch_size,
                    crate::gpu::train::Mode::Step,
                )?;
                Some(session)
            }
        };
        #[cfg(target_arch = "wasm32")]
        if backend != TrainBackend::Cpu {
            return Err(Error::Usage(
                "training in the browser runs on the CPU path only".into(),
            ));
        }
        Ok(Trainer {
            train_graph,
            config,
            optimizer,
            rng,
            #[cfg(not(target_arch = "wasm32"))]
            gpu,
        })
    }

    /// The adapter the steps run on (None on the CPU).
    pub fn gpu_adapter(&self) -> Option<String> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.gpu.as_ref().map(|g| g.trainer.adapter_name())
        }
        #[cfg(target_arch = "wasm32")]
        {
            None
        }
    }

    /// Brings the host's weights and optimizer state up to date with the GPU's (a no-op on
    /// the CPU backend). `fit` calls it after every epoch; call it after your own `step`s
    /// before reading `params()` or `optimizer`.
    pub fn sync(&mut self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(gpu) = &mut self.gpu {
            if !gpu.host_current {
                let params = &mut self.train_graph.graph.params;
                gpu.trainer.download_params(params)?;
                let layout = gpu.trainer.layout().clone();
                for k in 0..layout.state_arenas {
                    let values = gpu.trainer.download_state(k, params)?;
                    for (&id, v) in layout.ids.iter().zip(values) {
                        if let Some(slot) = self.optimizer.slot_mut(id, k) {
                            *slot = v;
                        }
                    }
                }
                gpu.host_current = true;
            }
        }
        Ok(())
    }

    /// Uploads the host's weights and optimizer state if the device's are older.
    #[cfg(not(target_arch = "wasm32"))]
    fn upload_if_stale(&mut self) -> Result<()> {
        if let Some(gpu) = &mut self.gpu {
            if !gpu.device_current {
                gpu.trainer.upload_params(&self.train_graph.graph.params);
                let layout = gpu.trainer.layout().clone();
                for k in 0..layout.state_arenas {
                    let values: Vec<ArrayD<f32>> = layout.ids[..layout.updated]
                        .iter()
                        .map(|&id| {
                            self.optimizer.slot(id, k).cloned().ok_or_else(|| {
                                Error::Internal(format!(
                                    "parameter #{} has no optimizer slot {k}",
                                    id.0
                                ))
                            })
                        })
                        .collect::<Result<_>>()?;
                    gpu.trainer.upload_state(k, &values)?;
                }
                gpu.device_current = true;
            }
        }
        Ok(())
    }

    /// Checks each output's targets as the CPU's loss does (shape, class indices, finite).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    fn check_targets(&self, batch: &TrainData) -> Result<()> {
        let graph = &self.train_graph.graph;
        for (i, (loss, target)) in self.config.losses.iter().zip(&batch.targets).enumerate() {
            let port = &graph.outputs[i];
            let mut shape = vec![batch.len()];
            shape.extend_from_slice(&graph.value(port.value).shape);
            loss.check_targets(&shape, target)
                .map_err(|e| Error::Train(format!("output '{}': {e}", port.name)))?;
        }
        Ok(())
    }

    /// A step on the GPU (`step`'s contract).
    #[cfg(not(target_arch = "wasm32"))]
    fn gpu_step(&mut self, batch: &TrainData) -> Result<super::step::StepResult> {
        let prepared = self.gpu_prepare(batch, 0)?;
        let in_flight = self.gpu()?.trainer.submit_step(prepared)?;
        self.gpu_finish(in_flight)
    }

    /// Checks and records a GPU step on `batch` that runs `ahead` steps after the next one to
    /// be submitted (its learning rate and bias corrections are that iteration's).
    #[cfg(not(target_arch = "wasm32"))]
    fn gpu_prepare(
        &mut self,
        batch: &TrainData,
        ahead: i64,
    ) -> Result<crate::gpu::train::PreparedStep> {
        self.check_targets(batch)?;
        self.upload_if_stale()?;
        let words = crate::gpu::train::step_words_ahead(&self.optimizer, ahead);
        let gpu = self
            .gpu
            .as_mut()
            .ok_or_else(|| Error::Internal("no GPU session".into()))?;
        let spec = crate::gpu::train::StepSpec {
            losses: &self.config.losses,
            loss_weights: &self.config.loss_weights,
            optimizer: Some(self.optimizer.spec()),
        };
        gpu.trainer.prepare_step(
            &self.train_graph,
            &spec,
            &batch.inputs,
            &batch.targets,
            &words,
            &mut self.rng,
        )
    }

    /// Waits for a submitted GPU step and counts its iteration if its loss is finite.
    #[cfg(not(target_arch = "wasm32"))]
    fn gpu_finish(
        &mut self,
        in_flight: crate::gpu::train::StepInFlight,
    ) -> Result<super::step::StepResult> {
        let gpu = self
            .gpu
            .as_mut()
            .ok_or_else(|| Error::Internal("no GPU session".into()))?;
        let spec = crate::gpu::train::StepSpec {
            losses: &self.config.losses,
            loss_weights: &self.config.loss_weights,
            optimizer: Some(self.optimizer.spec()),
        };
        let done = gpu
            .trainer
            .finish_step(&self.train_graph, &spec, in_flight)?;
        let loss = done.total(&self.config.loss_weights);
        if loss.is_finite() {
            self.optimizer.count_iteration();
            gpu.host_current = false;
        }
        Ok(super::step::StepResult {
            loss,
            output_losses: done.output_losses,
            grads: super::ParamGrads::new(&self.train_graph.graph.params),
            outputs: done.outputs,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn gpu(&mut self) -> Result<&mut GpuSession> {
        self.gpu
            .as_mut()
            .ok_or_else(|| Error::Internal("no GPU session".into()))
    }

    /// `steps` optimizer steps in order, step `k` on `batch_at(k)`, handing each batch and its
    /// result to `each` (which stops the run by returning an error; a non-finite loss is
    /// `each`'s to refuse). On the GPU the next batch is gathered, uploaded and recorded while
    /// the current step runs; it is submitted only after the current step's loss came back and
    /// `each` accepted it, so a failing step still leaves the weights (and the noise RNG) as
    /// they were before it. `fit` runs its epochs through this; `wgnn bench --train` too.
    pub fn run_steps(
        &mut self,
        steps: usize,
        batch_at: &dyn Fn(usize) -> TrainData,
        each: &mut dyn FnMut(usize, &TrainData, &super::step::StepResult) -> Result<()>,
    ) -> Result<()> {
        if steps == 0 {
            return Ok(());
        }
        #[cfg(not(target_arch = "wasm32"))]
        if self.gpu.is_some() {
            let first = batch_at(0);
            let mut next = Some(self.gpu_prepare(&first, 0).map(|p| (first, p)));
            for step in 0..steps {
                let Some(prepared) = next.take() else {
                    return Err(Error::Internal("no prepared GPU step".into()));
                };
                let (batch, prepared) = prepared?;
                let in_flight = self.gpu()?.trainer.submit_step(prepared)?;
                let rng_before = self.rng.clone();
                if step + 1 < steps {
                    let following = batch_at(step + 1);
                    next = Some(self.gpu_prepare(&following, 1).map(|p| (following, p)));
                }
                let result = self.gpu_finish(in_flight);
                let done = result.and_then(|r| each(step, &batch, &r));
                if done.is_err() {
                    // The step prepared ahead is dropped unsubmitted: its noise was never used.
                    self.rng = rng_before;
                    return done;
                }
            }
            return Ok(());
        }
        for step in 0..steps {
            let batch = batch_at(step);
            let result = self.step(&batch)?;
            each(step, &batch, &result)?;
        }
        Ok(())
    }

    /// The trained weights (same ids as the graph the trainer was made from); with the GPU
    /// backend as of the last `fit` or `sync`.
    pub fn params(&self) -> &crate::graph::ParamStore {
        &self.train_graph.graph.params
    }

    /// One optimizer step on one batch; returns the batch's loss before the update, each
    /// output's own loss and the training-mode outputs (for the metrics). A loss that is not
    /// finite is returned without an update.
    pub fn step(&mut self, batch: &TrainData) -> Result<super::step::StepResult> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.gpu.is_some() {
            return self.gpu_step(batch);
        }
        let (result, state) = self.train_graph.compute(
            &batch.inputs,
            &batch.targets,
            &self.config.losses,
            &self.config.loss_weights,
            &mut self.rng,
        )?;
        let mut result = result;
        if !result.loss.is_finite() {
            return Ok(result);
        }
        self.optimizer
            .apply(&mut self.train_graph.graph.params, &mut result.grads)?;
        for (id, value) in state {
            *self.train_graph.graph.params.get_mut(id) = value;
        }
        Ok(result)
    }

    /// The names Keras logs each output's own loss under (`{output}_loss`), none for a
    /// one-output model.
    pub fn output_loss_names(&self) -> Vec<String> {
        let outputs = &self.train_graph.graph.outputs;
        if outputs.len() < 2 {
            return Vec::new();
        }
        outputs.iter().map(|p| format!("{}_loss", p.name)).collect()
    }

    /// The loss, each output's own loss (several outputs) and the metrics of `data` in
    /// inference mode (Keras's `evaluate`), in batches of `batch_size`: the loss weighted by
    /// batch size, each output's loss a plain mean over the batches (see
    /// `EpochLog::output_losses`).
    pub fn evaluate(&mut self, data: &TrainData) -> Result<Evaluated> {
        data.check(&self.train_graph.graph)?;
        let n = data.len();
        let b = self.config.batch_size;
        let mut metrics = self.config.metrics.clone();
        metrics.reset();
        let names = self.output_loss_names();
        let mut total = 0.0f64;
        let mut per_output = vec![0.0f64; names.len()];
        let mut batches = 0usize;
        let mut start = 0;
        while start < n {
            let end = (start + b).min(n);
            let batch = data.slice(start, end);
            let e = self.evaluate_batch(&batch)?;
            update_metrics(&mut metrics, &batch.targets, &e.outputs)?;
            total += e.loss * (end - start) as f64;
            for (acc, l) in per_output.iter_mut().zip(&e.output_losses) {
                *acc += l;
            }
            batches += 1;
            start = end;
        }
        let batches = batches.max(1) as f64;
        Ok(Evaluated {
            loss: total / n.max(1) as f64,
            output_losses: names
                .into_iter()
                .zip(per_output)
                .map(|(name, v)| (name, v / batches))
                .collect(),
            metrics: metric_values(&metrics),
        })
    }

    /// One batch's loss and outputs in inference mode, on the trainer's backend.
    fn evaluate_batch(&mut self, batch: &TrainData) -> Result<super::step::Evaluation> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.gpu.is_some() {
            self.check_targets(batch)?;
            self.upload_if_stale()?;
            let spec = crate::gpu::train::StepSpec {
                losses: &self.config.losses,
                loss_weights: &self.config.loss_weights,
                optimizer: None,
            };
            let gpu = self
                .gpu
                .as_mut()
                .ok_or_else(|| Error::Internal("no GPU session".into()))?;
            let done =
                gpu.trainer
                    .evaluate(&self.train_graph, &spec, &batch.inputs, &batch.targets)?;
            return Ok(super::step::Evaluation {
                loss: done.total(&self.config.loss_weights),
                output_losses: done.output_losses,
                outputs: done.outputs,
            });
        }
        self.train_graph.loss_only(
            &batch.inputs,
            &batch.targets,
            &self.config.losses,
            &self.config.loss_weights,
        )
    }

    /// Keras's `fit`: `epochs` passes over `data`, with optional validation data.
    pub fn fit(
        &mut self,
        data: &TrainData,
        validation: Option<&TrainData>,
        observer: &mut dyn Observer,
    ) -> Result<History> {
        data.check(&self.train_graph.graph)?;
        if data.is_empty() {
            return Err(Error::Input("no training rows".into()));
        }
        let n = data.len();
        let b = self.config.batch_size;
        let steps = n.div_ceil(b);
        let names = self.output_loss_names();
        let mut history = History::default();
        // Weights or optimizer state set on the host since the last steps go to the GPU.
        self.sync()?;
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(gpu) = &mut self.gpu {
            gpu.device_current = false;
        }
        let mut shuffle_rng = match self.config.shuffle {
            Shuffle::Seeded(seed) => Some(Rng::new(seed)),
            Shuffle::None => None,
        };
        for epoch in 0..self.config.epochs {
            let started = Instant::now();
            let shuffled;
            let epoch_data = match shuffle_rng.as_mut() {
                Some(rng) => {
                    let mut order: Vec<usize> = (0..n).collect();
                    // Fisher-Yates.
                    for i in (1..n).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                    shuffled = data.select(&order);
                    &shuffled
                }
                None => data,
            };
            // Keras's loss tracker: Σ loss·batch / Σ batch; each output's: Σ loss / steps.
            let mut weighted = 0.0f64;
            let mut per_output = vec![0.0f64; names.len()];
            let mut metrics = self.config.metrics.clone();
            metrics.reset();
            let mut stopped_at_loss = None;
            let mut each = |step: usize, batch: &TrainData, result: &super::step::StepResult| {
                let loss = result.loss;
                if !loss.is_finite() {
                    stopped_at_loss = Some(loss);
                    return Err(Error::Train(format!(
                        "the loss is {loss} at epoch {} step {} (of {steps}); the weights before this step are kept",
                        epoch + 1,
                        step + 1
                    )));
                }
                update_metrics(&mut metrics, &batch.targets, &result.outputs)?;
                weighted += loss * batch.len() as f64;
                for (acc, l) in per_output.iter_mut().zip(&result.output_losses) {
                    *acc += l;
                }
                history.steps += 1;
                let step_losses: Vec<(String, f64)> = names
                    .iter()
                    .cloned()
                    .zip(result.output_losses.iter().copied())
                    .collect();
                observer.on_step(epoch, step, steps, loss, &step_losses)
            };
            let batch_at = |step: usize| epoch_data.slice(step * b, (step * b + b).min(n));
            let ran = self.run_steps(steps, &batch_at, &mut each);
            if let Err(e) = ran {
                if stopped_at_loss.is_some() {
                    self.sync()?;
                }
                return Err(e);
            }
            let val = validation.map(|v| self.evaluate(v)).transpose()?;
            let log = EpochLog {
                epoch,
                loss: weighted / n as f64,
                output_losses: names
                    .iter()
                    .cloned()
                    .zip(per_output.iter().map(|v| v / steps as f64))
                    .collect(),
                metrics: metric_values(&metrics),
                val_loss: val.as_ref().map(|v| v.loss),
                val_output_losses: val
                    .as_ref()
                    .map_or_else(Vec::new, |v| v.output_losses.clone()),
                val_metrics: val.map_or_else(Vec::new, |v| v.metrics),
                seconds: started.elapsed().as_secs_f64(),
                items: n,
                steps,
            };
            self.sync()?;
            observer.on_epoch(&log, &self.train_graph.graph, &self.optimizer)?;
            history.epochs.push(log);
        }
        Ok(history)
    }
}

fn update_metrics(
    metrics: &mut TrainMetrics,
    targets: &[ArrayD<f32>],
    outputs: &[ArrayD<f32>],
) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let t: Vec<_> = targets.iter().map(|a| a.view()).collect();
    let p: Vec<_> = outputs.iter().map(|a| a.view()).collect();
    metrics.update(&t, &p, None, &[])
}

fn metric_values(metrics: &TrainMetrics) -> Vec<(String, f64)> {
    metrics
        .results()
        .into_iter()
        .map(|(n, v)| (n, v as f64))
        .collect()
}
