//! The training plan: `TrainGraph` + batch size -> one list of ops that runs the forward
//! keeping every value the backward reads, each output's loss and its gradient, the backward
//! in reverse node order and the optimizer's updates. Plain data like the inference `Plan` (it
//! is one, with extra inputs for the targets and extra outputs for the losses), so
//! `wgnn info --train-plan` prints it without a device and `GpuPlan` replays it in one submit.
//!
//! Gradient buffers are pooled: a value's gradient takes a free slot when the first node
//! reading that value runs its backward, further readers add into it, and the slot is freed
//! once the node that made the value has run its own backward.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::graph::{
    Activation, BatchNorm, BinaryOp, ConvLstm, DType, Dense, Embedding, Graph, Merge, Node,
    Op as GraphOp, ParamId, Penalized, Recurrent, ValueId,
};
use crate::train::loss::LossKind;
use crate::train::optim::OptimizerSpec;
use crate::train::step::TrainGraph;
use crate::train::Loss;

use super::super::grad::{self, linear_workgroups, word, Emit};
use super::super::kernels::{Kernel, GEMM_TILE, LINEAR_THREADS};
use super::super::plan::{
    act_words, bytes_text, split_k_chunk, Arena, BatchTensor, BufRef, Op, Plan, PlanInput,
    PlanLimits, PlanOutput,
};
use super::super::weights::WeightRole;
use super::ParamLayout;

/// Where a training plan's extra buffers are.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub plan: Plan,
    /// Model inputs come first in `plan.inputs`; the targets (one per output) after them.
    pub model_inputs: usize,
    /// `plan.outputs`: the model outputs, then one loss per output, then one value per
    /// regularization penalty.
    pub model_outputs: usize,
    pub penalties: usize,
    pub mode: Mode,
    /// The inputs after the targets, which the host makes for each step.
    pub host_inputs: Vec<HostInput>,
}

/// An input a step's host computes (after the model inputs and targets in `plan.inputs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostInput {
    /// The lookups of model input `input` (token ids) grouped by id, for an Embedding's table
    /// gradient: `vocab + 1` run starts, then the lookup indices sorted stably by id (u32s).
    IdGroups { input: usize, vocab: usize },
    /// One term of the noise Dropout / a noise layer (node `node`) draws for this step, over
    /// its input: the multiplier, or (`addend`) what is added.
    Noise { node: usize, addend: bool },
    /// The dropout / recurrent_dropout masks of recurrent node `node`'s cells for this step
    /// (`grad::recurrent::recurrent_dropout_masks`), over the batch times `steps` (the steps a
    /// TimeDistributed folds into it).
    RecurrentMasks { node: usize, steps: usize },
}

/// What a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Forward, loss, backward, optimizer update.
    Step,
    /// Forward and loss (Keras's `evaluate`, validation).
    Evaluate,
    /// Forward, loss and backward, no update: the gradients stay in the gradient arena (for
    /// tests against Keras's gradients).
    Gradients,
    /// Forward, then the backward from output gradients given as inputs (no loss, no
    /// update); the gradients of the graph inputs are outputs. For tests.
    Seeded,
}

/// What a step trains with (the losses and optimizer are unused by `Mode::Seeded`).
pub struct StepSpec<'a> {
    pub losses: &'a [Loss],
    pub loss_weights: &'a [f32],
    pub optimizer: Option<&'a OptimizerSpec>,
}

struct Builder<'a> {
    tg: &'a TrainGraph,
    graph: &'a Graph,
    batch: usize,
    limits: PlanLimits,
    plan: Plan,
    /// Slots made by the backward that are free now.
    free: Vec<usize>,
    /// The gradient of each value, once some node has written it.
    grad: Vec<Option<BufRef>>,
    /// Parameters whose gradient this step has written (a shared layer's second call adds).
    param_written: Vec<bool>,
    /// Set while the optimizer's ops are emitted: they are tagged `UPDATE_NODE`.
    updating: bool,
    /// While a node's forward is re-lowered, its ops go here instead of the plan.
    capture: Option<Vec<Op>>,
    /// Each training-mode BatchNormalization's batch statistics, kept for its backward.
    bn_saved: Vec<Option<BufRef>>,
    /// Each recurrent layer's saved pre-activations and states, kept for its backward.
    rnn_saved: Vec<Option<BufRef>>,
    /// Each Bidirectional with merge_mode mul's outputs of both directions, for its backward.
    rnn_parts: Vec<Option<BufRef>>,
    /// Each recurrent layer's dropout masks of this step (a host input), for its backward.
    rnn_dropout: Vec<Option<BufRef>>,
    /// Each ConvLSTM's tape and starting states, kept for its backward.
    conv_lstm_saved: Vec<Option<grad::conv_lstm::Saved>>,
    layout: &'a ParamLayout,
    host_inputs: Vec<HostInput>,
    /// Each drawing Dropout's multiplier input (None: it only adds noise).
    noise_multiplier: Vec<Option<BufRef>>,
}

/// The node index of the loss's ops and of the optimizer's (they belong to no layer).
pub const LOSS_NODE: usize = usize::MAX;
pub const UPDATE_NODE: usize = usize::MAX - 1;

impl Emit for Builder<'_> {
    fn limits(&self) -> PlanLimits {
        self.limits
    }

    fn scratch(&mut self, node: usize, what: &'static str, floats: usize) -> BufRef {
        let bytes = 4 * floats as u64;
        self.plan.tensors.push(BatchTensor {
            node: Some(node),
            what,
            bytes,
        });
        let fitting = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, &s)| self.plan.slots[s] >= bytes)
            .min_by_key(|(_, &s)| self.plan.slots[s])
            .map(|(k, _)| k);
        let slot = match fitting {
            Some(k) => self.free.swap_remove(k),
            None => {
                self.plan.slots.push(bytes);
                self.plan.slot_users.push(Vec::new());
                self.plan.slots.len() - 1
            }
        };
        let owner = match self.graph.nodes.get(node) {
            Some(n) => n.name.as_str(),
            None if node == UPDATE_NODE => "optimizer",
            None => "loss",
        };
        let user = format!("{owner} {what}");
        if !self.plan.slot_users[slot].contains(&user) {
            self.plan.slot_users[slot].push(user);
        }
        BufRef::Slot(slot)
    }

    fn release(&mut self, buffer: BufRef) {
        if let BufRef::Slot(s) = buffer {
            if !self.free.contains(&s) {
                self.free.push(s);
            }
        }
    }

    fn push(&mut self, mut op: Op) {
        if let Some(captured) = &mut self.capture {
            captured.push(op);
            return;
        }
        if self.updating {
            match &mut op {
                Op::Clear { node, .. } | Op::Copy { node, .. } => *node = UPDATE_NODE,
                Op::Dispatch(d) => d.node = UPDATE_NODE,
            }
        }
        self.plan.ops.push(op);
    }
}

fn train_error(layer: &Node, message: impl std::fmt::Display) -> Error {
    Error::Train(format!(
        "layer '{}' ({}): {message}; train it with --backend cpu",
        layer.name, layer.class
    ))
}

impl<'a> Builder<'a> {
    fn value_buf(&self, v: ValueId) -> Result<BufRef> {
        self.plan.values[v]
            .ok_or_else(|| Error::Internal(format!("value #{v} has no buffer in the forward")))
    }

    fn floats(&self, v: ValueId) -> usize {
        self.batch * self.graph.value(v).elements()
    }

    /// Runs `produce` to write a gradient of value `v`: into a fresh buffer when it is the
    /// first, else into a scratch buffer then added to the gradient so far.
    fn contribute(
        &mut self,
        node: usize,
        v: ValueId,
        produce: impl FnOnce(&mut Self, BufRef) -> Result<()>,
    ) -> Result<()> {
        let floats = self.floats(v);
        match self.grad[v] {
            None => {
                let g = self.scratch(node, "gradient", floats);
                produce(self, g)?;
                self.grad[v] = Some(g);
            }
            Some(acc) => {
                let part = self.scratch(node, "gradient part", floats);
                produce(self, part)?;
                self.accumulate(node, part, acc, floats)?;
                self.release(part);
            }
        }
        Ok(())
    }

    /// Hands gradient buffer `g` of a node's output on as the gradient of its input `v` (a
    /// reshape, identity or linear activation).
    fn pass_through(&mut self, node: usize, v: ValueId, g: BufRef) -> Result<bool> {
        match self.grad[v] {
            None => {
                self.grad[v] = Some(g);
                Ok(true)
            }
            Some(acc) => {
                let floats = self.floats(v);
                self.accumulate(node, g, acc, floats)?;
                Ok(false)
            }
        }
    }

    /// Runs `produce` to write the gradient of parameter `id` (added in for a shared layer).
    fn contribute_param(
        &mut self,
        node: usize,
        id: ParamId,
        produce: impl FnOnce(&mut Self, BufRef) -> Result<()>,
    ) -> Result<()> {
        if !std::mem::replace(&mut self.param_written[id.0], true) {
            return produce(self, BufRef::ParamGrad(id));
        }
        let floats = self.graph.params.len_of(id);
        let part = self.scratch(node, "parameter gradient part", floats);
        produce(self, part)?;
        self.accumulate(node, part, BufRef::ParamGrad(id), floats)?;
        self.release(part);
        Ok(())
    }

    fn accumulate(&mut self, node: usize, src: BufRef, dst: BufRef, floats: usize) -> Result<()> {
        let layer = self.layer(node);
        let mut params = vec![0u32; 4];
        params.extend([word(&layer, "length", floats)?, 1, 0, 0]);
        self.dispatch(
            &layer,
            node,
            Kernel::Accumulate,
            vec![BufRef::Dummy, BufRef::Dummy, src, dst],
            params,
            linear_workgroups(floats, LINEAR_THREADS),
            format!("add a second gradient of {floats} values"),
        )
    }

    /// The node for error messages (a stand-in for the loss and the optimizer, which have
    /// none).
    fn layer(&self, node: usize) -> Node {
        self.graph.nodes.get(node).cloned().unwrap_or_else(|| Node {
            name: if node == UPDATE_NODE {
                "optimizer"
            } else {
                "loss"
            }
            .into(),
            class: "Model".into(),
            op: GraphOp::Identity,
            inputs: Vec::new(),
            mask: None,
            outputs: Vec::new(),
        })
    }

    fn trainable(&self, id: ParamId) -> bool {
        self.graph.params.param(id).trainable
    }

    /// A GEMM of the backward: `kernel` is MatmulAt (C = Aᵀ·B) or MatmulBt (C = A·Bᵀ), with
    /// split-K (partials, then SplitKReduce) when there are few output tiles and K is deep.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        node: usize,
        kernel: Kernel,
        a: BufRef,
        b: BufRef,
        c: BufRef,
        [m, n, k]: [usize; 3],
        what: &str,
    ) -> Result<()> {
        let layer = self.layer(node);
        let tiles = m.div_ceil(GEMM_TILE as usize) * n.div_ceil(GEMM_TILE as usize);
        let k_chunk = split_k_chunk(tiles, k);
        let mut params = vec![0u32; 4];
        params.extend([
            word(&layer, "rows", m)?,
            word(&layer, "columns", n)?,
            word(&layer, "depth", k)?,
            0,
        ]);
        params.extend([0u32; 11]);
        params.push(word(&layer, "depth", k_chunk)?);
        params.extend([1u32, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let detail = format!("{what}: M={m} N={n} K={k}");
        if k_chunk == 0 {
            return self.dispatch(
                &layer,
                node,
                kernel,
                vec![a, b, BufRef::Dummy, c],
                params,
                tiles as u64,
                detail,
            );
        }
        let splits = k.div_ceil(k_chunk);
        let partials = self.scratch(node, "split-K partial sums", splits * m * n);
        self.dispatch(
            &layer,
            node,
            kernel,
            vec![a, b, BufRef::Dummy, partials],
            params.clone(),
            (tiles * splits) as u64,
            format!("{detail}; K split {splits} ways of {k_chunk}"),
        )?;
        self.dispatch(
            &layer,
            node,
            Kernel::SplitKReduce,
            vec![partials, BufRef::Dummy, BufRef::Dummy, c],
            params,
            linear_workgroups(m * n, LINEAR_THREADS),
            format!("sum {splits} partial products of {m}x{n}"),
        )?;
        self.release(partials);
        Ok(())
    }

    fn dense_backward(&mut self, i: usize, d: &Dense, dy: BufRef) -> Result<()> {
        let node = &self.graph.nodes[i];
        let (x_value, k, units) = (node.inputs[0], d.in_features, d.units);
        let rows = self.floats(x_value) / k.max(1);
        let x = self.value_buf(x_value)?;
        if self.trainable(d.kernel) {
            self.contribute_param(i, d.kernel, |b, g| {
                b.gemm(
                    i,
                    Kernel::MatmulAt,
                    x,
                    dy,
                    g,
                    [k, units, rows],
                    "kernel gradient xT.dy",
                )
            })?;
        }
        if let Some(bias) = d.bias.filter(|&p| self.trainable(p)) {
            let layer = self.layer(i);
            self.contribute_param(i, bias, |b, g| {
                grad::conv::bias_grad(b, &layer, i, dy, rows, units, g)
            })?;
        }
        if self.tg.needs_grad(x_value) {
            let w = BufRef::Param(d.kernel);
            self.contribute(i, x_value, |b, g| {
                b.gemm(
                    i,
                    Kernel::MatmulBt,
                    dy,
                    w,
                    g,
                    [rows, k, units],
                    "input gradient dy.WT",
                )
            })?;
        }
        Ok(())
    }

    fn activation_backward(&mut self, i: usize, act: &Activation, dy: BufRef) -> Result<bool> {
        let node = &self.graph.nodes[i];
        let (x_value, y_value) = (node.inputs[0], node.outputs[0]);
        if !self.tg.needs_grad(x_value) {
            return Ok(false);
        }
        if *act == Activation::Linear {
            return self.pass_through(i, x_value, dy);
        }
        let layer = self.layer(i);
        let (x, y) = (self.value_buf(x_value)?, self.value_buf(y_value)?);
        let len = self.floats(x_value);
        let cols = self.graph.value(x_value).shape.last().copied().unwrap_or(1);
        let (kernel, params, workgroups, detail) = match act {
            Activation::Softmax | Activation::LogSoftmax => {
                let mut params = vec![0u32; 4];
                params.extend([
                    word(&layer, "length", len)?,
                    word(&layer, "columns", cols.max(1))?,
                    u32::from(*act == Activation::LogSoftmax),
                    0,
                ]);
                let rows = len / cols.max(1);
                (
                    Kernel::SoftmaxGrad,
                    params,
                    linear_workgroups(rows, LINEAR_THREADS),
                    format!("{} backward over {rows} rows of {cols}", act.name()),
                )
            }
            other => {
                let mut params = act_words(&layer, other)?.to_vec();
                params.extend([word(&layer, "length", len)?, 1, 0, 0]);
                (
                    Kernel::ActivationGrad,
                    params,
                    linear_workgroups(len, LINEAR_THREADS),
                    format!("{} backward over {len} values", other.name()),
                )
            }
        };
        self.contribute(i, x_value, |b, g| {
            b.dispatch(
                &layer,
                i,
                kernel,
                vec![x, y, dy, g],
                params,
                workgroups,
                detail,
            )
        })?;
        Ok(false)
    }

    /// One L1/L2 penalty over `x` (`len` values): its value as one more plan output, and
    /// (with `grad`) its gradient written or (`true`) added into that buffer.
    #[allow(clippy::too_many_arguments)]
    fn penalty(
        &mut self,
        x: BufRef,
        len: usize,
        l1: f32,
        l2: f32,
        scale: f32,
        grad: Option<(BufRef, bool)>,
        what: &str,
    ) -> Result<()> {
        let layer = self.layer(LOSS_NODE);
        let f = f32::to_bits;
        let sum = self.scratch(LOSS_NODE, "penalty", 1);
        let words = |add: bool| -> Result<Vec<u32>> {
            Ok(vec![
                0,
                f(l1),
                f(l2),
                f(scale),
                word(&layer, "length", len)?,
                u32::from(add),
                0,
                0,
            ])
        };
        self.dispatch(
            &layer,
            LOSS_NODE,
            Kernel::PenaltySum,
            vec![x, BufRef::Dummy, BufRef::Dummy, sum],
            words(false)?,
            1,
            format!("{what}: l1 {l1} l2 {l2} over {len} values"),
        )?;
        self.plan.outputs.push(PlanOutput {
            buffer: sum,
            bytes: 4,
            shape: vec![1],
        });
        if let Some((g, add)) = grad {
            self.dispatch(
                &layer,
                LOSS_NODE,
                Kernel::PenaltyGrad,
                vec![x, BufRef::Dummy, BufRef::Dummy, g],
                words(add)?,
                linear_workgroups(len, LINEAR_THREADS),
                format!("{what} gradient"),
            )?;
        }
        Ok(())
    }

    /// Activity penalties (divided by the batch size, as Keras 3 does): values, and their
    /// gradients as seeds of the backward sweep.
    fn activity_penalties(&mut self, grads: bool) -> Result<()> {
        let scale = 1.0 / self.batch.max(1) as f32;
        for r in self.graph.regularizers.clone() {
            let Penalized::Activity(v) = r.target else {
                continue;
            };
            let x = self.value_buf(v)?;
            let len = self.floats(v);
            let name = format!("activity penalty of {}", self.graph.value_name(v));
            if grads && self.tg.needs_grad(v) {
                self.contribute(LOSS_NODE, v, |b, g| {
                    b.penalty(x, len, r.l1, r.l2, scale, Some((g, false)), &name)
                })?;
            } else {
                self.penalty(x, len, r.l1, r.l2, scale, None, &name)?;
            }
        }
        Ok(())
    }

    /// Weight penalties of trainable weights: values, and their gradients added to the
    /// weights' (after the backward has written them).
    fn weight_penalties(&mut self, grads: bool, layout: &ParamLayout) -> Result<()> {
        for r in self.graph.regularizers.clone() {
            let Penalized::Param(id) = r.target else {
                continue;
            };
            if !self.trainable(id) {
                continue;
            }
            let name = self.graph.params.param(id).name.clone();
            let Some((_, len)) = layout.range(id) else {
                return Err(Error::Train(format!(
                    "the regularized weight '{name}' is not one GPU training holds; train it with --backend cpu"
                )));
            };
            let grad = (grads && layout.updates(id)).then(|| {
                let add = std::mem::replace(&mut self.param_written[id.0], true);
                (BufRef::ParamGrad(id), add)
            });
            self.penalty(
                BufRef::Param(id),
                len,
                r.l1,
                r.l2,
                1.0,
                grad,
                &format!("penalty of {name}"),
            )?;
        }
        Ok(())
    }

    /// Replaces node `i`'s inference forward ops by the ops `emit` appends, at the same place
    /// in the plan (its training forward).
    fn replace_forward(
        &mut self,
        i: usize,
        emit: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let Some(at) = self.plan.ops.iter().position(|op| op_node(op) == i) else {
            return Err(Error::Internal(format!(
                "no forward ops for '{}'",
                self.graph.nodes[i].name
            )));
        };
        self.plan.ops.retain(|op| op_node(op) != i);
        self.capture = Some(Vec::new());
        let emitted = emit(self);
        let ops = self.capture.take().unwrap_or_default();
        emitted?;
        self.plan.ops.splice(at..at, ops);
        Ok(())
    }

    /// Re-lowers each trainable BatchNormalization's forward in the place of its inference ops
    /// (whose scale and shift were computed once from the weights the plan was built with):
    /// in training, on the batch statistics (kept for the backward), moving statistics updated
    /// in place; in evaluation, on the moving statistics read from the parameter arena.
    fn batch_norm_forwards(&mut self, mode: Mode) -> Result<()> {
        for i in 0..self.graph.nodes.len() {
            let GraphOp::BatchNorm(bn) = &self.graph.nodes[i].op else {
                continue;
            };
            if !bn.trainable {
                continue;
            }
            let bn = bn.clone();
            self.replace_forward(i, |b| {
                let layer = b.layer(i);
                let (x_value, y_value) = (layer.inputs[0], layer.outputs[0]);
                let (x, y) = (b.value_buf(x_value)?, b.value_buf(y_value)?);
                let item = b.graph.value(x_value).shape.clone();
                let batch = b.batch;
                let gamma = bn.gamma.map(BufRef::Param);
                let beta = bn.beta.map(BufRef::Param);
                let moving_mean = BufRef::Param(bn.moving_mean);
                let moving_var = BufRef::Param(bn.moving_variance);
                if mode == Mode::Evaluate {
                    return grad::norm::batch_norm_evaluate_forward(
                        b,
                        &layer,
                        i,
                        &bn,
                        batch,
                        &item,
                        x,
                        gamma,
                        beta,
                        moving_mean,
                        moving_var,
                        y,
                    );
                }
                let floats = grad::norm::batch_norm_saved_floats(&layer, &bn, &item)?;
                // Kept to the node's backward: never released.
                let saved = b.scratch(i, "batch statistics", floats);
                b.bn_saved[i] = Some(saved);
                grad::norm::batch_norm_train_forward(
                    b,
                    &layer,
                    i,
                    &bn,
                    batch,
                    &item,
                    x,
                    gamma,
                    beta,
                    moving_mean,
                    moving_var,
                    y,
                    saved,
                )
            })?;
        }
        Ok(())
    }

    /// Appends a host-made input of `words` 4-byte words; returns its buffer.
    fn host_input(&mut self, h: HostInput, words: usize, label: String) -> BufRef {
        let model_and_targets = self.plan.inputs.len() - self.host_inputs.len();
        if let Some(k) = self.host_inputs.iter().position(|x| *x == h) {
            return BufRef::Input(model_and_targets + k);
        }
        self.host_inputs.push(h);
        self.plan.inputs.push(PlanInput {
            bytes: 4 * words as u64,
            is_ids: false,
            shape: vec![words],
            label: Some(label),
        });
        self.plan.tensors.push(BatchTensor {
            node: None,
            what: "host-made input",
            bytes: 4 * words as u64,
        });
        BufRef::Input(self.plan.inputs.len() - 1)
    }

    /// out = x * multiplier + addend over `len` values (the terms given).
    fn noise(
        &mut self,
        i: usize,
        x: BufRef,
        multiplier: Option<BufRef>,
        addend: Option<BufRef>,
        out: BufRef,
        len: usize,
    ) -> Result<()> {
        let layer = self.layer(i);
        let flags = u32::from(multiplier.is_some()) | (2 * u32::from(addend.is_some()));
        let mut params = vec![0u32; 4];
        params.extend([word(&layer, "length", len)?, flags, 0, 0]);
        let what = match (multiplier.is_some(), addend.is_some()) {
            (true, true) => "x * multiplier + addend",
            (true, false) => "x * multiplier",
            _ => "x + noise",
        };
        self.dispatch(
            &layer,
            i,
            Kernel::NoiseApply,
            vec![
                x,
                multiplier.unwrap_or(BufRef::Dummy),
                addend.unwrap_or(BufRef::Dummy),
                out,
            ],
            params,
            linear_workgroups(len, LINEAR_THREADS),
            format!("{what} over {len} values, drawn on the host this step"),
        )
    }

    /// Re-lowers each Dropout / noise layer that draws in training as x * multiplier +
    /// addend with this step's draws (host inputs, made from the run's RNG in node order, as
    /// the CPU forward draws them), in place of the inference copy.
    fn dropout_training_forwards(&mut self) -> Result<()> {
        for i in 0..self.graph.nodes.len() {
            let GraphOp::Dropout(d) = &self.graph.nodes[i].op else {
                continue;
            };
            if d.is_noop_in_training() {
                continue;
            }
            let (multiplier, addend) = d.kind.noise_terms();
            self.replace_forward(i, |b| {
                let layer = b.layer(i);
                let (x, y) = (
                    b.value_buf(layer.inputs[0])?,
                    b.value_buf(layer.outputs[0])?,
                );
                let len = b.floats(layer.inputs[0]);
                let mut term = |addend: bool, what: &str| {
                    let label = format!("{}.{what}", layer.name);
                    b.host_input(HostInput::Noise { node: i, addend }, len, label)
                };
                let m = multiplier.then(|| term(false, "multiplier"));
                let a = addend.then(|| term(true, "noise"));
                b.noise_multiplier[i] = m;
                b.noise(i, x, m, a, y, len)
            })?;
        }
        Ok(())
    }

    /// An Embedding table's gradient: the step's lookups grouped by id on the host, summed
    /// per table element in lookup order, with the squares the optimizer needs for a lookup
    /// table.
    fn embedding_backward(&mut self, i: usize, e: &Embedding, dy: BufRef) -> Result<()> {
        if !self.trainable(e.table) {
            return Ok(());
        }
        let layer = self.layer(i);
        let input = match self.value_buf(layer.inputs[0])? {
            BufRef::Input(k) if k < self.graph.inputs.len() => k,
            _ => {
                return Err(train_error(
                    &layer,
                    "GPU training reads an Embedding's token ids only as a model input",
                ))
            }
        };
        let tokens = self.floats(layer.inputs[0]);
        let segments = self.host_input(
            HostInput::IdGroups {
                input,
                vocab: e.input_dim,
            },
            e.input_dim + 1 + tokens,
            format!("{}.ids_by_row", self.graph.inputs[input].name),
        );
        let add = std::mem::replace(&mut self.param_written[e.table.0], true);
        let sq_offset = self.layout.sq_offset(e.table);
        let flags = u32::from(add) | (2 * u32::from(sq_offset.is_some()));
        let params = vec![
            word(&layer, "input_dim", e.input_dim)?,
            word(&layer, "output_dim", e.output_dim)?,
            flags,
            word(&layer, "table", sq_offset.unwrap_or(0))?,
        ];
        let table = e.input_dim * e.output_dim;
        self.dispatch(
            &layer,
            i,
            Kernel::EmbeddingGrad,
            vec![
                segments,
                dy,
                BufRef::ParamGrad(e.table),
                BufRef::Arena(Arena::GradSq),
            ],
            params,
            linear_workgroups(table, LINEAR_THREADS),
            format!(
                "table gradient {}x{} from {tokens} lookups grouped by id{}",
                e.input_dim,
                e.output_dim,
                if sq_offset.is_some() {
                    ", with their squares"
                } else {
                    ""
                }
            ),
        )
    }

    /// The token ids a masked recurrent layer reads its mask from (the mask value's buffer).
    fn mask_ids(&self, node: &Node) -> Result<Option<BufRef>> {
        node.mask.map(|m| self.value_buf(m)).transpose()
    }

    /// Re-lowers each recurrent layer's forward as its training forward, in place of its
    /// inference ops; `training`: with its cells' dropout (masks drawn on the host in node
    /// order, as the CPU forward draws them), else none (evaluation).
    fn recurrent_training_forwards(&mut self, training: bool) -> Result<()> {
        for i in 0..self.graph.nodes.len() {
            let r = match &self.graph.nodes[i].op {
                GraphOp::Recurrent(r) => r.clone(),
                GraphOp::TimeDistributed { inner } => match &**inner {
                    GraphOp::Recurrent(r) => r.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            self.replace_forward(i, |b| {
                let (layer, steps) = b.recurrent_layer(i)?;
                let x = b.value_buf(layer.inputs[0])?;
                let initial = layer.inputs[1..]
                    .iter()
                    .map(|&v| b.value_buf(v))
                    .collect::<Result<Vec<_>>>()?;
                let ys = layer
                    .outputs
                    .iter()
                    .map(|&v| b.value_buf(v))
                    .collect::<Result<Vec<_>>>()?;
                let mask = b.mask_ids(&layer)?;
                let batch = b.batch * steps;
                let saved = b.scratch(
                    i,
                    "recurrent states",
                    grad::recurrent::recurrent_saved_floats(&r, batch),
                );
                b.rnn_saved[i] = Some(saved);
                // Kept to the node's backward: never released.
                let parts = match grad::recurrent::recurrent_parts_floats(&r, batch) {
                    0 => None,
                    floats => Some(b.scratch(i, "both directions' outputs", floats)),
                };
                b.rnn_parts[i] = parts;
                let cells = cell_buffers(&r);
                let dropout = match grad::recurrent::recurrent_dropout_floats(&r, batch) {
                    0 => None,
                    _ if !training => None,
                    floats => Some(b.host_input(
                        HostInput::RecurrentMasks { node: i, steps },
                        floats,
                        format!("{}.dropout_masks", layer.name),
                    )),
                };
                b.rnn_dropout[i] = dropout;
                // The lowering checks the layer's options first: what it refuses is a
                // training option the GPU lacks, which the CPU path has.
                grad::recurrent::recurrent_train_forward(
                    b, &layer, i, &r, batch, x, mask, &cells, &ys, saved, parts, &initial, dropout,
                )
                .map_err(|e| match e {
                    Error::Gpu(msg) => Error::Train(format!("{msg}; train it with --backend cpu")),
                    other => other,
                })
            })?;
        }
        Ok(())
    }

    /// Re-lowers the forward of each ConvLSTM that runs its backward as its training forward
    /// (the inference ops, keeping every step for BPTT).
    fn conv_lstm_training_forwards(&mut self) -> Result<()> {
        for i in 0..self.graph.nodes.len() {
            let GraphOp::ConvLstm(c) = &self.graph.nodes[i].op else {
                continue;
            };
            if !self.tg.runs_backward(i) {
                continue;
            }
            let c = (**c).clone();
            let inference: Vec<Op> = self
                .plan
                .ops
                .iter()
                .filter(|op| op_node(op) == i)
                .cloned()
                .collect();
            self.replace_forward(i, |b| {
                let layer = b.layer(i);
                let batch = b.batch;
                // Kept to the node's backward, which releases them.
                let saved = grad::conv_lstm::Saved {
                    tape: b.scratch(i, "ConvLSTM tape", grad::conv_lstm::tape_floats(&c, batch)),
                    h_in: b.scratch(
                        i,
                        "ConvLSTM starting states",
                        grad::conv_lstm::h_in_floats(&c, batch),
                    ),
                };
                b.conv_lstm_saved[i] = Some(saved);
                grad::conv_lstm::training_forward(b, &layer, i, &c, batch, inference, saved)
            })?;
        }
        Ok(())
    }

    /// ConvLSTM BPTT in one call, as [`Self::recurrent_backward`]: gradients not written yet
    /// go straight to their buffers, the others through scratch parts added in after.
    fn conv_lstm_backward(&mut self, i: usize, c: &ConvLstm, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        let x_value = layer.inputs[0];
        let x = self.value_buf(x_value)?;
        let saved = self.conv_lstm_saved[i]
            .ok_or_else(|| Error::Internal(format!("'{}' kept no states", layer.name)))?;
        let mut adds: Vec<(BufRef, BufRef, usize)> = Vec::new();
        let mut target = |b: &mut Self, id: ParamId| -> Option<BufRef> {
            if !b.trainable(id) {
                return None;
            }
            if !std::mem::replace(&mut b.param_written[id.0], true) {
                return Some(BufRef::ParamGrad(id));
            }
            let floats = b.graph.params.len_of(id);
            let part = b.scratch(i, "parameter gradient part", floats);
            adds.push((part, BufRef::ParamGrad(id), floats));
            Some(part)
        };
        let mut grads = grad::conv_lstm::Grads {
            dx: None,
            kernel: target(self, c.kernel),
            recurrent_kernel: target(self, c.recurrent_kernel),
            bias: c.bias.and_then(|id| target(self, id)),
        };
        if self.tg.needs_grad(x_value) {
            let floats = self.floats(x_value);
            grads.dx = Some(match self.grad[x_value] {
                None => {
                    let g = self.scratch(i, "gradient", floats);
                    self.grad[x_value] = Some(g);
                    g
                }
                Some(acc) => {
                    let part = self.scratch(i, "gradient part", floats);
                    adds.push((part, acc, floats));
                    part
                }
            });
        }
        let batch = self.batch;
        grad::conv_lstm::conv_lstm_backward(
            self,
            &layer,
            i,
            c,
            batch,
            x,
            BufRef::Param(c.kernel),
            BufRef::Param(c.recurrent_kernel),
            dy,
            saved,
            grads,
        )?;
        for (part, dst, floats) in adds {
            self.accumulate(i, part, dst, floats)?;
            self.release(part);
        }
        self.release(saved.tape);
        self.release(saved.h_in);
        Ok(())
    }

    /// BPTT in one call: gradients not written yet go straight to their buffers, the others
    /// (a shared layer's second call) through scratch parts added in after.
    fn recurrent_backward(&mut self, i: usize, r: &Recurrent, dys: &[BufRef]) -> Result<()> {
        let (layer, steps) = self.recurrent_layer(i)?;
        let x_value = layer.inputs[0];
        let x = self.value_buf(x_value)?;
        let mask = self.mask_ids(&layer)?;
        let saved = self.rnn_saved[i]
            .ok_or_else(|| Error::Internal(format!("'{}' kept no states", layer.name)))?;
        let parts = self.rnn_parts[i];
        let mut adds: Vec<(BufRef, BufRef, usize)> = Vec::new();
        let mut grads = Vec::new();
        for cell in r.cells() {
            let mut target = |b: &mut Self, id: ParamId| -> Option<BufRef> {
                if !b.trainable(id) {
                    return None;
                }
                if !std::mem::replace(&mut b.param_written[id.0], true) {
                    return Some(BufRef::ParamGrad(id));
                }
                let floats = b.graph.params.len_of(id);
                let part = b.scratch(i, "parameter gradient part", floats);
                adds.push((part, BufRef::ParamGrad(id), floats));
                Some(part)
            };
            grads.push(grad::recurrent::CellGrads {
                kernel: target(self, cell.kernel),
                recurrent_kernel: target(self, cell.recurrent_kernel),
                bias: cell.bias.and_then(|id| target(self, id)),
            });
        }
        // dx and the initial states' gradients, where needed.
        let mut input_grad = |b: &mut Self, v: ValueId| -> Option<BufRef> {
            if !b.tg.needs_grad(v) {
                return None;
            }
            let floats = b.floats(v);
            match b.grad[v] {
                None => {
                    let g = b.scratch(i, "gradient", floats);
                    b.grad[v] = Some(g);
                    Some(g)
                }
                Some(acc) => {
                    let part = b.scratch(i, "gradient part", floats);
                    adds.push((part, acc, floats));
                    Some(part)
                }
            }
        };
        let dx = input_grad(self, x_value);
        let dinitial: Vec<Option<BufRef>> = layer.inputs[1..]
            .iter()
            .map(|&v| input_grad(self, v))
            .collect();
        let cells = cell_buffers(r);
        let batch = self.batch * steps;
        let dropout = self.rnn_dropout[i];
        grad::recurrent::recurrent_backward(
            self, &layer, i, r, batch, x, mask, &cells, saved, parts, dys, dx, &dinitial, &grads,
            dropout,
        )?;
        for (part, dst, floats) in adds {
            self.accumulate(i, part, dst, floats)?;
            self.release(part);
        }
        Ok(())
    }

    /// Node `i` as its recurrent lowering sees it, and the steps folded into its batch: a
    /// recurrent layer as it is (1), or TimeDistributed's inner recurrent layer on the N·T
    /// folded sequences, unmasked as the CPU path runs it (T).
    fn recurrent_layer(&self, i: usize) -> Result<(Node, usize)> {
        let layer = self.layer(i);
        let GraphOp::TimeDistributed { inner } = &layer.op else {
            return Ok((layer, 1));
        };
        let steps = self.graph.value(layer.inputs[0]).shape.first().copied();
        let steps = steps.unwrap_or(1);
        let mut inner_layer = layer.clone();
        inner_layer.op = (**inner).clone();
        inner_layer.mask = None;
        Ok((inner_layer, steps))
    }

    /// A recurrent layer with several outputs (Bidirectional merge_mode None): BPTT from all
    /// their gradients, zeros for those no loss reaches.
    fn several_outputs_backward(&mut self, i: usize, dys: Vec<Option<BufRef>>) -> Result<()> {
        let node = &self.graph.nodes[i];
        let GraphOp::Recurrent(r) = &node.op else {
            return Err(train_error(
                node,
                "a layer with several outputs has no GPU backward yet",
            ));
        };
        let (r, outputs) = (r.clone(), node.outputs.clone());
        let mut bufs = Vec::new();
        for (&v, dy) in outputs.iter().zip(&dys) {
            bufs.push(match dy {
                Some(g) => *g,
                None => {
                    let g = self.scratch(i, "gradient", self.floats(v));
                    self.push(Op::Clear { node: i, buffer: g });
                    g
                }
            });
        }
        self.recurrent_backward(i, &r, &bufs)?;
        for g in bufs {
            self.release(g);
        }
        Ok(())
    }

    /// TimeDistributed: the inner op's backward on the N·T folded items (its parameters'
    /// gradients summed over every timestep), as the CPU path runs it.
    fn time_distributed_backward(&mut self, i: usize, inner: &GraphOp, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        if layer.mask.is_some() {
            return Err(train_error(
                &layer,
                "a masked TimeDistributed has no GPU backward yet",
            ));
        }
        let x_value = layer.inputs[0];
        let x = self.value_buf(x_value)?;
        let item = self.graph.value(x_value).shape.clone();
        let folded = self.batch * item.first().copied().unwrap_or(1);
        match inner {
            GraphOp::Recurrent(r) => self.recurrent_backward(i, r, &[dy]),
            GraphOp::Conv(c) => {
                let run = |b: &mut Self,
                           dx: Option<BufRef>,
                           dk: Option<BufRef>,
                           db: Option<BufRef>|
                 -> Result<()> {
                    let w = BufRef::Param(c.kernel);
                    grad::conv::conv_backward(b, &layer, i, c, folded, x, w, dy, dx, dk, db)
                };
                if self.trainable(c.kernel) {
                    self.contribute_param(i, c.kernel, |b, g| run(b, None, Some(g), None))?;
                }
                if let Some(bias) = c.bias.filter(|&p| self.trainable(p)) {
                    self.contribute_param(i, bias, |b, g| run(b, None, None, Some(g)))?;
                }
                if self.tg.needs_grad(x_value) {
                    self.contribute(i, x_value, |b, g| run(b, Some(g), None, None))?;
                }
                Ok(())
            }
            GraphOp::Pool(p) if self.tg.needs_grad(x_value) => {
                self.contribute(i, x_value, |b, g| {
                    grad::pool::pool_backward(b, &layer, i, p, folded, x, dy, g)
                })
            }
            // The item's leading time axis is one more batch axis to the global pooling.
            GraphOp::GlobalPool { op, rank, .. } if self.tg.needs_grad(x_value) => {
                let batch = self.batch;
                self.contribute(i, x_value, |b, g| {
                    grad::pool::global_pool_backward(
                        b, &layer, i, *op, *rank, &item, batch, x, dy, g, None,
                    )
                })
            }
            GraphOp::Pool(_) | GraphOp::GlobalPool { .. } => Ok(()),
            other => Err(train_error(
                &layer,
                format!("TimeDistributed({}) has no GPU backward yet", other.name()),
            )),
        }
    }

    fn batch_norm_backward(&mut self, i: usize, bn: &BatchNorm, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        let x_value = layer.inputs[0];
        let item = self.graph.value(x_value).shape.clone();
        let batch = self.batch;
        let x = self.value_buf(x_value)?;
        let gamma = bn.gamma.map(BufRef::Param);
        if !bn.trainable {
            if self.tg.needs_grad(x_value) {
                let var = BufRef::Param(bn.moving_variance);
                self.contribute(i, x_value, |b, g| {
                    grad::norm::batch_norm_inference_backward(
                        b, &layer, i, bn, batch, &item, dy, gamma, var, g,
                    )
                })?;
            }
            return Ok(());
        }
        let saved = self.bn_saved[i]
            .ok_or_else(|| Error::Internal(format!("'{}' kept no statistics", layer.name)))?;
        let run = |b: &mut Self, dx, dgamma, dbeta| {
            grad::norm::batch_norm_backward(
                b, &layer, i, bn, batch, &item, x, dy, gamma, saved, dx, dgamma, dbeta,
            )
        };
        if let Some(id) = bn.gamma.filter(|&p| self.trainable(p)) {
            self.contribute_param(i, id, |b, g| run(b, None, Some(g), None))?;
        }
        if let Some(id) = bn.beta.filter(|&p| self.trainable(p)) {
            self.contribute_param(i, id, |b, g| run(b, None, None, Some(g)))?;
        }
        if self.tg.needs_grad(x_value) {
            self.contribute(i, x_value, |b, g| run(b, Some(g), None, None))?;
        }
        Ok(())
    }

    /// LayerNormalization / GroupNormalization: the weight and input gradients each computed
    /// only where needed.
    fn row_norm_backward(&mut self, i: usize, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        let (op, gamma, beta) = match &layer.op {
            GraphOp::LayerNorm(l) => (grad::layer_norm::RowNorm::Layer(l), l.gamma, l.beta),
            GraphOp::GroupNorm(g) => (grad::layer_norm::RowNorm::Group(g), g.gamma, g.beta),
            _ => return Err(Error::Internal("not a layer or group normalization".into())),
        };
        let x_value = layer.inputs[0];
        let item = self.graph.value(x_value).shape.clone();
        let batch = self.batch;
        let x = self.value_buf(x_value)?;
        let run = |b: &mut Self, dx, dgamma, dbeta| {
            grad::layer_norm::row_norm_backward(
                b,
                &layer,
                i,
                op,
                batch,
                &item,
                x,
                dy,
                gamma.map(BufRef::Param),
                dx,
                dgamma,
                dbeta,
            )
        };
        if let Some(id) = gamma.filter(|&p| self.trainable(p)) {
            self.contribute_param(i, id, |b, g| run(b, None, Some(g), None))?;
        }
        if let Some(id) = beta.filter(|&p| self.trainable(p)) {
            self.contribute_param(i, id, |b, g| run(b, None, None, Some(g)))?;
        }
        if self.tg.needs_grad(x_value) {
            self.contribute(i, x_value, |b, g| run(b, Some(g), None, None))?;
        }
        Ok(())
    }

    /// Conv / DepthwiseConv / ConvTranspose: the input, kernel and bias gradients each
    /// computed only where needed (a shared layer's second call adds into its gradients).
    fn conv_family_backward(&mut self, i: usize, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        let x_value = layer.inputs[0];
        let x = self.value_buf(x_value)?;
        let batch = self.batch;
        let (kernel, bias) = match &layer.op {
            GraphOp::Conv(c) => (c.kernel, c.bias),
            GraphOp::DepthwiseConv(c) => (c.kernel, c.bias),
            GraphOp::ConvTranspose(c) => (c.kernel, c.bias),
            _ => return Err(Error::Internal("not a convolution".into())),
        };
        let run = |b: &mut Self,
                   dx: Option<BufRef>,
                   dk: Option<BufRef>,
                   db: Option<BufRef>|
         -> Result<()> {
            let w = BufRef::Param(kernel);
            match &layer.op {
                GraphOp::Conv(c) => {
                    grad::conv::conv_backward(b, &layer, i, c, batch, x, w, dy, dx, dk, db)
                }
                GraphOp::DepthwiseConv(c) => {
                    grad::conv::depthwise_backward(b, &layer, i, c, batch, x, w, dy, dx, dk, db)
                }
                GraphOp::ConvTranspose(c) => grad::conv::conv_transpose_backward(
                    b, &layer, i, c, batch, x, w, dy, dx, dk, db,
                ),
                _ => Err(Error::Internal("not a convolution".into())),
            }
        };
        if self.trainable(kernel) {
            self.contribute_param(i, kernel, |b, g| run(b, None, Some(g), None))?;
        }
        if let Some(bias) = bias.filter(|&p| self.trainable(p)) {
            self.contribute_param(i, bias, |b, g| run(b, None, None, Some(g)))?;
        }
        if self.tg.needs_grad(x_value) {
            self.contribute(i, x_value, |b, g| run(b, Some(g), None, None))?;
        }
        Ok(())
    }

    /// A merge (Add ... Minimum, Average, masked) other than a plain same-shape Add: the fold
    /// walked back from the last input, each input's share summed over its broadcast axes.
    fn merge_backward(&mut self, i: usize, m: &Merge, dy: BufRef) -> Result<()> {
        let layer = self.layer(i);
        let inputs = layer.inputs.clone();
        let needs: Vec<bool> = inputs.iter().map(|&v| self.tg.needs_grad(v)).collect();
        let Some(lowest) = needs.iter().position(|&n| n) else {
            return Ok(());
        };
        let mask = match (m.masked, layer.mask) {
            (true, Some(mv)) => {
                // As the forward: Keras masks Multiply, Maximum and Minimum, by the token ids.
                let out = &self.graph.value(layer.outputs[0]).shape;
                let ids = self.value_buf(mv)?;
                let fits = matches!(ids, BufRef::Input(_))
                    && out.len() == 2
                    && self.graph.value(mv).shape[..] == out[..1];
                if !fits || m.average || m.op == BinaryOp::Add || m.op == BinaryOp::Subtract {
                    return Err(train_error(
                        &layer,
                        "a masked merge other than Multiply / Maximum / Minimum on the model's token ids has no GPU backward yet",
                    ));
                }
                Some(grad::merge::MergeMask { ids })
            }
            _ => None,
        };
        let shapes: Vec<Vec<usize>> = inputs
            .iter()
            .map(|&v| self.graph.value(v).shape.clone())
            .collect();
        let out = self.graph.value(layer.outputs[0]).shape.clone();
        let xs = inputs
            .iter()
            .map(|&v| self.value_buf(v))
            .collect::<Result<Vec<_>>>()?;
        let batch = self.batch;
        let mut walk = grad::merge::MergeBackward::new(
            self, &layer, i, m, batch, &shapes, &out, &xs, mask, dy, lowest,
        )?;
        for k in (0..inputs.len()).rev() {
            if needs[k] {
                self.contribute(i, inputs[k], |b, g| walk.input(b, k, g))?;
            }
        }
        walk.finish(self);
        Ok(())
    }

    /// Node `i`'s backward from the gradient `dy` of its (only) output. Returns whether `dy`'s
    /// buffer was handed on to an input (so it must not be freed).
    fn node_backward(&mut self, i: usize, dy: BufRef) -> Result<bool> {
        let node = &self.graph.nodes[i];
        let x_value = node.inputs[0];
        match &node.op {
            GraphOp::Dense(d) => {
                let d = d.clone();
                self.dense_backward(i, &d, dy)?;
                Ok(false)
            }
            GraphOp::Activation(a) => {
                let a = *a;
                self.activation_backward(i, &a, dy)
            }
            GraphOp::Conv(_) | GraphOp::DepthwiseConv(_) | GraphOp::ConvTranspose(_) => {
                self.conv_family_backward(i, dy)?;
                Ok(false)
            }
            GraphOp::Pool(p) => {
                let p = p.clone();
                if self.tg.needs_grad(x_value) {
                    let layer = self.layer(i);
                    let x = self.value_buf(x_value)?;
                    let batch = self.batch;
                    self.contribute(i, x_value, |b, g| {
                        grad::pool::pool_backward(b, &layer, i, &p, batch, x, dy, g)
                    })?;
                }
                Ok(false)
            }
            GraphOp::GlobalPool { op, rank, .. } => {
                let (op, rank) = (*op, *rank);
                if self.tg.needs_grad(x_value) {
                    let layer = self.layer(i);
                    let x = self.value_buf(x_value)?;
                    let item = self.graph.value(x_value).shape.clone();
                    let mask = node.mask.map(|m| self.value_buf(m)).transpose()?;
                    let batch = self.batch;
                    self.contribute(i, x_value, |b, g| {
                        grad::pool::global_pool_backward(
                            b, &layer, i, op, rank, &item, batch, x, dy, g, mask,
                        )
                    })?;
                }
                Ok(false)
            }
            GraphOp::Recurrent(r) => {
                let r = r.clone();
                self.recurrent_backward(i, &r, &[dy])?;
                Ok(false)
            }
            GraphOp::ConvLstm(c) => {
                let c = (**c).clone();
                self.conv_lstm_backward(i, &c, dy)?;
                Ok(false)
            }
            GraphOp::TimeDistributed { inner } => {
                let inner = (**inner).clone();
                self.time_distributed_backward(i, &inner, dy)?;
                Ok(false)
            }
            GraphOp::BatchNorm(bn) if node.mask.is_none() => {
                let bn = bn.clone();
                self.batch_norm_backward(i, &bn, dy)?;
                Ok(false)
            }
            GraphOp::LayerNorm(_) | GraphOp::GroupNorm(_) => {
                self.row_norm_backward(i, dy)?;
                Ok(false)
            }
            GraphOp::Concat { axis } => {
                let axis = *axis;
                let layer = self.layer(i);
                let shapes: Vec<Vec<usize>> = node
                    .inputs
                    .iter()
                    .map(|&v| self.graph.value(v).shape.clone())
                    .collect();
                let batch = self.batch;
                for (k, &v) in node.inputs.clone().iter().enumerate() {
                    if !self.tg.needs_grad(v) {
                        continue;
                    }
                    self.contribute(i, v, |b, g| {
                        let mut dxs = vec![None; shapes.len()];
                        dxs[k] = Some(g);
                        grad::merge::concat_backward(b, &layer, i, axis, batch, &shapes, dy, &dxs)
                    })?;
                }
                Ok(false)
            }
            GraphOp::Dropout(_) if self.noise_multiplier[i].is_some() => {
                if self.tg.needs_grad(x_value) {
                    let m = self.noise_multiplier[i].unwrap_or(BufRef::Dummy);
                    let len = self.floats(x_value);
                    self.contribute(i, x_value, |b, g| b.noise(i, dy, Some(m), None, g, len))?;
                }
                Ok(false)
            }
            GraphOp::Embedding(e) => {
                let e = e.clone();
                self.embedding_backward(i, &e, dy)?;
                Ok(false)
            }
            GraphOp::Reshape { .. } | GraphOp::Identity | GraphOp::Dropout(_) => {
                if self.tg.needs_grad(x_value) {
                    self.pass_through(i, x_value, dy)
                } else {
                    Ok(false)
                }
            }
            GraphOp::Merge(m)
                if m.op == BinaryOp::Add
                    && !m.average
                    && !m.masked
                    && node.inputs.iter().all(|&v| {
                        self.graph.value(v).shape == self.graph.value(node.outputs[0]).shape
                    }) =>
            {
                // Each input's gradient is dy: the first takes dy's buffer, the others a copy.
                let inputs = node.inputs.clone();
                let mut handed_on = false;
                for &v in inputs.iter().rev() {
                    if !self.tg.needs_grad(v) {
                        continue;
                    }
                    if !handed_on && self.grad[v].is_none() {
                        self.grad[v] = Some(dy);
                        handed_on = true;
                    } else {
                        let bytes = 4 * self.floats(v) as u64;
                        self.contribute(i, v, |b, g| {
                            b.push(Op::Copy {
                                node: i,
                                src: dy,
                                dst: g,
                                bytes,
                            });
                            Ok(())
                        })?;
                    }
                }
                Ok(handed_on)
            }
            // Token ids in, a mask out: no gradient, as on the CPU.
            GraphOp::PaddingMask => Ok(false),
            op if grad::shape::handles(op) => {
                if self.tg.needs_grad(x_value) {
                    let layer = self.layer(i);
                    let x = self.value_buf(x_value)?;
                    let graph = self.graph;
                    let x_item = graph.value(x_value).shape.clone();
                    let y_item = graph.value(node.outputs[0]).shape.clone();
                    let batch = self.batch;
                    self.contribute(i, x_value, |b, g| {
                        grad::shape::backward(
                            b,
                            &layer,
                            i,
                            &graph.params,
                            batch,
                            &x_item,
                            &y_item,
                            x,
                            dy,
                            g,
                        )
                    })?;
                }
                Ok(false)
            }
            GraphOp::Merge(m) => {
                let m = *m;
                self.merge_backward(i, &m, dy)?;
                Ok(false)
            }
            GraphOp::Dot(d) => {
                let d = *d;
                let layer = self.layer(i);
                let inputs = node.inputs.clone();
                let shapes: Vec<Vec<usize>> = inputs
                    .iter()
                    .map(|&v| self.graph.value(v).shape.clone())
                    .collect();
                let xs = [self.value_buf(inputs[0])?, self.value_buf(inputs[1])?];
                let batch = self.batch;
                for (side, &v) in inputs.iter().enumerate() {
                    if !self.tg.needs_grad(v) {
                        continue;
                    }
                    self.contribute(i, v, |b, g| {
                        grad::softmax::dot_backward(
                            b,
                            &layer,
                            i,
                            &d,
                            batch,
                            [&shapes[0], &shapes[1]],
                            xs,
                            dy,
                            side,
                            g,
                        )
                    })?;
                }
                Ok(false)
            }
            GraphOp::PRelu(p) => {
                let alpha = p.alpha;
                let layer = self.layer(i);
                let x = self.value_buf(x_value)?;
                let item = self.graph.value(x_value).shape.clone();
                let alpha_shape = self.graph.params.param(alpha).value.shape().to_vec();
                let batch = self.batch;
                let run = |b: &mut Self, dx, dalpha| {
                    grad::softmax::prelu_backward(
                        b,
                        &layer,
                        i,
                        batch,
                        &item,
                        &alpha_shape,
                        x,
                        BufRef::Param(alpha),
                        dy,
                        dx,
                        dalpha,
                    )
                };
                if self.trainable(alpha) {
                    self.contribute_param(i, alpha, |b, g| run(b, None, Some(g)))?;
                }
                if self.tg.needs_grad(x_value) {
                    self.contribute(i, x_value, |b, g| run(b, Some(g), None))?;
                }
                Ok(false)
            }
            GraphOp::Softmax(s) => {
                let s = s.clone();
                if self.tg.needs_grad(x_value) {
                    let layer = self.layer(i);
                    let y = self.value_buf(node.outputs[0])?;
                    let item = self.graph.value(x_value).shape.clone();
                    let batch = self.batch;
                    self.contribute(i, x_value, |b, g| {
                        grad::softmax::softmax_backward(b, &layer, i, &s, batch, &item, y, dy, g)
                    })?;
                }
                Ok(false)
            }
            other => Err(train_error(
                node,
                format!("{} has no GPU backward yet", other.name()),
            )),
        }
    }
}

/// Builds the plan of `mode` for `batch` items.
pub fn build(
    tg: &TrainGraph,
    spec: &StepSpec,
    layout: &ParamLayout,
    batch: usize,
    limits: PlanLimits,
    mode: Mode,
) -> Result<TrainPlan> {
    let graph = &tg.graph;
    if mode != Mode::Seeded && spec.losses.len() != graph.outputs.len() {
        return Err(Error::Internal(format!(
            "{} losses for {} outputs",
            spec.losses.len(),
            graph.outputs.len()
        )));
    }
    let limits = PlanLimits {
        fold_batch_norm: false,
        ..limits
    };
    let mut plan = Plan::build_keeping_values(graph, batch, limits)?;
    // Weights that are parameters bind the parameter arena (they change every step).
    for op in &mut plan.ops {
        if let Op::Dispatch(d) = op {
            for b in &mut d.buffers {
                if let BufRef::Weight(key) = *b {
                    if let Some(id) = param_of(graph, key.node, key.role) {
                        if layout.contains(id) {
                            *b = BufRef::Param(id);
                        }
                    }
                }
            }
        }
    }
    let model_inputs = plan.inputs.len();
    let model_outputs = plan.outputs.len();
    // After the model inputs: each output's targets, or (Seeded) its gradient.
    for (k, port) in graph.outputs.iter().enumerate() {
        let info = graph.value(port.value);
        let floats = match mode {
            Mode::Seeded => batch * info.elements(),
            Mode::Step | Mode::Evaluate | Mode::Gradients => {
                target_floats(&spec.losses[k], &info.shape, batch)
            }
        };
        plan.inputs.push(PlanInput {
            bytes: 4 * floats as u64,
            is_ids: false,
            shape: vec![floats],
            label: None,
        });
        plan.tensors.push(BatchTensor {
            node: None,
            what: "targets",
            bytes: 4 * floats as u64,
        });
    }
    let values = graph.values.len();
    let mut b = Builder {
        tg,
        graph,
        batch,
        limits,
        plan,
        free: Vec::new(),
        grad: vec![None; values],
        param_written: vec![false; graph.params.len()],
        updating: false,
        capture: None,
        bn_saved: vec![None; graph.nodes.len()],
        rnn_saved: vec![None; graph.nodes.len()],
        rnn_parts: vec![None; graph.nodes.len()],
        rnn_dropout: vec![None; graph.nodes.len()],
        conv_lstm_saved: vec![None; graph.nodes.len()],
        layout,
        host_inputs: Vec::new(),
        noise_multiplier: vec![None; graph.nodes.len()],
    };
    b.batch_norm_forwards(mode)?;
    if mode != Mode::Evaluate {
        b.dropout_training_forwards()?;
        b.conv_lstm_training_forwards()?;
    }
    // Recurrent layers run their training forward in every mode: it reads the weights from
    // the arena (the inference forward reads stacked copies uploaded once) and keeps what
    // BPTT needs.
    b.recurrent_training_forwards(mode != Mode::Evaluate)?;
    match mode {
        Mode::Seeded => {
            for (k, port) in graph.outputs.iter().enumerate() {
                let seed = BufRef::Input(model_inputs + k);
                if !b.pass_through(LOSS_NODE, port.value, seed)? {
                    return Err(Error::Internal("an output listed twice".into()));
                }
            }
        }
        Mode::Step | Mode::Evaluate | Mode::Gradients => {
            append_losses(&mut b, spec, model_inputs)?;
            b.activity_penalties(mode != Mode::Evaluate)?;
        }
    }
    if mode != Mode::Evaluate {
        for i in (0..graph.nodes.len()).rev() {
            if !tg.runs_backward(i) {
                continue;
            }
            let node = &graph.nodes[i];
            if node.outputs.len() != 1 {
                let dys: Vec<Option<BufRef>> =
                    node.outputs.iter().map(|&v| b.grad[v].take()).collect();
                if dys.iter().any(Option::is_some) {
                    b.several_outputs_backward(i, dys)?;
                }
                continue;
            }
            let Some(dy) = b.grad[node.outputs[0]].take() else {
                continue;
            };
            if !b.node_backward(i, dy)? {
                b.release(dy);
            }
        }
    }
    let mut penalties = 0;
    if mode != Mode::Seeded {
        b.weight_penalties(mode != Mode::Evaluate, layout)?;
        penalties = b.plan.outputs.len() - model_outputs - graph.outputs.len();
    }
    match mode {
        Mode::Seeded => {
            for port in &graph.inputs {
                if !tg.needs_grad(port.value) {
                    continue;
                }
                let buffer = b.grad[port.value].ok_or_else(|| {
                    Error::Internal(format!("no gradient reached input '{}'", port.name))
                })?;
                let info = graph.value(port.value);
                let mut shape = vec![batch];
                shape.extend_from_slice(&info.shape);
                b.plan.outputs.push(PlanOutput {
                    buffer,
                    bytes: 4 * (batch * info.elements()) as u64,
                    shape,
                });
            }
        }
        Mode::Step => {
            b.updating = true;
            // A NaN loss must leave the parameters as they were: keep them.
            b.push(Op::Copy {
                node: UPDATE_NODE,
                src: BufRef::Arena(Arena::Params),
                dst: BufRef::Arena(Arena::Backup),
                bytes: 4 * layout.total as u64,
            });
            append_update(&mut b, spec, layout)?;
            b.updating = false;
        }
        Mode::Evaluate | Mode::Gradients => {}
    }
    Ok(TrainPlan {
        plan: b.plan,
        model_inputs,
        model_outputs,
        penalties,
        mode,
        host_inputs: b.host_inputs,
    })
}

/// Each direction's weights as the recurrent kernels bind them: arena ranges.
fn cell_buffers(r: &Recurrent) -> Vec<grad::recurrent::CellBuffers> {
    r.cells()
        .map(|c| grad::recurrent::CellBuffers {
            kernel: BufRef::Param(c.kernel),
            recurrent_kernel: BufRef::Param(c.recurrent_kernel),
            bias: c.bias.map(BufRef::Param),
        })
        .collect()
}

/// f32s of one output's targets for `batch` items: one class index per row for the sparse
/// cross-entropy, else the output's own shape.
pub fn target_floats(loss: &Loss, item_shape: &[usize], batch: usize) -> usize {
    let per_item: usize = item_shape.iter().product();
    match loss.kind {
        LossKind::SparseCategoricalCrossentropy => {
            batch * per_item / item_shape.last().copied().unwrap_or(1).max(1)
        }
        _ => batch * per_item,
    }
}

/// The parameter a forward weight buffer holds as it is (no folding or stacking), if any.
pub fn param_of(graph: &Graph, node: usize, role: WeightRole) -> Option<ParamId> {
    op_param(&graph.nodes[node].op, role)
}

fn op_param(op: &GraphOp, role: WeightRole) -> Option<ParamId> {
    match (op, role) {
        // The inner op's weights, as its lowering binds them on the folded items.
        (GraphOp::TimeDistributed { inner }, role) => op_param(inner, role),
        (GraphOp::Dense(d), WeightRole::Kernel) => Some(d.kernel),
        (GraphOp::Dense(d), WeightRole::Bias) => d.bias,
        (GraphOp::Conv(c), WeightRole::Kernel) => Some(c.kernel),
        (GraphOp::Conv(c), WeightRole::Bias) => c.bias,
        (GraphOp::DepthwiseConv(c), WeightRole::Kernel) => Some(c.kernel),
        (GraphOp::DepthwiseConv(c), WeightRole::Bias) => c.bias,
        (GraphOp::ConvTranspose(c), WeightRole::Kernel) => Some(c.kernel),
        (GraphOp::ConvTranspose(c), WeightRole::Bias) => c.bias,
        (GraphOp::Embedding(e), WeightRole::Table) => Some(e.table),
        (GraphOp::LayerNorm(l), WeightRole::Scale) => l.gamma,
        (GraphOp::LayerNorm(l), WeightRole::Offset) => l.beta,
        (GraphOp::GroupNorm(g), WeightRole::Scale) => g.gamma,
        (GraphOp::GroupNorm(g), WeightRole::Offset) => g.beta,
        (GraphOp::PRelu(p), WeightRole::Scale) => Some(p.alpha),
        (GraphOp::ConvLstm(c), WeightRole::Kernel) => Some(c.kernel),
        (GraphOp::ConvLstm(c), WeightRole::Bias) => c.bias,
        (GraphOp::ConvLstm(c), WeightRole::RecurrentKernel) => Some(c.recurrent_kernel),
        _ => None,
    }
}

/// The plan as `wgnn info --train-plan` prints it: the ops in the order they run, in four
/// phases (forward, loss, backward, update), then the buffers and the memory a step needs.
pub fn describe(
    tp: &TrainPlan,
    graph: &Graph,
    header: &str,
    stride: u64,
    layout: &ParamLayout,
) -> String {
    let plan = &tp.plan;
    let mut out = String::new();
    writeln!(out, "{header}").ok();
    let forward_ops = plan
        .ops
        .iter()
        .position(|op| op_node(op) >= UPDATE_NODE)
        .unwrap_or(plan.ops.len());
    let mut phase = "";
    let mut last_node = None;
    for (k, op) in plan.ops.iter().enumerate() {
        let node = op_node(op);
        let now = if k < forward_ops {
            "forward"
        } else if node == LOSS_NODE {
            "loss"
        } else if node == UPDATE_NODE {
            "update"
        } else {
            "backward"
        };
        if now != phase {
            writeln!(out, "{now}:").ok();
            phase = now;
            last_node = None;
        }
        if node < UPDATE_NODE && last_node != Some(node) {
            let n = &graph.nodes[node];
            writeln!(out, "  [{node}] {} ({})", n.name, n.class).ok();
            last_node = Some(node);
        }
        plan.write_op(&mut out, graph, op);
    }
    writeln!(out, "buffers:").ok();
    let mut batch_bytes = 0u64;
    for (k, input) in plan.inputs.iter().enumerate() {
        writeln!(
            out,
            "  {:<16} {:>10}",
            plan.buf_name(graph, BufRef::Input(k)),
            bytes_text(input.bytes)
        )
        .ok();
        batch_bytes += input.bytes;
    }
    for (s, bytes) in plan.slots.iter().enumerate() {
        writeln!(
            out,
            "  slot{s:<12} {:>10}  {}",
            bytes_text(*bytes),
            plan.slot_users[s].join(", ")
        )
        .ok();
        batch_bytes += bytes;
    }
    let arena = 4 * layout.total as u64;
    writeln!(
        out,
        "  arenas           {:>10} each: parameters, gradients, the parameters' backup and {} optimizer state(s); {} parameters, {} updated",
        bytes_text(arena),
        layout.state_arenas,
        layout.ids.len(),
        layout.updated
    )
    .ok();
    let grad_sq = 4 * layout.arena.sq_total as u64;
    if grad_sq > 0 {
        writeln!(
            out,
            "  GradSq arena     {:>10}  the lookup tables' squared row gradients",
            bytes_text(grad_sq)
        )
        .ok();
    }
    let uniforms = plan.uniform_bytes(stride);
    let readback = plan.output_bytes();
    writeln!(
        out,
        "  uniforms         {:>10}  parameters of {} ops",
        bytes_text(uniforms),
        plan.ops.len()
    )
    .ok();
    writeln!(
        out,
        "  readback         {:>10}  the outputs (for metrics) and the losses",
        bytes_text(readback)
    )
    .ok();
    let total =
        batch_bytes + arena * (3 + layout.state_arenas as u64) + grad_sq + uniforms + readback;
    writeln!(
        out,
        "total GPU memory of a step: {}; {} dispatches in one submit",
        bytes_text(total),
        plan.dispatch_count()
    )
    .ok();
    out
}

fn op_node(op: &Op) -> usize {
    match op {
        Op::Clear { node, .. } | Op::Copy { node, .. } => *node,
        Op::Dispatch(d) => d.node,
    }
}

/// Each output's loss: its value (read back as one more plan output) and its gradient, where
/// the backward sweep starts.
fn append_losses(b: &mut Builder, spec: &StepSpec, model_inputs: usize) -> Result<()> {
    let graph = b.graph;
    for (k, port) in graph.outputs.iter().enumerate() {
        let loss = &spec.losses[k];
        let (value, what) = b.tg.prediction_for(k, loss);
        let cols = graph.value(value).shape.last().copied().unwrap_or(1).max(1);
        let rows = b.floats(value) / cols;
        let pred = b.value_buf(value)?;
        let target = BufRef::Input(model_inputs + k);
        // A masked sequence output: the mask is read as the token ids it comes from.
        let mask = match graph.output_masks.get(k).copied().flatten() {
            None => None,
            Some(m) => match b.plan.values[m] {
                Some(buf @ BufRef::Input(i)) if graph.input_info(i).dtype == DType::Ids => {
                    Some(buf)
                }
                _ => {
                    return Err(Error::Train(format!(
                        "output '{}': a loss mask that is not the model's token ids is not supported by GPU training yet; train with --backend cpu",
                        port.name
                    )))
                }
            },
        };
        let loss_out = b.scratch(LOSS_NODE, "value", 1);
        let weight = spec.loss_weights.get(k).copied().unwrap_or(1.0);
        b.contribute(LOSS_NODE, value, |b, dpred| {
            grad::loss::loss_forward_backward(
                b, loss, what, rows, cols, pred, target, mask, weight, dpred, loss_out, 0,
            )
        })?;
        b.plan.outputs.push(PlanOutput {
            buffer: loss_out,
            bytes: 4,
            shape: vec![1],
        });
    }
    Ok(())
}

/// The optimizer's update of every updated parameter, one dispatch per rule over the arena.
fn append_update(b: &mut Builder, spec: &StepSpec, layout: &ParamLayout) -> Result<()> {
    let optimizer = spec
        .optimizer
        .ok_or_else(|| Error::Internal("a training step without an optimizer".into()))?;
    let states: Vec<BufRef> = (0..layout.state_arenas)
        .map(|k| BufRef::Arena(Arena::State(k)))
        .collect();
    let grad_sq = (layout.arena.sq_total > 0).then_some(BufRef::Arena(Arena::GradSq));
    grad::optim::optimizer_update(
        b,
        optimizer,
        &layout.arena,
        BufRef::Arena(Arena::Params),
        BufRef::Arena(Arena::Grads),
        grad_sq,
        &states,
        BufRef::Arena(Arena::Step),
    )
}
