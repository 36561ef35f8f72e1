//! ConvLSTM1D / ConvLSTM2D training on the GPU (shaders/conv_lstm_grad.wgsl), following
//! `cpu::grad::conv_lstm`.
//!
//! The training forward is the inference forward (gpu/plan/conv_lstm.rs: the input conv of all
//! N*T steps, then per step the recurrent conv of h and the gates) with its gates kernel
//! swapped for one that also keeps each step's pre-activations and carry (the tape) and the h
//! each step started from (`h_in`, in the input's N*T image order).
//!
//! The backward runs the steps in reverse processing order: the gates' backward gives the
//! step's dz from dh and dc, and the recurrent conv's input gradient takes dz back to the
//! previous step's dh. After the loop every step's dz, placed at its timestep, is one batch of
//! N*T images: the input conv's backward gives dx, the kernel's and the bias's gradients, and
//! the recurrent kernel's gradient is one kernel-gradient convolution of (h_in, dz) over the
//! same N*T images (the sum over steps inside the GEMM, no atomics).

use crate::error::{Error, Result};
use crate::graph::{ConvLstm, Node};

use super::super::kernels::{Kernel, LINEAR_THREADS};
use super::super::plan::{act_words, BufRef, Op};
use super::conv::{check_buffer, conv_backward};
use super::{linear_workgroups, word, Emit};

/// Where one ConvLSTM's training forward keeps what its backward reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Saved {
    /// Pre-activations T × (N·P·4F), then the carry (T + 1) × (N·P·F), step 0's zero.
    pub tape: BufRef,
    /// The h each step started from, at its timestep: (N·T, P, F).
    pub h_in: BufRef,
}

/// The gradient buffers the backward writes (overwrites); None where none is needed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Grads {
    pub dx: Option<BufRef>,
    pub kernel: Option<BufRef>,
    pub recurrent_kernel: Option<BufRef>,
    pub bias: Option<BufRef>,
}

/// Floats of the tape for `batch` items.
pub(crate) fn tape_floats(c: &ConvLstm, batch: usize) -> usize {
    let state = batch * c.window.out_hw.iter().product::<usize>() * c.filters;
    c.timesteps * 4 * state + (c.timesteps + 1) * state
}

/// Floats of `h_in` for `batch` items.
pub(crate) fn h_in_floats(c: &ConvLstm, batch: usize) -> usize {
    batch * c.timesteps * c.window.out_hw.iter().product::<usize>() * c.filters
}

/// The timestep processing step `s` reads.
fn timestep(c: &ConvLstm, s: usize) -> usize {
    if c.go_backwards {
        c.timesteps - 1 - s
    } else {
        s
    }
}

/// The training forward: `inference` (the node's inference ops, in order) with each gates
/// dispatch made the tape-keeping one, after zeroing the tape and `h_in` (the carry and h
/// before the first step).
pub(crate) fn training_forward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    c: &ConvLstm,
    batch: usize,
    inference: Vec<Op>,
    saved: Saved,
) -> Result<()> {
    check_buffer(e, layer, "tape", tape_floats(c, batch))?;
    check_buffer(e, layer, "h_in", h_in_floats(c, batch))?;
    e.push(Op::Clear {
        node,
        buffer: saved.tape,
    });
    e.push(Op::Clear {
        node,
        buffer: saved.h_in,
    });
    let mut gates = 0;
    for mut op in inference {
        if let Op::Dispatch(d) = &mut op {
            if d.kernel == Kernel::ConvLstmGates {
                d.kernel = Kernel::ConvLstmGatesTrain;
                d.buffers.extend([saved.tape, saved.h_in]);
                d.params.extend([u32::from(c.go_backwards), 0, 0, 0]);
                d.detail.push_str(", keeping the step for BPTT");
                gates += 1;
            }
        }
        e.push(op);
    }
    if gates != c.timesteps {
        return Err(Error::Internal(format!(
            "layer '{}': {gates} gates dispatches for {} timesteps",
            layer.name, c.timesteps
        )));
    }
    Ok(())
}

/// Backpropagation through time from `dy` (the output's gradient: (N, T, P, F) with
/// return_sequences, else (N, P, F)) into the buffers of `grads`. `x` is the layer's input,
/// `kernel` / `recurrent_kernel` the weights the forward read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_lstm_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    c: &ConvLstm,
    batch: usize,
    x: BufRef,
    kernel: BufRef,
    recurrent_kernel: BufRef,
    dy: BufRef,
    saved: Saved,
    grads: Grads,
) -> Result<()> {
    let (t_len, f) = (c.timesteps, c.filters);
    let positions = c.window.out_hw.iter().product::<usize>();
    let rows = batch * positions;
    let state = rows * f;
    check_buffer(e, layer, "dz", batch * t_len * positions * 4 * f)?;
    let dz_all = e.scratch(node, "dz of every step", batch * t_len * positions * 4 * f);
    let dz_step = e.scratch(node, "dz of one step", rows * 4 * f);
    let dc = e.scratch(node, "carry gradient", state);
    let dh_later = e.scratch(node, "h gradient from the later step", state);
    let mut words = act_words(layer, &c.activation)?.to_vec();
    words.extend(act_words(layer, &c.recurrent_activation)?);
    for (what, v) in [
        ("rows", rows),
        ("positions", positions),
        ("filters", f),
        ("timesteps", t_len),
    ] {
        words.push(word(layer, what, v)?);
    }
    let rec = c.recurrent_conv();
    for s in (0..t_len).rev() {
        let t = timestep(c, s);
        let mut params = words.clone();
        params.extend([
            word(layer, "step", s)?,
            word(layer, "step", t)?,
            u32::from(s + 1 < t_len),
            u32::from(c.return_sequences),
        ]);
        e.dispatch(
            layer,
            node,
            Kernel::ConvLstmGatesGrad,
            vec![saved.tape, dy, dh_later, dc, dz_step, dz_all],
            params,
            linear_workgroups(state, LINEAR_THREADS),
            format!("step {s} (input t={t}): dz of gates i, f, c, o and the carry gradient"),
        )?;
        // Step 0 started from h = 0: no dh to send back.
        if s > 0 {
            conv_backward(
                e,
                layer,
                node,
                &rec,
                batch,
                BufRef::Dummy,
                recurrent_kernel,
                dz_step,
                Some(dh_later),
                None,
                None,
            )?;
        }
    }
    let images = batch * t_len;
    let input = c.input_conv();
    if grads.dx.is_some() || grads.kernel.is_some() || grads.bias.is_some() {
        let bias = grads.bias.filter(|_| c.bias.is_some());
        conv_backward(
            e,
            layer,
            node,
            &input,
            images,
            x,
            kernel,
            dz_all,
            grads.dx,
            grads.kernel,
            bias,
        )?;
    }
    if let Some(dr) = grads.recurrent_kernel {
        conv_backward(
            e,
            layer,
            node,
            &rec,
            images,
            saved.h_in,
            recurrent_kernel,
            dz_all,
            None,
            Some(dr),
            None,
        )?;
    }
    for buffer in [dz_all, dz_step, dc, dh_later] {
        e.release(buffer);
    }
    Ok(())
}
