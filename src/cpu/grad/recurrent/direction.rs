//! One direction of a recurrent layer in training: a forward that keeps every step's gates
//! (`forward`) and backpropagation through time (`backward`).
//!
//! Everything per step is stored by (row, timestep), so the projections that do not recur —
//! x W, dW = xᵀ dZ, dR = h_inᵀ dZ, dx = dZ Wᵀ — are single GEMMs over all N·T rows; only h R
//! (forward) and dZ Rᵀ (backward) run step by step. Rows are independent, so groups of rows run
//! their step loops on separate threads, each GEMM on its own thread.

use std::ops::Range;

use ndarray::{s, Array1, Array2, ArrayD, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::cells::{self, Acts};
use super::masks::Masks;
use crate::cpu::gemm;
use crate::graph::{CellKind, ParamId, ParamStore, RecurrentCell};

/// What one direction reads: x (N, T, F) row-major, the padding mask, the initial states.
pub(super) struct DirectionInput<'a> {
    pub x: &'a [f32],
    pub n: usize,
    pub t_len: usize,
    pub features: usize,
    pub mask: Option<&'a Array2<bool>>,
    /// Masked steps output zeros instead of repeating the previous output.
    pub zero_masked: bool,
    /// (N, U) row-major each; None is zeros.
    pub h0: Option<&'a [f32]>,
    pub c0: Option<&'a [f32]>,
}

/// What the backward reads of a direction's forward, by (row, timestep) unless said.
pub(super) struct Tape {
    /// Gate activations (N, T, G): LSTM i f c o, GRU z r hh, SimpleRNN h.
    acts: Vec<f32>,
    /// Pre-activations (N, T, G), kept only where an activation's slope needs its input.
    pre: Vec<f32>,
    /// The state each step started from (N, T, U).
    h_in: Vec<f32>,
    /// LSTM: the carry each step started from, act(new carry), and the new carry itself where
    /// act's slope needs it (N, T, U).
    c_in: Vec<f32>,
    c_act: Vec<f32>,
    c_new: Vec<f32>,
    /// GRU reset_after: h R_h + b_rh, the term the reset gate multiplies (N, T, U).
    hr_h: Vec<f32>,
    /// x times its input dropout mask where one mask is shared by all gates (N·T, F).
    x_dropped: Option<Vec<f32>>,
}

/// A direction's forward: the outputs in processing order (N, T, U), the last output and the
/// final states (N, U), and the tape.
pub(super) struct DirectionRun {
    pub sequence: Vec<f32>,
    pub last: Vec<f32>,
    pub h: Vec<f32>,
    pub c: Vec<f32>,
    pub tape: Tape,
}

/// Incoming gradients of a direction: of its output sequence in processing order (N, T, U) or
/// of its last output (N, U), and of its final states (N, U). None is zeros.
#[derive(Default)]
pub(super) struct DirectionGrads<'a> {
    pub sequence: Option<&'a [f32]>,
    pub last: Option<&'a [f32]>,
    pub h: Option<&'a [f32]>,
    pub c: Option<&'a [f32]>,
}

/// Which input gradients the layer wants from this direction.
#[derive(Clone, Copy)]
pub(super) struct Wants {
    pub x: bool,
    pub h0: bool,
    pub c0: bool,
}

/// A direction's backward: trainable parameters' gradients, dx (N, T, F), dh0 and dc0 (N, U).
pub(super) struct DirectionBack {
    pub params: Vec<(ParamId, ArrayD<f32>)>,
    pub dx: Option<Vec<f32>>,
    pub dh0: Option<Vec<f32>>,
    pub dc0: Option<Vec<f32>>,
}

/// Columns of h R that share one left operand: h, or h times the recurrent mask of `gate`.
#[derive(Clone)]
struct Block {
    cols: Range<usize>,
    gate: usize,
}

/// One direction's constants, shared by the threads that run groups of rows.
struct Setup<'a> {
    cell: &'a RecurrentCell,
    acts: Acts,
    u: usize,
    g: usize,
    n: usize,
    t_len: usize,
    features: usize,
    /// R (U, G).
    r: ArrayView2<'a, f32>,
    /// The bias added to x W, and (GRU reset_after) the one added to h R.
    input_bias: Option<&'a [f32]>,
    recurrent_bias: Option<&'a [f32]>,
    /// The columns of h R computed from h each step, by operand. A GRU with reset_after=False
    /// leaves out R_h, whose operand is r * h.
    blocks: Vec<Block>,
    keep_pre: bool,
    keep_c_new: bool,
    masks: &'a Masks,
    mask: Option<&'a Array2<bool>>,
    zero_masked: bool,
    h0: Option<&'a [f32]>,
    c0: Option<&'a [f32]>,
}

impl<'a> Setup<'a> {
    fn new(
        cell: &'a RecurrentCell,
        params: &'a ParamStore,
        input: &DirectionInput<'a>,
        masks: &'a Masks,
    ) -> Self {
        let u = cell.units;
        let g = cell.gate_columns();
        let (input_bias, recurrent_bias) = match cell.bias.map(|b| params.slice(b)) {
            Some(b) if b.len() == 2 * g => (Some(&b[..g]), Some(&b[g..])),
            Some(b) => (Some(b), None),
            None => (None, None),
        };
        let width = match cell.kind {
            CellKind::SimpleRnn => u,
            CellKind::Gru { reset_after: false } => 2 * u,
            CellKind::Gru { reset_after: true } | CellKind::Lstm => g,
        };
        let blocks = if masks.recurrent.per_block() {
            (0..width / u)
                .map(|k| Block {
                    cols: k * u..(k + 1) * u,
                    gate: k,
                })
                .collect()
        } else {
            vec![Block {
                cols: 0..width,
                gate: 0,
            }]
        };
        let needs = cells::slope_needs_input;
        let gated = cell.kind != CellKind::SimpleRnn;
        Setup {
            cell,
            acts: Acts {
                act: cell.activation,
                ract: cell.recurrent_activation,
            },
            u,
            g,
            n: input.n,
            t_len: input.t_len,
            features: input.features,
            r: params.view2(cell.recurrent_kernel),
            input_bias,
            recurrent_bias,
            blocks,
            keep_pre: needs(cell.activation) || (gated && needs(cell.recurrent_activation)),
            keep_c_new: cell.kind == CellKind::Lstm && needs(cell.activation),
            masks,
            mask: input.mask,
            zero_masked: input.zero_masked,
            h0: input.h0,
            c0: input.c0,
        }
    }

    fn timestep(&self, step: usize) -> usize {
        if self.cell.go_backwards {
            self.t_len - 1 - step
        } else {
            step
        }
    }

    fn live(&self, row: usize, t: usize) -> bool {
        self.mask.is_none_or(|m| m[[row, t]])
    }

    fn rows_per_group(&self) -> usize {
        self.n.div_ceil(rayon::current_num_threads().max(1)).max(1)
    }

    /// x W + b_in for all rows and timesteps (N·T, G); with one input mask per gate, each
    /// gate's columns from its own masked x.
    fn project_input(&self, params: &ParamStore, x: &[f32], x_dropped: Option<&[f32]>) -> Vec<f32> {
        let rows = self.n * self.t_len;
        let w = params.view2(self.cell.kernel);
        let mut xw = Array2::<f32>::zeros((rows, self.g));
        if self.masks.input.per_block() {
            let mut xk = vec![0.0f32; x.len()];
            for k in 0..self.cell.kind.gates() {
                let cols = k * self.u..(k + 1) * self.u;
                let m = self.masks.input.for_block(k).expect("a mask per gate");
                scale_by_row_mask(x, m, self.t_len, self.features, &mut xk);
                gemm::matmul_into(
                    view(&xk, rows, self.features),
                    w.slice(s![.., cols.clone()]),
                    xw.slice_mut(s![.., cols]),
                );
            }
        } else {
            gemm::matmul_into(
                view(x_dropped.unwrap_or(x), rows, self.features),
                w,
                xw.view_mut(),
            );
        }
        if let Some(b) = self.input_bias {
            xw += &ndarray::ArrayView1::from(b);
        }
        xw.into_raw_vec_and_offset().0
    }

    /// `target` (rows, width) += the step's h R over `blocks`, each from its operand.
    fn recurrent_product(
        &self,
        first_row: usize,
        h: &[f32],
        target: &mut [f32],
        width: usize,
        scratch: &mut [f32],
    ) {
        let rows = h.len() / self.u;
        for blk in &self.blocks {
            let a: &[f32] = match self.masks.recurrent.for_block(blk.gate) {
                None => h,
                Some(m) => {
                    let m = &m[first_row * self.u..][..h.len()];
                    scratch
                        .iter_mut()
                        .zip(h.iter().zip(m))
                        .for_each(|(o, (&v, &k))| *o = v * k);
                    scratch
                }
            };
            let mut t =
                ArrayViewMut2::from_shape((rows, width), &mut *target).expect("rows x width");
            gemm::matmul_add_into(
                view(a, rows, self.u),
                self.r.slice(s![.., blk.cols.clone()]),
                t.slice_mut(s![.., blk.cols.clone()]),
            );
        }
    }
}

/// x[b, t, :] * m[b, :] for (N, T, W) x and (N, W) m.
fn scale_by_row_mask(x: &[f32], m: &[f32], t_len: usize, width: usize, out: &mut [f32]) {
    for ((o_row, x_row), m_row) in out
        .chunks_exact_mut(t_len * width)
        .zip(x.chunks_exact(t_len * width))
        .zip(m.chunks_exact(width))
    {
        for (o, xv) in o_row.chunks_exact_mut(width).zip(x_row.chunks_exact(width)) {
            o.iter_mut()
                .zip(xv.iter().zip(m_row))
                .for_each(|(o, (&v, &k))| *o = v * k);
        }
    }
}

fn view(a: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), a).expect("rows x cols")
}

/// `v` cut into `groups` pieces of `chunk` (empty pieces when `v` is empty: an unused buffer).
fn split(v: &mut [f32], chunk: usize, groups: usize) -> std::vec::IntoIter<&mut [f32]> {
    let mut pieces: Vec<&mut [f32]> = if v.is_empty() {
        Vec::new()
    } else {
        v.chunks_mut(chunk.max(1)).collect()
    };
    pieces.resize_with(groups, Default::default);
    pieces.into_iter()
}

/// What one group of rows writes in the forward.
struct GroupForward<'a> {
    first_row: usize,
    acts: &'a mut [f32],
    pre: &'a mut [f32],
    h_in: &'a mut [f32],
    c_in: &'a mut [f32],
    c_act: &'a mut [f32],
    c_new: &'a mut [f32],
    hr_h: &'a mut [f32],
    sequence: &'a mut [f32],
    last: &'a mut [f32],
    h: &'a mut [f32],
    c: &'a mut [f32],
}

/// Runs one direction in training mode. Its outputs equal the inference forward's
/// (`cpu::recurrent`), with the dropout `masks` applied.
pub(super) fn forward(
    cell: &RecurrentCell,
    params: &ParamStore,
    input: &DirectionInput,
    masks: &Masks,
) -> DirectionRun {
    let st = Setup::new(cell, params, input, masks);
    let (n, tl, u, g) = (st.n, st.t_len, st.u, st.g);
    let x_dropped = match masks.input.for_block(0) {
        Some(m) if !masks.input.per_block() => {
            let mut xd = vec![0.0f32; input.x.len()];
            scale_by_row_mask(input.x, m, tl, st.features, &mut xd);
            Some(xd)
        }
        _ => None,
    };
    let xw = st.project_input(params, input.x, x_dropped.as_deref());
    let lstm = cell.kind == CellKind::Lstm;
    let seq_len = n * tl * u;
    let mut tape = Tape {
        acts: vec![0.0; n * tl * g],
        pre: vec![0.0; if st.keep_pre { n * tl * g } else { 0 }],
        h_in: vec![0.0; seq_len],
        c_in: vec![0.0; if lstm { seq_len } else { 0 }],
        c_act: vec![0.0; if lstm { seq_len } else { 0 }],
        c_new: vec![0.0; if st.keep_c_new { seq_len } else { 0 }],
        hr_h: vec![
            0.0;
            if cell.kind == (CellKind::Gru { reset_after: true }) {
                seq_len
            } else {
                0
            }
        ],
        x_dropped,
    };
    let mut sequence = vec![0.0f32; seq_len];
    let mut last = vec![0.0f32; n * u];
    let mut h = vec![0.0f32; n * u];
    let mut c = vec![0.0f32; n * u];
    let rpg = st.rows_per_group();
    let groups = n.div_ceil(rpg);
    let mut acts = split(&mut tape.acts, rpg * tl * g, groups);
    let mut pre = split(&mut tape.pre, rpg * tl * g, groups);
    let mut h_in = split(&mut tape.h_in, rpg * tl * u, groups);
    let mut c_in = split(&mut tape.c_in, rpg * tl * u, groups);
    let mut c_act = split(&mut tape.c_act, rpg * tl * u, groups);
    let mut c_new = split(&mut tape.c_new, rpg * tl * u, groups);
    let mut hr_h = split(&mut tape.hr_h, rpg * tl * u, groups);
    let mut seq = split(&mut sequence, rpg * tl * u, groups);
    let mut lst = split(&mut last, rpg * u, groups);
    let mut hs = split(&mut h, rpg * u, groups);
    let mut cs = split(&mut c, rpg * u, groups);
    let work: Vec<GroupForward> = (0..groups)
        .map(|i| GroupForward {
            first_row: i * rpg,
            acts: acts.next().expect("a piece per group"),
            pre: pre.next().expect("a piece per group"),
            h_in: h_in.next().expect("a piece per group"),
            c_in: c_in.next().expect("a piece per group"),
            c_act: c_act.next().expect("a piece per group"),
            c_new: c_new.next().expect("a piece per group"),
            hr_h: hr_h.next().expect("a piece per group"),
            sequence: seq.next().expect("a piece per group"),
            last: lst.next().expect("a piece per group"),
            h: hs.next().expect("a piece per group"),
            c: cs.next().expect("a piece per group"),
        })
        .collect();
    work.into_par_iter()
        .for_each(|grp| st.forward_rows(&xw, grp));
    DirectionRun {
        sequence,
        last,
        h,
        c,
        tape,
    }
}

impl Setup<'_> {
    fn forward_rows(&self, xw: &[f32], o: GroupForward) {
        let (u, g, tl) = (self.u, self.g, self.t_len);
        let rows = o.last.len() / u;
        let b0 = o.first_row;
        let kind = self.cell.kind;
        let lstm = kind == CellKind::Lstm;
        let gru = matches!(kind, CellKind::Gru { .. });
        let mut h = vec![0.0f32; rows * u];
        let mut c = vec![0.0f32; rows * u];
        if let Some(h0) = self.h0 {
            h.copy_from_slice(&h0[b0 * u..][..rows * u]);
        }
        if let Some(c0) = self.c0 {
            c.copy_from_slice(&c0[b0 * u..][..rows * u]);
        }
        // The previous output (zeros before the first live step).
        let mut out = vec![0.0f32; rows * u];
        // x W + b, plus h R for SimpleRNN and LSTM.
        let mut z = vec![0.0f32; rows * g];
        // A GRU's h R (+ b_rec), apart: its reset gate multiplies only this part.
        let mut hr = vec![0.0f32; if gru { rows * g } else { 0 }];
        let mut operand = vec![0.0f32; rows * u];
        let mut h_rec = vec![0.0f32; rows * u];
        let mut h_new = vec![0.0f32; rows * u];
        let mut c_next = vec![0.0f32; if lstm { rows * u } else { 0 }];
        let a = self.acts;
        for s in 0..tl {
            let t = self.timestep(s);
            for r in 0..rows {
                let at = (r * tl + t) * u;
                z[r * g..][..g].copy_from_slice(&xw[((b0 + r) * tl + t) * g..][..g]);
                o.h_in[at..at + u].copy_from_slice(&h[r * u..][..u]);
                if lstm {
                    o.c_in[at..at + u].copy_from_slice(&c[r * u..][..u]);
                }
            }
            if gru {
                for row in hr.chunks_exact_mut(g) {
                    match self.recurrent_bias {
                        Some(b) => row.copy_from_slice(b),
                        None => row.fill(0.0),
                    }
                }
                self.recurrent_product(b0, &h, &mut hr, g, &mut operand);
            } else {
                self.recurrent_product(b0, &h, &mut z, g, &mut operand);
            }
            for r in 0..rows {
                let ag = (r * tl + t) * g;
                if self.keep_pre && !gru {
                    o.pre[ag..ag + g].copy_from_slice(&z[r * g..][..g]);
                }
            }
            match kind {
                CellKind::SimpleRnn => {
                    for r in 0..rows {
                        let hn = &mut h_new[r * u..][..u];
                        cells::simple_forward(a.act, &z[r * g..][..u], hn);
                        o.acts[(r * tl + t) * g..][..u].copy_from_slice(hn);
                    }
                }
                CellKind::Lstm => {
                    for r in 0..rows {
                        let at = (r * tl + t) * u;
                        cells::lstm_forward(
                            a,
                            cells::LstmForward {
                                z: &z[r * g..][..g],
                                c_prev: &c[r * u..][..u],
                                acts: &mut o.acts[(r * tl + t) * g..][..g],
                                c_new: &mut c_next[r * u..][..u],
                                c_act: &mut o.c_act[at..at + u],
                                h_new: &mut h_new[r * u..][..u],
                            },
                        );
                        if self.keep_c_new {
                            o.c_new[at..at + u].copy_from_slice(&c_next[r * u..][..u]);
                        }
                    }
                }
                CellKind::Gru { reset_after: true } => {
                    for r in 0..rows {
                        let ag = (r * tl + t) * g;
                        cells::gru_after_forward(
                            a,
                            cells::GruAfterForward {
                                zx: &z[r * g..][..g],
                                hr: &hr[r * g..][..g],
                                h_prev: &h[r * u..][..u],
                                acts: &mut o.acts[ag..ag + g],
                                pre: self.keep_pre.then(|| &mut o.pre[ag..ag + g]),
                                h_new: &mut h_new[r * u..][..u],
                            },
                        );
                        o.hr_h[(r * tl + t) * u..][..u].copy_from_slice(&hr[r * g + 2 * u..][..u]);
                    }
                }
                CellKind::Gru { reset_after: false } => {
                    let m2 = self.masks.recurrent.for_block(2);
                    for r in 0..rows {
                        let ag = (r * tl + t) * g;
                        let hr_row = &mut h_rec[r * u..][..u];
                        hr_row.copy_from_slice(&h[r * u..][..u]);
                        if let Some(m) = m2 {
                            hr_row
                                .iter_mut()
                                .zip(&m[(b0 + r) * u..][..u])
                                .for_each(|(v, &k)| *v *= k);
                        }
                        cells::gru_before_gates(
                            a,
                            &z[r * g..][..g],
                            &hr[r * g..][..2 * u],
                            hr_row,
                            &mut o.acts[ag..ag + g],
                            self.keep_pre.then(|| &mut o.pre[ag..ag + g]),
                            &mut operand[r * u..][..u],
                        );
                    }
                    // (r h) R_h into the h block of `hr`, unused until now.
                    let mut hv =
                        ArrayViewMut2::from_shape((rows, g), &mut hr[..]).expect("rows x g");
                    gemm::matmul_into_on(
                        view(&operand, rows, u),
                        self.r.slice(s![.., 2 * u..]),
                        hv.slice_mut(s![.., 2 * u..]),
                        false,
                    );
                    for r in 0..rows {
                        let ag = (r * tl + t) * g;
                        cells::gru_before_output(
                            a,
                            &z[r * g..][..g],
                            &hr[r * g + 2 * u..][..u],
                            &h[r * u..][..u],
                            &mut o.acts[ag..ag + g],
                            self.keep_pre.then(|| &mut o.pre[ag..ag + g]),
                            &mut h_new[r * u..][..u],
                        );
                    }
                }
            }
            // Keras's mask rule: a masked step keeps the state; its output repeats the
            // previous output (or is zero with zero_output_for_mask).
            for r in 0..rows {
                let (lo, hi) = (r * u, (r + 1) * u);
                if self.live(b0 + r, t) {
                    h[lo..hi].copy_from_slice(&h_new[lo..hi]);
                    if lstm {
                        c[lo..hi].copy_from_slice(&c_next[lo..hi]);
                    }
                    out[lo..hi].copy_from_slice(&h_new[lo..hi]);
                } else if self.zero_masked {
                    out[lo..hi].fill(0.0);
                }
                o.sequence[(r * tl + s) * u..][..u].copy_from_slice(&out[lo..hi]);
            }
        }
        o.last.copy_from_slice(&out);
        o.h.copy_from_slice(&h);
        o.c.copy_from_slice(&c);
    }
}

/// What one group of rows writes in the backward: dL/dz by (row, timestep) (N, T, G) for the
/// input side, and for a reset_after GRU's recurrent side; dL/dh0 and dL/dc0 (N, U).
struct GroupBackward<'a> {
    first_row: usize,
    dz: &'a mut [f32],
    dzh: &'a mut [f32],
    dh0: &'a mut [f32],
    dc0: &'a mut [f32],
}

/// Backpropagation through time for one direction, then the parameter gradients and dx as
/// GEMMs over all steps. Only trainable parameters get gradients.
pub(super) fn backward(
    cell: &RecurrentCell,
    params: &ParamStore,
    input: &DirectionInput,
    masks: &Masks,
    tape: &Tape,
    grads: &DirectionGrads,
    wants: Wants,
) -> DirectionBack {
    let st = Setup::new(cell, params, input, masks);
    let (n, tl, u, g, f) = (st.n, st.t_len, st.u, st.g, st.features);
    let gru_after = cell.kind == CellKind::Gru { reset_after: true };
    let mut dz = vec![0.0f32; n * tl * g];
    let mut dzh = vec![0.0f32; if gru_after { n * tl * g } else { 0 }];
    let mut dh0 = vec![0.0f32; n * u];
    let mut dc0 = vec![0.0f32; n * u];
    let rpg = st.rows_per_group();
    let groups = n.div_ceil(rpg);
    {
        let mut dzs = split(&mut dz, rpg * tl * g, groups);
        let mut dzhs = split(&mut dzh, rpg * tl * g, groups);
        let mut dh0s = split(&mut dh0, rpg * u, groups);
        let mut dc0s = split(&mut dc0, rpg * u, groups);
        let work: Vec<GroupBackward> = (0..groups)
            .map(|i| GroupBackward {
                first_row: i * rpg,
                dz: dzs.next().expect("a piece per group"),
                dzh: dzhs.next().expect("a piece per group"),
                dh0: dh0s.next().expect("a piece per group"),
                dc0: dc0s.next().expect("a piece per group"),
            })
            .collect();
        work.into_par_iter()
            .for_each(|grp| st.backward_rows(tape, grads, grp));
    }

    let rows = n * tl;
    let dz_all = view(&dz, rows, g);
    let dz_rec = if gru_after {
        view(&dzh, rows, g)
    } else {
        dz_all
    };
    let trainable = |id: ParamId| params.param(id).trainable;
    let mut out = Vec::new();
    if trainable(cell.kernel) {
        let mut dw = Array2::<f32>::zeros((f, g));
        if masks.input.per_block() {
            let mut xk = vec![0.0f32; input.x.len()];
            for k in 0..cell.kind.gates() {
                let cols = k * u..(k + 1) * u;
                let m = masks.input.for_block(k).expect("a mask per gate");
                scale_by_row_mask(input.x, m, tl, f, &mut xk);
                gemm::matmul_into(
                    view(&xk, rows, f).t(),
                    dz_all.slice(s![.., cols.clone()]),
                    dw.slice_mut(s![.., cols]),
                );
            }
        } else {
            let x = tape.x_dropped.as_deref().unwrap_or(input.x);
            gemm::matmul_into(view(x, rows, f).t(), dz_all, dw.view_mut());
        }
        out.push((cell.kernel, dw.into_dyn()));
    }
    if trainable(cell.recurrent_kernel) {
        let mut dr = Array2::<f32>::zeros((u, g));
        let mut operand = vec![0.0f32; rows * u];
        for blk in &st.blocks {
            let a: &[f32] = match masks.recurrent.for_block(blk.gate) {
                None => &tape.h_in,
                Some(m) => {
                    scale_by_row_mask(&tape.h_in, m, tl, u, &mut operand);
                    &operand
                }
            };
            gemm::matmul_into(
                view(a, rows, u).t(),
                dz_rec.slice(s![.., blk.cols.clone()]),
                dr.slice_mut(s![.., blk.cols.clone()]),
            );
        }
        if cell.kind == (CellKind::Gru { reset_after: false }) {
            // R_h's operand is r * h (times its mask).
            match masks.recurrent.for_block(2) {
                Some(m) => scale_by_row_mask(&tape.h_in, m, tl, u, &mut operand),
                None => operand.copy_from_slice(&tape.h_in),
            }
            for (o, a) in operand.chunks_exact_mut(u).zip(tape.acts.chunks_exact(g)) {
                o.iter_mut().zip(&a[u..2 * u]).for_each(|(v, &r)| *v *= r);
            }
            gemm::matmul_into(
                view(&operand, rows, u).t(),
                dz_all.slice(s![.., 2 * u..]),
                dr.slice_mut(s![.., 2 * u..]),
            );
        }
        out.push((cell.recurrent_kernel, dr.into_dyn()));
    }
    if let Some(b) = cell.bias.filter(|&b| trainable(b)) {
        let db: Array1<f32> = dz_all.sum_axis(Axis(0));
        let db = if gru_after {
            let dbh = dz_rec.sum_axis(Axis(0));
            ndarray::stack(Axis(0), &[db.view(), dbh.view()])
                .expect("two rows of G")
                .into_dyn()
        } else {
            db.into_dyn()
        };
        out.push((b, db));
    }
    let dx = wants.x.then(|| {
        let w = params.view2(cell.kernel);
        let mut dx = Array2::<f32>::zeros((rows, f));
        if masks.input.per_block() {
            let mut part = Array2::<f32>::zeros((rows, f));
            let mut scaled = vec![0.0f32; rows * f];
            for k in 0..cell.kind.gates() {
                let cols = k * u..(k + 1) * u;
                gemm::matmul_into(
                    dz_all.slice(s![.., cols.clone()]),
                    w.slice(s![.., cols]).t(),
                    part.view_mut(),
                );
                let m = masks.input.for_block(k).expect("a mask per gate");
                let p = part.as_slice().expect("contiguous");
                scale_by_row_mask(p, m, tl, f, &mut scaled);
                dx += &view(&scaled, rows, f);
            }
        } else {
            gemm::matmul_into(dz_all, w.t(), dx.view_mut());
        }
        let mut dx = dx.into_raw_vec_and_offset().0;
        if let (Some(m), false) = (masks.input.for_block(0), masks.input.per_block()) {
            let plain = dx.clone();
            scale_by_row_mask(&plain, m, tl, f, &mut dx);
        }
        dx
    });
    DirectionBack {
        params: out,
        dx,
        dh0: wants.h0.then_some(dh0),
        dc0: (wants.c0 && cell.kind == CellKind::Lstm).then_some(dc0),
    }
}

impl Setup<'_> {
    fn backward_rows(&self, tape: &Tape, grads: &DirectionGrads, o: GroupBackward) {
        let (u, g, tl) = (self.u, self.g, self.t_len);
        let rows = o.dh0.len() / u;
        let b0 = o.first_row;
        let kind = self.cell.kind;
        let a = self.acts;
        let state = |src: Option<&[f32]>| match src {
            Some(v) => v[b0 * u..][..rows * u].to_vec(),
            None => vec![0.0f32; rows * u],
        };
        // dL/dh and dL/dc of the state after the current step.
        let mut dh = state(grads.h);
        let mut dc = state(grads.c);
        // dL/d(previous output), where a masked step repeated it.
        let mut carry = vec![0.0f32; rows * u];
        let mut dzs = vec![0.0f32; rows * g];
        let gru_after = kind == CellKind::Gru { reset_after: true };
        let mut dzhs = vec![0.0f32; if gru_after { rows * g } else { 0 }];
        let mut dh_prev = vec![0.0f32; rows * u];
        let mut tmp = vec![0.0f32; rows * u];
        let live: Vec<bool> = vec![true; rows];
        let mut live = live;
        for s in (0..tl).rev() {
            let t = self.timestep(s);
            for r in 0..rows {
                let b = b0 + r;
                live[r] = self.live(b, t);
                let cr = &mut carry[r * u..][..u];
                if let Some(seq) = grads.sequence {
                    let gs = &seq[(b * tl + s) * u..][..u];
                    cr.iter_mut().zip(gs).for_each(|(c, &v)| *c += v);
                }
                if s == tl - 1 {
                    if let Some(last) = grads.last {
                        let gl = &last[b * u..][..u];
                        cr.iter_mut().zip(gl).for_each(|(c, &v)| *c += v);
                    }
                }
                if live[r] {
                    dh[r * u..][..u]
                        .iter_mut()
                        .zip(cr.iter_mut())
                        .for_each(|(d, c)| {
                            *d += *c;
                            *c = 0.0;
                        });
                } else if self.zero_masked {
                    cr.fill(0.0);
                }
            }
            dh_prev.fill(0.0);
            for r in 0..rows {
                let at = ((b0 + r) * tl + t) * u;
                let ag = ((b0 + r) * tl + t) * g;
                let pre = (!tape.pre.is_empty()).then(|| &tape.pre[ag..ag + g]);
                let dz_row = &mut dzs[r * g..][..g];
                if !live[r] {
                    dz_row.fill(0.0);
                    if gru_after {
                        dzhs[r * g..][..g].fill(0.0);
                    }
                    continue;
                }
                let acts = &tape.acts[ag..ag + g];
                let dhr = &dh[r * u..][..u];
                match kind {
                    CellKind::SimpleRnn => {
                        cells::simple_backward(a.act, &acts[..u], pre, dhr, &mut dz_row[..u])
                    }
                    CellKind::Lstm => cells::lstm_backward(
                        a,
                        cells::LstmBackward {
                            acts,
                            pre,
                            c_prev: &tape.c_in[at..at + u],
                            c_new: (!tape.c_new.is_empty()).then(|| &tape.c_new[at..at + u]),
                            c_act: &tape.c_act[at..at + u],
                            dh: dhr,
                            dc: &mut dc[r * u..][..u],
                            dz: dz_row,
                        },
                    ),
                    CellKind::Gru { reset_after: true } => cells::gru_after_backward(
                        a,
                        cells::GruAfterBackward {
                            acts,
                            pre,
                            hr_h: &tape.hr_h[at..at + u],
                            h_prev: &tape.h_in[at..at + u],
                            dh: dhr,
                            dzx: dz_row,
                            dzh: &mut dzhs[r * g..][..g],
                            dh_prev: &mut dh_prev[r * u..][..u],
                        },
                    ),
                    CellKind::Gru { reset_after: false } => cells::gru_before_backward_outer(
                        a,
                        acts,
                        pre,
                        &tape.h_in[at..at + u],
                        dhr,
                        dz_row,
                        &mut dh_prev[r * u..][..u],
                    ),
                }
            }
            if kind == (CellKind::Gru { reset_after: false }) {
                // d(r h_rec) = dz_hh R_hᵀ, then the reset gate's part.
                gemm::matmul_into_on(
                    view(&dzs, rows, g).slice(s![.., 2 * u..]),
                    self.r.slice(s![.., 2 * u..]).t(),
                    ArrayViewMut2::from_shape((rows, u), &mut tmp[..]).expect("rows x u"),
                    false,
                );
                let m2 = self.masks.recurrent.for_block(2);
                for r in (0..rows).filter(|&r| live[r]) {
                    let at = ((b0 + r) * tl + t) * u;
                    let ag = ((b0 + r) * tl + t) * g;
                    cells::gru_before_backward_reset(
                        a,
                        &tape.acts[ag..ag + g],
                        (!tape.pre.is_empty()).then(|| &tape.pre[ag..ag + g]),
                        &tape.h_in[at..at + u],
                        m2.map(|m| &m[(b0 + r) * u..][..u]),
                        &tmp[r * u..][..u],
                        &mut dzs[r * g..][..g],
                        &mut dh_prev[r * u..][..u],
                    );
                }
            }
            // dL/dh_prev through h R.
            let dz_rec = if gru_after { &dzhs } else { &dzs };
            for blk in &self.blocks {
                let lhs = view(dz_rec, rows, g);
                let lhs = lhs.slice(s![.., blk.cols.clone()]);
                let rt = self.r.slice(s![.., blk.cols.clone()]);
                let rt = rt.t();
                match self.masks.recurrent.for_block(blk.gate) {
                    None => gemm::matmul_add_into(
                        lhs,
                        rt,
                        ArrayViewMut2::from_shape((rows, u), &mut dh_prev[..]).expect("rows x u"),
                    ),
                    Some(m) => {
                        gemm::matmul_into_on(
                            lhs,
                            rt,
                            ArrayViewMut2::from_shape((rows, u), &mut tmp[..]).expect("rows x u"),
                            false,
                        );
                        let m = &m[b0 * u..][..rows * u];
                        dh_prev
                            .iter_mut()
                            .zip(tmp.iter().zip(m))
                            .for_each(|(d, (&v, &k))| *d += v * k);
                    }
                }
            }
            for r in 0..rows {
                let ag = (r * tl + t) * g;
                o.dz[ag..ag + g].copy_from_slice(&dzs[r * g..][..g]);
                if gru_after {
                    o.dzh[ag..ag + g].copy_from_slice(&dzhs[r * g..][..g]);
                }
                if !live[r] {
                    // A masked step passed the state through unchanged.
                    dh_prev[r * u..][..u].copy_from_slice(&dh[r * u..][..u]);
                }
            }
            std::mem::swap(&mut dh, &mut dh_prev);
        }
        o.dh0.copy_from_slice(&dh);
        o.dc0.copy_from_slice(&dc);
    }
}
