//! Training rules of ConvLSTM1D / ConvLSTM2D (`Op::ConvLstm`): an LSTM whose matmuls are
//! convolutions, so the LSTM's row rules (`recurrent::cells`) run at every position of every
//! image, and the convolutions' own backward (`conv`) takes dz back through them.
//!
//! The training forward is the inference forward (`cpu::conv_lstm`: the input conv of all N*T
//! steps as one batch, then per step the recurrent conv of h and the gates), keeping per step
//! the gates, the carry and the h it read. The backward runs the steps in reverse processing
//! order: dh (the output's gradient at that step, plus what the next step sent back) and dc
//! through the gates give dz (N, H', W', 4F) of the step; the recurrent conv's backward on
//! (h_prev, dz) adds the recurrent kernel's gradient and gives the previous step's dh. Every
//! step's dz, placed at its timestep, is then one batch for the input conv's backward: the
//! kernel's and bias's gradients and dx.

use ndarray::{Array4, ArrayD, ArrayView4, IxDyn};

use super::recurrent::cells::{self, Acts, LstmBackward, LstmForward};
use super::{as_float, conv, dy_or_zeros, Forward, NodeIo};
use crate::cpu::{conv2d, Tensor};
use crate::error::{Error, Result};
use crate::graph::{ConvLstm, Node, ParamStore};
use crate::train::ParamGrads;

/// What the backward reads, per step in processing order (rows are (image, position), F or 4F
/// wide).
struct Tape {
    /// i, f, c, o after their activations: T × (N·P·4F).
    acts: Vec<f32>,
    /// The gates' pre-activations, where a slope needs them: T × (N·P·4F).
    pre: Option<Vec<f32>>,
    /// The carry before step 0 (zeros) and after every step: (T + 1) × (N·P·F).
    c: Vec<f32>,
    /// act(c) after every step: T × (N·P·F).
    c_act: Vec<f32>,
    /// h before step 0 (zeros) and after every step: (T + 1) × (N·P·F).
    h: Vec<f32>,
}

/// The layer's sizes: batch, timesteps, output positions, filters.
struct Dims {
    n: usize,
    t: usize,
    p: usize,
    f: usize,
}

impl Dims {
    /// One step's state values (N·P·F).
    fn state(&self) -> usize {
        self.n * self.p * self.f
    }
}

fn bad(node: &Node, what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("layer '{}': {what}", node.name))
}

fn dims(c: &ConvLstm, node: &Node, x: &ArrayD<f32>) -> Result<Dims> {
    let item = c.input_shape();
    if x.ndim() != item.len() + 1 || x.shape()[1..] != item[..] {
        return Err(bad(
            node,
            format!("expects (N, {item:?}) input, got {:?}", x.shape()),
        ));
    }
    let [oh, ow] = c.window.out_hw;
    Ok(Dims {
        n: x.shape()[0],
        t: c.timesteps,
        p: oh * ow,
        f: c.filters,
    })
}

fn acts(c: &ConvLstm) -> Acts {
    Acts {
        act: c.activation,
        ract: c.recurrent_activation,
    }
}

fn keeps_pre(c: &ConvLstm) -> bool {
    cells::slope_needs_input(c.activation) || cells::slope_needs_input(c.recurrent_activation)
}

/// The timestep step `s` reads.
fn timestep(c: &ConvLstm, s: usize) -> usize {
    if c.go_backwards {
        c.timesteps - 1 - s
    } else {
        s
    }
}

/// The node's output shape with the batch axis.
fn out_dims(c: &ConvLstm, d: &Dims) -> Vec<usize> {
    let [oh, ow] = c.window.out_hw;
    let mut out = vec![d.n];
    if c.return_sequences {
        out.push(d.t);
    }
    if !c.one_d {
        out.push(oh);
    }
    out.extend([ow, d.f]);
    out
}

/// (N, ..., C) as (rows, H, W, C) with `rows` images.
fn as_images(x: &[f32], rows: usize, [h, w]: [usize; 2], ch: usize) -> ArrayView4<'_, f32> {
    ArrayView4::from_shape((rows, h, w, ch), x).expect("checked sizes")
}

/// The training forward: the inference outputs and the tape.
pub(super) fn forward(
    c: &ConvLstm,
    params: &ParamStore,
    node: &Node,
    inputs: &[Tensor],
) -> Result<Forward> {
    let x = as_float(&inputs[0], node)?;
    let d = dims(c, node, x)?;
    let (n, t_len, p, f) = (d.n, d.t, d.p, d.f);
    let g = 4 * f;
    let (input_conv, recurrent_conv) =
        crate::cpu::conv_lstm::convs(c, params).map_err(|e| bad(node, format!("kernel: {e}")))?;
    let xs = x.as_standard_layout();
    let images = as_images(
        xs.as_slice().expect("standard layout"),
        n * t_len,
        c.window.in_hw,
        c.in_channels,
    )
    .to_owned();
    // (N*T, OH, OW, 4F): x_t conv W + b for every step.
    let xz = conv2d(&input_conv, &images);
    let xz = xz.as_slice().expect("a new array is contiguous");
    let state = d.state();
    let rows = n * p;
    let keep_pre = keeps_pre(c);
    let mut tape = Tape {
        acts: vec![0.0; t_len * rows * g],
        pre: keep_pre.then(|| vec![0.0; t_len * rows * g]),
        c: vec![0.0; (t_len + 1) * state],
        c_act: vec![0.0; t_len * state],
        h: vec![0.0; (t_len + 1) * state],
    };
    let a = acts(c);
    let mut z = vec![0.0f32; g];
    for s in 0..t_len {
        let t = timestep(c, s);
        let h_prev = Array4::from_shape_vec(
            (n, c.window.out_hw[0], c.window.out_hw[1], f),
            tape.h[s * state..][..state].to_vec(),
        )
        .expect("N x OH x OW x F");
        let hz = conv2d(&recurrent_conv, &h_prev);
        let hz = hz.as_slice().expect("a new array is contiguous");
        let (c_done, c_rest) = tape.c.split_at_mut((s + 1) * state);
        let c_prev = &c_done[s * state..];
        let c_new = &mut c_rest[..state];
        let h_new = &mut tape.h[(s + 1) * state..][..state];
        let acts_s = &mut tape.acts[s * rows * g..][..rows * g];
        let c_act = &mut tape.c_act[s * state..][..state];
        for b in 0..n {
            let xrow = &xz[(b * t_len + t) * p * g..][..p * g];
            for q in 0..p {
                let r = b * p + q;
                z.iter_mut()
                    .zip(&xrow[q * g..][..g])
                    .zip(&hz[r * g..][..g])
                    .for_each(|((z, &xv), &hv)| *z = xv + hv);
                if let Some(pre) = tape.pre.as_mut() {
                    pre[(s * rows + r) * g..][..g].copy_from_slice(&z);
                }
                cells::lstm_forward(
                    a,
                    LstmForward {
                        z: &z,
                        c_prev: &c_prev[r * f..][..f],
                        acts: &mut acts_s[r * g..][..g],
                        c_new: &mut c_new[r * f..][..f],
                        c_act: &mut c_act[r * f..][..f],
                        h_new: &mut h_new[r * f..][..f],
                    },
                );
            }
        }
    }
    let per_image = p * f;
    let data = if c.return_sequences {
        let mut seq = vec![0.0f32; n * t_len * per_image];
        for s in 0..t_len {
            let h = &tape.h[(s + 1) * state..][..state];
            for b in 0..n {
                seq[(b * t_len + s) * per_image..][..per_image]
                    .copy_from_slice(&h[b * per_image..][..per_image]);
            }
        }
        seq
    } else {
        tape.h[t_len * state..].to_vec()
    };
    let y = ArrayD::from_shape_vec(IxDyn(&out_dims(c, &d)), data)
        .map_err(|e| bad(node, format!("output: {e}")))?;
    Ok(Forward {
        outputs: vec![Tensor::F32(y)],
        saved: Some(Box::new(tape)),
        state: Vec::new(),
    })
}

/// Backpropagation through time: the kernel's, recurrent kernel's and bias's gradients into
/// `grads`, and dx when it is needed.
pub(super) fn backward(
    c: &ConvLstm,
    io: &NodeIo,
    dys: &[Option<ArrayD<f32>>],
    grads: &mut ParamGrads,
) -> Result<Vec<Option<ArrayD<f32>>>> {
    let node = io.node;
    let params = io.params();
    let tape = io.saved::<Tape>()?;
    let x = io.input(0)?;
    let d = dims(c, node, x)?;
    let (n, t_len, p, f) = (d.n, d.t, d.p, d.f);
    let g = 4 * f;
    let state = d.state();
    let rows = n * p;
    let per_image = p * f;
    let dy = dy_or_zeros(dys, 0, io.output(0)?);
    let dy = dy.as_standard_layout();
    let dy = dy.as_slice().expect("standard layout");
    let a = acts(c);
    let keep_c_new = cells::slope_needs_input(c.activation);
    let rec = c.recurrent_conv();
    // The state as the recurrent conv's input: (N, H', W', F), or (N, W', F) for 1-D.
    let mut state_shape = vec![n];
    if !c.one_d {
        state_shape.push(c.window.out_hw[0]);
    }
    state_shape.extend([c.window.out_hw[1], f]);
    let mut gate_shape = state_shape.clone();
    *gate_shape.last_mut().expect("rank >= 3") = g;
    let mut dh = vec![0.0f32; state];
    let mut dc = vec![0.0f32; state];
    let mut dz_all = vec![0.0f32; n * t_len * p * g];
    for s in (0..t_len).rev() {
        if c.return_sequences {
            for b in 0..n {
                dh[b * per_image..][..per_image]
                    .iter_mut()
                    .zip(&dy[(b * t_len + s) * per_image..][..per_image])
                    .for_each(|(a, &v)| *a += v);
            }
        } else if s == t_len - 1 {
            dh.iter_mut().zip(dy).for_each(|(a, &v)| *a += v);
        }
        let mut dz = vec![0.0f32; rows * g];
        let acts_s = &tape.acts[s * rows * g..][..rows * g];
        let c_prev = &tape.c[s * state..][..state];
        let c_new = &tape.c[(s + 1) * state..][..state];
        let c_act = &tape.c_act[s * state..][..state];
        for r in 0..rows {
            cells::lstm_backward(
                a,
                LstmBackward {
                    acts: &acts_s[r * g..][..g],
                    pre: tape.pre.as_ref().map(|pre| &pre[(s * rows + r) * g..][..g]),
                    c_prev: &c_prev[r * f..][..f],
                    c_new: keep_c_new.then(|| &c_new[r * f..][..f]),
                    c_act: &c_act[r * f..][..f],
                    dh: &dh[r * f..][..f],
                    dc: &mut dc[r * f..][..f],
                    dz: &mut dz[r * g..][..g],
                },
            );
        }
        let t = timestep(c, s);
        for b in 0..n {
            dz_all[(b * t_len + t) * p * g..][..p * g].copy_from_slice(&dz[b * p * g..][..p * g]);
        }
        // The recurrent conv read h before this step (zeros at step 0: no dh to send back).
        let h_prev =
            ArrayD::from_shape_vec(IxDyn(&state_shape), tape.h[s * state..][..state].to_vec())
                .map_err(|e| bad(node, e))?;
        let dz = ArrayD::from_shape_vec(IxDyn(&gate_shape), dz).map_err(|e| bad(node, e))?;
        match conv::conv(&rec, params, &node.name, &h_prev, &dz, s > 0, grads)? {
            Some(back) => dh.copy_from_slice(&conv::flat(&back)),
            None => dh.fill(0.0),
        }
    }
    // The input conv over all N*T steps at once.
    let mut x_shape = vec![n * t_len];
    x_shape.extend_from_slice(&x.shape()[2..]);
    let mut dz_shape = vec![n * t_len];
    dz_shape.extend_from_slice(&gate_shape[1..]);
    let x_folded = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&x_shape))
        .map_err(|e| bad(node, e))?;
    let dz_all = ArrayD::from_shape_vec(IxDyn(&dz_shape), dz_all).map_err(|e| bad(node, e))?;
    let dx = conv::conv(
        &c.input_conv(),
        params,
        &node.name,
        &x_folded,
        &dz_all,
        io.needs[0],
        grads,
    )?;
    let dx = dx
        .map(|dx| dx.into_shape_with_order(x.raw_dim()))
        .transpose()
        .map_err(|e| bad(node, e))?;
    Ok(vec![dx])
}

#[cfg(test)]
mod tests {
    use super::super::check::{check_node, uniform};
    use crate::cpu::{run_node, Tensor};
    use crate::graph::*;
    use crate::train::Rng;

    #[derive(Clone)]
    struct Case {
        one_d: bool,
        batch: usize,
        timesteps: usize,
        hw: [usize; 2],
        channels: usize,
        filters: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        return_sequences: bool,
        go_backwards: bool,
        use_bias: bool,
        activation: Activation,
        recurrent_activation: Activation,
        frozen: bool,
    }

    fn case() -> Case {
        Case {
            one_d: false,
            batch: 2,
            timesteps: 3,
            hw: [4, 5],
            channels: 2,
            filters: 3,
            kernel: [3, 2],
            strides: [1, 1],
            padding: Padding::Same,
            return_sequences: false,
            go_backwards: false,
            use_bias: true,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            frozen: false,
        }
    }

    impl Case {
        fn one_d(mut self) -> Self {
            self.one_d = true;
            self.hw[0] = 1;
            self.kernel[0] = 1;
            self.strides[0] = 1;
            self
        }

        fn item(&self) -> Vec<usize> {
            let [h, w] = self.hw;
            let mut item = vec![self.timesteps];
            if !self.one_d {
                item.push(h);
            }
            item.extend([w, self.channels]);
            item
        }

        fn graph(&self) -> Graph {
            let mut g = Graph::new("t");
            let x = g.add_input("x", self.item(), DType::F32);
            let window = Window2d::new(self.kernel, self.strides, self.padding, self.hw);
            let recurrent_window = Window2d::new(self.kernel, [1, 1], Padding::Same, window.out_hw);
            let gates = 4 * self.filters;
            let [kh, kw] = self.kernel;
            let shape = |rows: usize| {
                if self.one_d {
                    vec![kw, rows, gates]
                } else {
                    vec![kh, kw, rows, gates]
                }
            };
            let trainable = !self.frozen;
            let p = &mut g.params;
            let kernel = p.add("kernel", uniform(&shape(self.channels), 1, 0.5), trainable);
            let recurrent_kernel = p.add(
                "recurrent_kernel",
                uniform(&shape(self.filters), 2, 0.5),
                trainable,
            );
            let bias = self
                .use_bias
                .then(|| p.add("bias", uniform(&[gates], 3, 0.4), trainable));
            let op = ConvLstm {
                filters: self.filters,
                timesteps: self.timesteps,
                in_channels: self.channels,
                one_d: self.one_d,
                window,
                recurrent_window,
                kernel,
                recurrent_kernel,
                bias,
                activation: self.activation,
                recurrent_activation: self.recurrent_activation,
                return_sequences: self.return_sequences,
                go_backwards: self.go_backwards,
                dropout: 0.0,
                recurrent_dropout: 0.0,
            };
            let y = g
                .add_node("convlstm", "Test", Op::ConvLstm(Box::new(op)), &[x], None)
                .expect("shape rule");
            g.add_output("y", y[0]);
            g
        }

        fn input(&self) -> Tensor {
            let mut shape = vec![self.batch];
            shape.extend(self.item());
            Tensor::F32(uniform(&shape, 9, 1.0))
        }

        fn check(&self, what: &str) {
            let g = self.graph();
            let x = self.input();
            // The training forward is the inference forward.
            let node = &g.nodes[0];
            let fw =
                super::super::forward(&g, node, std::slice::from_ref(&x), None, &mut Rng::new(1))
                    .expect("forward");
            let inference = run_node(&g, node, vec![x.clone()], None).expect("inference");
            match (&fw.outputs[0], &inference[0]) {
                (Tensor::F32(a), Tensor::F32(b)) => assert_eq!(a, b, "{what}: forward"),
                _ => panic!("{what}: float outputs"),
            }
            let r = std::panic::catch_unwind(|| check_node(&g, 0, vec![x], None, 1e-2));
            match r {
                Ok(report) => assert!(report.checked > 0, "{what}: nothing checked"),
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    panic!("{what}: {msg}");
                }
            }
        }
    }

    #[test]
    fn conv_lstm2d_last_and_sequences_both_directions() {
        for return_sequences in [false, true] {
            for go_backwards in [false, true] {
                let mut c = case();
                c.return_sequences = return_sequences;
                c.go_backwards = go_backwards;
                c.check(&format!(
                    "ConvLSTM2D seq={return_sequences} back={go_backwards}"
                ));
            }
        }
    }

    #[test]
    fn conv_lstm2d_strides_and_padding() {
        for (strides, padding, hw) in [
            ([2, 2], Padding::Same, [5, 6]),
            ([2, 1], Padding::Valid, [6, 4]),
            ([1, 1], Padding::Valid, [4, 3]),
            ([3, 2], Padding::Same, [7, 5]),
        ] {
            let mut c = case();
            c.strides = strides;
            c.padding = padding;
            c.hw = hw;
            c.return_sequences = true;
            c.check(&format!(
                "ConvLSTM2D strides {strides:?} {padding:?} on {hw:?}"
            ));
        }
    }

    #[test]
    fn conv_lstm2d_one_step_batch_one_many_filters() {
        let mut c = case();
        c.timesteps = 1;
        c.check("ConvLSTM2D T=1");
        let mut c = case();
        c.batch = 1;
        c.timesteps = 4;
        c.go_backwards = true;
        c.check("ConvLSTM2D batch 1");
        // Eight filters or more: the recurrent conv's dx runs as the flipped convolution.
        let mut c = case();
        c.filters = 9;
        c.channels = 8;
        c.hw = [3, 4];
        c.kernel = [3, 3];
        c.return_sequences = true;
        c.check("ConvLSTM2D 9 filters");
    }

    #[test]
    fn conv_lstm2d_other_activations_no_bias_frozen() {
        let mut c = case();
        c.use_bias = false;
        c.recurrent_activation = Activation::HardSigmoid;
        c.return_sequences = true;
        c.check("ConvLSTM2D hard_sigmoid, no bias");
        // Keras 2's ConvLSTM2D default: clip(0.2x + 0.5, 0, 1).
        let mut c = case();
        c.recurrent_activation = Activation::HardSigmoidKeras2;
        c.go_backwards = true;
        c.check("ConvLSTM2D Keras 2 hard_sigmoid");
        // Slopes that read the pre-activations and the carry itself (a relu would put the
        // carry at its kink: c = 0 wherever the candidate is 0 at the first step).
        for act in [Activation::Silu, Activation::Softsign] {
            let mut c = case();
            c.activation = act;
            c.recurrent_activation = Activation::HardSigmoid;
            c.check(&format!("ConvLSTM2D {act:?}"));
        }
        let mut c = case();
        c.frozen = true;
        c.return_sequences = true;
        c.check("ConvLSTM2D frozen");
    }

    #[test]
    fn conv_lstm1d_shapes() {
        for (strides, padding, w, seq, back) in [
            (1, Padding::Same, 7, true, false),
            (2, Padding::Valid, 7, false, true),
            (2, Padding::Same, 6, true, true),
        ] {
            let mut c = case().one_d();
            c.strides = [1, strides];
            c.padding = padding;
            c.hw = [1, w];
            c.kernel = [1, 3];
            c.return_sequences = seq;
            c.go_backwards = back;
            c.timesteps = 4;
            c.check(&format!(
                "ConvLSTM1D stride {strides} {padding:?} seq={seq} back={back}"
            ));
        }
    }

    /// Dropout masks are not drawn yet: a nonzero rate is refused before training, not ignored.
    #[test]
    fn conv_lstm_with_dropout_has_no_backward_yet() {
        let mut g = case().graph();
        if let Op::ConvLstm(c) = &mut g.nodes[0].op {
            c.recurrent_dropout = 0.25;
        }
        let err = super::super::support(&g.nodes[0].op).expect_err("refused");
        assert!(err.contains("dropout"), "{err}");
    }
}
