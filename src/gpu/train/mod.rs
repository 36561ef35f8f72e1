//! Training on the GPU: the same steps as the CPU reference path (`crate::train`), planned once
//! per (model, batch size) and replayed with one submit per step.
//!
//! How the pieces fit:
//! - Every parameter the forward's kernels read lives in one **parameter arena** (each at a
//!   256-byte aligned offset, so a layer binds its own range); the parameters the optimizer
//!   updates come first, so one dispatch per update rule covers exactly them. Gradients and
//!   each optimizer state (momentum, velocity, ...) have arenas of the same layout.
//! - `plan.rs` lowers the `TrainGraph` to one op list: the forward keeping values, the loss,
//!   the backward in reverse order (`gpu::grad` holds each op family's backward), the updates.
//! - A step uploads the batch and its targets and the per-step scalars (learning rate,
//!   iteration), submits once and reads back only the losses and the outputs (for metrics).
//!   The weights stay on the GPU until `download_params`.

pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::graph::{Graph, ParamId, ParamStore};
use crate::input::PreparedInput;
use crate::train::step::TrainGraph;
use crate::train::Rng;

use super::executor::{uniform_stride, Arenas, DeviceContext, GpuPlan};
use super::grad::optim::ArenaLayout;
use super::kernels::Pipelines;
use super::plan::{bytes_text, Op, PlanLimits};
use super::weights::{weight_specs, weight_values};
use super::{ErrorScopes, LimitOverrides};

pub use plan::{Mode, StepSpec, TrainPlan};

/// Each parameter's place in the arenas, 64 floats (256 bytes) aligned.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    /// Arena order: the `updated` parameters the optimizer steps first, then the rest the
    /// forward reads (frozen layers' weights).
    pub ids: Vec<ParamId>,
    pub updated: usize,
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    /// f32s of the whole arena, and of the optimizer's part (the updated parameters).
    pub total: usize,
    pub updated_total: usize,
    /// Optimizer state arenas (set by the optimizer the plan is built for).
    pub state_arenas: usize,
    index: Vec<Option<usize>>,
    /// The same layout as the optimizer kernels read it.
    pub(crate) arena: ArenaLayout,
}

/// Floats each arena entry is aligned to: 256 bytes, the largest storage-binding offset
/// alignment WebGPU allows an adapter to ask for.
pub const ARENA_ALIGN: usize = super::grad::optim::ARENA_ALIGN;

impl ParamLayout {
    /// The arena of the parameters the forward of `tg` binds, updated ones first.
    pub fn new(tg: &TrainGraph) -> Self {
        let graph = &tg.graph;
        let mut read = vec![false; graph.params.len()];
        let mut updated = vec![false; graph.params.len()];
        for spec in weight_specs(graph, false) {
            if let Some(id) = plan::param_of(graph, spec.key.node, spec.key.role) {
                read[id.0] = true;
                updated[id.0] |=
                    graph.params.param(id).trainable && tg.runs_backward(spec.key.node);
            }
        }
        // BatchNormalization's kernels read its weights and moving statistics from the arena
        // (its training forward updates the statistics in place).
        for (i, node) in graph.nodes.iter().enumerate() {
            if let crate::graph::Op::BatchNorm(bn) = &node.op {
                for id in [bn.gamma, bn.beta].into_iter().flatten() {
                    read[id.0] = true;
                    updated[id.0] |= graph.params.param(id).trainable && tg.runs_backward(i);
                }
                read[bn.moving_mean.0] = true;
                read[bn.moving_variance.0] = true;
            }
            // Recurrent layers' training forward and BPTT read each direction's weights (also
            // inside TimeDistributed).
            let recurrent = match &node.op {
                crate::graph::Op::Recurrent(r) => Some(r),
                crate::graph::Op::TimeDistributed { inner } => match &**inner {
                    crate::graph::Op::Recurrent(r) => Some(r),
                    _ => None,
                },
                _ => None,
            };
            if let Some(r) = recurrent {
                for c in r.cells() {
                    for id in [Some(c.kernel), Some(c.recurrent_kernel), c.bias]
                        .into_iter()
                        .flatten()
                    {
                        read[id.0] = true;
                        updated[id.0] |= graph.params.param(id).trainable && tg.runs_backward(i);
                    }
                }
            }
        }
        // The CPU updates a regularized trainable weight from its penalty alone.
        for r in &graph.regularizers {
            if let crate::graph::Penalized::Param(id) = r.target {
                if read[id.0] && graph.params.param(id).trainable {
                    updated[id.0] = true;
                }
            }
        }
        let mut ids: Vec<ParamId> = (0..graph.params.len())
            .map(ParamId)
            .filter(|id| updated[id.0])
            .collect();
        let n_updated = ids.len();
        ids.extend(
            (0..graph.params.len())
                .map(ParamId)
                .filter(|id| read[id.0] && !updated[id.0]),
        );
        let lens: Vec<usize> = ids.iter().map(|&id| graph.params.len_of(id)).collect();
        // An updated Embedding table's gradient is rows (TensorFlow's IndexedSlices) unless a
        // penalty adds a dense term: the optimizer then squares its rows one by one.
        let mut lookup_table = vec![false; graph.params.len()];
        for node in &graph.nodes {
            if let crate::graph::Op::Embedding(e) = &node.op {
                lookup_table[e.table.0] = true;
            }
        }
        for r in &graph.regularizers {
            if let crate::graph::Penalized::Param(id) = r.target {
                lookup_table[id.0] = false;
            }
        }
        let sparse: Vec<bool> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| k < n_updated && lookup_table[id.0])
            .collect();
        let arena = ArenaLayout::with_sparse(&lens, &sparse);
        let mut index = vec![None; graph.params.len()];
        for (k, &id) in ids.iter().enumerate() {
            index[id.0] = Some(k);
        }
        let updated_total = arena.offsets.get(n_updated).copied().unwrap_or(arena.total);
        ParamLayout {
            ids,
            updated: n_updated,
            offsets: arena.offsets.clone(),
            lens,
            total: arena.total,
            updated_total,
            state_arenas: 0,
            index,
            arena,
        }
    }

    /// Whether the optimizer updates `id` (it is in the arena's first part).
    pub fn updates(&self, id: ParamId) -> bool {
        self.index
            .get(id.0)
            .copied()
            .flatten()
            .is_some_and(|k| k < self.updated)
    }

    pub fn contains(&self, id: ParamId) -> bool {
        self.index.get(id.0).copied().flatten().is_some()
    }

    /// Where lookup table `id`'s squared-gradient sums start in `Arena::GradSq`, if it is one
    /// the optimizer updates with sparse rows.
    pub fn sq_offset(&self, id: ParamId) -> Option<usize> {
        let k = self.index.get(id.0).copied().flatten()?;
        self.arena.sq_offsets[k]
    }

    /// (offset, length) of `id` in f32s.
    pub fn range(&self, id: ParamId) -> Option<(usize, usize)> {
        let k = self.index.get(id.0).copied().flatten()?;
        Some((self.offsets[k], self.lens[k]))
    }

    /// Per `ParamId`: its arena range, for binding.
    fn ranges(&self, params: usize) -> Vec<Option<(u64, u64)>> {
        (0..params)
            .map(|p| self.range(ParamId(p)).map(|(o, l)| (o as u64, l as u64)))
            .collect()
    }
}

/// The per-step scalars the update kernels read (learning rate at this iteration and the
/// iteration's bias-correction terms), as the optimizer's CPU rule computes them.
pub fn step_words(optimizer: &crate::train::optim::Optimizer) -> Vec<u32> {
    step_words_ahead(optimizer, 0)
}

/// [`step_words`] of the step `ahead` iterations after the next (a step prepared while the ones
/// before it still run).
pub fn step_words_ahead(optimizer: &crate::train::optim::Optimizer, ahead: i64) -> Vec<u32> {
    super::grad::optim::step_words(optimizer.spec(), optimizer.iterations() + ahead)
}

/// What a step or evaluation of one batch read back.
#[derive(Debug, Clone)]
pub struct BatchLosses {
    /// Each output's own loss, before its loss weight.
    pub output_losses: Vec<f64>,
    /// The regularization penalties' sum.
    pub regularization: f64,
    /// The model's outputs (training mode in a step).
    pub outputs: Vec<ArrayD<f32>>,
}

impl BatchLosses {
    /// Σ loss weight · output loss + the penalties: the loss Keras reports.
    pub fn total(&self, loss_weights: &[f32]) -> f64 {
        self.output_losses
            .iter()
            .enumerate()
            .map(|(i, l)| l * loss_weights.get(i).copied().unwrap_or(1.0) as f64)
            .sum::<f64>()
            + self.regularization
    }
}

/// Each updated parameter's gradient.
pub type ParamGradients = Vec<(ParamId, ArrayD<f32>)>;

/// Each updated parameter's gradient, and each graph input's (None: not computed).
pub type SeededGradients = (ParamGradients, Vec<Option<ArrayD<f32>>>);

/// A model's training state on one GPU: device, kernels, arenas, and a plan per (batch, mode).
pub struct GpuTrainer {
    ctx: DeviceContext,
    adapter: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    plan_limits: PlanLimits,
    layout: ParamLayout,
    arenas: Arenas,
    plans: HashMap<(usize, Mode), (TrainPlan, GpuPlan)>,
    device_errors: Arc<Mutex<Vec<String>>>,
}

impl GpuTrainer {
    /// Creates the device on the chosen adapter (as inference does: argument, else env
    /// `WGNN_ADAPTER`, else the best), the arenas for `tg`'s parameters with `state_arenas`
    /// optimizer states, and uploads the parameters.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(tg: &TrainGraph, state_arenas: usize, adapter: Option<&str>) -> Result<Self> {
        pollster::block_on(Self::new_async(tg, state_arenas, adapter))
    }

    pub async fn new_async(
        tg: &TrainGraph,
        state_arenas: usize,
        adapter: Option<&str>,
    ) -> Result<Self> {
        let adapter = super::find_adapter(adapter).await?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let plan_limits = super::plan_limits(&limits, Some(&info), LimitOverrides::default());
        let (device, queue, device_errors) =
            super::open_device(&adapter, &limits, &info.name).await?;
        let mut layout = ParamLayout::new(tg);
        layout.state_arenas = state_arenas;
        let arena_bytes = 4 * layout.total.max(ARENA_ALIGN) as u64;
        if arena_bytes > plan_limits.max_binding_bytes {
            return Err(Error::Gpu(format!(
                "the model's {} of parameters exceed the adapter's limit of {} per buffer",
                bytes_text(arena_bytes),
                bytes_text(plan_limits.max_binding_bytes)
            )));
        }
        let scope = ErrorScopes::push(&device);
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let arena = |label: &str, bytes: u64| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16).div_ceil(16) * 16,
                usage: storage,
                mapped_at_creation: false,
            })
        };
        let graph = &tg.graph;
        // The optimizer's control words: step scalars, each parameter's segment (the ones it
        // does not update marked inactive), norms.
        let active: Vec<bool> = (0..layout.ids.len()).map(|k| k < layout.updated).collect();
        let ctl = layout.arena.ctl_init(Some(&active));
        let arenas = Arenas {
            params: arena("parameters", arena_bytes),
            grads: arena("gradients", arena_bytes),
            state: (0..state_arenas)
                .map(|k| arena(&format!("optimizer state {k}"), arena_bytes))
                .collect(),
            step: arena("optimizer control words", 4 * ctl.len() as u64),
            backup: arena("parameters before the update", arena_bytes),
            grad_sq: arena(
                "lookup tables' squared gradients",
                4 * layout.arena.sq_total as u64,
            ),
            ranges: layout.ranges(graph.params.len()),
        };
        queue.write_buffer(&arenas.step, 0, bytemuck::cast_slice(&ctl));
        // Weights that are not parameters as they are (Rescaling's constants, a frozen
        // layer's derived buffers) are uploaded once, as for inference.
        let mut weights = HashMap::new();
        for spec in weight_specs(graph, false) {
            if plan::param_of(graph, spec.key.node, spec.key.role)
                .is_some_and(|id| layout.contains(id))
            {
                continue;
            }
            let mut values = weight_values(graph, spec.key, false)?;
            values.resize(values.len().max(4).div_ceil(4) * 4, 0.0);
            let buffer = wgpu::util::DeviceExt::create_buffer_init(
                &device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some(spec.key.role.name()),
                    contents: bytemuck::cast_slice(&values),
                    usage: wgpu::BufferUsages::STORAGE,
                },
            );
            weights.insert(spec.key, buffer);
        }
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        scope.check("creating the training buffers").await?;
        let trainer = GpuTrainer {
            ctx: DeviceContext {
                device,
                queue,
                pipelines: Pipelines::new(),
                weights,
                dummy,
                uniform_stride: uniform_stride(&limits),
            },
            adapter: info,
            limits,
            plan_limits,
            layout,
            arenas,
            plans: HashMap::new(),
            device_errors,
        };
        trainer.upload_params(&tg.graph.params);
        super::check_device(&trainer.device_errors, &trainer.adapter.name)?;
        Ok(trainer)
    }

    /// The adapter's name and backend.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Writes every arena parameter's values from `params`.
    pub fn upload_params(&self, params: &ParamStore) {
        let values: Vec<ArrayD<f32>> = self
            .layout
            .ids
            .iter()
            .map(|&id| params.get(id).as_standard_layout().into_owned())
            .collect();
        let slices: Vec<&[f32]> = values.iter().map(|v| v.as_slice().unwrap_or(&[])).collect();
        let all = self.layout.arena.pack(&slices);
        if !all.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.arenas.params, 0, bytemuck::cast_slice(&all));
        }
    }

    /// Writes optimizer state arena `k` (laid out like the parameters; `values[i]` belongs to
    /// the i-th updated parameter).
    pub fn upload_state(&self, k: usize, values: &[ArrayD<f32>]) -> Result<()> {
        let buffer = self
            .arenas
            .state
            .get(k)
            .ok_or_else(|| Error::Internal(format!("no optimizer state arena {k}")))?;
        let mut all = vec![0f32; self.layout.total];
        for (i, v) in values.iter().enumerate().take(self.layout.updated) {
            let at = self.layout.offsets[i];
            let v = v.as_standard_layout();
            all[at..at + self.layout.lens[i]].copy_from_slice(v.as_slice().expect("standard"));
        }
        if !all.is_empty() {
            self.ctx
                .queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(&all));
        }
        Ok(())
    }

    /// Reads one arena back whole.
    async fn read_arena(&self, buffer: &wgpu::Buffer) -> Result<Vec<f32>> {
        super::executor::read_buffer(&self.ctx, buffer, 4 * self.layout.total as u64).await
    }

    /// Copies the arena's parameter values into `params` (the weights the GPU trained).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_params(&self, params: &mut ParamStore) -> Result<()> {
        let all = pollster::block_on(self.read_arena(&self.arenas.params))?;
        let values = self.split(&all, params, self.layout.ids.len())?;
        for (&id, v) in self.layout.ids.iter().zip(values) {
            *params.get_mut(id) = v;
        }
        Ok(())
    }

    /// Optimizer state arena `k`, one array per updated parameter (in `layout().ids` order).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn download_state(&self, k: usize, params: &ParamStore) -> Result<Vec<ArrayD<f32>>> {
        let buffer = self
            .arenas
            .state
            .get(k)
            .ok_or_else(|| Error::Internal(format!("no optimizer state arena {k}")))?;
        let all = pollster::block_on(self.read_arena(buffer))?;
        self.split(&all, params, self.layout.updated)
    }

    fn split(&self, all: &[f32], params: &ParamStore, count: usize) -> Result<Vec<ArrayD<f32>>> {
        (0..count)
            .map(|k| {
                let shape = params.param(self.layout.ids[k]).value.shape().to_vec();
                ArrayD::from_shape_vec(IxDyn(&shape), self.layout.arena.unpack(all, k).to_vec())
                    .map_err(|e| Error::Internal(format!("state of the wrong size: {e}")))
            })
            .collect()
    }

    /// The training plan for `batch` items in `mode`, as text (`wgnn info --train-plan`).
    pub fn describe_plan(
        &self,
        tg: &TrainGraph,
        spec: &StepSpec,
        batch: usize,
        mode: Mode,
    ) -> Result<String> {
        let tp = plan::build(tg, spec, &self.layout, batch, self.plan_limits, mode)?;
        let header = format!(
            "GPU training plan for model '{}', batch {batch}\nadapter: {} ({:?}); max storage binding {}",
            tg.graph.name,
            self.adapter.name,
            self.adapter.backend,
            bytes_text(self.plan_limits.max_binding_bytes)
        );
        Ok(plan::describe(
            &tp,
            &tg.graph,
            &header,
            uniform_stride(&self.limits),
            &self.layout,
        ))
    }

    /// Builds (once) and runs the plan for these inputs in `mode`: uploads `inputs`, then
    /// `extra` (targets or seeds), then what the host makes for the step (noise drawn from
    /// `rng`, token ids grouped by id), submits, and returns the plan's outputs.
    async fn run(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec<'_>,
        mode: Mode,
        inputs: &[PreparedInput],
        extra: &[&[f32]],
        rng: Option<&mut Rng>,
    ) -> Result<Vec<Vec<f32>>> {
        let prepared = self.prepare(tg, spec, mode, inputs, extra, rng)?;
        let in_flight = self.submit(prepared).await?;
        self.finish(in_flight).await
    }

    /// [`run`](Self::run) up to the submit: builds the plan if new, queues the uploads and
    /// records the commands. Recording the next batch while the GPU still runs this one is
    /// what overlaps a step's host work (gathering, noise, uploads, encoding) with the GPU's.
    fn prepare(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec<'_>,
        mode: Mode,
        inputs: &[PreparedInput],
        extra: &[&[f32]],
        rng: Option<&mut Rng>,
    ) -> Result<PreparedRun> {
        let batch = crate::input::common_batch(inputs)?;
        let scope = ErrorScopes::push(&self.ctx.device);
        let key = (batch, mode);
        if !self.plans.contains_key(&key) {
            let tp = plan::build(tg, spec, &self.layout, batch, self.plan_limits, mode)?;
            check_fits(&tp, self.plan_limits, &tg.graph)?;
            for op in &tp.plan.ops {
                if let Op::Dispatch(d) = op {
                    self.ctx.pipelines.ensure(&self.ctx.device, d.kernel);
                }
            }
            let gpu = GpuPlan::with_arenas(&self.ctx, tp.plan.clone(), Some(&self.arenas))?;
            self.plans.insert(key, (tp, gpu));
        }
        let (tp, gpu) = &self.plans[&key];
        let made = host_inputs(&tp.host_inputs, &tg.graph, inputs, rng)?;
        let mut bytes: Vec<&[u8]> = Vec::with_capacity(inputs.len() + extra.len() + made.len());
        for input in inputs {
            bytes.push(match input {
                PreparedInput::Float(x) => {
                    bytemuck::cast_slice(x.as_slice().ok_or_else(|| {
                        Error::Input("float input is not in standard layout".into())
                    })?)
                }
                PreparedInput::Ids(ids) => {
                    bytemuck::cast_slice(ids.as_slice().ok_or_else(|| {
                        Error::Input("token ids are not in standard layout".into())
                    })?)
                }
            });
        }
        bytes.extend(extra.iter().map(|e| bytemuck::cast_slice::<f32, u8>(e)));
        bytes.extend(made.iter().map(HostData::bytes));
        let recorded = gpu.record(&self.ctx, &bytes)?;
        Ok(PreparedRun {
            key,
            recorded,
            scope,
        })
    }

    /// Submits a prepared batch; errors the uploads or recording raised come out here.
    async fn submit(&self, prepared: PreparedRun) -> Result<RunInFlight> {
        let (_, gpu) = self.plan(prepared.key)?;
        let in_flight = gpu.submit(&self.ctx, prepared.recorded);
        let scoped = prepared
            .scope
            .check(&format!("training on a batch of {}", prepared.key.0))
            .await;
        super::check_device(&self.device_errors, &self.adapter.name)?;
        scoped?;
        Ok(RunInFlight {
            key: prepared.key,
            in_flight,
        })
    }

    /// Waits for a submitted batch and returns the plan's outputs.
    async fn finish(&self, run: RunInFlight) -> Result<Vec<Vec<f32>>> {
        let (_, gpu) = self.plan(run.key)?;
        let result = gpu.read(&self.ctx, run.in_flight).await;
        super::check_device(&self.device_errors, &self.adapter.name)?;
        result
    }

    fn plan(&self, key: (usize, Mode)) -> Result<&(TrainPlan, GpuPlan)> {
        self.plans
            .get(&key)
            .ok_or_else(|| Error::Internal(format!("no training plan for batch {}", key.0)))
    }

    /// One training step on a batch: uploads its inputs, targets and the per-step scalars
    /// `step_words` (the optimizer's learning rate and iteration terms), runs forward, loss,
    /// backward and update in one submit. Returns each output's loss (before its loss weight)
    /// and the training-mode outputs. A loss that is not finite leaves the parameters as they
    /// were before the step (the plan keeps a copy it restores from).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        step_words: &[u32],
        rng: &mut Rng,
    ) -> Result<BatchLosses> {
        let prepared = self.prepare_step(tg, spec, inputs, targets, step_words, rng)?;
        let in_flight = self.submit_step(prepared)?;
        self.finish_step(tg, spec, in_flight)
    }

    /// [`step`](Self::step) in three parts, so that the next batch is prepared while this one
    /// runs: `prepare_step` (checks, uploads, recording), `submit_step`, `finish_step` (wait,
    /// losses, and the restore of a non-finite step). Steps are submitted in the order they
    /// are prepared; a prepared step that is never submitted is simply dropped. `step_words`
    /// are those of the iteration the step will be.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_step(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        step_words: &[u32],
        rng: &mut Rng,
    ) -> Result<PreparedStep> {
        if step_words.len() > 64 {
            return Err(Error::Internal("more than 64 step words".into()));
        }
        let (batch, flat) = self.flat_targets(tg, spec, inputs, targets)?;
        // Queued like the inputs: it reaches the GPU with this step's submit, after every step
        // submitted before.
        self.ctx
            .queue
            .write_buffer(&self.arenas.step, 0, bytemuck::cast_slice(step_words));
        let refs: Vec<&[f32]> = flat.iter().map(Vec::as_slice).collect();
        let run = self.prepare(tg, spec, Mode::Step, inputs, &refs, Some(rng))?;
        Ok(PreparedStep { run, batch })
    }

    /// Submits a prepared step.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_step(&mut self, prepared: PreparedStep) -> Result<StepInFlight> {
        let run = pollster::block_on(self.submit(prepared.run))?;
        Ok(StepInFlight {
            run,
            batch: prepared.batch,
        })
    }

    /// Waits for a submitted step: its losses and outputs; a loss that is not finite puts the
    /// parameters back as they were before it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish_step(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        in_flight: StepInFlight,
    ) -> Result<BatchLosses> {
        let outs = pollster::block_on(self.finish(in_flight.run))?;
        let done = batch_losses(&tg.graph, in_flight.batch, &outs)?;
        if !done.total(spec.loss_weights).is_finite() {
            self.restore_backup()?;
        }
        Ok(done)
    }

    /// Puts back the parameters as they were before the last step's update.
    #[cfg(not(target_arch = "wasm32"))]
    fn restore_backup(&self) -> Result<()> {
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("restore parameters"),
            });
        let bytes = 4 * self.layout.total as u64;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(&self.arenas.backup, 0, &self.arenas.params, 0, bytes);
        }
        let submission = self.ctx.queue.submit([encoder.finish()]);
        self.ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        super::check_device(&self.device_errors, &self.adapter.name)
    }

    /// The losses (before their weights) and inference outputs of one batch, no update.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
    ) -> Result<BatchLosses> {
        self.losses_and_outputs(tg, spec, Mode::Evaluate, inputs, targets, None)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn losses_and_outputs(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        mode: Mode,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        rng: Option<&mut Rng>,
    ) -> Result<BatchLosses> {
        let (batch, flat) = self.flat_targets(tg, spec, inputs, targets)?;
        let refs: Vec<&[f32]> = flat.iter().map(Vec::as_slice).collect();
        let outs = pollster::block_on(self.run(tg, spec, mode, inputs, &refs, rng))?;
        batch_losses(&tg.graph, batch, &outs)
    }

    /// The batch size and each output's targets flattened, checked against what its loss reads.
    fn flat_targets(
        &self,
        tg: &TrainGraph,
        spec: &StepSpec,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
    ) -> Result<(usize, Vec<Vec<f32>>)> {
        let graph = &tg.graph;
        if targets.len() != graph.outputs.len() {
            return Err(Error::Input(format!(
                "the model has {} output(s), got {} target array(s)",
                graph.outputs.len(),
                targets.len()
            )));
        }
        let batch = crate::input::common_batch(inputs)?;
        let flat: Vec<Vec<f32>> = targets
            .iter()
            .map(|t| t.as_standard_layout().iter().copied().collect())
            .collect();
        for (k, t) in flat.iter().enumerate() {
            let info = graph.value(graph.outputs[k].value);
            let want = plan::target_floats(&spec.losses[k], &info.shape, batch);
            if t.len() != want {
                return Err(Error::Input(format!(
                    "targets for output '{}' hold {} values, the loss needs {want} for {batch} rows",
                    graph.outputs[k].name,
                    t.len()
                )));
            }
        }
        Ok((batch, flat))
    }

    /// Each output's loss (before its weight) and the gradient of every updated parameter on
    /// one batch, without an update (for tests against Keras's gradients).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn gradients(
        &mut self,
        tg: &TrainGraph,
        spec: &StepSpec,
        inputs: &[PreparedInput],
        targets: &[ArrayD<f32>],
        rng: &mut Rng,
    ) -> Result<(BatchLosses, ParamGradients)> {
        let losses =
            self.losses_and_outputs(tg, spec, Mode::Gradients, inputs, targets, Some(rng))?;
        let all = pollster::block_on(self.read_arena(&self.arenas.grads))?;
        let grads = self.split(&all, &tg.graph.params, self.layout.updated)?;
        Ok((
            losses,
            self.layout.ids[..self.layout.updated]
                .iter()
                .copied()
                .zip(grads)
                .collect(),
        ))
    }

    /// The backward from given output gradients (no loss, no update), for tests: the
    /// gradient of every arena parameter and of each graph input that `tg` computes one for.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn seeded_gradients(
        &mut self,
        tg: &TrainGraph,
        inputs: &[PreparedInput],
        seeds: &[ArrayD<f32>],
        rng: &mut Rng,
    ) -> Result<SeededGradients> {
        let spec = StepSpec {
            losses: &[],
            loss_weights: &[],
            optimizer: None,
        };
        let seeds: Vec<Vec<f32>> = seeds
            .iter()
            .map(|s| s.as_standard_layout().iter().copied().collect())
            .collect();
        let refs: Vec<&[f32]> = seeds.iter().map(Vec::as_slice).collect();
        let outs = pollster::block_on(self.run(tg, &spec, Mode::Seeded, inputs, &refs, Some(rng)))?;
        let batch = crate::input::common_batch(inputs)?;
        let graph = &tg.graph;
        // Outputs: the model outputs, then one gradient per graph input that needs one.
        let mut input_grads = Vec::new();
        let mut at = graph.outputs.len();
        for port in &graph.inputs {
            if tg.needs_grad(port.value) {
                let mut shape = vec![batch];
                shape.extend_from_slice(&graph.value(port.value).shape);
                input_grads.push(Some(
                    ArrayD::from_shape_vec(IxDyn(&shape), outs[at].clone())
                        .map_err(|e| Error::Internal(format!("input gradient: {e}")))?,
                ));
                at += 1;
            } else {
                input_grads.push(None);
            }
        }
        let all = pollster::block_on(self.read_arena(&self.arenas.grads))?;
        let grads = self.split(&all, &graph.params, self.layout.updated)?;
        Ok((
            self.layout.ids[..self.layout.updated]
                .iter()
                .copied()
                .zip(grads)
                .collect(),
            input_grads,
        ))
    }

    /// The graph this trainer was built for must be the one passed to its calls.
    pub fn check_graph(&self, graph: &Graph) -> Result<()> {
        if graph.params.len() < self.layout.ids.iter().map(|p| p.0 + 1).max().unwrap_or(0) {
            return Err(Error::Internal(
                "a GPU trainer used with another model".into(),
            ));
        }
        Ok(())
    }
}

/// One host-made input of a step, as it is uploaded.
enum HostData {
    Words(Vec<u32>),
    Floats(Vec<f32>),
}

impl HostData {
    fn bytes(&self) -> &[u8] {
        match self {
            HostData::Words(w) => bytemuck::cast_slice(w),
            HostData::Floats(f) => bytemuck::cast_slice(f),
        }
    }
}

/// A batch uploaded and recorded for one plan, not yet submitted.
struct PreparedRun {
    key: (usize, Mode),
    recorded: super::executor::Recorded,
    // Open from the uploads to the submit, so errors of either name this batch.
    scope: ErrorScopes,
}

/// A submitted batch of one plan.
struct RunInFlight {
    key: (usize, Mode),
    in_flight: super::executor::InFlight,
}

/// A training step recorded and ready to submit ([`GpuTrainer::prepare_step`]).
pub struct PreparedStep {
    run: PreparedRun,
    batch: usize,
}

/// A submitted training step ([`GpuTrainer::submit_step`]).
pub struct StepInFlight {
    run: RunInFlight,
    batch: usize,
}

/// A step's or evaluation's read-back outputs as losses and output arrays: the plan's outputs
/// are the model's outputs, then each output's loss, then the regularization penalties.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn batch_losses(graph: &Graph, batch: usize, outs: &[Vec<f32>]) -> Result<BatchLosses> {
    let n = graph.outputs.len();
    if outs.len() < 2 * n {
        return Err(Error::Internal(format!(
            "{} read-back arrays for {n} outputs",
            outs.len()
        )));
    }
    let outputs = graph
        .outputs
        .iter()
        .zip(outs)
        .map(|(p, v)| {
            let mut shape = vec![batch];
            shape.extend_from_slice(&graph.value(p.value).shape);
            ArrayD::from_shape_vec(IxDyn(&shape), v.clone())
                .map_err(|e| Error::Internal(format!("output of the wrong size: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let first = |v: &Vec<f32>| v.first().copied().unwrap_or(f32::NAN) as f64;
    let losses = outs[n..2 * n].iter().map(first).collect();
    let penalty = outs[2 * n..].iter().map(first).sum();
    Ok(BatchLosses {
        output_losses: losses,
        regularization: penalty,
        outputs,
    })
}

/// What a node draws from the step's RNG for the host-made inputs.
enum Drawn {
    /// A Dropout / noise layer's multiplier and addend (each taken once uploaded).
    Noise(crate::cpu::grad::dropout::Noise),
    /// A recurrent layer's cell dropout masks.
    Masks(Option<Vec<f32>>),
}

/// The step's host-made inputs (`TrainPlan::host_inputs`, in order). Noise and recurrent
/// dropout masks are drawn in node order, as the CPU forward draws them, so both backends see
/// the same noise from the same RNG.
fn host_inputs(
    wanted: &[plan::HostInput],
    graph: &Graph,
    inputs: &[PreparedInput],
    mut rng: Option<&mut Rng>,
) -> Result<Vec<HostData>> {
    let batch = crate::input::common_batch(inputs)?;
    let mut drawing: Vec<&plan::HostInput> = wanted
        .iter()
        .filter(|h| !matches!(h, plan::HostInput::IdGroups { .. }))
        .collect();
    let node_of = |h: &plan::HostInput| match *h {
        plan::HostInput::Noise { node, .. } | plan::HostInput::RecurrentMasks { node, .. } => node,
        plan::HostInput::IdGroups { .. } => usize::MAX,
    };
    drawing.sort_by_key(|h| node_of(h));
    let mut drawn: HashMap<usize, Drawn> = HashMap::new();
    for h in drawing {
        let node = node_of(h);
        let std::collections::hash_map::Entry::Vacant(slot) = drawn.entry(node) else {
            continue;
        };
        let n = &graph.nodes[node];
        let rng = rng.as_deref_mut().ok_or_else(|| {
            Error::Internal(format!("'{}' draws noise but no RNG was given", n.name))
        })?;
        slot.insert(match (h, &n.op) {
            (plan::HostInput::Noise { .. }, crate::graph::Op::Dropout(d)) => {
                let mut shape = vec![batch];
                shape.extend_from_slice(&graph.value(n.inputs[0]).shape);
                Drawn::Noise(crate::cpu::grad::dropout::training_noise(d, &shape, rng))
            }
            (&plan::HostInput::RecurrentMasks { steps, .. }, op) => {
                let r = match op {
                    crate::graph::Op::Recurrent(r) => r,
                    crate::graph::Op::TimeDistributed { inner } => match &**inner {
                        crate::graph::Op::Recurrent(r) => r,
                        _ => return Err(Error::Internal(format!("'{}' has no cells", n.name))),
                    },
                    _ => return Err(Error::Internal(format!("'{}' has no cells", n.name))),
                };
                Drawn::Masks(Some(crate::gpu::grad::recurrent::recurrent_dropout_masks(
                    r,
                    batch * steps,
                    rng,
                )))
            }
            _ => return Err(Error::Internal(format!("'{}' draws no noise", n.name))),
        });
    }
    let mut made = Vec::with_capacity(wanted.len());
    for h in wanted {
        match *h {
            plan::HostInput::IdGroups { input, vocab } => {
                let PreparedInput::Ids(ids) = &inputs[input] else {
                    return Err(Error::Input(format!(
                        "input '{}' must be token ids",
                        graph.inputs[input].name
                    )));
                };
                let words = group_ids(ids.iter().copied(), vocab).map_err(|id| {
                    Error::Input(format!(
                        "input '{}': token id {id} is outside the Embedding's vocabulary of {vocab}",
                        graph.inputs[input].name
                    ))
                })?;
                made.push(HostData::Words(words));
            }
            plan::HostInput::Noise { node, addend } => {
                // Each term is uploaded once: move it out rather than copy it.
                let Some(Drawn::Noise((m, a))) = drawn.get_mut(&node) else {
                    return Err(Error::Internal(format!("no noise drawn for node #{node}")));
                };
                let term = if addend { a } else { m };
                let term = term.take().ok_or_else(|| {
                    Error::Internal(format!("'{}' drew no such term", graph.nodes[node].name))
                })?;
                made.push(HostData::Floats(term));
            }
            plan::HostInput::RecurrentMasks { node, .. } => {
                let Some(Drawn::Masks(masks)) = drawn.get_mut(&node) else {
                    return Err(Error::Internal(format!("no masks drawn for node #{node}")));
                };
                let masks = masks.take().ok_or_else(|| {
                    Error::Internal(format!("'{}' masks wanted twice", graph.nodes[node].name))
                })?;
                made.push(HostData::Floats(masks));
            }
        }
    }
    Ok(made)
}

/// `vocab + 1` run starts, then the lookup indices sorted stably by id (a counting sort);
/// Err(id) for an id outside the vocabulary.
fn group_ids(
    ids: impl ExactSizeIterator<Item = u32> + Clone,
    vocab: usize,
) -> std::result::Result<Vec<u32>, u32> {
    let lookups = ids.len();
    let mut words = vec![0u32; vocab + 1 + lookups];
    for id in ids.clone() {
        if id as usize >= vocab {
            return Err(id);
        }
        words[id as usize + 1] += 1;
    }
    for r in 0..vocab {
        words[r + 1] += words[r];
    }
    let mut next: Vec<u32> = words[..vocab].to_vec();
    for (k, id) in ids.enumerate() {
        let at = &mut next[id as usize];
        words[vocab + 1 + *at as usize] = k as u32;
        *at += 1;
    }
    Ok(words)
}

/// Ok when an adapter that runs wgnn's kernels is there (what `GpuTrainer::new` would use),
/// else its "no GPU adapter found" error.
#[cfg(not(target_arch = "wasm32"))]
pub fn probe_adapter() -> Result<()> {
    super::choose_adapter(None).map(|_| ())
}

/// The training step `wgnn info MODEL --train-plan` prints, planned for the chosen adapter's
/// limits (no device is created; without an adapter, WebGPU's default limits).
#[cfg(not(target_arch = "wasm32"))]
pub fn describe_train_plan(
    tg: &TrainGraph,
    spec: &StepSpec,
    batch: usize,
    adapter: Option<&str>,
) -> Result<String> {
    let (info, limits) = match super::choose_adapter(adapter) {
        Ok(a) => (Some(a.get_info()), a.limits()),
        Err(Error::Gpu(msg)) if super::is_no_adapter(&msg) && adapter.is_none() => {
            (None, wgpu::Limits::default())
        }
        Err(e) => return Err(e),
    };
    let label = info.as_ref().map_or_else(
        || "no adapter found: WebGPU default limits".to_string(),
        super::adapter_label,
    );
    let plan_limits = super::plan_limits(&limits, info.as_ref(), LimitOverrides::default());
    let mut layout = ParamLayout::new(tg);
    if let Some(opt) = spec.optimizer {
        layout.state_arenas = crate::train::optim::Optimizer::new(opt.clone(), &tg.graph.params)
            .slot_names()
            .len();
    }
    let tp = plan::build(tg, spec, &layout, batch.max(1), plan_limits, Mode::Step)?;
    check_fits(&tp, plan_limits, &tg.graph)?;
    let header = format!(
        "GPU training plan for model '{}', batch {}: loss {}, optimizer {}\nadapter: {label}; max storage binding {}",
        tg.graph.name,
        batch.max(1),
        spec.losses
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(", "),
        spec.optimizer.map_or("none", |o| o.rule.class_name()),
        bytes_text(plan_limits.max_binding_bytes)
    );
    Ok(plan::describe(
        &tp,
        &tg.graph,
        &header,
        uniform_stride(&limits),
        &layout,
    ))
}

/// Refuses a step whose buffers do not fit the adapter, naming the layer.
fn check_fits(tp: &TrainPlan, limits: PlanLimits, graph: &Graph) -> Result<()> {
    for t in &tp.plan.tensors {
        if t.bytes > limits.max_binding_bytes {
            let owner = match t.node.and_then(|i| graph.nodes.get(i)) {
                Some(n) => format!("layer '{}' ({})", n.name, n.class),
                None => "the batch".to_string(),
            };
            return Err(Error::Gpu(format!(
                "{owner}: its training {} buffer needs {}, above the adapter's limit of {} per buffer; use a smaller --batch-size",
                t.what,
                bytes_text(t.bytes),
                bytes_text(limits.max_binding_bytes)
            )));
        }
    }
    Ok(())
}
