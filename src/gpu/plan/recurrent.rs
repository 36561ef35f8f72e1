//! SimpleRNN / GRU / LSTM / Bidirectional lowering: one GEMM for the input projection of every
//! timestep and direction, the initial states copied into the state buffer, the whole time loop
//! of every direction in one `sequence` dispatch, then the merge and the final states copied out.

use super::{act_words, layer_error, to_u32, BufRef, Builder, Op};
use crate::error::Result;
use crate::gpu::kernels::{rnn_rows_per_group, rnn_steps_per_dispatch, Kernel, RNN_LOOP_THREADS};
use crate::gpu::weights::{recurrent_bias_len, WeightRole};
use crate::graph::{Activation, CellKind, MergeMode, Recurrent};

impl Builder<'_> {
    /// A copy of `count` floats between a state value and the state buffer.
    fn copy_state(
        &mut self,
        i: usize,
        src: (BufRef, usize),
        dst: (BufRef, usize),
        count: usize,
        detail: String,
    ) -> Result<()> {
        let l = self.layer(i);
        let params = vec![
            to_u32(l, "state", count)?,
            to_u32(l, "state", src.1)?,
            to_u32(l, "state", dst.1)?,
            0,
        ];
        self.dispatch(
            i,
            Kernel::RnnCopy,
            vec![src.0, dst.0],
            params,
            Self::linear_workgroups(count),
            detail,
        )
    }

    /// Lowers a recurrent node; returns its output buffer, then its final states' buffers.
    pub(super) fn recurrent(&mut self, i: usize, r: &Recurrent, x: BufRef) -> Result<Vec<BufRef>> {
        let l = self.layer(i);
        let (t, features) = (r.timesteps, r.input_features);
        let cell = &r.forward;
        let (units, gates) = (cell.units, cell.kind.gates());
        for other in r.cells() {
            let same = other.kind == cell.kind
                && other.units == units
                && other.activation == cell.activation
                && other.recurrent_activation == cell.recurrent_activation
                && other.bias.is_some() == cell.bias.is_some();
            if !same {
                return Err(layer_error(
                    l,
                    "backward_layer",
                    "both directions must share cell type, units, activations and use_bias",
                ));
            }
        }
        let dirs = r.cells().count();
        let act = act_words(l, &cell.activation)?;
        let recurrent_act = match cell.kind {
            CellKind::SimpleRnn => [0; 4],
            CellKind::Lstm | CellKind::Gru { .. } => act_words(l, &cell.recurrent_activation)?,
        };
        let cell_code = match cell.kind {
            CellKind::SimpleRnn => 0,
            CellKind::Lstm => 1,
            CellKind::Gru { reset_after: true } => 2,
            CellKind::Gru { reset_after: false } => 3,
        };
        // A padding mask is read as the token ids it was computed from (`id != 0`).
        let masked = l.mask.is_some();
        let ids = match l.mask {
            Some(m) => match self.value_buf[m] {
                Some(b @ BufRef::Input(_)) if self.graph.value(m).shape == [t] => b,
                _ => {
                    return Err(layer_error(
                        l,
                        "mask",
                        "masking needs the model's token-id input of the same length",
                    ))
                }
            },
            None => BufRef::Dummy,
        };

        // One GEMM projects every timestep of both directions before the time loop.
        let rows = self.batch * t;
        let cols = dirs * gates * units;
        let xproj = self.alloc(i, "input projection", rows * cols);
        let kernel = self.weight(i, WeightRole::Kernel);
        let bias = self.weight(i, WeightRole::Bias);
        self.gemm(
            i,
            x,
            kernel,
            bias,
            xproj,
            [rows, cols, features],
            &Activation::Linear,
            None,
        )?;

        // h twice (ping-pong), c, the previous output, and r ⊙ h for a reset_after=False GRU:
        // one plane each.
        let gru_before = cell_code == 3;
        let plane = dirs * self.batch * units;
        let planes = if gru_before { 5 } else { 4 };
        let state = self.alloc(i, "state", planes * plane);
        self.ops.push(Op::Clear {
            node: i,
            buffer: state,
        });
        let per_dir = self.batch * units;
        if r.initial_state {
            let mut input = 1;
            for (d, c) in r.cells().enumerate() {
                for s in 0..c.kind.states() {
                    let v = l.inputs[input];
                    input += 1;
                    let src = self.value_buf[v].ok_or_else(|| {
                        layer_error(l, "initial_state", "the state has no buffer")
                    })?;
                    // h into plane 0, c into plane 2.
                    let offset = 2 * s * plane + d * per_dir;
                    let what = if s == 0 { "h" } else { "c" };
                    let detail = format!("initial {what} of direction {d}");
                    self.copy_state(i, (src, 0), (state, offset), per_dir, detail)?;
                }
            }
        }
        let out_rows = if r.return_sequences { rows } else { self.batch };
        let merge = dirs == 2 && r.merge_mode != MergeMode::Concat;
        let y_what = if merge { "both directions" } else { "output" };
        let y = self.alloc(i, y_what, out_rows * dirs * units);

        let backwards_bits = r
            .cells()
            .enumerate()
            .fold(0u32, |bits, (d, c)| bits | (u32::from(c.go_backwards) << d));
        // Bidirectional puts the backward direction's outputs back in time order.
        let reverse_output_bits = if dirs == 2 { 0b10 } else { 0 };
        let mut params = act.to_vec();
        params.extend(recurrent_act);
        params.extend([
            to_u32(l, "batch", self.batch)?,
            to_u32(l, "timesteps", t)?,
            to_u32(l, "units", units)?,
            gates as u32,
            dirs as u32,
            u32::from(masked),
            u32::from(r.zero_output_for_mask()),
            u32::from(r.return_sequences),
            backwards_bits,
            reverse_output_bits,
            cell_code,
            u32::from(recurrent_bias_len(r) > 0),
        ]);
        // Workgroup memory per sequence: h twice, and r ⊙ h.
        let per_row = if gru_before { 3 * units } else { 2 * units };
        let (rows_per_group, staged) = rnn_rows_per_group(self.batch, units, per_row, true);
        params.extend([
            to_u32(l, "rows_per_group", rows_per_group)?,
            u32::from(staged),
        ]);
        // Loop iterations of one invocation (every loop counted, as llvmpipe counts them): its
        // items, each with a pass over the units per h·R loop (three for r ⊙ h), per step.
        let per_thread = (rows_per_group * units).div_ceil(RNN_LOOP_THREADS as usize);
        let unit_loops = if gru_before { 3 } else { 1 };
        let per_step = per_thread * (unit_loops * (units + 1) + 2) + 2;
        let chunk =
            rnn_steps_per_dispatch(t, per_thread + 2, per_step, self.limits.loop_iterations)
                .ok_or_else(|| {
                    layer_error(
                        l,
                        "units",
                        format!(
                            "{units} units need {per_step} loop iterations per step in one \
                         invocation; this adapter ends loops after {}",
                            self.limits.loop_iterations.unwrap_or(0)
                        ),
                    )
                })?;
        let loops = if chunk < t {
            format!("in loops of {chunk} (the adapter's loop-iteration cap)")
        } else {
            "in one loop".to_string()
        };
        let mut detail = format!(
            "{} {units} units x {dirs} direction(s), {t} steps {loops}, \
             {rows_per_group} sequence(s) per workgroup",
            cell.kind.name()
        );
        if !staged {
            detail.push_str(", state read back from storage");
        }
        if masked {
            detail.push_str(", masked by token id 0");
        }
        if r.return_sequences {
            detail.push_str(", sequences");
        }
        let workgroups = (self.batch.div_ceil(rows_per_group) * dirs) as u64;
        let buffers = vec![
            xproj,
            self.weight(i, WeightRole::RecurrentKernel),
            state,
            y,
            ids,
        ];
        for begin in (0..t).step_by(chunk) {
            let end = (begin + chunk).min(t);
            let mut params = params.clone();
            params.extend([to_u32(l, "timesteps", begin)?, to_u32(l, "timesteps", end)?]);
            let detail = if chunk < t {
                format!("{detail}: steps {begin}..{end}")
            } else {
                detail.clone()
            };
            self.dispatch(
                i,
                Kernel::RnnSequence,
                buffers.clone(),
                params,
                workgroups,
                detail,
            )?;
        }
        self.release(xproj);

        let mut outs = Vec::new();
        if merge {
            // merge_mode None: each direction to its own output (modes 4 and 5).
            let modes: &[u32] = match r.merge_mode {
                MergeMode::Sum => &[1],
                MergeMode::Average => &[2],
                MergeMode::Multiply => &[3],
                MergeMode::None | MergeMode::Concat => &[4, 5],
            };
            for &mode in modes {
                let out = self.alloc(i, "output", out_rows * units);
                let params = vec![
                    to_u32(l, "rows", out_rows)?,
                    to_u32(l, "units", units)?,
                    mode,
                    0,
                ];
                let what = match mode {
                    4 => "forward output".to_string(),
                    5 => "backward output".to_string(),
                    _ => format!("merge_mode {:?}", r.merge_mode).to_lowercase(),
                };
                let detail = format!("{what} over {out_rows} rows");
                let workgroups = Self::linear_workgroups(out_rows * units);
                self.dispatch(
                    i,
                    Kernel::RnnMerge,
                    vec![y, out],
                    params,
                    workgroups,
                    detail,
                )?;
                outs.push(out);
            }
            self.release(y);
        } else {
            outs.push(y);
        }

        if r.return_state {
            // After T steps the final h is in plane T % 2; c in plane 2.
            let h_plane = t % 2;
            for (d, c) in r.cells().enumerate() {
                for s in 0..c.kind.states() {
                    let (what, p) = if s == 0 { ("h", h_plane) } else { ("c", 2) };
                    let dst = self.alloc(i, "final state", per_dir);
                    let detail = format!("final {what} of direction {d}");
                    let offset = p * plane + d * per_dir;
                    self.copy_state(i, (state, offset), (dst, 0), per_dir, detail)?;
                    outs.push(dst);
                }
            }
        }
        self.release(state);
        Ok(outs)
    }
}
