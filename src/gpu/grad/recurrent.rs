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

// The training plan binds these once it lowers recurrent nodes; until then only the tests do.

use crate::error::{Error, Result};
use crate::graph::{CellKind, MergeMode, Node, Recurrent, RecurrentCell};

use super::super::kernels::{
    Kernel, GEMM_TILE, LINEAR_THREADS, RNN_TRAIN_THREADS, RNN_TRAIN_WG_FLOATS,
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
        let total = rh
            + if kind == (CellKind::Gru { reset_after: false }) {
                plane
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

/// Floats of the `saved` buffer [`recurrent_train_forward`] fills and
/// [`recurrent_backward`] reads, for `batch` sequences: per (row, step, direction) the
/// gates·units pre-activations and the starting state h, plus the starting carry c (LSTM),
/// the recurrent candidate term (GRU) and r ⊙ h (GRU with reset_after=False).
pub(crate) fn recurrent_saved_floats(r: &Recurrent, batch: usize) -> usize {
    Layout::new(r, batch).total
}

/// What the GPU path supports, else an error naming the layer and the field.
fn check(layer: &Node, r: &Recurrent, cells: usize, masked: bool) -> Result<()> {
    let refuse = |field: &str, why: &str| Err(layer_error(layer, field, why));
    if r.return_state {
        return refuse(
            "return_state",
            "GPU training does not support return_state yet",
        );
    }
    if r.initial_state {
        return refuse(
            "initial_state",
            "GPU training does not support initial states yet",
        );
    }
    if r.backward.is_some()
        && !matches!(
            r.merge_mode,
            MergeMode::Concat | MergeMode::Sum | MergeMode::Average
        )
    {
        return refuse(
            "merge_mode",
            "GPU training supports Bidirectional merge_mode concat, sum and ave",
        );
    }
    let first = &r.forward;
    for cell in r.cells() {
        if cell.dropout.input != 0.0 || cell.dropout.recurrent != 0.0 {
            return refuse(
                "dropout",
                "GPU training does not support a recurrent cell's dropout / recurrent_dropout yet",
            );
        }
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

/// (rows per workgroup, staged in workgroup memory) for `per_row` floats of workgroup memory
/// per sequence.
fn rows_per_group(
    batch: usize,
    units: usize,
    per_row: usize,
    allow_staging: bool,
) -> (usize, bool) {
    let want = (RNN_TRAIN_THREADS as usize)
        .div_ceil(units.max(1))
        .clamp(1, batch.max(1));
    let fit = RNN_TRAIN_WG_FLOATS / per_row.max(1);
    if allow_staging && fit > 0 {
        (want.min(fit), true)
    } else {
        (want, false)
    }
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
    ]);
    Ok(p)
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

/// Training forward of a recurrent node for `batch` sequences: `x` (N, T, F); `mask_ids` the
/// u32 token ids (N, T) Keras's padding mask comes from (0 = padding), if the layer is masked;
/// `cells` each direction's weights (forward first). Writes `y` exactly as the inference
/// forward lays out the node's output (return_sequences, merge mode, go_backwards, masked
/// steps as Keras: zero or repeat per `r.zero_output_for_mask()`), and `saved`
/// ([`recurrent_saved_floats`]) for [`recurrent_backward`].
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
    y: BufRef,
    saved: BufRef,
) -> Result<()> {
    train_forward(e, layer, node, r, batch, x, mask_ids, cells, y, saved, true)
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
    y: BufRef,
    saved: BufRef,
    allow_staging: bool,
) -> Result<()> {
    check(layer, r, cells.len(), mask_ids.is_some())?;
    let lay = Layout::new(r, batch);
    if batch == 0 {
        return Ok(());
    }
    let (rows, dg, u) = (lay.rows(), lay.dg(), lay.u);
    check_buffer(e, layer, "x", rows * lay.f)?;
    check_buffer(e, layer, "saved", lay.total)?;
    let st = stack(e, layer, node, &lay, cells, true)?;
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

    let (rpg, staged) = rows_per_group(batch, u, 2 * u, allow_staging);
    let mut flags = base_flags(r, mask_ids.is_some());
    if staged {
        flags |= STAGED;
    }
    if lay.gru_after() && cells[0].bias.is_some() {
        flags |= REC_BIAS;
    }
    let out_rows = if r.return_sequences { rows } else { batch };
    let merge = lay.dirs == 2 && r.merge_mode != MergeMode::Concat;
    let both = if merge {
        let b = e.scratch(node, "both directions", out_rows * 2 * u);
        Some(b)
    } else {
        None
    };
    let params = loop_params(layer, r, &lay, rpg, flags, 1.0, 0)?;
    let groups = batch.div_ceil(rpg);
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
    e.dispatch(
        layer,
        node,
        Kernel::RnnTrainForward,
        vec![
            saved,
            both.unwrap_or(y),
            mask_ids.unwrap_or(BufRef::Dummy),
            st.r,
            st.bias,
            BufRef::Dummy,
        ],
        params,
        (groups * lay.dirs) as u64,
        detail,
    )?;
    if let Some(both) = both {
        let mode = match r.merge_mode {
            MergeMode::Sum => 1,
            _ => 2,
        };
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
            format!("merge_mode {:?} over {out_rows} rows", r.merge_mode).to_lowercase(),
        )?;
        e.release(both);
    }
    release_all(e, st.scratch);
    Ok(())
}

/// Backpropagation through time of a recurrent node: from `saved` (its training forward's) and
/// `dy` (the output's gradient, laid out as the output), writes `dx` (N, T, F) and, for each
/// direction, the parameter gradients asked for in `grads` (forward direction first).
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
    dy: BufRef,
    dx: Option<BufRef>,
    grads: &[CellGrads],
) -> Result<()> {
    backward(
        e, layer, node, r, batch, x, mask_ids, cells, saved, dy, dx, grads, true,
    )
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
    dy: BufRef,
    dx: Option<BufRef>,
    grads: &[CellGrads],
    allow_staging: bool,
) -> Result<()> {
    check(layer, r, cells.len(), mask_ids.is_some())?;
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
    let state = 2 * batch * lay.dirs * u;
    let dzh = if lay.gru_after() { rows * dg } else { 0 };
    check_buffer(e, layer, "dz", rows * dg)?;
    check_buffer(e, layer, "saved", lay.total)?;
    check_buffer(e, layer, "backward state", dzh + state)?;
    let st = stack(e, layer, node, &lay, cells, dx.is_some())?;
    let dz = e.scratch(node, "dz of every step", rows * dg);
    let aux = e.scratch(node, "recurrent dz and running dh, dc", dzh + state);

    let (rpg, staged) = rows_per_group(batch, u, g, allow_staging);
    let mut flags = base_flags(r, mask_ids.is_some());
    if staged {
        flags |= STAGED;
    }
    let mut dy_scale = 1.0;
    if lay.dirs == 2 && r.merge_mode != MergeMode::Concat {
        flags |= DY_MERGED;
        if r.merge_mode == MergeMode::Average {
            dy_scale = 0.5;
        }
    }
    let params = loop_params(layer, r, &lay, rpg, flags, dy_scale, dzh)?;
    let groups = batch.div_ceil(rpg);
    let mut detail = format!(
        "BPTT of {} {u} units x {} direction(s), {} steps in one loop",
        lay.kind.name(),
        lay.dirs,
        lay.t
    );
    if !staged {
        detail.push_str(", dz read back from storage");
    }
    e.dispatch(
        layer,
        node,
        Kernel::RnnTrainBackward,
        vec![saved, dy, mask_ids.unwrap_or(BufRef::Dummy), st.r, dz, aux],
        params,
        (groups * lay.dirs) as u64,
        detail,
    )?;

    if let Some(dx) = dx {
        gemm(
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
        )?;
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
        gemm(
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
        )?;
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
        let groups = lay.dirs * lay.gates;
        let mut params = vec![0u32; 4];
        params.extend([
            word(layer, "units", u)?,
            word(layer, "units", u)?,
            word(layer, "rows", rows)?,
            0,
        ]);
        params.extend([
            word(layer, "saved", lay.hin)?,
            word(layer, "saved", lay.rh)?,
            word(layer, "units", lay.dirs * u)?,
            lay.gates as u32,
            alt,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        params.push(0);
        params.extend([groups as u32, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let tiles = u.div_ceil(GEMM_TILE as usize).pow(2);
        e.dispatch(
            layer,
            node,
            Kernel::RnnGemmGrouped,
            vec![saved, rec_dz, BufRef::Dummy, target],
            params,
            (tiles * groups) as u64,
            format!("recurrent kernel gradient h_inT.dZ: {groups} blocks of M={u} N={u} K={rows}"),
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
    e.release(dz);
    e.release(aux);
    release_all(e, st.scratch);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
