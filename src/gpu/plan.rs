//! The dispatch plan: `Graph` + batch size -> the list of kernel dispatches, the buffers they
//! read and write, and each dispatch's uniform parameters. Plain data with no wgpu objects, so
//! `wgnn info --plan` can print it without a device; `executor::GpuPlan` turns it into buffers and
//! bind groups once, then replays it for every batch of that size.
//!
//! Activation buffers are pooled: each node output (or recurrent scratch) takes a free slot that
//! fits, and a slot is freed after the last node that reads a value in it (liveness), so a chain
//! ping-pongs between a few buffers and a branch keeps its value only as long as needed.
//! Elementwise layers run in place on a value nobody reads later (else on a copy);
//! Reshape/Flatten/Dropout alias their input and cost nothing.

mod merge;

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::graph::{Activation, Conv, DType, Dense, Graph, Node, Op as GraphOp, ParamId, ValueId};

use super::kernels::{
    Kernel, GEMM_K_SLICE, GEMM_TILE, LINEAR_THREADS, SPLIT_K_MAX_TILES, SPLIT_K_MIN_DEPTH,
    SPLIT_K_TARGET_WORKGROUPS,
};
use super::weights::{weight_specs, WeightKey, WeightRole};

mod conv;
mod conv_lstm;
mod norm;
pub(crate) use norm::{batch_norm_folds, folded_weights};
mod recurrent;
mod time_distributed;

/// The device limits a plan must respect.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    /// Largest buffer one binding may cover (the smaller of max_storage_buffer_binding_size and
    /// max_buffer_size, or a test's override).
    pub max_binding_bytes: u64,
    pub max_workgroups_per_dim: u32,
    pub max_storage_buffers_per_stage: u32,
    /// Fold a BatchNormalization into the Conv2D or Dense before it where that is exact
    /// (`plan/norm.rs`); off only to test the unfolded kernels.
    pub fold_batch_norm: bool,
    /// The most loop iterations one invocation may run, where the adapter ends longer loops
    /// early (llvmpipe); the recurrent time loops are split into dispatches below it.
    pub loop_iterations: Option<u32>,
}

/// A buffer a dispatch binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufRef {
    /// Graph input `i`'s batch: f32 values or u32 token ids.
    Input(usize),
    /// A pooled activation buffer.
    Slot(usize),
    Weight(WeightKey),
    /// Bound where a kernel has an unused binding (no bias, no mask).
    Dummy,
    /// Training: a parameter's range of the parameter arena, and of the gradient arena.
    Param(ParamId),
    ParamGrad(ParamId),
    /// Training: a whole arena (what the optimizer updates in one dispatch).
    Arena(Arena),
}

/// The training buffers shared by every parameter (`gpu::train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arena {
    Params,
    Grads,
    /// Optimizer state arena `k` (momentum, velocity, ...), laid out like the parameters.
    State(usize),
    /// The optimizer's control words: the per-step scalars the host writes before each
    /// submit (learning rate, bias correction), each parameter's segment, the norms.
    Step,
    /// The parameters as they were before this step's update (restored after a NaN loss).
    Backup,
    /// Per element of each lookup table: the sum over the step's lookups of the squared row
    /// gradient (the optimizer squares a lookup table's gradient row by row).
    GradSq,
}

#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The graph node this dispatch belongs to.
    pub node: usize,
    pub kernel: Kernel,
    /// Storage bindings in the kernel's binding order.
    pub buffers: Vec<BufRef>,
    /// The kernel's uniform parameter struct, as 32-bit words.
    pub params: Vec<u32>,
    /// Workgroups needed, and the grid they are folded into.
    pub workgroups: u64,
    pub grid: [u32; 3],
    /// One line for plan printing.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// Zero a buffer (recurrent state) before the layer's first step.
    Clear {
        node: usize,
        buffer: BufRef,
    },
    /// Copy `bytes` from one buffer to another (an in-place op whose input is still needed).
    Copy {
        node: usize,
        src: BufRef,
        dst: BufRef,
        bytes: u64,
    },
    Dispatch(Dispatch),
}

/// A buffer whose size grows with the batch, and who needed it: what batch splitting sizes by.
#[derive(Debug, Clone)]
pub struct BatchTensor {
    /// The node that needs it; None for a model input.
    pub node: Option<usize>,
    pub what: &'static str,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct PlanInput {
    pub bytes: u64,
    pub is_ids: bool,
    /// Shape including the batch axis.
    pub shape: Vec<usize>,
    /// What the plan printout calls it, when not a model input or targets (the draws and
    /// groupings a training step's host makes).
    pub label: Option<String>,
}

/// One model output: where it ends up and how it is read back.
#[derive(Debug, Clone)]
pub struct PlanOutput {
    pub buffer: BufRef,
    pub bytes: u64,
    /// Shape including the batch axis.
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub inputs: Vec<PlanInput>,
    /// Size of each pooled activation buffer.
    pub slots: Vec<u64>,
    /// Which tensors share each slot, for printing.
    pub slot_users: Vec<Vec<String>>,
    pub ops: Vec<Op>,
    pub outputs: Vec<PlanOutput>,
    pub tensors: Vec<BatchTensor>,
    /// Whether BatchNormalization was folded (the weight buffers depend on it).
    pub fold_batch_norm: bool,
    /// The buffer holding each graph value (None: not computed, or not a buffer of its own).
    pub values: Vec<Option<BufRef>>,
}

/// Activation code and parameters as `common.wgsl`'s `Act` struct reads them.
pub(crate) fn act_words(layer: &Node, activation: &Activation) -> Result<[u32; 4]> {
    let f = f32::to_bits;
    Ok(match *activation {
        Activation::Linear => [0, 0, 0, 0],
        Activation::Relu {
            negative_slope,
            max_value: None,
            threshold,
        } => [1, f(negative_slope), f(threshold), 0],
        Activation::Relu {
            negative_slope,
            max_value: Some(max),
            threshold,
        } => [2, f(negative_slope), f(threshold), f(max)],
        Activation::Sigmoid => [3, 0, 0, 0],
        Activation::HardSigmoid => [4, 0, 0, 0],
        Activation::Tanh => [5, 0, 0, 0],
        Activation::Elu { alpha } => [6, f(alpha), 0, 0],
        Activation::Selu => [7, 0, 0, 0],
        Activation::Silu => [8, 0, 0, 0],
        Activation::Softplus => [9, 0, 0, 0],
        Activation::Softsign => [10, 0, 0, 0],
        Activation::Exponential => [11, 0, 0, 0],
        Activation::Gelu { approximate: false } => [12, 0, 0, 0],
        Activation::Gelu { approximate: true } => [13, 0, 0, 0],
        Activation::Mish => [14, 0, 0, 0],
        Activation::Celu { alpha } => [15, f(alpha), 0, 0],
        Activation::HardSilu => [16, 0, 0, 0],
        Activation::HardTanh => [17, 0, 0, 0],
        Activation::HardShrink { threshold } => [18, f(threshold), 0, 0],
        Activation::SoftShrink { threshold } => [19, f(threshold), 0, 0],
        Activation::TanhShrink => [20, 0, 0, 0],
        Activation::SparsePlus => [21, 0, 0, 0],
        Activation::SparseSigmoid => [22, 0, 0, 0],
        Activation::Squareplus { b } => [23, f(b), 0, 0],
        Activation::LogSigmoid => [24, 0, 0, 0],
        Activation::HardSigmoidKeras2 => [25, 0, 0, 0],
        Activation::Softmax | Activation::LogSoftmax => {
            return Err(layer_error(
                layer,
                "activation",
                format!(
                    "{} is only supported as a layer's output activation",
                    activation.name()
                ),
            ))
        }
    })
}

fn layer_error(layer: &Node, field: &str, message: impl std::fmt::Display) -> Error {
    Error::Gpu(format!(
        "layer '{}' ({}): {field}: {message}",
        layer.name, layer.class
    ))
}

fn to_u32(layer: &Node, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        layer_error(
            layer,
            what,
            format!("{value} does not fit the GPU's 32-bit indices"),
        )
    })
}

/// Folds a workgroup count into a grid with no dimension above `max_dim`.
pub fn fold_grid(count: u64, max_dim: u32) -> Option<[u32; 3]> {
    let max = u64::from(max_dim.max(1));
    if count <= max {
        return Some([count as u32, 1, 1]);
    }
    let y = count.div_ceil(max);
    if y <= max {
        return Some([max as u32, y as u32, 1]);
    }
    let z = y.div_ceil(max);
    (z <= max).then_some([max as u32, max as u32, z as u32])
}

struct Builder<'a> {
    graph: &'a Graph,
    batch: usize,
    limits: PlanLimits,
    slots: Vec<u64>,
    slot_free: Vec<bool>,
    slot_users: Vec<Vec<String>>,
    ops: Vec<Op>,
    tensors: Vec<BatchTensor>,
    weights: Vec<WeightKey>,
    /// The buffer holding each value, once computed.
    value_buf: Vec<Option<BufRef>>,
    /// Index of the last node reading each value (`usize::MAX` for graph outputs).
    last_use: Vec<usize>,
    /// For each Conv2D / Dense node, the BatchNormalization folded into it.
    bn_folds: Vec<Option<usize>>,
    /// A training forward: every value keeps its own buffer.
    keep_values: bool,
}

impl<'a> Builder<'a> {
    fn layer(&self, index: usize) -> &'a Node {
        &self.graph.nodes[index]
    }

    /// Shape of node `index`'s first input, without the batch axis.
    fn in_shape(&self, index: usize) -> &'a [usize] {
        &self.graph.value(self.graph.nodes[index].inputs[0]).shape
    }

    /// Whether the buffer of value `v` may be overwritten by node `index`: nothing reads the
    /// value (or any value sharing its buffer) after this node, and it is not a model input.
    fn reusable(&self, index: usize, v: ValueId) -> bool {
        // A model input is uploaded again for every batch, so it too may be overwritten.
        let Some(buf @ (BufRef::Slot(_) | BufRef::Input(_))) = self.value_buf[v] else {
            return false;
        };
        (0..self.value_buf.len())
            .all(|w| self.value_buf[w] != Some(buf) || self.last_use[w] <= index)
    }

    /// A pooled buffer of `floats` f32s: the smallest free slot that fits, else the largest free
    /// slot grown, else a new one.
    fn alloc(&mut self, layer: usize, what: &'static str, floats: usize) -> BufRef {
        let bytes = 4 * floats as u64;
        self.tensors.push(BatchTensor {
            node: Some(layer),
            what,
            bytes,
        });
        let free = || (0..self.slots.len()).filter(|&s| self.slot_free[s]);
        let fitting = free()
            .filter(|&s| self.slots[s] >= bytes)
            .min_by_key(|&s| self.slots[s]);
        let slot = match fitting.or_else(|| free().max_by_key(|&s| self.slots[s])) {
            Some(s) => {
                self.slots[s] = self.slots[s].max(bytes);
                s
            }
            None => {
                self.slots.push(bytes);
                self.slot_free.push(true);
                self.slot_users.push(Vec::new());
                self.slots.len() - 1
            }
        };
        self.slot_free[slot] = false;
        // A scratch buffer taken again every timestep is listed once.
        let user = format!("{} {what}", self.graph.nodes[layer].name);
        if !self.slot_users[slot].contains(&user) {
            self.slot_users[slot].push(user);
        }
        BufRef::Slot(slot)
    }

    fn release(&mut self, buffer: BufRef) {
        if let BufRef::Slot(s) = buffer {
            self.slot_free[s] = true;
        }
    }

    fn weight(&self, layer: usize, role: WeightRole) -> BufRef {
        let key = WeightKey { node: layer, role };
        if self.weights.contains(&key) {
            BufRef::Weight(key)
        } else {
            BufRef::Dummy
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        layer: usize,
        kernel: Kernel,
        buffers: Vec<BufRef>,
        params: Vec<u32>,
        workgroups: u64,
        detail: String,
    ) -> Result<()> {
        let grid = fold_grid(workgroups, self.limits.max_workgroups_per_dim).ok_or_else(|| {
            layer_error(
                self.layer(layer),
                kernel.name(),
                format!("{workgroups} workgroups exceed the adapter's dispatch limits"),
            )
        })?;
        let needed = kernel.storage().len() as u32;
        if needed > self.limits.max_storage_buffers_per_stage {
            return Err(layer_error(
                self.layer(layer),
                kernel.name(),
                format!(
                    "needs {needed} storage buffers per shader stage, the adapter allows {}",
                    self.limits.max_storage_buffers_per_stage
                ),
            ));
        }
        self.ops.push(Op::Dispatch(Dispatch {
            node: layer,
            kernel,
            buffers,
            params,
            workgroups,
            grid,
            detail,
        }));
        Ok(())
    }

    /// Tiled GEMM (Dense, recurrent input projection, or a convolution with `conv` geometry:
    /// then n is the filters of one group and k the depth of one group).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        layer: usize,
        a: BufRef,
        b: BufRef,
        bias: BufRef,
        c: BufRef,
        [m, n, k]: [usize; 3],
        activation: &Activation,
        conv: Option<&Conv>,
    ) -> Result<()> {
        let l = self.layer(layer);
        let softmax = activation.is_row_wise();
        let act = if softmax {
            [0; 4]
        } else {
            act_words(l, activation)?
        };
        let mut params = act.to_vec();
        params.extend([
            to_u32(l, "rows", m)?,
            to_u32(l, "columns", n)?,
            to_u32(l, "depth", k)?,
            u32::from(bias != BufRef::Dummy),
        ]);
        let mut detail = String::new();
        // Words after k_chunk: groups, in_c_total, depth axis, dilations.
        let mut tail = vec![1u32, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let groups = conv.map_or(1, |c| c.groups.max(1));
        match conv {
            Some(c) => {
                let w = &c.window;
                params.extend(
                    [
                        w.input[1],
                        w.input[2],
                        c.in_channels / groups,
                        w.output[1],
                        w.output[2],
                        w.kernel[1],
                        w.kernel[2],
                        w.strides[1],
                        w.strides[2],
                        w.pad_before[1],
                        w.pad_before[2],
                    ]
                    .iter()
                    .map(|&v| to_u32(l, "conv geometry", v))
                    .collect::<Result<Vec<_>>>()?,
                );
                tail = [
                    groups,
                    c.in_channels,
                    w.input[0],
                    w.output[0],
                    w.kernel[0],
                    w.strides[0],
                    w.pad_before[0],
                    w.dilation[0],
                    w.dilation[1],
                    w.dilation[2],
                ]
                .iter()
                .map(|&v| to_u32(l, "conv geometry", v))
                .collect::<Result<Vec<_>>>()?;
                write!(detail, "{}; ", w.text()).ok();
                if groups > 1 {
                    write!(detail, "{groups} groups of ").ok();
                }
            }
            None => params.extend([0; 11]),
        }
        let tiles_m = m.div_ceil(GEMM_TILE as usize);
        let tiles_n = n.div_ceil(GEMM_TILE as usize);
        // Groups walk their own columns; their partial sums would collide, so no split-K.
        let k_chunk = if groups > 1 {
            0
        } else {
            split_k_chunk(tiles_m * tiles_n, k)
        };
        let splits = if k_chunk > 0 { k.div_ceil(k_chunk) } else { 1 };
        params.push(to_u32(l, "depth", k_chunk)?);
        params.extend(tail);
        write!(
            detail,
            "M={m} N={n} K={k} in {tiles_m}x{tiles_n} tiles of {GEMM_TILE}x{GEMM_TILE}"
        )
        .ok();
        // The pass that finishes the sums applies bias and activation.
        let mut epilogue = String::new();
        if bias != BufRef::Dummy {
            epilogue.push_str(" + bias");
        }
        if !matches!(activation, Activation::Linear) && !softmax {
            write!(epilogue, ", {}", activation.name()).ok();
        }
        let kernel = match conv {
            Some(c) if c.plane().is_some() => Kernel::Conv2d,
            Some(_) => Kernel::ConvNd,
            None => Kernel::Matmul,
        };
        let tiles = (tiles_m * tiles_n * groups) as u64;
        if splits == 1 {
            detail.push_str(&epilogue);
            self.dispatch(layer, kernel, vec![a, b, bias, c], params, tiles, detail)?;
        } else {
            let partials = self.alloc(layer, "split-K partial sums", splits * m * n);
            write!(detail, "; K split {splits} ways of {k_chunk}").ok();
            let gemm_params = params.clone();
            let workgroups = tiles * splits as u64;
            self.dispatch(
                layer,
                kernel,
                vec![a, b, BufRef::Dummy, partials],
                gemm_params,
                workgroups,
                detail,
            )?;
            let detail = format!("sum {splits} partial products of {m}x{n}{epilogue}");
            let workgroups = Self::linear_workgroups(m * n);
            let buffers = vec![partials, BufRef::Dummy, bias, c];
            self.dispatch(
                layer,
                Kernel::SplitKReduce,
                buffers,
                params,
                workgroups,
                detail,
            )?;
            self.release(partials);
        }
        match activation {
            Activation::Softmax => self.softmax(layer, c, m, n)?,
            Activation::LogSoftmax => self.log_softmax_rows(layer, c, m, n)?,
            _ => {}
        }
        Ok(())
    }

    fn softmax(&mut self, layer: usize, x: BufRef, rows: usize, cols: usize) -> Result<()> {
        let l = self.layer(layer);
        let params = vec![to_u32(l, "rows", rows)?, to_u32(l, "columns", cols)?, 0, 0];
        let detail = format!("{rows} rows of {cols}, in place");
        self.dispatch(layer, Kernel::Softmax, vec![x], params, rows as u64, detail)
    }

    fn linear_workgroups(elements: usize) -> u64 {
        (elements as u64).div_ceil(u64::from(LINEAR_THREADS))
    }

    fn dense(&mut self, i: usize, d: &Dense, x: BufRef) -> Result<BufRef> {
        let k = d.in_features;
        let rows = self.batch * self.in_shape(i).iter().product::<usize>() / k.max(1);
        let out = self.alloc(i, "output", rows * d.units);
        let kernel = self.weight(i, WeightRole::Kernel);
        let bias = self.weight(i, WeightRole::Bias);
        self.gemm(
            i,
            x,
            kernel,
            bias,
            out,
            [rows, d.units, k],
            &d.activation,
            None,
        )?;
        Ok(out)
    }

    /// A standalone activation layer, in place.
    fn activation(&mut self, i: usize, activation: &Activation, x: BufRef) -> Result<()> {
        let l = self.layer(i);
        let per_item = self.in_shape(i).iter().product::<usize>();
        let cols = self.in_shape(i).last().copied().unwrap_or(1);
        let len = self.batch * per_item;
        match activation {
            Activation::Linear => Ok(()),
            Activation::Softmax => self.softmax(i, x, len / cols.max(1), cols),
            Activation::LogSoftmax => self.log_softmax_rows(i, x, len / cols.max(1), cols),
            other => {
                let mut params = act_words(l, other)?.to_vec();
                params.extend([to_u32(l, "length", len)?, 1, 0, 0]);
                let detail = format!("{} over {len} values, in place", other.name());
                self.dispatch(
                    i,
                    Kernel::Activation,
                    vec![x, BufRef::Dummy, BufRef::Dummy],
                    params,
                    Self::linear_workgroups(len),
                    detail,
                )
            }
        }
    }

    fn rescale(&mut self, i: usize, scale: &[f32], offset: &[f32], x: BufRef) -> Result<()> {
        let l = self.layer(i);
        let channels = self.in_shape(i).last().copied().unwrap_or(1);
        for (field, len) in [("scale", scale.len()), ("offset", offset.len())] {
            if len != 1 && len != channels {
                return Err(layer_error(
                    l,
                    field,
                    format!("{len} values for {channels} channels (expected 1 or {channels})"),
                ));
            }
        }
        let len = self.batch * self.in_shape(i).iter().product::<usize>();
        let params = vec![
            0,
            0,
            0,
            0,
            to_u32(l, "length", len)?,
            to_u32(l, "channels", channels.max(1))?,
            scale.len() as u32,
            offset.len() as u32,
        ];
        let per = |n: usize| if n == 1 { "scalar" } else { "per-channel" };
        let detail = format!(
            "x * {} scale + {} offset over {len} values, in place",
            per(scale.len()),
            per(offset.len())
        );
        let buffers = vec![
            x,
            self.weight(i, WeightRole::Scale),
            self.weight(i, WeightRole::Offset),
        ];
        self.dispatch(
            i,
            Kernel::Rescale,
            buffers,
            params,
            Self::linear_workgroups(len),
            detail,
        )
    }

    fn embedding(&mut self, i: usize, input_dim: usize, dim: usize, x: BufRef) -> Result<BufRef> {
        let l = self.layer(i);
        let ids_input = self.graph.value(l.inputs[0]).dtype == DType::Ids;
        if !matches!(x, BufRef::Input(_)) || !ids_input {
            return Err(layer_error(
                l,
                "input",
                "the GPU backend reads token ids only as the model input",
            ));
        }
        let tokens = self.batch * self.in_shape(i).iter().product::<usize>();
        let params = vec![
            to_u32(l, "tokens", tokens)?,
            to_u32(l, "output_dim", dim)?,
            to_u32(l, "input_dim", input_dim.max(1))?,
            0,
        ];
        let out = self.alloc(i, "output", tokens * dim);
        let detail = format!("{tokens} tokens x {dim} features from a {input_dim}-row table");
        let table = self.weight(i, WeightRole::Table);
        self.dispatch(
            i,
            Kernel::Embedding,
            vec![x, table, out],
            params,
            Self::linear_workgroups(tokens * dim),
            detail,
        )?;
        Ok(out)
    }
}

/// The K range per workgroup when a GEMM has too few output tiles to fill the GPU, or 0 for one
/// pass over all of K. A multiple of the K slice the GEMM walks.
pub(crate) fn split_k_chunk(tiles: usize, k: usize) -> usize {
    if tiles >= SPLIT_K_MAX_TILES || k < 2 * SPLIT_K_MIN_DEPTH {
        return 0;
    }
    let splits = SPLIT_K_TARGET_WORKGROUPS
        .div_ceil(tiles.max(1))
        .min(k / SPLIT_K_MIN_DEPTH);
    if splits < 2 {
        return 0;
    }
    k.div_ceil(splits).div_ceil(GEMM_K_SLICE) * GEMM_K_SLICE
}

impl Builder<'_> {
    /// The buffer an in-place op on value `v` may write: its own when nothing reads it later,
    /// else a fresh copy.
    fn in_place(&mut self, i: usize, v: ValueId) -> Result<BufRef> {
        let src = self.value_buf[v].ok_or_else(|| {
            Error::Internal(format!("value #{v} has no buffer when node #{i} runs"))
        })?;
        if self.reusable(i, v) {
            return Ok(src);
        }
        Ok(self.copy_value(i, v, src, "copy for an in-place op"))
    }

    /// A fresh buffer (`what` in the plan printout) holding a copy of value `v` (in `src`).
    fn copy_value(&mut self, i: usize, v: ValueId, src: BufRef, what: &'static str) -> BufRef {
        let floats = self.batch * self.graph.value(v).elements();
        let dst = self.alloc(i, what, floats);
        self.ops.push(Op::Copy {
            node: i,
            src,
            dst,
            bytes: 4 * floats as u64,
        });
        dst
    }

    /// Frees the slots whose values are all dead after node `i`.
    fn release_dead(&mut self, i: usize) {
        let node = &self.graph.nodes[i];
        for &v in node
            .inputs
            .iter()
            .chain(node.mask.iter())
            .chain(&node.outputs)
        {
            if let Some(buf) = self.value_buf[v] {
                let live = (0..self.value_buf.len())
                    .any(|w| self.value_buf[w] == Some(buf) && self.last_use[w] > i);
                if !live {
                    self.release(buf);
                }
            }
        }
    }

    /// Lowers node `i`; returns the buffers of its outputs.
    fn node(&mut self, i: usize) -> Result<Vec<BufRef>> {
        let node = self.layer(i);
        let x_value = node.inputs[0];
        let x = self.value_buf[x_value].ok_or_else(|| {
            Error::Internal(format!("node '{}' reads a value with no buffer", node.name))
        })?;
        let out = match &node.op {
            GraphOp::Conv(c) => self.conv(i, c, x)?,
            GraphOp::DepthwiseConv(c) => self.depthwise_conv(i, c, x)?,
            GraphOp::ConvTranspose(c) => self.conv_transpose(i, c, x)?,
            GraphOp::Pool(p) => self.pool(i, p, x)?,
            GraphOp::GlobalPool { op, rank, .. } => self.global_pool(i, *op, *rank, x)?,
            GraphOp::Dense(d) => self.dense(i, d, x)?,
            GraphOp::Activation(a) => {
                if *a == Activation::Linear {
                    x
                } else {
                    let y = self.in_place(i, x_value)?;
                    self.activation(i, a, y)?;
                    y
                }
            }
            GraphOp::Rescaling { scale, offset } => {
                let y = self.in_place(i, x_value)?;
                self.rescale(i, scale, offset, y)?;
                y
            }
            GraphOp::Embedding(e) => self.embedding(i, e.input_dim, e.output_dim, x)?,
            GraphOp::Recurrent(r) => return self.recurrent(i, r, x),
            GraphOp::TimeDistributed { inner } => self.time_distributed(i, inner, x)?,
            GraphOp::ConvLstm(c) => self.conv_lstm(i, c, x)?,
            // A mask is read as the ids it comes from; these only rename a buffer.
            // In a training forward a Dropout that draws gets its own buffer (a copy the
            // training plan replaces with the noisy forward).
            GraphOp::Dropout(d) if self.keep_values && !d.is_noop_in_training() => {
                self.copy_value(i, x_value, x, "output")
            }
            GraphOp::Reshape { .. }
            | GraphOp::Identity
            | GraphOp::Dropout(_)
            | GraphOp::PaddingMask => x,
            GraphOp::Merge(_)
            | GraphOp::Scalar(_)
            | GraphOp::Concat { .. }
            | GraphOp::Dot(_)
            | GraphOp::Pad { .. }
            | GraphOp::Crop { .. }
            | GraphOp::Permute { .. }
            | GraphOp::RepeatVector { .. }
            | GraphOp::Upsample { .. } => self.merge_node(i)?,
            GraphOp::BatchNorm(b) => self.batch_norm(i, b, x_value)?,
            GraphOp::LayerNorm(l) => self.layer_norm(i, l, x_value)?,
            GraphOp::GroupNorm(gn) => self.group_norm(i, gn, x_value)?,
            GraphOp::Normalization(n) => self.normalization(i, n, x_value)?,
            GraphOp::PRelu(p) => self.prelu(i, p, x_value)?,
            GraphOp::Softmax(s) => self.softmax_axes(i, s, x_value)?,
        };
        Ok(vec![out])
    }
}

impl Plan {
    /// Lowers `graph` for `batch` items. Sizes are not checked against the binding limit here;
    /// `max_items` decides the batch that fits.
    pub fn build(graph: &Graph, batch: usize, limits: PlanLimits) -> Result<Plan> {
        Self::build_with(graph, batch, limits, false)
    }

    /// The forward of a training step: every value keeps its own buffer to the end (the
    /// backward reads them), so nothing runs in place on a value and no slot is reused.
    pub fn build_keeping_values(graph: &Graph, batch: usize, limits: PlanLimits) -> Result<Plan> {
        Self::build_with(graph, batch, limits, true)
    }

    fn build_with(graph: &Graph, batch: usize, limits: PlanLimits, keep: bool) -> Result<Plan> {
        let mut b = Builder {
            graph,
            batch,
            limits,
            slots: Vec::new(),
            slot_free: Vec::new(),
            slot_users: Vec::new(),
            ops: Vec::new(),
            tensors: Vec::new(),
            weights: weight_specs(graph, limits.fold_batch_norm)
                .iter()
                .map(|s| s.key)
                .collect(),
            value_buf: vec![None; graph.values.len()],
            last_use: if keep {
                vec![usize::MAX; graph.values.len()]
            } else {
                graph.last_uses()
            },
            bn_folds: if limits.fold_batch_norm {
                batch_norm_folds(graph)
            } else {
                vec![None; graph.nodes.len()]
            },
            keep_values: keep,
        };
        let mut inputs = Vec::new();
        for (k, port) in graph.inputs.iter().enumerate() {
            let info = graph.value(port.value);
            let bytes = 4 * (batch * info.elements()) as u64;
            b.tensors.push(BatchTensor {
                node: None,
                what: "input",
                bytes,
            });
            b.value_buf[port.value] = Some(BufRef::Input(k));
            let mut shape = vec![batch];
            shape.extend_from_slice(&info.shape);
            inputs.push(PlanInput {
                bytes,
                is_ids: info.dtype == DType::Ids,
                shape,
                label: None,
            });
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            let outs = b.node(i)?;
            for (&v, buf) in node.outputs.iter().zip(outs) {
                b.value_buf[v] = Some(buf);
            }
            b.release_dead(i);
        }
        let mut outputs = Vec::new();
        for port in &graph.outputs {
            let info = graph.value(port.value);
            let buffer = b.value_buf[port.value]
                .ok_or_else(|| Error::Internal(format!("output '{}' has no buffer", port.name)))?;
            if info.dtype != DType::F32 {
                return Err(Error::Input(format!(
                    "output '{}' holds {}, not float32 values",
                    port.name,
                    info.dtype.name()
                )));
            }
            let mut shape = vec![batch];
            shape.extend_from_slice(&info.shape);
            outputs.push(PlanOutput {
                buffer,
                bytes: 4 * (batch * info.elements()) as u64,
                shape,
            });
        }
        Ok(Plan {
            inputs,
            slots: b.slots,
            slot_users: b.slot_users,
            ops: b.ops,
            outputs,
            tensors: b.tensors,
            fold_batch_norm: limits.fold_batch_norm,
            values: b.value_buf,
        })
    }

    /// The largest batch one submit can hold under `limits` (buffer sizes and dispatch grids), or
    /// an error naming the layer and buffer that does not fit even one item.
    pub fn max_items(graph: &Graph, limits: PlanLimits) -> Result<usize> {
        let one = Plan::build(graph, 1, limits)?;
        let limit = limits.max_binding_bytes;
        let mut max_items = usize::MAX;
        for t in &one.tensors {
            if t.bytes > limit {
                let owner = match t.node {
                    Some(i) => {
                        format!("layer '{}' ({})", graph.nodes[i].name, graph.nodes[i].class)
                    }
                    None => "the model input".to_string(),
                };
                return Err(Error::Gpu(format!(
                    "{owner}: {} buffer needs {} for one item, above the adapter's limit of {} per buffer",
                    t.what,
                    bytes_text(t.bytes),
                    bytes_text(limit)
                )));
            }
            if let Some(items) = limit.checked_div(t.bytes) {
                max_items = max_items.min(items as usize);
            }
        }
        // Workgroup counts grow at most linearly with the batch; the folded grid holds
        // max_dim^3 of them.
        let grid_capacity = u64::from(limits.max_workgroups_per_dim.max(1)).pow(3);
        for op in &one.ops {
            if let Op::Dispatch(d) = op {
                if let Some(items) = grid_capacity.checked_div(d.workgroups) {
                    max_items = max_items.min(items as usize);
                }
            }
        }
        Ok(max_items)
    }

    pub fn dispatch_count(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Dispatch(_) => 1,
                Op::Clear { .. } | Op::Copy { .. } => 0,
            })
            .sum()
    }

    pub fn activation_bytes(&self) -> u64 {
        self.inputs.iter().map(|i| i.bytes).sum::<u64>() + self.slots.iter().sum::<u64>()
    }

    pub fn output_bytes(&self) -> u64 {
        self.outputs.iter().map(|o| o.bytes).sum()
    }

    /// A buffer's name in printed plans.
    pub(crate) fn buf_name(&self, graph: &Graph, b: BufRef) -> String {
        match b {
            BufRef::Input(k) if self.inputs.get(k).is_some_and(|i| i.label.is_some()) => {
                self.inputs[k].label.clone().unwrap_or_default()
            }
            BufRef::Input(k) => match graph.inputs.get(k) {
                Some(port) => format!("input:{}", port.name),
                None => match graph.outputs.get(k - graph.inputs.len()) {
                    Some(port) => format!("targets:{}", port.name),
                    None => format!("input{k}"),
                },
            },
            BufRef::Slot(s) => format!("slot{s}"),
            BufRef::Weight(k) => format!("{}.{}", graph.nodes[k.node].name, k.role.name()),
            BufRef::Dummy => "-".to_string(),
            BufRef::Param(id) => graph.params.param(id).name.clone(),
            BufRef::ParamGrad(id) => format!("d({})", graph.params.param(id).name),
            BufRef::Arena(a) => format!("{a:?} arena"),
        }
    }

    /// One op as two or three indented lines: kernel and grid, bindings, what it computes.
    pub(crate) fn write_op(&self, out: &mut String, graph: &Graph, op: &Op) {
        let buf_name = |b: BufRef| self.buf_name(graph, b);
        match op {
            Op::Clear { buffer, .. } => {
                writeln!(out, "      clear         {}", buf_name(*buffer)).ok();
            }
            Op::Copy {
                src, dst, bytes, ..
            } => {
                let why = if *dst == BufRef::Arena(Arena::Backup) {
                    "restored if the loss is not finite"
                } else {
                    "the input is read again later"
                };
                writeln!(
                    out,
                    "      copy          {} -> {} ({}), {why}",
                    buf_name(*src),
                    buf_name(*dst),
                    bytes_text(*bytes)
                )
                .ok();
            }
            Op::Dispatch(d) => {
                let bindings = d
                    .kernel
                    .binding_names()
                    .iter()
                    .zip(&d.buffers)
                    .filter(|(_, b)| **b != BufRef::Dummy)
                    .map(|(name, b)| format!("{name}={}", buf_name(*b)))
                    .collect::<Vec<_>>()
                    .join(" ");
                writeln!(
                    out,
                    "      {:<13} workgroups {} as [{}, {}, {}] of {} threads",
                    d.kernel.name(),
                    d.workgroups,
                    d.grid[0],
                    d.grid[1],
                    d.grid[2],
                    d.kernel.threads(),
                )
                .ok();
                writeln!(out, "                    {bindings}").ok();
                writeln!(out, "                    {}", d.detail).ok();
            }
        }
    }

    /// The plan as text, like wonnx's compiled step list: per node its inputs and dispatches
    /// with workgroup grids and buffers, then the buffers and the total GPU memory.
    pub fn describe(&self, graph: &Graph, header: &str, uniform_stride: u64) -> String {
        let mut out = String::new();
        writeln!(out, "{header}").ok();
        writeln!(out, "steps:").ok();
        for (index, node) in graph.nodes.iter().enumerate() {
            let ins = node
                .inputs
                .iter()
                .map(|&v| format!("{} {:?}", graph.value_name(v), graph.value(v).shape))
                .collect::<Vec<_>>()
                .join(", ");
            let outs = node
                .outputs
                .iter()
                .map(|&v| format!("{:?}", graph.value(v).shape))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                out,
                "  [{index}] {} ({}) {ins} -> {outs}",
                node.name, node.class
            )
            .ok();
            let mut ops = self
                .ops
                .iter()
                .filter(|op| match op {
                    Op::Clear { node, .. } | Op::Copy { node, .. } => *node == index,
                    Op::Dispatch(d) => d.node == index,
                })
                .peekable();
            if ops.peek().is_none() {
                writeln!(
                    out,
                    "      no kernel: same buffer (a new shape, an identity, or folded into the layer before)"
                )
                .ok();
            }
            for op in ops {
                self.write_op(&mut out, graph, op);
            }
        }
        if graph.nodes.is_empty() {
            writeln!(out, "  (no layers: the output is the input)").ok();
        }

        writeln!(out, "buffers:").ok();
        for (k, input) in self.inputs.iter().enumerate() {
            let kind = if input.is_ids { "u32 token ids" } else { "f32" };
            writeln!(
                out,
                "  input:{:<4} {:>10}  {kind} {:?}",
                graph.inputs[k].name,
                bytes_text(input.bytes),
                input.shape
            )
            .ok();
        }
        for (s, bytes) in self.slots.iter().enumerate() {
            writeln!(
                out,
                "  slot{s:<6} {:>10}  {}",
                bytes_text(*bytes),
                self.slot_users[s].join(", ")
            )
            .ok();
        }
        let specs = weight_specs(graph, self.fold_batch_norm);
        let weight_bytes: u64 = specs.iter().map(|s| 4 * s.len as u64).sum();
        writeln!(
            out,
            "  weights    {:>10}  {} buffers",
            bytes_text(weight_bytes),
            specs.len()
        )
        .ok();
        let uniform_bytes = self.uniform_bytes(uniform_stride);
        writeln!(
            out,
            "  uniforms   {:>10}  parameters of {} dispatches",
            bytes_text(uniform_bytes),
            self.ops.len(),
        )
        .ok();
        for (k, o) in self.outputs.iter().enumerate() {
            writeln!(
                out,
                "  readback   {:>10}  output '{}' {:?} from {}",
                bytes_text(o.bytes),
                graph.outputs[k].name,
                o.shape,
                self.buf_name(graph, o.buffer)
            )
            .ok();
        }
        let total = weight_bytes + self.activation_bytes() + uniform_bytes + self.output_bytes();
        writeln!(
            out,
            "total GPU memory: {} ({} dispatches in one submit)",
            bytes_text(total),
            self.dispatch_count()
        )
        .ok();
        out
    }

    /// Bytes of the per-dispatch parameter buffer.
    pub fn uniform_bytes(&self, stride: u64) -> u64 {
        let dispatches = self
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Dispatch(_)))
            .count() as u64;
        stride * dispatches
    }
}

pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_fold_into_the_per_dimension_limit() {
        assert_eq!(fold_grid(10, 65535), Some([10, 1, 1]));
        assert_eq!(fold_grid(70_000, 65535), Some([65535, 2, 1]));
        assert_eq!(fold_grid(10, 4), Some([4, 3, 1]));
        assert_eq!(fold_grid(17, 4), Some([4, 4, 2]));
        assert_eq!(fold_grid(65, 4), None);
    }

    #[test]
    fn split_k_only_for_few_tiles_and_deep_k() {
        // Flatten(4096) -> Dense(64) at batch 1: one tile, 16 splits of 256.
        assert_eq!(split_k_chunk(1, 4096), 256);
        // Enough tiles, or too shallow a K: one pass.
        assert_eq!(split_k_chunk(32, 4096), 0);
        assert_eq!(split_k_chunk(1, 511), 0);
        // Chunks are multiples of 16 and cover K.
        let chunk = split_k_chunk(3, 1000);
        assert_eq!(chunk % 16, 0);
        assert!(chunk * 1000usize.div_ceil(chunk) >= 1000);
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(bytes_text(100), "100 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
    }
}
