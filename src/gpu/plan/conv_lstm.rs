//! ConvLSTM1D / ConvLSTM2D lowering: the input convolution of every timestep as one
//! implicit-GEMM conv over N*T images (bias included), then per step the recurrent convolution
//! of h on the same GEMM kernel (skipped at the first step, where h is zero) and one
//! `conv_lstm_gates` dispatch that adds the two and updates c and h at every position. The
//! steps are plain dispatches in order, so the whole layer stays in the batch's one submit.

use super::{act_words, to_u32, BufRef, Builder, Kernel, Op, WeightRole};
use crate::error::Result;
use crate::graph::{Activation, ConvLstm};

impl Builder<'_> {
    pub(super) fn conv_lstm(&mut self, i: usize, c: &ConvLstm, x: BufRef) -> Result<BufRef> {
        let l = self.layer(i);
        let t_len = c.timesteps;
        let f = c.filters;
        let input_conv = c.input_conv();
        let recurrent_conv = c.recurrent_conv();
        let positions = input_conv.window.out_positions();
        let rows = self.batch * positions;

        // (N*T, OH, OW, 4F): x_t conv W + b for every step, before the time loop.
        let xz = self.alloc(
            i,
            "input convolution",
            self.batch * t_len * positions * 4 * f,
        );
        let first = self.ops.len();
        let kernel = self.weight(i, WeightRole::Kernel);
        let bias = self.weight(i, WeightRole::Bias);
        self.gemm(
            i,
            x,
            kernel,
            bias,
            xz,
            [
                self.batch * t_len * positions,
                4 * f,
                input_conv.window.taps() * c.in_channels,
            ],
            &Activation::Linear,
            Some(&input_conv),
        )?;
        self.label_since(first, &format!("input conv of all {t_len} steps: "));

        let y = if c.return_sequences {
            Some(self.alloc(i, "output", self.batch * t_len * positions * f))
        } else {
            None
        };
        // Without return_sequences the final h is the output.
        let h = self.alloc(i, if y.is_some() { "h" } else { "h, the output" }, rows * f);
        let cell = self.alloc(i, "c", rows * f);
        let hz = self.alloc(i, "recurrent convolution", rows * 4 * f);

        let mut gate_params = act_words(l, &c.activation)?.to_vec();
        gate_params.extend(act_words(l, &c.recurrent_activation)?);
        for (what, v) in [
            ("rows", rows),
            ("positions", positions),
            ("filters", f),
            ("timesteps", t_len),
        ] {
            gate_params.push(to_u32(l, what, v)?);
        }
        let recurrent_kernel = self.weight(i, WeightRole::RecurrentKernel);
        let recurrent_k = recurrent_conv.window.taps() * f;
        for step in 0..t_len {
            let t = if c.go_backwards {
                t_len - 1 - step
            } else {
                step
            };
            if step > 0 {
                let first = self.ops.len();
                self.gemm(
                    i,
                    h,
                    recurrent_kernel,
                    BufRef::Dummy,
                    hz,
                    [rows, 4 * f, recurrent_k],
                    &Activation::Linear,
                    Some(&recurrent_conv),
                )?;
                self.label_since(first, &format!("step {step}: recurrent conv of h: "));
            }
            let mut params = gate_params.clone();
            params.extend([
                to_u32(l, "step", step)?,
                to_u32(l, "step", t)?,
                u32::from(step > 0),
                u32::from(y.is_some()),
            ]);
            let mut detail = format!(
                "step {step} (input t={t}): gates i, f, c, o of {f} filters at {positions} \
                 positions, {} / {}",
                c.activation.name(),
                c.recurrent_activation.name()
            );
            if step == 0 {
                detail.push_str(", h and c from zero");
            }
            if y.is_some() {
                detail.push_str(", h into the sequence");
            }
            self.dispatch(
                i,
                Kernel::ConvLstmGates,
                vec![xz, hz, h, cell, y.unwrap_or(BufRef::Dummy)],
                params,
                Self::linear_workgroups(rows * f),
                detail,
            )?;
        }
        for scratch in [xz, cell, hz] {
            self.release(scratch);
        }
        Ok(match y {
            Some(y) => {
                self.release(h);
                y
            }
            None => h,
        })
    }

    /// Prefixes the plan text of the dispatches pushed since op `first` (a GEMM may be two).
    fn label_since(&mut self, first: usize, prefix: &str) {
        for op in &mut self.ops[first..] {
            if let Op::Dispatch(d) = op {
                d.detail.insert_str(0, prefix);
            }
        }
    }
}
