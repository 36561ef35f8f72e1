//! `wgnn bench`: steady-state throughput, GFLOP/s and batch-1 latency of one model on one backend.

use std::time::Instant;

use ndarray::{Array2, ArrayD, IxDyn};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::DType;
use crate::model::{Backend, Model, PreparedInput};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub backend: Backend,
    pub batch_size: usize,
    /// Timed iterations at `batch_size`.
    pub iters: usize,
    /// Untimed iterations first (plans, caches, page faults).
    pub warmup: usize,
    /// Timed batch-1 runs for the latency percentiles (0 skips them).
    pub latency_runs: usize,
    /// Also time each GPU dispatch of one batch (timestamp queries; GPU backend only).
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backend: Backend::Cpu,
            batch_size: 64,
            iters: 10,
            warmup: 2,
            latency_runs: 20,
            profile: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    pub adapter: String,
    pub batch_size: usize,
    pub iters: usize,
    pub items_per_s: f64,
    /// Mean seconds per batch.
    pub batch_s: f64,
    pub flops_per_item: u64,
    pub gflops: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    /// Peak resident memory of this process (VmHWM), where the OS reports it.
    pub peak_rss_mb: Option<f64>,
    /// With `profile`: per dispatch op of one batch, the least GPU time over
    /// [`PROFILE_RUNS`] runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<crate::gpu::DispatchTime>>,
}

/// Batches timed by `--profile`; each dispatch's least time is kept (the others include
/// clock ramp-up and interference).
pub const PROFILE_RUNS: usize = 5;

/// Deterministic pseudo-random inputs of the model's shapes, one per model input: pixels in
/// [0, 1) or ids in the vocabulary.
pub fn synthetic_inputs(model: &Model, batch: usize) -> Result<Vec<PreparedInput>> {
    let graph = model.graph();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut inputs = Vec::new();
    for (index, port) in graph.inputs.iter().enumerate() {
        let info = graph.value(port.value);
        let mut dims = vec![batch];
        dims.extend_from_slice(&info.shape);
        inputs.push(match info.dtype {
            DType::F32 => {
                let x = ArrayD::from_shape_simple_fn(IxDyn(&dims), || {
                    (next() >> 40) as f32 / (1u64 << 24) as f32
                });
                model.prepare_input(index, x.view())?
            }
            DType::Ids | DType::Mask => {
                let (_, vocab) = graph
                    .embedding_for_input(index)
                    .ok_or_else(|| Error::Input("token-id model without an Embedding".into()))?;
                let t = info.shape.first().copied().unwrap_or(1);
                let ids =
                    Array2::from_shape_simple_fn((batch, t), || (next() % vocab as u64) as i64);
                model.prepare_ids_for(index, ids.view())?
            }
        });
    }
    Ok(inputs)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(idx).copied()
}

/// Peak resident set size in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(model: &Model, adapter: &str, opts: &BenchOptions) -> Result<BenchReport> {
    let batch = opts.batch_size.max(1);
    let input = synthetic_inputs(model, batch)?;
    for _ in 0..opts.warmup {
        model.run_all(&input, opts.backend)?;
    }
    let iters = opts.iters.max(1);
    let start = Instant::now();
    for _ in 0..iters {
        model.run_all(&input, opts.backend)?;
    }
    let total = start.elapsed().as_secs_f64();
    let items = (batch * iters) as f64;
    let flops_per_item = model.graph().flops_per_item();

    let mut latencies = Vec::new();
    if opts.latency_runs > 0 {
        let one = synthetic_inputs(model, 1)?;
        model.run_all(&one, opts.backend)?;
        for _ in 0..opts.latency_runs {
            let t = Instant::now();
            model.run_all(&one, opts.backend)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        latencies.sort_by(f64::total_cmp);
    }
    let profile = if opts.profile {
        Some(profile(model, &input)?)
    } else {
        None
    };
    Ok(BenchReport {
        model: model.source().display().to_string(),
        backend: match opts.backend {
            Backend::Gpu => "gpu".into(),
            _ => "cpu".into(),
        },
        adapter: adapter.to_string(),
        batch_size: batch,
        iters,
        items_per_s: items / total,
        batch_s: total / iters as f64,
        flops_per_item,
        gflops: flops_per_item as f64 * items / total / 1e9,
        latency_ms_p50: percentile(&latencies, 0.5),
        latency_ms_p90: percentile(&latencies, 0.9),
        latency_ms_p99: percentile(&latencies, 0.99),
        peak_rss_mb: peak_rss_mb(),
        profile,
    })
}

/// [`PROFILE_RUNS`] timed batches of `input` on the model's GPU runtime, each dispatch's least
/// time.
#[cfg(not(target_arch = "wasm32"))]
fn profile(model: &Model, input: &[PreparedInput]) -> Result<Vec<crate::gpu::DispatchTime>> {
    let mut best: Option<Vec<crate::gpu::DispatchTime>> = None;
    for _ in 0..PROFILE_RUNS {
        let run = model.with_gpu(None, |gpu| gpu.profile(model.graph(), input))?;
        best = Some(match best {
            None => run,
            Some(mut kept) => {
                for (k, r) in kept.iter_mut().zip(&run) {
                    k.ms = k.ms.min(r.ms);
                }
                kept
            }
        });
    }
    Ok(best.unwrap_or_default())
}

#[cfg(target_arch = "wasm32")]
fn profile(_: &Model, _: &[PreparedInput]) -> Result<Vec<crate::gpu::DispatchTime>> {
    Err(Error::Usage("--profile runs natively only".into()))
}

/// `wgnn bench --train`: training steps per second on synthetic batches.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchReport {
    pub model: String,
    pub backend: String,
    pub adapter: String,
    pub batch_size: usize,
    pub steps: usize,
    pub steps_per_s: f64,
    pub items_per_s: f64,
    /// Mean seconds per step (forward, loss, backward, update; the loss read back).
    pub step_s: f64,
    pub loss: String,
    pub optimizer: String,
    /// Forward FLOPs per item; a training step is counted as 3x that (the backward computes
    /// two products per forward one: input and weight gradients).
    pub flops_per_item: u64,
    pub gflops: f64,
    pub peak_rss_mb: Option<f64>,
}

/// Synthetic targets for `loss` on the model's outputs: class indices for the sparse
/// cross-entropy, values in [0, 1) otherwise (one-hot-like rows are not needed to time).
fn synthetic_targets(
    model: &Model,
    losses: &[crate::train::Loss],
    batch: usize,
) -> Vec<ArrayD<f32>> {
    let graph = model.graph();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    graph
        .outputs
        .iter()
        .zip(losses)
        .map(|(port, loss)| {
            let shape = &graph.value(port.value).shape;
            let classes = shape.last().copied().unwrap_or(1).max(1);
            if loss.kind == crate::train::loss::LossKind::SparseCategoricalCrossentropy {
                let mut dims = vec![batch];
                dims.extend_from_slice(&shape[..shape.len().saturating_sub(1)]);
                ArrayD::from_shape_simple_fn(IxDyn(&dims), || (next() % classes as u64) as f32)
            } else {
                let mut dims = vec![batch];
                dims.extend_from_slice(shape);
                ArrayD::from_shape_simple_fn(IxDyn(&dims), || {
                    (next() >> 40) as f32 / (1u64 << 24) as f32
                })
            }
        })
        .collect()
}

/// Times `opts.iters` training steps (after `opts.warmup`) with the model's compile config
/// (else sparse_categorical_crossentropy and adam) on `backend`.
pub fn run_train(
    model: &Model,
    backend: crate::train::TrainBackend,
    opts: &BenchOptions,
) -> Result<TrainBenchReport> {
    use crate::train::{Loss, TrainConfig, TrainData, Trainer};
    let graph = model.graph();
    let compiled = crate::train::compile::Compiled::from_graph(graph, model.source())?;
    let losses = if compiled.losses.is_empty() {
        vec![Loss::by_name("sparse_categorical_crossentropy")?; graph.outputs.len()]
    } else {
        compiled.losses
    };
    let optimizer = match compiled.optimizer {
        Some(o) => o,
        None => crate::train::optim::OptimizerSpec::by_name("adam")?,
    };
    let batch = opts.batch_size.max(1);
    let data = TrainData {
        inputs: synthetic_inputs(model, batch)?,
        targets: synthetic_targets(model, &losses, batch),
    };
    let config = TrainConfig {
        epochs: 1,
        batch_size: batch,
        shuffle: crate::train::Shuffle::None,
        seed: 0,
        losses: losses.clone(),
        loss_weights: compiled.loss_weights,
        optimizer: optimizer.clone(),
        metrics: crate::train::train_metrics::TrainMetrics::from_names(&[], &[])?,
    };
    let mut trainer = Trainer::on(graph, config, backend)?;
    let adapter = trainer.gpu_adapter();
    // The steps run as `fit` runs them (on the GPU, the next step recorded while one runs).
    let batch_at = |_: usize| data.clone();
    let mut finite = |_: usize, _: &TrainData, r: &crate::train::step::StepResult| {
        if r.loss.is_finite() {
            Ok(())
        } else {
            Err(Error::Train(format!(
                "the loss became {} while timing; the synthetic data diverged",
                r.loss
            )))
        }
    };
    trainer.run_steps(opts.warmup, &batch_at, &mut finite)?;
    let steps = opts.iters.max(1);
    let start = Instant::now();
    trainer.run_steps(steps, &batch_at, &mut finite)?;
    let total = start.elapsed().as_secs_f64();
    let flops_per_item = graph.flops_per_item();
    let items = (batch * steps) as f64;
    Ok(TrainBenchReport {
        model: model.source().display().to_string(),
        backend: if adapter.is_some() { "gpu" } else { "cpu" }.into(),
        adapter: adapter.unwrap_or_else(crate::cpu::simd::describe),
        batch_size: batch,
        steps,
        steps_per_s: steps as f64 / total,
        items_per_s: items / total,
        step_s: total / steps as f64,
        loss: losses
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", "),
        optimizer: optimizer.rule.class_name().into(),
        flops_per_item,
        gflops: 3.0 * flops_per_item as f64 * items / total / 1e9,
        peak_rss_mb: peak_rss_mb(),
    })
}
