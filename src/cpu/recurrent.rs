//! SimpleRNN / GRU / LSTM / Bidirectional on the CPU, following Keras 3's `backend.rnn` loop.

use ndarray::{s, Array2, Array3, ArrayD, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::activation::{scalar, sigmoid, tanh};
use crate::graph::{Activation, CellKind, MergeMode, ParamStore, Recurrent, RecurrentCell};

/// From this many units the per-step `h · R` of a group of rows is one GEMM call; below it,
/// plain loops (measured on the seed models: LSTM(8) 1.35x faster with loops, SimpleRNN(24)
/// 1.15x faster with the GEMM).
const GEMM_MIN_UNITS: usize = 16;

/// One direction's result: outputs in processing order (N, T, U), the last output (N, U) and
/// the final states h and c (N, U) (c only meaningful for LSTM).
struct DirectionOutput {
    sequence: Array3<f32>,
    last: Array2<f32>,
    h: Array2<f32>,
    c: Array2<f32>,
}

/// Initial states of one direction, (N, U) row-major each; None is zeros.
#[derive(Clone, Copy, Default)]
struct InitialState<'a> {
    h: Option<&'a [f32]>,
    c: Option<&'a [f32]>,
}

/// Runs one direction. `mask[b, t]` false means step t of row b is padding: the state is kept,
/// and the output is the previous output (zeros before the first live step, or always zeros
/// when `zero_masked`). Rows are independent, so groups of rows run their step loops on
/// separate threads.
fn run_direction(
    cell: &RecurrentCell,
    params: &ParamStore,
    x: &Array3<f32>,
    mask: Option<&Array2<bool>>,
    zero_masked: bool,
    initial: InitialState,
) -> DirectionOutput {
    let (n, t_len, features) = x.dim();
    let u = cell.units;
    let g = cell.kind.gates() * u;
    // The input projection for all timesteps at once: (N*T, F) x (F, G), plus the input bias.
    let x = x.as_standard_layout();
    let flat = x
        .view()
        .into_shape_with_order((n * t_len, features))
        .expect("standard layout reshapes without a copy");
    let mut xw = Array2::<f32>::zeros((n * t_len, g));
    super::gemm::matmul_into(flat, params.view2(cell.kernel), xw.view_mut());
    // A GRU with reset_after keeps (input bias, recurrent bias) as the two rows of its bias.
    let (input_bias, recurrent_bias) = match cell.bias.map(|b| params.slice(b)) {
        Some(b) if b.len() == 2 * g => (Some(&b[..g]), Some(&b[g..])),
        Some(b) => (Some(b), None),
        None => (None, None),
    };
    if let Some(b) = input_bias {
        xw += &ndarray::ArrayView1::from(b);
    }
    let xw = xw.as_slice().expect("a new array is contiguous");
    let recurrent_rows = params.slice(cell.recurrent_kernel);
    // SimpleRNN and LSTM sum x W + b and h R into one row of pre-activations; a GRU keeps
    // them apart (its reset gate multiplies only the recurrent part), plus `units` of scratch.
    let (z_offset, z_width) = match cell.kind {
        CellKind::Gru { .. } => (g, 2 * g + u),
        CellKind::SimpleRnn | CellKind::Lstm => (0, g),
    };

    let direction = Direction {
        cell,
        xw,
        recurrent_rows,
        recurrent_bias,
        z_offset,
        z_width,
        t_len,
        mask,
        zero_masked,
        initial,
    };
    let mut sequence = vec![0.0f32; n * t_len * u];
    let mut last = vec![0.0f32; n * u];
    let mut h_final = vec![0.0f32; n * u];
    let mut c_final = vec![0.0f32; n * u];
    let rows_per_group = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let state_chunk = (rows_per_group * u).max(1);
    sequence
        .par_chunks_mut((rows_per_group * t_len * u).max(1))
        .zip(last.par_chunks_mut(state_chunk))
        .zip(h_final.par_chunks_mut(state_chunk))
        .zip(c_final.par_chunks_mut(state_chunk))
        .enumerate()
        .for_each(|(group, (((seq, last), hf), cf))| {
            let first_row = group * rows_per_group;
            run_rows(&direction, first_row, GroupOut { seq, last, hf, cf });
        });
    DirectionOutput {
        sequence: Array3::from_shape_vec((n, t_len, u), sequence).expect("N x T x U"),
        last: Array2::from_shape_vec((n, u), last).expect("N x U"),
        h: Array2::from_shape_vec((n, u), h_final).expect("N x U"),
        c: Array2::from_shape_vec((n, u), c_final).expect("N x U"),
    }
}

super::simd::multiversion! {
/// One group of rows from `first_row`: stepwise with `h R` as a GEMM for enough units, else
/// row by row.
fn run_rows(direction: &Direction, first_row: usize, out: GroupOut) {
    if direction.cell.units >= GEMM_MIN_UNITS {
        direction.rows_stepwise(first_row, out);
    } else {
        direction.rows_one_by_one(first_row, out);
    }
}
}

/// What one group of rows writes: the sequence (rows, T, U), the last output and the final
/// states (rows, U).
struct GroupOut<'a> {
    seq: &'a mut [f32],
    last: &'a mut [f32],
    hf: &'a mut [f32],
    cf: &'a mut [f32],
}

/// One direction's inputs, shared by the threads that run groups of rows.
struct Direction<'a> {
    cell: &'a RecurrentCell,
    /// x W + b for every (row, timestep): (N * T, G).
    xw: &'a [f32],
    /// R, (U, G) row-major.
    recurrent_rows: &'a [f32],
    /// A reset_after GRU's recurrent bias (G), added to h R.
    recurrent_bias: Option<&'a [f32]>,
    /// Where h R goes in a row of pre-activations (0: summed onto x W + b) and the row's width.
    z_offset: usize,
    z_width: usize,
    t_len: usize,
    mask: Option<&'a Array2<bool>>,
    zero_masked: bool,
    initial: InitialState<'a>,
}

impl Direction<'_> {
    #[inline(always)]
    fn timestep(&self, step: usize) -> usize {
        if self.cell.go_backwards {
            self.t_len - 1 - step
        } else {
            step
        }
    }

    #[inline(always)]
    fn live(&self, row: usize, t: usize) -> bool {
        self.mask.is_none_or(|m| m[[row, t]])
    }

    /// Row `b`'s initial h and c.
    #[inline(always)]
    fn start(&self, b: usize, h: &mut [f32], c: &mut [f32]) {
        let u = h.len();
        match self.initial.h {
            Some(h0) => h.copy_from_slice(&h0[b * u..][..u]),
            None => h.fill(0.0),
        }
        match self.initial.c {
            Some(c0) => c.copy_from_slice(&c0[b * u..][..u]),
            None => c.fill(0.0),
        }
    }

    /// Starts a row of pre-activations at (row b, timestep t): x W + b, and for a GRU the
    /// recurrent bias (or zeros) where h R will be added.
    #[inline(always)]
    fn start_z(&self, b: usize, t: usize, z: &mut [f32]) {
        let g = self.cell.gate_columns();
        let xw = &self.xw[(b * self.t_len + t) * g..][..g];
        z[..g].copy_from_slice(xw);
        if self.z_offset != 0 {
            let zh = &mut z[self.z_offset..self.z_offset + g];
            match self.recurrent_bias {
                Some(rb) => zh.copy_from_slice(rb),
                None => zh.fill(0.0),
            }
        }
    }

    /// One row's step: with the pre-activations `z` (a live step) the cell updates `h`, `c`
    /// and the output `out`; at a masked step (`None`) the state is kept and `out` repeats (or is
    /// zero with `zero_masked`). `out` is then written to the sequence `slot`.
    #[inline(always)]
    fn advance(
        &self,
        z: Option<&mut [f32]>,
        h: &mut [f32],
        c: &mut [f32],
        out: &mut [f32],
        slot: &mut [f32],
    ) {
        if let Some(z) = z {
            step_cell(self.cell, z, h, c, self.recurrent_rows);
            out.copy_from_slice(h);
        } else if self.zero_masked {
            out.fill(0.0);
        }
        slot.copy_from_slice(out);
    }

    /// Rows from `first_row`, all timesteps of one row before the next (few units: the state
    /// stays in registers and `x W` is read in order).
    #[inline(always)]
    fn rows_one_by_one(&self, first_row: usize, o: GroupOut) {
        let u = self.cell.units;
        let g = self.cell.gate_columns();
        let mut h = vec![0.0f32; u];
        let mut c = vec![0.0f32; u];
        let mut z = vec![0.0f32; self.z_width];
        let zo = self.z_offset;
        for (r, out) in o.last.chunks_exact_mut(u).enumerate() {
            let b = first_row + r;
            self.start(b, &mut h, &mut c);
            for step in 0..self.t_len {
                let t = self.timestep(step);
                let live = self.live(b, t);
                if live {
                    // z = x_t W + b (+ h R), as axpys over the rows of R.
                    self.start_z(b, t, &mut z);
                    add_h_r(&mut z[zo..zo + g], &h, self.recurrent_rows);
                }
                let slot = &mut o.seq[(r * self.t_len + step) * u..][..u];
                self.advance(live.then_some(&mut z[..]), &mut h, &mut c, out, slot);
            }
            o.hf[r * u..][..u].copy_from_slice(&h);
            o.cf[r * u..][..u].copy_from_slice(&c);
        }
    }

    /// Rows from `first_row`, one timestep of all of them at a time, `h R` as one GEMM.
    #[inline(always)]
    fn rows_stepwise(&self, first_row: usize, o: GroupOut) {
        let u = self.cell.units;
        let g = self.cell.gate_columns();
        let zw = self.z_width;
        let rows = o.last.len() / u;
        let recurrent = ArrayView2::from_shape((u, g), self.recurrent_rows).expect("units x gates");
        let mut h = vec![0.0f32; rows * u];
        let mut c = vec![0.0f32; rows * u];
        for r in 0..rows {
            let (hr, cr) = (&mut h[r * u..][..u], &mut c[r * u..][..u]);
            self.start(first_row + r, hr, cr);
        }
        let mut z = vec![0.0f32; rows * zw];
        for step in 0..self.t_len {
            let t = self.timestep(step);
            for (r, zr) in z.chunks_exact_mut(zw).enumerate() {
                self.start_z(first_row + r, t, zr);
            }
            {
                let mut zv = ArrayViewMut2::from_shape((rows, zw), &mut z).expect("rows x width");
                let zh = zv.slice_mut(s![.., self.z_offset..self.z_offset + g]);
                super::gemm::matmul_add_into(
                    ArrayView2::from_shape((rows, u), &h).expect("rows x units"),
                    recurrent,
                    zh,
                );
            }
            for (r, (out, zr)) in o
                .last
                .chunks_exact_mut(u)
                .zip(z.chunks_exact_mut(zw))
                .enumerate()
            {
                let z_row = self.live(first_row + r, t).then_some(zr);
                let (h_row, c_row) = (&mut h[r * u..][..u], &mut c[r * u..][..u]);
                let slot = &mut o.seq[(r * self.t_len + step) * u..][..u];
                self.advance(z_row, h_row, c_row, out, slot);
            }
        }
        o.hf.copy_from_slice(&h);
        o.cf.copy_from_slice(&c);
    }
}

/// `z += h R` for one row (R: units x z.len(), row-major), each z[k] summed over the units in
/// order, as axpys over R's rows would. Eight columns at a time stay in a register across all
/// units, instead of each axpy storing z and the next loading it again (a store-to-load chain
/// through memory per unit).
#[inline(always)]
fn add_h_r(z: &mut [f32], h: &[f32], recurrent_rows: &[f32]) {
    const LANES: usize = 8;
    let g = z.len();
    let mut chunks = z.chunks_exact_mut(LANES);
    for (k0, zc) in (0..g).step_by(LANES).zip(&mut chunks) {
        let mut acc: [f32; LANES] = (&*zc).try_into().expect("a whole chunk");
        for (&hj, r_row) in h.iter().zip(recurrent_rows.chunks_exact(g)) {
            let w: &[f32; LANES] = r_row[k0..k0 + LANES].try_into().expect("a whole chunk");
            for (a, &wk) in acc.iter_mut().zip(w) {
                *a += hj * wk;
            }
        }
        zc.copy_from_slice(&acc);
    }
    let tail = chunks.into_remainder();
    let k0 = g - tail.len();
    for (j, zk) in tail.iter_mut().enumerate() {
        for (&hj, r_row) in h.iter().zip(recurrent_rows.chunks_exact(g)) {
            *zk += hj * r_row[k0 + j];
        }
    }
}

/// One cell update from the pre-activations `z` (for a GRU: x W + b, then h R (+ recurrent
/// bias), then `units` of scratch). `recurrent_rows` is R, read again by a GRU with
/// reset_after=False for (r * h) R_h.
#[inline(always)]
fn step_cell(
    cell: &RecurrentCell,
    z: &mut [f32],
    h: &mut [f32],
    c: &mut [f32],
    recurrent_rows: &[f32],
) {
    let u = h.len();
    match cell.kind {
        CellKind::SimpleRnn => {
            h.copy_from_slice(z);
            super::activation::apply_rows(cell.activation, h, u);
        }
        CellKind::Gru { reset_after } => gru_step(cell, reset_after, z, h, recurrent_rows),
        CellKind::Lstm => {
            // Keras gate order: i, f, c, o.
            let (zi, rest) = z.split_at(u);
            let (zf, rest) = rest.split_at(u);
            let (zc, zo) = rest.split_at(u);
            if cell.recurrent_activation == Activation::Sigmoid
                && cell.activation == Activation::Tanh
            {
                // Keras's defaults, written out so that the loop vectorizes.
                let gates = zi.iter().zip(zf).zip(zc.iter().zip(zo));
                for ((hj, cj), ((&i, &f), (&cand, &o))) in h.iter_mut().zip(c.iter_mut()).zip(gates)
                {
                    let c_new = sigmoid(f) * *cj + sigmoid(i) * tanh(cand);
                    *cj = c_new;
                    *hj = sigmoid(o) * tanh(c_new);
                }
                return;
            }
            for j in 0..u {
                let i = scalar(cell.recurrent_activation, zi[j]);
                let f = scalar(cell.recurrent_activation, zf[j]);
                let cand = scalar(cell.activation, zc[j]);
                let o = scalar(cell.recurrent_activation, zo[j]);
                let c_new = f * c[j] + i * cand;
                c[j] = c_new;
                h[j] = o * scalar(cell.activation, c_new);
            }
        }
    }
}

/// Keras's GRUCell: z = ra(x_z + h R_z), r = ra(x_r + h R_r),
/// hh = a(x_h + r * (h R_h + b_rh)) (reset_after) or a(x_h + (r * h) R_h), h = z h + (1 - z) hh.
#[inline(always)]
fn gru_step(cell: &RecurrentCell, reset_after: bool, z: &mut [f32], h: &mut [f32], r_rows: &[f32]) {
    let u = h.len();
    let g = 3 * u;
    let (zx, rest) = z.split_at_mut(g);
    let (zh, scratch) = rest.split_at_mut(g);
    let ra = cell.recurrent_activation;
    let act = |v: f32| match cell.activation {
        Activation::Tanh => tanh(v),
        a => scalar(a, v),
    };
    let ract = |v: f32| match ra {
        Activation::Sigmoid => sigmoid(v),
        a => scalar(a, v),
    };
    if reset_after {
        for j in 0..u {
            let zg = ract(zx[j] + zh[j]);
            let rg = ract(zx[u + j] + zh[u + j]);
            let hh = act(zx[2 * u + j] + rg * zh[2 * u + j]);
            h[j] = zg * h[j] + (1.0 - zg) * hh;
        }
        return;
    }
    // reset_after=False: (r * h) R_h needs r of every unit first. The scratch holds r * h, the
    // unused h R_h part of `zh` the new product.
    for j in 0..u {
        let rg = ract(zx[u + j] + zh[u + j]);
        scratch[j] = rg * h[j];
    }
    let acc = &mut zh[2 * u..];
    acc.fill(0.0);
    for (&rh, row) in scratch[..u].iter().zip(r_rows.chunks_exact(g)) {
        acc.iter_mut()
            .zip(&row[2 * u..])
            .for_each(|(a, &w)| *a += rh * w);
    }
    for j in 0..u {
        let zg = ract(zx[j] + zh[j]);
        let hh = act(zx[2 * u + j] + zh[2 * u + j]);
        h[j] = zg * h[j] + (1.0 - zg) * hh;
    }
}

fn merge(mode: MergeMode, a: ArrayD<f32>, b: ArrayD<f32>) -> ArrayD<f32> {
    match mode {
        MergeMode::Concat => {
            let last = Axis(a.ndim() - 1);
            ndarray::concatenate(last, &[a.view(), b.view()]).expect("same leading shape")
        }
        MergeMode::Sum => a + b,
        MergeMode::Average => (a + b) * 0.5,
        MergeMode::Multiply => a * b,
        // Two outputs: `run` returns both directions without merging.
        MergeMode::None => a,
    }
}

/// Runs the layer on `x` (N, T, F) with its initial states (in `Recurrent::initial_state`
/// order, (N, U) each, standard layout): the output, then the final states with return_state.
pub fn run(
    r: &Recurrent,
    params: &ParamStore,
    x: &Array3<f32>,
    mask: Option<&Array2<bool>>,
    initial: &[Array2<f32>],
) -> Vec<ArrayD<f32>> {
    let zero = r.zero_output_for_mask();
    // Initial states per direction, in order h (, c).
    let mut starts = Vec::new();
    let mut k = 0;
    for cell in r.cells() {
        let mut s = InitialState::default();
        if !initial.is_empty() {
            s.h = initial[k].as_slice();
            if cell.kind.states() == 2 {
                s.c = initial[k + 1].as_slice();
            }
        }
        k += cell.kind.states();
        starts.push(s);
    }
    let Some(bcell) = &r.backward else {
        let fwd = run_direction(&r.forward, params, x, mask, zero, starts[0]);
        let DirectionOutput {
            sequence,
            last,
            h,
            c,
        } = fwd;
        let y = if r.return_sequences {
            sequence.into_dyn()
        } else {
            last.into_dyn()
        };
        let mut outs = vec![y];
        if r.return_state {
            push_states(&r.forward, h, c, &mut outs);
        }
        return outs;
    };
    let (fwd, bwd) = rayon::join(
        || run_direction(&r.forward, params, x, mask, zero, starts[0]),
        || run_direction(bcell, params, x, mask, zero, starts[1]),
    );
    let (a, b) = if r.return_sequences {
        // Bidirectional flips the backward outputs back into time order.
        let mut back = bwd.sequence;
        back.invert_axis(Axis(1));
        (
            fwd.sequence.into_dyn(),
            back.as_standard_layout().into_owned().into_dyn(),
        )
    } else {
        (fwd.last.into_dyn(), bwd.last.into_dyn())
    };
    let mut outs = if r.two_outputs() {
        vec![a, b]
    } else {
        vec![merge(r.merge_mode, a, b)]
    };
    if r.return_state {
        push_states(&r.forward, fwd.h, fwd.c, &mut outs);
        push_states(bcell, bwd.h, bwd.c, &mut outs);
    }
    outs
}

/// A direction's final states in Keras's order: h (, c for LSTM).
fn push_states(cell: &RecurrentCell, h: Array2<f32>, c: Array2<f32>, out: &mut Vec<ArrayD<f32>>) {
    out.push(h.into_dyn());
    if cell.kind.states() == 2 {
        out.push(c.into_dyn());
    }
}
