//! The epoch loop of Keras's `fit`: batches in file order (or a seeded shuffle), one optimizer
//! update per batch, the epoch's loss as Keras's `history["loss"]` holds it (the
//! batch-size-weighted mean of each step's loss before its update, regularization included),
//! validation in inference mode, a NaN check after every step.

use std::time::Instant;

use ndarray::{ArrayD, Axis};

use super::loss::Loss;
use super::optim::{Optimizer, OptimizerSpec};
use super::step::TrainGraph;
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
    pub metrics: Vec<String>,
}

/// One epoch's results, as Keras's `history` records them.
#[derive(Debug, Clone)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
    pub val_loss: Option<f64>,
    pub val_metrics: Vec<(String, f64)>,
    pub seconds: f64,
    pub items: usize,
    pub steps: usize,
}

/// The run's history: one log per epoch.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub epochs: Vec<EpochLog>,
    pub steps: usize,
}

/// Hooks the loop calls: progress, per-step logs, checkpoints. All default to nothing.
pub trait Observer {
    fn on_step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: f64) -> Result<()> {
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

/// A model being trained: its training graph (whose parameter store is updated in place),
/// losses and optimizer.
pub struct Trainer {
    pub train_graph: TrainGraph,
    pub config: TrainConfig,
    pub optimizer: Optimizer,
    rng: Rng,
}

impl Trainer {
    pub fn new(graph: &Graph, config: TrainConfig) -> Result<Trainer> {
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
        let optimizer = Optimizer::new(config.optimizer.clone(), &train_graph.graph.params)?;
        let rng = Rng::new(config.seed);
        Ok(Trainer {
            train_graph,
            config,
            optimizer,
            rng,
        })
    }

    /// The trained weights (same ids as the graph the trainer was made from).
    pub fn params(&self) -> &crate::graph::ParamStore {
        &self.train_graph.graph.params
    }

    /// One optimizer step on one batch; returns the batch's loss before the update.
    pub fn step(&mut self, batch: &TrainData) -> Result<f64> {
        let (result, state) = self.train_graph.compute(
            &batch.inputs,
            &batch.targets,
            &self.config.losses,
            &self.config.loss_weights,
            &mut self.rng,
        )?;
        let mut grads = result.grads;
        if !result.loss.is_finite() {
            return Ok(result.loss);
        }
        self.optimizer
            .apply(&mut self.train_graph.graph.params, &mut grads)?;
        for (id, value) in state {
            *self.train_graph.graph.params.get_mut(id) = value;
        }
        Ok(result.loss)
    }

    /// The loss of `data` in inference mode, in batches of `batch_size`, weighted by batch size.
    pub fn evaluate(&mut self, data: &TrainData) -> Result<f64> {
        data.check(&self.train_graph.graph)?;
        let n = data.len();
        let b = self.config.batch_size;
        let mut total = 0.0f64;
        let mut start = 0;
        while start < n {
            let end = (start + b).min(n);
            let batch = data.slice(start, end);
            let loss = self.train_graph.loss_only(
                &batch.inputs,
                &batch.targets,
                &self.config.losses,
                &self.config.loss_weights,
            )?;
            total += loss * (end - start) as f64;
            start = end;
        }
        Ok(total / n.max(1) as f64)
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
        let mut history = History::default();
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
            // Keras's loss tracker: Σ loss·batch / Σ batch.
            let mut weighted = 0.0f64;
            for step in 0..steps {
                let start = step * b;
                let end = (start + b).min(n);
                let batch = epoch_data.slice(start, end);
                let loss = self.step(&batch)?;
                if !loss.is_finite() {
                    return Err(Error::Train(format!(
                        "the loss is {loss} at epoch {} step {} (of {steps}); the weights before this step are kept",
                        epoch + 1,
                        step + 1
                    )));
                }
                weighted += loss * (end - start) as f64;
                history.steps += 1;
                observer.on_step(epoch, step, steps, loss)?;
            }
            let val_loss = match validation {
                Some(v) => Some(self.evaluate(v)?),
                None => None,
            };
            let log = EpochLog {
                epoch,
                loss: weighted / n as f64,
                metrics: Vec::new(),
                val_loss,
                val_metrics: Vec::new(),
                seconds: started.elapsed().as_secs_f64(),
                items: n,
                steps,
            };
            observer.on_epoch(&log, &self.train_graph.graph, &self.optimizer)?;
            history.epochs.push(log);
        }
        Ok(history)
    }
}
