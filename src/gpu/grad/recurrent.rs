//! SimpleRNN / LSTM / GRU training on the GPU (shaders/recurrent_grad.wgsl), Bidirectional and
//! Keras's padding mask included, matching `cpu::grad::recurrent`.
//!
//! Forward: one GEMM projects every step of every direction (x·W + b) straight into `saved`,
//! then ONE dispatch runs the whole time loop of both directions (a workgroup owns a group of
//! sequences of one direction and keeps their h in workgroup memory), completing the
//! pre-activations in place and saving each step's starting state; a Bidirectional merge other
//! than concat is one more small dispatch.
//!
//! Backward: ONE dispatch runs backpropagation through time for both directions, writing
//! dL/d(pre-activations) dZ of every step; then dx = dZ·Wᵀ, dW = xᵀ·dZ and dR = H_inᵀ·dZ are
//! GEMMs over all N·T rows (dR one grouped GEMM for all directions and gate blocks) and db the
//! column sums of dZ. With two directions the weights are first stacked side by side into
//! scratch buffers (and the stacked gradients copied out to each direction's), so one GEMM
//! serves both. Every output is overwritten, never accumulated into.
//!
//! Units that do not fit workgroup memory (forward: 2·units floats per sequence; backward:
//! gates·units) run the same single dispatch reading the shared state back from storage
//! instead (slower, same results).
//!
//! A cell's dropout / recurrent_dropout: the host draws the masks with the CPU's own
//! `Masks::draw`, in the CPU's order, and uploads them as one buffer ([`recurrent_dropout_masks`]).
//! The time loops multiply h_prev by each gate block's recurrent mask before R (and dR's grouped
//! GEMM reads the masked h_in); with input masks x is copied once per mask block times its
//! mask and the input projection, dW and the parts of dx are grouped GEMMs over those copies
//! (dx then summed over the blocks through the masks).

// The training plan binds these once it lowers recurrent nodes; until then only the tests do.

use crate::cpu::grad::recurrent::masks::{MaskSet, Masks};
use crate::error::{Error, Result};
use crate::graph::{CellKind, MergeMode, Node, Recurrent, RecurrentCell};
use crate::train::Rng;

use super::super::kernels::{
    rnn_rows_per_group, rnn_steps_per_dispatch, Kernel, GEMM_TILE, LINEAR_THREADS, RNN_LOOP_THREADS,
};
use super::super::plan::{act_words, split_k_chunk, BufRef};
use super::conv::{bias_grad, check_buffer, layer_error};
use super::{linear_workgroups, word, Emit};

/// Buffers of one direction's weights: `BufRef::Param` ranges as Keras stores them (kernel
/// (features, gates·units), recurrent_kernel (units, gates·units), bias (gates·units) or, for a
/// GRU with reset_after, (2, 3·units)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CellBuffers {
    pub kernel: BufRef,
    pub recurrent_kernel: BufRef,
    pub bias: Option<BufRef>,
}

/// Where one direction's parameter gradients go, in the parameters' own layouts; None: not
/// wanted (frozen).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CellGrads {
    pub kernel: Option<BufRef>,
    pub recurrent_kernel: Option<BufRef>,
    pub bias: Option<BufRef>,
}

// recurrent_grad.wgsl's flags.
const MASKED: u32 = 1;
const ZERO_MASKED: u32 = 2;
const SEQUENCES: u32 = 4;
const STAGED: u32 = 8;
const REC_BIAS: u32 = 16;
const DY_MERGED: u32 = 32;
const INIT_STATE: u32 = 64;
const FINAL_STATE: u32 = 128;
const STATE_GRADS: u32 = 256;

/// The layer's sizes and where each part of `saved` starts (in floats).
struct Layout {
    n: usize,
    t: usize,
    f: usize,
    u: usize,
    gates: usize,
    dirs: usize,
    kind: CellKind,
    /// x·W + b + h·R of every (n, t, direction): rows × dirs·gates·units at 0.
    hin: usize,
    cin: usize,
    hr: usize,
    rh: usize,
    /// return_state: the final h [n][d][unit], then c (LSTM).
    fin: usize,
    total: usize,
}

impl Layout {
    fn new(r: &Recurrent, batch: usize) -> Layout {
        let (u, gates) = (r.units(), r.forward.kind.gates());
        let dirs = r.cells().count();
        let plane = batch * r.timesteps * dirs * u;
        let kind = r.forward.kind;
        let lstm = kind == CellKind::Lstm;
        let gru = matches!(kind, CellKind::Gru { .. });
        let hin = plane * gates;
        let cin = hin + plane;
        let hr = cin + if lstm { plane } else { 0 };
        let rh = hr + if gru { plane } else { 0 };
        let fin = rh
            + if kind == (CellKind::Gru { reset_after: false }) {
                plane
            } else {
                0
            };
        let states = batch * dirs * u;
        let total = fin
            + if r.return_state {
                states * if lstm { 2 } else { 1 }
            } else {
                0
            };
        Layout {
            n: batch,
            t: r.timesteps,
            f: r.input_features,
            u,
            gates,
            dirs,
            kind,
            hin,
            cin,
            hr,
            rh,
            fin,
            total,
        }
    }

    fn rows(&self) -> usize {
        self.n * self.t
    }

    fn g(&self) -> usize {
        self.gates * self.u
    }

    /// Stacked gate columns of all directions.
    fn dg(&self) -> usize {
        self.dirs * self.g()
    }

    fn cell_code(&self) -> u32 {
        match self.kind {
            CellKind::SimpleRnn => 0,
            CellKind::Lstm => 1,
            CellKind::Gru { reset_after: true } => 2,
            CellKind::Gru { reset_after: false } => 3,
        }
    }

    fn gru_after(&self) -> bool {
        self.kind == CellKind::Gru { reset_after: true }
    }
}

/// Floats of the buffer a Bidirectional with merge_mode mul keeps between its training forward
/// and its backward: both directions' outputs before the product, side by side as concat lays
/// them out (0: nothing to keep).
pub(crate) fn recurrent_parts_floats(r: &Recurrent, batch: usize) -> usize {
    if r.backward.is_some() && r.merge_mode == MergeMode::Multiply {
        let rows = if r.return_sequences {
            batch * r.timesteps
        } else {
            batch
        };
        rows * 2 * r.units()
    } else {
        0
    }
}

/// (direction, index among the states, offset in a [n][d][unit] plane set: 0 h, 1 c) of each
/// state in Keras's order (each direction's h, then its c for an LSTM).
fn state_slots(r: &Recurrent) -> Vec<(usize, usize, bool)> {
    let mut slots = Vec::new();
    for (d, cell) in r.cells().enumerate() {
        for c in 0..cell.kind.states() {
            slots.push((d, slots.len(), c == 1));
        }
    }
    slots
}

/// How many main outputs (before any states) the layer has: two for merge_mode None.
fn main_outputs(r: &Recurrent) -> usize {
    if r.two_outputs() {
        2
    } else {
        1
    }
}

/// Floats of the `saved` buffer [`recurrent_train_forward`] fills and
/// [`recurrent_backward`] reads, for `batch` sequences: per (row, step, direction) the
/// gates·units pre-activations and the starting state h, plus the starting carry c (LSTM),
/// the recurrent candidate term (GRU) and r ⊙ h (GRU with reset_after=False).
pub(crate) fn recurrent_saved_floats(r: &Recurrent, batch: usize) -> usize {
    Layout::new(r, batch).total
}

/// Where the dropout masks lie in the one buffer of a layer's masks: every direction's input
/// masks [d][block][n][feature] at 0, then the recurrent ones [d][block][n][unit]. Blocks per
/// direction: 0 (no mask), 1 (shared by every gate block) or one per gate block; a direction
/// with fewer than the other gets its one mask repeated, or ones (exact: x · 1 = x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DropLayout {
    input_blocks: usize,
    rec_blocks: usize,
    rec_off: usize,
    total: usize,
}

/// How many masks a set holds as the kernels read them: 0, 1 shared, or one per gate block.
fn mask_blocks(set: &MaskSet, gates: usize) -> usize {
    match set.for_block(0) {
        None => 0,
        Some(_) if set.per_block() => gates,
        Some(_) => 1,
    }
}

impl DropLayout {
    fn new(r: &Recurrent, batch: usize) -> DropLayout {
        // Which masks the CPU's rules draw depends only on the rates: draw them for no rows
        // (which takes nothing from the generator) to see.
        let mut probe = Rng::new(0);
        let gates = r.forward.kind.gates();
        let (mut input_blocks, mut rec_blocks) = (0, 0);
        for cell in r.cells() {
            let m = Masks::draw(cell, 0, r.input_features, &mut probe);
            input_blocks = input_blocks.max(mask_blocks(&m.input, gates));
            rec_blocks = rec_blocks.max(mask_blocks(&m.recurrent, gates));
        }
        let dirs = r.cells().count();
        let rec_off = dirs * input_blocks * batch * r.input_features;
        DropLayout {
            input_blocks,
            rec_blocks,
            rec_off,
            total: rec_off + dirs * rec_blocks * batch * r.units(),
        }
    }

    /// The masks of every direction (forward first) laid out for the kernels.
    fn pack(&self, masks: &[Masks], batch: usize, features: usize, units: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.total);
        let mut put = |set: &MaskSet, blocks: usize, width: usize| {
            for k in 0..blocks {
                match set.for_block(k) {
                    Some(m) => out.extend_from_slice(m),
                    None => out.extend(std::iter::repeat_n(1.0, batch * width)),
                }
            }
        };
        for m in masks {
            put(&m.input, self.input_blocks, features);
        }
        for m in masks {
            put(&m.recurrent, self.rec_blocks, units);
        }
        out
    }
}

/// Floats of the dropout masks buffer a recurrent layer's training forward and backward read
/// for `batch` sequences (0: its cells apply no dropout).
pub(crate) fn recurrent_dropout_floats(r: &Recurrent, batch: usize) -> usize {
    DropLayout::new(r, batch).total
}

/// Draws a training step's dropout masks of a recurrent layer from `rng` exactly as the CPU's
/// training forward does (`Masks::draw` per direction, forward first), laid out for the GPU
/// ([`recurrent_dropout_floats`] floats).
pub(crate) fn recurrent_dropout_masks(r: &Recurrent, batch: usize, rng: &mut Rng) -> Vec<f32> {
    let masks: Vec<Masks> = r
        .cells()
        .map(|c| Masks::draw(c, batch, r.input_features, rng))
        .collect();
    DropLayout::new(r, batch).pack(&masks, batch, r.input_features, r.units())
}

/// What the GPU path supports, else an error naming the layer and the field.
fn check(layer: &Node, r: &Recurrent, cells: usize, masked: bool) -> Result<()> {
    let refuse = |field: &str, why: &str| Err(layer_error(layer, field, why));
    let first = &r.forward;
    for cell in r.cells() {
        let same = cell.kind == first.kind
            && cell.units == first.units
            && cell.activation == first.activation
            && cell.recurrent_activation == first.recurrent_activation
            && cell.bias.is_some() == first.bias.is_some();
        if !same {
            return refuse(
                "backward_layer",
                "both directions must share cell type, units, activations and use_bias",
            );
        }
    }
    if cells != r.cells().count() {
        return Err(Error::Internal(format!(
            "layer '{}': {cells} cell buffer sets for {} directions",
            layer.name,
            r.cells().count()
        )));
    }
    if layer.mask.is_some() && !masked {
        return refuse(
            "mask",
            "masking needs the token ids the mask comes from (mask_ids)",
        );
    }
    Ok(())
}

fn act_pair(layer: &Node, cell: &RecurrentCell) -> Result<Vec<u32>> {
    let mut words = act_words(layer, &cell.activation)?.to_vec();
    words.extend(match cell.kind {
        CellKind::SimpleRnn => [0; 4],
        _ => act_words(layer, &cell.recurrent_activation)?,
    });
    Ok(words)
}

/// recurrent_grad.wgsl's `RnnTrainParams`.
#[allow(clippy::too_many_arguments)]
fn loop_params(
    layer: &Node,
    r: &Recurrent,
    lay: &Layout,
    rpg: usize,
    flags: u32,
    dy_scale: f32,
    dstate_off: usize,
    drop: Option<DropLayout>,
) -> Result<Vec<u32>> {
    let w = |what: &str, v: usize| word(layer, what, v);
    let backwards_bits = r
        .cells()
        .enumerate()
        .fold(0u32, |bits, (d, c)| bits | (u32::from(c.go_backwards) << d));
    // Bidirectional puts the backward direction's outputs back in time order.
    let reverse_bits = if lay.dirs == 2 { 0b10 } else { 0 };
    let mut p = act_pair(layer, &r.forward)?;
    p.extend([
        w("batch", lay.n)?,
        w("timesteps", lay.t)?,
        w("units", lay.u)?,
        lay.gates as u32,
        lay.dirs as u32,
        w("rows per group", rpg)?,
        lay.cell_code(),
        flags,
        backwards_bits,
        reverse_bits,
        w("saved", lay.hin)?,
        w("saved", lay.cin)?,
        w("saved", lay.hr)?,
        w("saved", lay.rh)?,
        dy_scale.to_bits(),
        w("state", dstate_off)?,
        drop.map_or(0, |d| d.rec_blocks as u32),
        w("dropout masks", drop.map_or(0, |d| d.rec_off))?,
    ]);
    Ok(p)
}

/// One time-loop kernel (`RnnTrainForward` or `RnnTrainBackward`, `params` without its step
/// range) dispatched over all `lay.t` steps: once, or where the adapter caps one invocation's
/// loop iterations (llvmpipe) once per run of steps that fits, in the loop's own order
/// (backward: from the last step). `unit_loops` is how many passes over the units one item
/// makes per step.
#[allow(clippy::too_many_arguments)]
fn dispatch_time_loop(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    kernel: Kernel,
    buffers: Vec<BufRef>,
    params: Vec<u32>,
    (lay, rpg, unit_loops): (&Layout, usize, usize),
    detail: String,
) -> Result<()> {
    let t = lay.t;
    let cap = e.limits().loop_iterations;
    // Every loop counted, as llvmpipe counts them: each thread's items, each with its passes
    // over the units (and the gate blocks), per step.
    // The forward's setup scans each row's mask for its first live step.
    let per_thread = (rpg * lay.u).div_ceil(RNN_LOOP_THREADS as usize);
    let per_step = per_thread * (unit_loops * (lay.u + 1) + lay.gates + 4) + 4;
    let setup = per_thread + t + 6;
    let chunk = rnn_steps_per_dispatch(t, setup, per_step, cap).ok_or_else(|| {
        layer_error(
            layer,
            "units",
            format!(
                "{} units need {per_step} loop iterations per step in one invocation; this \
                 adapter ends loops after {}",
                lay.u,
                cap.unwrap_or(0)
            ),
        )
    })?;
    let mut runs: Vec<(usize, usize)> = (0..t)
        .step_by(chunk.max(1))
        .map(|b| (b, (b + chunk).min(t)))
        .collect();
    if kernel == Kernel::RnnTrainBackward {
        runs.reverse();
    }
    let workgroups = (lay.n.div_ceil(rpg) * lay.dirs) as u64;
    for (begin, end) in runs {
        let mut p = params.clone();
        p.extend([
            word(layer, "timesteps", begin)?,
            word(layer, "timesteps", end)?,
        ]);
        let detail = if chunk < t {
            format!("{detail}: steps {begin}..{end} (the adapter's loop-iteration cap)")
        } else {
            detail.clone()
        };
        e.dispatch(layer, node, kernel, buffers.clone(), p, workgroups, detail)?;
    }
    Ok(())
}

fn base_flags(r: &Recurrent, masked: bool) -> u32 {
    let mut flags = 0;
    if masked {
        flags |= MASKED;
        if r.zero_output_for_mask() {
            flags |= ZERO_MASKED;
        }
    }
    if r.return_sequences {
        flags |= SEQUENCES;
    }
    flags
}

/// A GEMM on gemm.wgsl's kernels (Matmul C = A·B + bias, MatmulAt C = Aᵀ·B, MatmulBt
/// C = A·Bᵀ), K split (partials, then SplitKReduce) when there are few output tiles and K is
/// deep.
#[allow(clippy::too_many_arguments)]
fn gemm(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    kernel: Kernel,
    a: BufRef,
    b: BufRef,
    bias: BufRef,
    c: BufRef,
    [m, n, k]: [usize; 3],
    what: &str,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let tiles = m.div_ceil(GEMM_TILE as usize) * n.div_ceil(GEMM_TILE as usize);
    let k_chunk = split_k_chunk(tiles, k);
    let mut params = vec![0u32; 4];
    params.extend([
        word(layer, "rows", m)?,
        word(layer, "columns", n)?,
        word(layer, "depth", k)?,
        u32::from(bias != BufRef::Dummy),
    ]);
    params.extend([0u32; 11]);
    params.push(word(layer, "depth", k_chunk)?);
    params.extend([1u32, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let detail = format!("{what}: M={m} N={n} K={k}");
    if k_chunk == 0 {
        return e.dispatch(
            layer,
            node,
            kernel,
            vec![a, b, bias, c],
            params,
            tiles as u64,
            detail,
        );
    }
    let splits = k.div_ceil(k_chunk);
    check_buffer(e, layer, "split-K partial sums", splits * m * n)?;
    let partials = e.scratch(node, "split-K partial sums", splits * m * n);
    e.dispatch(
        layer,
        node,
        kernel,
        vec![a, b, bias, partials],
        params.clone(),
        (tiles * splits) as u64,
        format!("{detail}; K split {splits} ways of {k_chunk}"),
    )?;
    e.dispatch(
        layer,
        node,
        Kernel::SplitKReduce,
        vec![partials, BufRef::Dummy, bias, c],
        params,
        linear_workgroups(m * n, LINEAR_THREADS),
        format!("sum {splits} partial products of {m}x{n}"),
    )?;
    e.release(partials);
    Ok(())
}

/// recurrent_gemm.wgsl's words for one grouped GEMM (its header gives each mode's meaning):
/// `groups` GEMMs of M×N×K, group g writing C's columns g·N.. of rows N·groups long.
#[derive(Default)]
struct Grouped {
    mode: u32,
    m: usize,
    n: usize,
    k: usize,
    groups: usize,
    has_bias: bool,
    in_h: usize,
    in_w: usize,
    in_c: usize,
    out_h: u32,
    out_w: u32,
    mask_blocks: usize,
    mask_off: usize,
    timesteps: usize,
    batch: usize,
}

fn grouped_gemm(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    g: &Grouped,
    buffers: [BufRef; 4],
    what: String,
) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.groups == 0 {
        return Ok(());
    }
    let w = |what: &str, v: usize| word(layer, what, v);
    let mut params = vec![0u32; 4];
    params.extend([
        w("rows", g.m)?,
        w("columns", g.n)?,
        w("depth", g.k)?,
        u32::from(g.has_bias),
    ]);
    params.extend([
        w("offset", g.in_h)?,
        w("offset", g.in_w)?,
        w("stride", g.in_c)?,
        g.out_h,
        g.out_w,
        0,
        0,
        g.mode,
        w("timesteps", g.timesteps)?,
        w("mask blocks", g.mask_blocks)?,
        w("dropout masks", g.mask_off)?,
    ]);
    params.push(0);
    params.extend([w("groups", g.groups)?, w("batch", g.batch)?]);
    params.extend([0u32; 8]);
    let tiles = g.m.div_ceil(GEMM_TILE as usize) * g.n.div_ceil(GEMM_TILE as usize);
    e.dispatch(
        layer,
        node,
        Kernel::RnnGemmGrouped,
        buffers.to_vec(),
        params,
        (tiles * g.groups) as u64,
        format!(
            "{what}: {} blocks of M={} N={} K={}",
            g.groups, g.m, g.n, g.k
        ),
    )
}

/// x (rows (n, t) × width) times each of `blocks` input dropout masks [block][n][width] (at 0
/// of `masks`) into dst [block][rows][width] (`reduce` false); or (`reduce`) src
/// [rows][block][width] masked and summed over the blocks into dst [rows][width].
#[allow(clippy::too_many_arguments)]
fn input_dropout(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    [src, masks, dst]: [BufRef; 3],
    rows: usize,
    width: usize,
    timesteps: usize,
    blocks: usize,
    reduce: bool,
) -> Result<()> {
    let w = |what: &str, v: usize| word(layer, what, v);
    let params = vec![
        w("rows", rows)?,
        w("features", width)?,
        w("timesteps", timesteps)?,
        w("mask blocks", blocks)?,
        u32::from(reduce),
        0,
        0,
        0,
    ];
    let (len, what) = if reduce {
        (rows * width, "input gradient through the dropout masks")
    } else {
        (blocks * rows * width, "x times its dropout masks")
    };
    e.dispatch(
        layer,
        node,
        Kernel::RnnDropout,
        vec![src, masks, dst],
        params,
        linear_workgroups(len, LINEAR_THREADS),
        format!("{what}: {blocks} mask(s) over {rows}x{width}"),
    )
}

/// The layer's dropout masks buffer and layout, where this run applies any: with input masks,
/// how many blocks x is copied into (directions × input mask blocks).
fn dropout_of(r: &Recurrent, batch: usize, buf: Option<BufRef>) -> Option<(BufRef, DropLayout)> {
    let dl = DropLayout::new(r, batch);
    buf.filter(|_| dl.total > 0).map(|b| (b, dl))
}

fn input_blocks(r: &Recurrent, drop: Option<(BufRef, DropLayout)>) -> Option<(BufRef, usize)> {
    drop.filter(|(_, d)| d.input_blocks > 0)
        .map(|(b, d)| (b, r.cells().count() * d.input_blocks))
}

/// dst[dst.0 + r·dst.1 + c] = src[src.0 + r·src.1 + c] for r < rows, c < cols.
#[allow(clippy::too_many_arguments)]
fn block_copy(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    src: (BufRef, usize, usize),
    dst: (BufRef, usize, usize),
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<()> {
    let w = |v: usize| word(layer, "copy", v);
    let params = vec![
        w(rows)?,
        w(cols)?,
        w(src.1)?,
        w(src.2)?,
        w(dst.1)?,
        w(dst.2)?,
        0,
        0,
    ];
    e.dispatch(
        layer,
        node,
        Kernel::RnnBlockCopy,
        vec![src.0, dst.0],
        params,
        linear_workgroups(rows * cols, LINEAR_THREADS),
        format!("{what}: {rows}x{cols}"),
    )
}

/// The weights as the kernels read them: each direction's side by side (one direction: the
/// parameters themselves). Returns (W (F, D·G), R (U, D·G), bias ([D·G] input, then [D·G]
/// recurrent for a reset_after GRU)) and the scratch buffers to release.
struct Stacked {
    w: BufRef,
    r: BufRef,
    bias: BufRef,
    scratch: Vec<BufRef>,
}

fn stack(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    lay: &Layout,
    cells: &[CellBuffers],
    need_w: bool,
) -> Result<Stacked> {
    let c0 = &cells[0];
    if lay.dirs == 1 {
        return Ok(Stacked {
            w: c0.kernel,
            r: c0.recurrent_kernel,
            bias: c0.bias.unwrap_or(BufRef::Dummy),
            scratch: Vec::new(),
        });
    }
    let (g, dg) = (lay.g(), lay.dg());
    let mut scratch = Vec::new();
    let mut stacked = |e: &mut dyn Emit,
                       what: &'static str,
                       rows: usize,
                       pick: &dyn Fn(&CellBuffers) -> BufRef|
     -> Result<BufRef> {
        let buf = e.scratch(node, what, rows * dg);
        scratch.push(buf);
        for (d, c) in cells.iter().enumerate() {
            block_copy(
                e,
                layer,
                node,
                (pick(c), 0, g),
                (buf, d * g, dg),
                rows,
                g,
                what,
            )?;
        }
        Ok(buf)
    };
    let w = if need_w {
        stacked(e, "stacked kernels", lay.f, &|c| c.kernel)?
    } else {
        BufRef::Dummy
    };
    let r = stacked(e, "stacked recurrent kernels", lay.u, &|c| {
        c.recurrent_kernel
    })?;
    let bias = match c0.bias {
        None => BufRef::Dummy,
        Some(_) => {
            let rows = if lay.gru_after() { 2 } else { 1 };
            let buf = e.scratch(node, "stacked biases", rows * dg);
            scratch.push(buf);
            for (d, c) in cells.iter().enumerate() {
                let b = c.bias.ok_or_else(|| {
                    Error::Internal(format!("layer '{}': a direction has no bias", layer.name))
                })?;
                // Row 0: the input biases side by side; row 1 the recurrent ones.
                block_copy(
                    e,
                    layer,
                    node,
                    (b, 0, g),
                    (buf, d * g, dg),
                    rows,
                    g,
                    "stacked biases",
                )?;
            }
            buf
        }
    };
    Ok(Stacked {
        w,
        r,
        bias,
        scratch,
    })
}

fn release_all(e: &mut dyn Emit, bufs: Vec<BufRef>) {
    for b in bufs {
        e.release(b);
    }
}

/// A scratch buffer of x times each input dropout mask block, [block][rows][features].
fn masked_inputs(
    e: &mut dyn Emit,
    layer: &Node,
    lay: &Layout,
    node: usize,
    x: BufRef,
    masks: BufRef,
    blocks: usize,
) -> Result<BufRef> {
    let floats = blocks * lay.rows() * lay.f;
    check_buffer(e, layer, "x times its dropout masks", floats)?;
    let xm = e.scratch(node, "x times its dropout masks", floats);
    input_dropout(
        e,
        layer,
        node,
        [x, masks, xm],
        lay.rows(),
        lay.f,
        lay.t,
        blocks,
        false,
    )?;
    Ok(xm)
}

/// Training forward of a recurrent node for `batch` sequences: `x` (N, T, F); `mask_ids` the
/// u32 token ids (N, T) Keras's padding mask comes from (0 = padding), if the layer is masked;
/// `cells` each direction's weights (forward first). Writes `y` exactly as the inference
/// forward lays out the node's output (return_sequences, merge mode, go_backwards, masked
/// steps as Keras: zero or repeat per `r.zero_output_for_mask()`; `ys` the outputs, two for
/// merge_mode None), `saved` ([`recurrent_saved_floats`]) and, for merge_mode mul, `parts`
/// ([`recurrent_parts_floats`]) for [`recurrent_backward`]. `dropout`: this step's masks
/// ([`recurrent_dropout_masks`]), None at evaluation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrent_train_forward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    r: &Recurrent,
    batch: usize,
    x: BufRef,
    mask_ids: Option<BufRef>,
    cells: &[CellBuffers],
    ys: &[BufRef],
    saved: BufRef,
    parts: Option<BufRef>,
    initial: &[BufRef],
    dropout: Option<BufRef>,
) -> Result<()> {
    train_forward(
        e, layer, node, r, batch, x, mask_ids, cells, ys, saved, parts, initial, dropout, true,
    )
}

/// The merge buffers a node's lowering was handed, checked against the layer.
fn check_outputs(layer: &Node, r: &Recurrent, outputs: usize, parts: Option<BufRef>) -> Result<()> {
    let want_parts = recurrent_parts_floats(r, 1) > 0;
    let states = if r.return_state { r.state_count() } else { 0 };
    if outputs != main_outputs(r) + states || parts.is_some() != want_parts {
        return Err(Error::Internal(format!(
            "layer '{}': {outputs} output buffer(s){} for merge_mode {:?}",
            layer.name,
            if parts.is_some() { " and parts" } else { "" },
            r.merge_mode
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_forward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    r: &Recurrent,
    batch: usize,
    x: BufRef,
    mask_ids: Option<BufRef>,
    cells: &[CellBuffers],
    ys: &[BufRef],
    saved: BufRef,
    parts: Option<BufRef>,
    initial: &[BufRef],
    dropout: Option<BufRef>,
    allow_staging: bool,
) -> Result<()> {
    check(layer, r, cells.len(), mask_ids.is_some())?;
    check_outputs(layer, r, ys.len(), parts)?;
    check_initial(layer, r, initial.len())?;
    let (ys, finals) = ys.split_at(main_outputs(r));
    let lay = Layout::new(r, batch);
    if batch == 0 {
        return Ok(());
    }
    let (rows, dg, u) = (lay.rows(), lay.dg(), lay.u);
    check_buffer(e, layer, "x", rows * lay.f)?;
    check_buffer(e, layer, "saved", lay.total)?;
    let st = stack(e, layer, node, &lay, cells, true)?;
    let drop = dropout_of(r, batch, dropout);
    if let Some((masks, blocks)) = input_blocks(r, drop) {
        let xm = masked_inputs(e, layer, &lay, node, x, masks, blocks)?;
        grouped_gemm(
            e,
            layer,
            node,
            &Grouped {
                mode: 1,
                m: rows,
                n: dg / blocks,
                k: lay.f,
                groups: blocks,
                has_bias: st.bias != BufRef::Dummy,
                in_h: rows * lay.f,
                in_c: lay.f,
                ..Grouped::default()
            },
            [xm, st.w, st.bias, saved],
            "input projection (x times its dropout mask).W + b of every step".into(),
        )?;
        e.release(xm);
    } else {
        gemm(
            e,
            layer,
            node,
            Kernel::Matmul,
            x,
            st.w,
            st.bias,
            saved,
            [rows, dg, lay.f],
            "input projection x.W + b of every step",
        )?;
    }

    let (rpg, staged) = rnn_rows_per_group(batch, u, 2 * u, allow_staging);
    let mut flags = base_flags(r, mask_ids.is_some());
    if staged {
        flags |= STAGED;
    }
    if lay.gru_after() && cells[0].bias.is_some() {
        flags |= REC_BIAS;
    }
    if !initial.is_empty() {
        // Each direction's initial states as the state its first step starts from.
        flags |= INIT_STATE;
        for ((d, _, is_c), &s0) in state_slots(r).into_iter().zip(initial) {
            let first = if cells_backwards(r, d) { lay.t - 1 } else { 0 };
            let base = if is_c { lay.cin } else { lay.hin };
            block_copy(
                e,
                layer,
                node,
                (s0, 0, u),
                (
                    saved,
                    base + (first * lay.dirs + d) * u,
                    lay.t * lay.dirs * u,
                ),
                batch,
                u,
                "initial state",
            )?;
        }
    }
    if r.return_state {
        flags |= FINAL_STATE;
    }
    let out_rows = if r.return_sequences { rows } else { batch };
    let merge = lay.dirs == 2 && r.merge_mode != MergeMode::Concat;
    let both = match (merge, parts) {
        (false, _) => None,
        (true, Some(kept)) => {
            check_buffer(e, layer, "both directions", out_rows * 2 * u)?;
            Some(kept)
        }
        (true, None) => Some(e.scratch(node, "both directions", out_rows * 2 * u)),
    };
    let params = loop_params(layer, r, &lay, rpg, flags, 1.0, lay.fin, drop.map(|d| d.1))?;
    let mut detail = format!(
        "{} {u} units x {} direction(s), {} steps in one loop, {rpg} sequence(s) per workgroup",
        lay.kind.name(),
        lay.dirs,
        lay.t
    );
    if !staged {
        detail.push_str(", state read back from storage");
    }
    if mask_ids.is_some() {
        detail.push_str(", masked by token id 0");
    }
    if drop.is_some_and(|(_, d)| d.rec_blocks > 0) {
        detail.push_str(", recurrent dropout");
    }
    dispatch_time_loop(
        e,
        layer,
        node,
        Kernel::RnnTrainForward,
        vec![
            saved,
            both.unwrap_or(ys[0]),
            mask_ids.unwrap_or(BufRef::Dummy),
            st.r,
            st.bias,
            BufRef::Dummy,
            drop.map_or(BufRef::Dummy, |d| d.0),
        ],
        params,
        (&lay, rpg, if lay.cell_code() == 3 { 2 } else { 1 }),
        detail,
    )?;
    if let Some(both) = both {
        // recurrent.wgsl's rnn_merge modes; merge_mode None: each direction to its output.
        let modes: &[(u32, &str)] = match r.merge_mode {
            MergeMode::Sum => &[(1, "merge_mode sum")],
            MergeMode::Average => &[(2, "merge_mode ave")],
            MergeMode::Multiply => &[(3, "merge_mode mul")],
            MergeMode::None | MergeMode::Concat => &[(4, "forward output"), (5, "backward output")],
        };
        for (&(mode, what), &y) in modes.iter().zip(ys) {
            e.dispatch(
                layer,
                node,
                Kernel::RnnMerge,
                vec![both, y],
                vec![
                    word(layer, "rows", out_rows)?,
                    word(layer, "units", u)?,
                    mode,
                    0,
                ],
                linear_workgroups(out_rows * u, LINEAR_THREADS),
                format!("{what} over {out_rows} rows"),
            )?;
        }
        // merge_mode mul keeps both directions' outputs for the backward.
        if parts.is_none() {
            e.release(both);
        }
    }
    // return_state: each final state out of `saved`.
    let plane = batch * lay.dirs * u;
    for ((d, _, is_c), &dst) in state_slots(r).into_iter().zip(finals) {
        let at = lay.fin + if is_c { plane } else { 0 } + d * u;
        block_copy(
            e,
            layer,
            node,
            (saved, at, lay.dirs * u),
            (dst, 0, u),
            batch,
            u,
            "final state",
        )?;
    }
    release_all(e, st.scratch);
    Ok(())
}

/// Whether direction `d` runs backwards in time.
fn cells_backwards(r: &Recurrent, d: usize) -> bool {
    r.cells().nth(d).is_some_and(|c| c.go_backwards)
}

/// The initial-state buffers a node's lowering was handed, checked against the layer.
fn check_initial(layer: &Node, r: &Recurrent, given: usize) -> Result<()> {
    let want = if r.initial_state { r.state_count() } else { 0 };
    if given != want {
        return Err(Error::Internal(format!(
            "layer '{}': {given} initial state buffer(s), expected {want}",
            layer.name
        )));
    }
    Ok(())
}

/// Backpropagation through time of a recurrent node: from `saved` (its training forward's) and
/// `dys` (the outputs' gradients, laid out as the outputs; two for merge_mode None) and, for
/// merge_mode mul, the forward's `parts`, writes `dx` (N, T, F) and, for each direction, the
/// parameter gradients asked for in `grads` (forward direction first). `dropout`: the masks
/// the training forward applied (the same buffer).
#[allow(clippy::too_many_arguments)]
pub(crate) fn recurrent_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    r: &Recurrent,
    batch: usize,
    x: BufRef,
    mask_ids: Option<BufRef>,
    cells: &[CellBuffers],
    saved: BufRef,
    parts: Option<BufRef>,
    dys: &[BufRef],
    dx: Option<BufRef>,
    dinitial: &[Option<BufRef>],
    grads: &[CellGrads],
    dropout: Option<BufRef>,
) -> Result<()> {
    backward(
        e, layer, node, r, batch, x, mask_ids, cells, saved, parts, dys, dx, dinitial, grads,
        dropout, true,
    )
}

/// The output gradient as the BPTT reads it: as given for one direction, concat, sum and
/// ave; else both directions' gradients side by side as concat lays them out (merge_mode
/// None: the two outputs' gradients; mul: dy times the other direction's output). Returns it
/// and whether it is a scratch buffer to release.
fn concat_dy(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    r: &Recurrent,
    out_rows: usize,
    parts: Option<BufRef>,
    dys: &[BufRef],
) -> Result<(BufRef, bool)> {
    let u = r.units();
    let len = out_rows * 2 * u;
    match (r.backward.is_some(), r.merge_mode) {
        (true, MergeMode::None) => {
            check_buffer(e, layer, "both directions' output gradients", len)?;
            let cat = e.scratch(node, "both directions' output gradients", len);
            for (d, &dy) in dys.iter().enumerate() {
                block_copy(
                    e,
                    layer,
                    node,
                    (dy, 0, u),
                    (cat, d * u, 2 * u),
                    out_rows,
                    u,
                    "a direction's output gradient",
                )?;
            }
            Ok((cat, true))
        }
        (true, MergeMode::Multiply) => {
            let both = parts.ok_or_else(|| {
                Error::Internal(format!(
                    "layer '{}': merge_mode mul kept no outputs",
                    layer.name
                ))
            })?;
            check_buffer(e, layer, "both directions' output gradients", len)?;
            // d(a ⊙ b)/da = b: dy twice side by side, times the outputs with halves swapped.
            let twice = e.scratch(node, "output gradient twice", len);
            let swapped = e.scratch(node, "outputs swapped", len);
            for d in 0..2 {
                block_copy(
                    e,
                    layer,
                    node,
                    (dys[0], 0, u),
                    (twice, d * u, 2 * u),
                    out_rows,
                    u,
                    "output gradient",
                )?;
                block_copy(
                    e,
                    layer,
                    node,
                    (both, (1 - d) * u, 2 * u),
                    (swapped, d * u, 2 * u),
                    out_rows,
                    u,
                    "the other direction's output",
                )?;
            }
            let cat = e.scratch(node, "both directions' output gradients", len);
            let mut params = vec![0u32; 4];
            params.extend([word(layer, "length", len)?, 1, 0, 0]);
            e.dispatch(
                layer,
                node,
                Kernel::NoiseApply,
                vec![twice, swapped, BufRef::Dummy, cat],
                params,
                linear_workgroups(len, LINEAR_THREADS),
                format!("merge_mode mul backward over {out_rows} rows"),
            )?;
            e.release(twice);
            e.release(swapped);
            Ok((cat, true))
        }
        _ => Ok((dys[0], false)),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    r: &Recurrent,
    batch: usize,
    x: BufRef,
    mask_ids: Option<BufRef>,
    cells: &[CellBuffers],
    saved: BufRef,
    parts: Option<BufRef>,
    dys: &[BufRef],
    dx: Option<BufRef>,
    dinitial: &[Option<BufRef>],
    grads: &[CellGrads],
    dropout: Option<BufRef>,
    allow_staging: bool,
) -> Result<()> {
    check(layer, r, cells.len(), mask_ids.is_some())?;
    check_outputs(layer, r, dys.len(), parts)?;
    check_initial(layer, r, dinitial.len())?;
    let (dys, dfinals) = dys.split_at(main_outputs(r));
    if grads.len() != cells.len() {
        return Err(Error::Internal(format!(
            "layer '{}': {} gradient sets for {} directions",
            layer.name,
            grads.len(),
            cells.len()
        )));
    }
    let lay = Layout::new(r, batch);
    if batch == 0 {
        return Ok(());
    }
    let (rows, g, dg, u, f) = (lay.rows(), lay.g(), lay.dg(), lay.u, lay.f);
    // dh, dc and the carried output gradient.
    let state = 3 * batch * lay.dirs * u;
    let dzh = if lay.gru_after() { rows * dg } else { 0 };
    check_buffer(e, layer, "dz", rows * dg)?;
    check_buffer(e, layer, "saved", lay.total)?;
    check_buffer(e, layer, "backward state", dzh + state)?;
    let out_rows = if r.return_sequences { rows } else { batch };
    let (dy, dy_scratch) = concat_dy(e, layer, node, r, out_rows, parts, dys)?;
    let st = stack(e, layer, node, &lay, cells, dx.is_some())?;
    let dz = e.scratch(node, "dz of every step", rows * dg);
    let aux = e.scratch(node, "recurrent dz and running dh, dc, carry", dzh + state);

    let (rpg, staged) = rnn_rows_per_group(batch, u, g, allow_staging);
    let mut flags = base_flags(r, mask_ids.is_some());
    if staged {
        flags |= STAGED;
    }
    let mut dy_scale = 1.0;
    if lay.dirs == 2 && matches!(r.merge_mode, MergeMode::Sum | MergeMode::Average) {
        flags |= DY_MERGED;
        if r.merge_mode == MergeMode::Average {
            dy_scale = 0.5;
        }
    }
    if r.return_state {
        // The final states' gradients are dh, dc after the last step.
        flags |= STATE_GRADS;
        let plane = batch * lay.dirs * u;
        for ((d, _, is_c), &g) in state_slots(r).into_iter().zip(dfinals) {
            let at = dzh + if is_c { plane } else { 0 } + d * u;
            block_copy(
                e,
                layer,
                node,
                (g, 0, u),
                (aux, at, lay.dirs * u),
                batch,
                u,
                "final state gradient",
            )?;
        }
    }
    let drop = dropout_of(r, batch, dropout);
    let params = loop_params(layer, r, &lay, rpg, flags, dy_scale, dzh, drop.map(|d| d.1))?;
    let mut detail = format!(
        "BPTT of {} {u} units x {} direction(s), {} steps in one loop",
        lay.kind.name(),
        lay.dirs,
        lay.t
    );
    if !staged {
        detail.push_str(", dz read back from storage");
    }
    // dh_prev walks every gate column (the reset gate's pass once more).
    dispatch_time_loop(
        e,
        layer,
        node,
        Kernel::RnnTrainBackward,
        vec![
            saved,
            dy,
            mask_ids.unwrap_or(BufRef::Dummy),
            st.r,
            dz,
            aux,
            drop.map_or(BufRef::Dummy, |d| d.0),
        ],
        params,
        (&lay, rpg, lay.gates + 1),
        detail,
    )?;

    // After the loop aux holds dh, dc before the first step: the initial states' gradients.
    let plane = batch * lay.dirs * u;
    for ((d, _, is_c), g) in state_slots(r).into_iter().zip(dinitial) {
        if let Some(g) = *g {
            let at = dzh + if is_c { plane } else { 0 } + d * u;
            block_copy(
                e,
                layer,
                node,
                (aux, at, lay.dirs * u),
                (g, 0, u),
                batch,
                u,
                "initial state gradient",
            )?;
        }
    }
    let in_masks = input_blocks(r, drop);
    match (dx, in_masks) {
        (Some(dx), Some((masks, blocks))) => {
            // Each block's dZ.Wᵀ apart, then masked by its block's mask and summed.
            let floats = rows * blocks * f;
            check_buffer(e, layer, "input gradient parts", floats)?;
            let parts = e.scratch(node, "input gradient parts", floats);
            grouped_gemm(
                e,
                layer,
                node,
                &Grouped {
                    mode: 3,
                    m: rows,
                    n: f,
                    k: dg / blocks,
                    groups: blocks,
                    in_c: dg,
                    ..Grouped::default()
                },
                [dz, st.w, BufRef::Dummy, parts],
                "input gradient parts dZ.WT".into(),
            )?;
            input_dropout(
                e,
                layer,
                node,
                [parts, masks, dx],
                rows,
                f,
                lay.t,
                blocks,
                true,
            )?;
            e.release(parts);
        }
        (Some(dx), None) => gemm(
            e,
            layer,
            node,
            Kernel::MatmulBt,
            dz,
            st.w,
            BufRef::Dummy,
            dx,
            [rows, f, dg],
            "input gradient dZ.WT",
        )?,
        (None, _) => {}
    }
    // A stacked gradient: straight into the one direction's buffer, else into scratch and
    // copied out to each direction's (rows, G) block.
    let mut scratch = Vec::new();
    let single = |pick: &dyn Fn(&CellGrads) -> Option<BufRef>| -> Option<BufRef> {
        if lay.dirs == 1 {
            pick(&grads[0])
        } else {
            None
        }
    };
    if grads.iter().any(|c| c.kernel.is_some()) {
        let target = match single(&|c| c.kernel) {
            Some(b) => b,
            None => {
                let b = e.scratch(node, "stacked kernel gradients", f * dg);
                scratch.push(b);
                b
            }
        };
        match in_masks {
            Some((masks, blocks)) => {
                let xm = masked_inputs(e, layer, &lay, node, x, masks, blocks)?;
                grouped_gemm(
                    e,
                    layer,
                    node,
                    &Grouped {
                        mode: 2,
                        m: f,
                        n: dg / blocks,
                        k: rows,
                        groups: blocks,
                        in_h: rows * f,
                        in_c: f,
                        ..Grouped::default()
                    },
                    [xm, dz, BufRef::Dummy, target],
                    "kernel gradient (x times its dropout mask)T.dZ".into(),
                )?;
                e.release(xm);
            }
            None => gemm(
                e,
                layer,
                node,
                Kernel::MatmulAt,
                x,
                dz,
                BufRef::Dummy,
                target,
                [f, dg, rows],
                "kernel gradient xT.dZ",
            )?,
        }
        if lay.dirs == 2 {
            for (d, c) in grads.iter().enumerate() {
                if let Some(dst) = c.kernel {
                    block_copy(
                        e,
                        layer,
                        node,
                        (target, d * g, dg),
                        (dst, 0, g),
                        f,
                        g,
                        "kernel gradient",
                    )?;
                }
            }
        }
    }
    if grads.iter().any(|c| c.recurrent_kernel.is_some()) {
        let target = match single(&|c| c.recurrent_kernel) {
            Some(b) => b,
            None => {
                let b = e.scratch(node, "stacked recurrent kernel gradients", u * dg);
                scratch.push(b);
                b
            }
        };
        let rec_dz = if lay.gru_after() { aux } else { dz };
        let alt = if lay.kind == (CellKind::Gru { reset_after: false }) {
            2
        } else {
            u32::MAX
        };
        let rec = drop.filter(|(_, d)| d.rec_blocks > 0);
        grouped_gemm(
            e,
            layer,
            node,
            &Grouped {
                mode: 0,
                m: u,
                n: u,
                k: rows,
                groups: lay.dirs * lay.gates,
                in_h: lay.hin,
                in_w: lay.rh,
                in_c: lay.dirs * u,
                out_h: lay.gates as u32,
                out_w: alt,
                mask_blocks: rec.map_or(0, |d| d.1.rec_blocks),
                mask_off: rec.map_or(0, |d| d.1.rec_off),
                timesteps: lay.t,
                batch,
                ..Grouped::default()
            },
            [saved, rec_dz, rec.map_or(BufRef::Dummy, |d| d.0), target],
            if rec.is_some() {
                "recurrent kernel gradient (h_in times its dropout mask)T.dZ".into()
            } else {
                "recurrent kernel gradient h_inT.dZ".into()
            },
        )?;
        if lay.dirs == 2 {
            for (d, c) in grads.iter().enumerate() {
                if let Some(dst) = c.recurrent_kernel {
                    block_copy(
                        e,
                        layer,
                        node,
                        (target, d * g, dg),
                        (dst, 0, g),
                        u,
                        g,
                        "recurrent kernel gradient",
                    )?;
                }
            }
        }
    }
    if grads.iter().any(|c| c.bias.is_some()) {
        let direct = if lay.gru_after() {
            None
        } else {
            single(&|c| c.bias)
        };
        let target = match direct {
            Some(b) => b,
            None => {
                let b = e.scratch(node, "stacked bias gradients", dg);
                scratch.push(b);
                b
            }
        };
        bias_grad(e, layer, node, dz, rows, dg, target)?;
        let rec = if lay.gru_after() {
            let b = e.scratch(node, "stacked recurrent bias gradients", dg);
            scratch.push(b);
            bias_grad(e, layer, node, aux, rows, dg, b)?;
            Some(b)
        } else {
            None
        };
        if direct.is_none() {
            for (d, c) in grads.iter().enumerate() {
                if let Some(dst) = c.bias {
                    block_copy(
                        e,
                        layer,
                        node,
                        (target, d * g, dg),
                        (dst, 0, g),
                        1,
                        g,
                        "bias gradient",
                    )?;
                    if let Some(rec) = rec {
                        block_copy(
                            e,
                            layer,
                            node,
                            (rec, d * g, dg),
                            (dst, g, g),
                            1,
                            g,
                            "recurrent bias gradient",
                        )?;
                    }
                }
            }
        }
    }
    release_all(e, scratch);
    if dy_scratch {
        e.release(dy);
    }
    e.release(dz);
    e.release(aux);
    release_all(e, st.scratch);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
