//! SimpleRNN / LSTM / Bidirectional on the CPU, following Keras 3's `backend.rnn` loop.

use ndarray::{s, Array2, Array3, ArrayD, Axis};

use super::activation::scalar;
use crate::ir::{CellKind, MergeMode, Recurrent, RecurrentCell};

/// One direction's result: outputs in processing order (N, T, U) and the last output (N, U).
struct DirectionOutput {
    sequence: Array3<f32>,
    last: Array2<f32>,
}

/// Runs one direction. `mask[b, t]` false means step t of row b is padding: the state is kept,
/// and the output is the previous output (or zeros when `zero_masked`).
fn run_direction(
    cell: &RecurrentCell,
    x: &Array3<f32>,
    mask: Option<&Array2<bool>>,
    zero_masked: bool,
) -> DirectionOutput {
    let (n, t_len, features) = x.dim();
    let u = cell.units;
    let g = cell.kind.gates() * u;
    // The input projection for all timesteps at once: (N*T, F) x (F, G).
    let flat = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((n * t_len, features))
        .expect("contiguous input");
    let mut xw = flat.dot(&cell.kernel);
    if let Some(b) = &cell.bias {
        xw += b;
    }
    let xw = xw
        .into_shape_with_order((n, t_len, g))
        .expect("projection shape");

    let mut h = Array2::<f32>::zeros((n, u));
    let mut c = Array2::<f32>::zeros((n, u));
    let mut prev_out = Array2::<f32>::zeros((n, u));
    let mut sequence = Array3::<f32>::zeros((n, t_len, u));
    for step in 0..t_len {
        let t = if cell.go_backwards {
            t_len - 1 - step
        } else {
            step
        };
        let z = &xw.slice(s![.., t, ..]) + &h.dot(&cell.recurrent_kernel);
        for b in 0..n {
            let live = mask.is_none_or(|m| m[[b, t]]);
            if live {
                let zb = z.row(b);
                match cell.kind {
                    CellKind::SimpleRnn => {
                        for j in 0..u {
                            h[[b, j]] = scalar(cell.activation, zb[j]);
                        }
                    }
                    CellKind::Lstm => {
                        // Keras gate order: i, f, c, o.
                        for j in 0..u {
                            let i = scalar(cell.recurrent_activation, zb[j]);
                            let f = scalar(cell.recurrent_activation, zb[u + j]);
                            let cand = scalar(cell.activation, zb[2 * u + j]);
                            let o = scalar(cell.recurrent_activation, zb[3 * u + j]);
                            let c_new = f * c[[b, j]] + i * cand;
                            c[[b, j]] = c_new;
                            h[[b, j]] = o * scalar(cell.activation, c_new);
                        }
                    }
                }
                prev_out.row_mut(b).assign(&h.row(b));
            } else if zero_masked {
                prev_out.row_mut(b).fill(0.0);
            }
            sequence.slice_mut(s![b, step, ..]).assign(&prev_out.row(b));
        }
    }
    DirectionOutput {
        sequence,
        last: prev_out,
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
    }
}

pub fn run(r: &Recurrent, x: &Array3<f32>, mask: Option<&Array2<bool>>) -> ArrayD<f32> {
    let zero = r.zero_output_for_mask();
    let fwd = run_direction(&r.forward, x, mask, zero);
    let Some(bcell) = &r.backward else {
        return if r.return_sequences {
            fwd.sequence.into_dyn()
        } else {
            fwd.last.into_dyn()
        };
    };
    let bwd = run_direction(bcell, x, mask, zero);
    if r.return_sequences {
        // Bidirectional flips the backward outputs back into time order.
        let mut back = bwd.sequence;
        back.invert_axis(Axis(1));
        merge(
            r.merge_mode,
            fwd.sequence.into_dyn(),
            back.as_standard_layout().into_owned().into_dyn(),
        )
    } else {
        merge(r.merge_mode, fwd.last.into_dyn(), bwd.last.into_dyn())
    }
}
