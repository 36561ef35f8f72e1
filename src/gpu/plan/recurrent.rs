//! SimpleRNN / GRU / LSTM / Bidirectional lowering: one GEMM for the input projection of every
//! timestep and direction, the initial states copied into the state buffer, one `step` dispatch
//! per timestep, then the merge and the final states copied out.

use super::{act_words, layer_error, to_u32, BufRef, Builder, Op};
use crate::error::Result;
use crate::gpu::kernels::{Kernel, LINEAR_THREADS};
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
            1,
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

        // h twice (ping-pong), c, the previous output: one plane each.
        let plane = dirs * self.batch * units;
        let state = self.alloc(i, "state", 4 * plane);
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
        let steps = to_u32(l, "timesteps", t)?;
        self.max_steps = self.max_steps.max(steps);
        let mut detail = format!(
            "{} {units} units x {dirs} direction(s), {t} steps",
            cell.kind.name()
        );
        if masked {
            detail.push_str(", masked by token id 0");
        }
        if r.return_sequences {
            detail.push_str(", sequences");
        }
        let workgroups = (units.div_ceil(LINEAR_THREADS as usize) * self.batch * dirs) as u64;
        let buffers = vec![
            xproj,
            self.weight(i, WeightRole::RecurrentKernel),
            state,
            y,
            ids,
        ];
        self.dispatch(
            i,
            Kernel::RnnStep,
            buffers,
            params,
            workgroups,
            steps,
            detail,
        )?;
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
                    1,
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
