//! Finite-difference checks of BPTT for every cell and option that changes the backward, and
//! checks that the training forward is the inference forward (with Keras's dropout rules).

use ndarray::{Array2, ArrayD, IxDyn};

use super::super::check::{check_node, uniform};
use super::super::forward;
use crate::cpu::{run_node, Tensor};
use crate::graph::*;
use crate::train::Rng;

#[derive(Clone)]
struct Case {
    kind: CellKind,
    units: usize,
    features: usize,
    timesteps: usize,
    batch: usize,
    merge: Option<MergeMode>,
    return_sequences: bool,
    return_state: bool,
    initial_state: bool,
    go_backwards: bool,
    /// Mixed lengths: full, length 1, all padding, padded at the start (by row, repeating).
    masked: bool,
    zero_masked: bool,
    dropout: CellDropout,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    /// Parameters frozen (not trainable).
    frozen: bool,
}

const LSTM: CellKind = CellKind::Lstm;
const GRU: CellKind = CellKind::Gru { reset_after: true };
const GRU_BEFORE: CellKind = CellKind::Gru { reset_after: false };
const RNN: CellKind = CellKind::SimpleRnn;
const CELLS: [CellKind; 4] = [RNN, LSTM, GRU, GRU_BEFORE];

fn case(kind: CellKind) -> Case {
    Case {
        kind,
        units: 5,
        features: 3,
        timesteps: 9,
        batch: 3,
        merge: None,
        return_sequences: false,
        return_state: false,
        initial_state: false,
        go_backwards: false,
        masked: false,
        zero_masked: false,
        dropout: CellDropout::default(),
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        use_bias: true,
        frozen: false,
    }
}

impl Case {
    fn cell(&self, p: &mut ParamStore, dir: &str, seed: u64, go_backwards: bool) -> RecurrentCell {
        let g = self.kind.gates() * self.units;
        let trainable = !self.frozen;
        let kernel = p.add(
            format!("{dir}/kernel"),
            uniform(&[self.features, g], seed, 0.6),
            trainable,
        );
        let recurrent_kernel = p.add(
            format!("{dir}/recurrent_kernel"),
            uniform(&[self.units, g], seed + 1, 0.6),
            trainable,
        );
        let bias_shape = match self.kind {
            CellKind::Gru { reset_after: true } => vec![2, g],
            _ => vec![g],
        };
        let bias = self.use_bias.then(|| {
            p.add(
                format!("{dir}/bias"),
                uniform(&bias_shape, seed + 2, 0.4),
                trainable,
            )
        });
        RecurrentCell {
            kind: self.kind,
            units: self.units,
            activation: self.activation,
            recurrent_activation: self.recurrent_activation,
            kernel,
            recurrent_kernel,
            bias,
            go_backwards,
            dropout: self.dropout,
        }
    }

    fn op(&self, p: &mut ParamStore) -> Recurrent {
        let forward = self.cell(p, "forward", 10, self.go_backwards);
        let backward = self
            .merge
            .map(|_| self.cell(p, "backward", 20, !self.go_backwards));
        Recurrent {
            forward,
            backward,
            merge_mode: self.merge.unwrap_or(MergeMode::Concat),
            return_sequences: self.return_sequences,
            return_state: self.return_state,
            initial_state: self.initial_state,
            timesteps: self.timesteps,
            input_features: self.features,
            zero_masked_outputs: self.zero_masked,
        }
    }

    fn graph(&self) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", vec![self.timesteps, self.features], DType::F32);
        let op = self.op(&mut g.params);
        let mut ins = vec![x];
        if self.initial_state {
            for k in 0..op.state_count() {
                ins.push(g.add_input(format!("s{k}"), vec![self.units], DType::F32));
            }
        }
        let ys = g
            .add_node("rnn", "Test", Op::Recurrent(Box::new(op)), &ins, None)
            .expect("shape");
        for (k, y) in ys.into_iter().enumerate() {
            g.add_output(format!("y{k}"), y);
        }
        g
    }

    fn inputs(&self, g: &Graph) -> Vec<Tensor> {
        let n = self.batch;
        let mut ins = vec![Tensor::F32(uniform(
            &[n, self.timesteps, self.features],
            3,
            1.0,
        ))];
        for k in 1..g.nodes[0].inputs.len() {
            ins.push(Tensor::F32(uniform(&[n, self.units], 40 + k as u64, 0.8)));
        }
        ins
    }

    fn mask(&self) -> Option<Array2<bool>> {
        let t = self.timesteps;
        self.masked.then(|| {
            Array2::from_shape_fn((self.batch, t), |(b, s)| match b % 4 {
                0 => true,
                1 => s == 0,
                2 => false,
                _ => s >= t / 2,
            })
        })
    }

    fn check(&self, what: &str) {
        let g = self.graph();
        let ins = self.inputs(&g);
        let mask = self.mask();
        let r = std::panic::catch_unwind(|| check_node(&g, 0, ins, mask.as_ref(), 1e-2));
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

fn name(kind: CellKind) -> &'static str {
    match kind {
        CellKind::SimpleRnn => "SimpleRNN",
        CellKind::Lstm => "LSTM",
        CellKind::Gru { reset_after: true } => "GRU",
        CellKind::Gru { reset_after: false } => "GRU(reset_after=False)",
    }
}

#[test]
fn every_cell_last_output_and_sequences() {
    for kind in CELLS {
        for return_sequences in [false, true] {
            let mut c = case(kind);
            c.return_sequences = return_sequences;
            c.check(&format!(
                "{} return_sequences={return_sequences}",
                name(kind)
            ));
        }
    }
}

#[test]
fn every_cell_one_timestep_and_batch_one() {
    for kind in CELLS {
        let mut c = case(kind);
        c.timesteps = 1;
        c.return_sequences = true;
        c.check(&format!("{} T=1", name(kind)));
        let mut c = case(kind);
        c.batch = 1;
        c.units = 4;
        c.check(&format!("{} batch 1", name(kind)));
    }
}

#[test]
fn every_cell_go_backwards() {
    for kind in CELLS {
        for return_sequences in [false, true] {
            let mut c = case(kind);
            c.go_backwards = true;
            c.return_sequences = return_sequences;
            c.check(&format!(
                "{} go_backwards seq={return_sequences}",
                name(kind)
            ));
        }
    }
}

#[test]
fn every_cell_masked_mixed_lengths() {
    for kind in CELLS {
        for (return_sequences, zero_masked) in [(false, false), (true, false), (true, true)] {
            for go_backwards in [false, true] {
                let mut c = case(kind);
                c.batch = 4;
                c.masked = true;
                c.return_sequences = return_sequences;
                c.zero_masked = zero_masked;
                c.go_backwards = go_backwards;
                c.check(&format!(
                    "{} masked seq={return_sequences} zero={zero_masked} back={go_backwards}",
                    name(kind)
                ));
            }
        }
    }
}

#[test]
fn every_cell_initial_and_returned_states() {
    for kind in CELLS {
        for masked in [false, true] {
            for return_sequences in [false, true] {
                let mut c = case(kind);
                c.batch = 4;
                c.initial_state = true;
                c.return_state = true;
                c.masked = masked;
                c.return_sequences = return_sequences;
                c.check(&format!(
                    "{} states masked={masked} seq={return_sequences}",
                    name(kind)
                ));
            }
        }
        // Each on its own.
        let mut c = case(kind);
        c.initial_state = true;
        c.check(&format!("{} initial_state only", name(kind)));
        let mut c = case(kind);
        c.return_state = true;
        c.check(&format!("{} return_state only", name(kind)));
    }
}

#[test]
fn bidirectional_every_merge_mode() {
    let modes = [
        MergeMode::Concat,
        MergeMode::Sum,
        MergeMode::Multiply,
        MergeMode::Average,
        MergeMode::None,
    ];
    for kind in [LSTM, GRU, RNN] {
        for mode in modes {
            for return_sequences in [false, true] {
                let mut c = case(kind);
                c.merge = Some(mode);
                c.return_sequences = return_sequences;
                c.zero_masked = return_sequences;
                c.check(&format!(
                    "Bidirectional({}) {mode:?} seq={return_sequences}",
                    name(kind)
                ));
            }
        }
    }
}

#[test]
fn bidirectional_masked_with_states() {
    for kind in CELLS {
        for return_sequences in [false, true] {
            let mut c = case(kind);
            c.batch = 4;
            c.merge = Some(MergeMode::Concat);
            c.masked = true;
            c.return_sequences = return_sequences;
            c.zero_masked = return_sequences;
            c.initial_state = true;
            c.return_state = true;
            c.check(&format!(
                "Bidirectional({}) masked states seq={return_sequences}",
                name(kind)
            ));
        }
    }
    let mut c = case(LSTM);
    c.batch = 4;
    c.merge = Some(MergeMode::None);
    c.masked = true;
    c.return_sequences = true;
    c.zero_masked = true;
    c.go_backwards = true;
    c.return_state = true;
    c.check("Bidirectional(LSTM go_backwards) merge None masked");
}

#[test]
fn dropout_masks_fixed_over_time() {
    for kind in CELLS {
        for dropout in [
            CellDropout {
                input: 0.3,
                recurrent: 0.0,
                per_gate: false,
            },
            CellDropout {
                input: 0.3,
                recurrent: 0.4,
                per_gate: true,
            },
            CellDropout {
                input: 0.0,
                recurrent: 0.4,
                per_gate: true,
            },
            CellDropout {
                input: 0.25,
                recurrent: 0.0,
                per_gate: true,
            },
        ] {
            let mut c = case(kind);
            c.batch = 4;
            c.dropout = dropout;
            c.return_sequences = true;
            c.masked = true;
            c.initial_state = true;
            c.check(&format!("{} dropout {dropout:?}", name(kind)));
        }
    }
    let mut c = case(LSTM);
    c.merge = Some(MergeMode::Sum);
    c.dropout = CellDropout {
        input: 0.3,
        recurrent: 0.3,
        per_gate: true,
    };
    c.check("Bidirectional(LSTM) dropout");
}

#[test]
fn other_activations_and_no_bias() {
    for kind in CELLS {
        let mut c = case(kind);
        c.activation = Activation::Softsign;
        c.recurrent_activation = Activation::HardSigmoid;
        c.return_sequences = true;
        c.check(&format!("{} softsign / hard_sigmoid", name(kind)));
        let mut c = case(kind);
        c.activation = Activation::Silu;
        c.use_bias = false;
        c.check(&format!("{} silu no bias", name(kind)));
    }
}

#[test]
fn frozen_weights_still_pass_gradients_to_the_input() {
    for kind in CELLS {
        let mut c = case(kind);
        c.frozen = true;
        c.return_sequences = true;
        c.check(&format!("{} frozen", name(kind)));
    }
}

#[test]
fn larger_units_use_the_same_rules() {
    // Several row groups and GEMM-sized steps.
    for kind in CELLS {
        let mut c = case(kind);
        c.units = 19;
        c.features = 7;
        c.batch = 6;
        c.masked = true;
        c.return_sequences = true;
        c.check(&format!("{} units 19", name(kind)));
    }
}

/// The training forward without dropout gives the inference outputs.
#[test]
fn training_forward_is_the_inference_forward() {
    let mut cases = Vec::new();
    for kind in CELLS {
        for units in [5, 24] {
            let mut c = case(kind);
            c.units = units;
            c.batch = 6;
            c.masked = true;
            c.return_sequences = true;
            c.initial_state = true;
            c.return_state = true;
            cases.push(c.clone());
            c.merge = Some(MergeMode::Concat);
            c.zero_masked = true;
            cases.push(c.clone());
            c.merge = None;
            c.return_sequences = false;
            c.go_backwards = true;
            c.activation = Activation::Softsign;
            cases.push(c);
        }
    }
    for (i, c) in cases.iter().enumerate() {
        let g = c.graph();
        let ins = c.inputs(&g);
        let mask = c.mask();
        let node = &g.nodes[0];
        let train = forward(&g, node, &ins, mask.as_ref(), &mut Rng::new(1)).expect("forward");
        let infer = run_node(&g, node, ins.clone(), mask.as_ref()).expect("inference");
        assert_eq!(train.outputs.len(), infer.len(), "case {i}");
        for (k, (a, b)) in train.outputs.iter().zip(&infer).enumerate() {
            let (Tensor::F32(a), Tensor::F32(b)) = (a, b) else {
                panic!("float outputs")
            };
            assert_eq!(a.shape(), b.shape(), "case {i} output {k}");
            let worst = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "case {i} output {k}: differs by {worst}");
        }
    }
}

fn run_training(c: &Case, x: ArrayD<f32>, seed: u64) -> ArrayD<f32> {
    let g = c.graph();
    let fw = forward(
        &g,
        &g.nodes[0],
        &[Tensor::F32(x)],
        None,
        &mut Rng::new(seed),
    )
    .expect("forward");
    match fw.outputs.into_iter().next() {
        Some(Tensor::F32(y)) => y,
        _ => panic!("a float output"),
    }
}

/// SimpleRNN with a linear identity cell (W = I, R = 0) outputs x_t * mask: one mask per
/// sequence, the same at every timestep, values 0 or 1 / (1 - rate).
#[test]
fn an_input_mask_is_drawn_once_per_sequence() {
    let mut c = case(RNN);
    c.units = 6;
    c.features = 6;
    c.batch = 8;
    c.return_sequences = true;
    c.use_bias = false;
    c.activation = Activation::Linear;
    c.dropout.input = 0.5;
    let mut g = c.graph();
    let Op::Recurrent(r) = &g.nodes[0].op else {
        panic!("recurrent")
    };
    let (k, rk) = (r.forward.kernel, r.forward.recurrent_kernel);
    *g.params.get_mut(k) = Array2::<f32>::eye(6).into_dyn();
    *g.params.get_mut(rk) = ArrayD::zeros(IxDyn(&[6, 6]));
    let x = ArrayD::from_elem(IxDyn(&[8, 9, 6]), 1.0f32);
    let fw = forward(&g, &g.nodes[0], &[Tensor::F32(x)], None, &mut Rng::new(5)).expect("forward");
    let Some(Tensor::F32(y)) = fw.outputs.first() else {
        panic!("a float output")
    };
    let mut dropped = 0;
    for b in 0..8 {
        for j in 0..6 {
            let v = y[[b, 0, j]];
            assert!(
                v == 0.0 || v == 2.0,
                "a kept unit is scaled by 1/(1-rate): {v}"
            );
            dropped += usize::from(v == 0.0);
            for t in 1..9 {
                assert_eq!(y[[b, t, j]], v, "row {b} unit {j} changes mask at step {t}");
            }
        }
    }
    assert!(
        dropped > 5 && dropped < 43,
        "about half dropped, got {dropped} of 48"
    );
}

/// Keras applies an LSTM/GRU mask only for 0 < rate < 1, a SimpleRNN one for any rate > 0
/// (rate 1: zeros).
#[test]
fn a_rate_of_one_follows_keras() {
    let x = uniform(&[3, 9, 3], 3, 1.0);
    for kind in CELLS {
        let plain = run_training(&case(kind), x.clone(), 1);
        let mut c = case(kind);
        c.dropout.input = 1.0;
        let y = run_training(&c, x.clone(), 1);
        if kind == RNN {
            let zero_x = run_training(&case(kind), ArrayD::zeros(x.raw_dim()), 1);
            assert_eq!(y, zero_x, "SimpleRNN at rate 1 sees zeros");
        } else {
            assert_eq!(y, plain, "{} ignores a rate of 1", name(kind));
        }
    }
}

impl Case {
    /// TimeDistributed(this layer) on (N, outer, T, F): every outer step an independent sequence.
    fn time_distributed_graph(&self, outer: usize) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", vec![outer, self.timesteps, self.features], DType::F32);
        let inner = Op::Recurrent(Box::new(self.op(&mut g.params)));
        let op = Op::TimeDistributed {
            inner: Box::new(inner),
        };
        let ys = g.add_node("td", "Test", op, &[x], None).expect("shape");
        g.add_output("y", ys[0]);
        g
    }

    fn check_time_distributed(&self, outer: usize, what: &str) {
        let g = self.time_distributed_graph(outer);
        let x = Tensor::F32(uniform(
            &[self.batch, outer, self.timesteps, self.features],
            5,
            1.0,
        ));
        let node = &g.nodes[0];
        if self.dropout == CellDropout::default() {
            let train = forward(&g, node, std::slice::from_ref(&x), None, &mut Rng::new(1))
                .expect("forward");
            let infer = run_node(&g, node, vec![x.clone()], None).expect("inference");
            let (Tensor::F32(a), Tensor::F32(b)) = (&train.outputs[0], &infer[0]) else {
                panic!("float outputs")
            };
            assert_eq!(a.shape(), b.shape(), "{what}: output shape");
            let worst = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "{what}: the training forward differs by {worst}"
            );
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
fn time_distributed_around_every_cell() {
    for kind in CELLS {
        for (return_sequences, go_backwards) in [(false, false), (true, true)] {
            let mut c = case(kind);
            c.timesteps = 5;
            c.batch = 2;
            c.return_sequences = return_sequences;
            c.go_backwards = go_backwards;
            c.check_time_distributed(
                3,
                &format!(
                    "TimeDistributed({}) seq={return_sequences} back={go_backwards}",
                    name(kind)
                ),
            );
        }
    }
    // One outer step, one sequence.
    let mut c = case(LSTM);
    c.batch = 1;
    c.check_time_distributed(1, "TimeDistributed(LSTM) 1 x 1");
}

#[test]
fn time_distributed_around_bidirectional_and_dropout() {
    for (kind, mode, return_sequences) in [
        (GRU, MergeMode::Concat, false),
        (GRU_BEFORE, MergeMode::Sum, true),
        (LSTM, MergeMode::Multiply, true),
        (LSTM, MergeMode::Average, false),
    ] {
        let mut c = case(kind);
        c.timesteps = 4;
        c.batch = 2;
        c.merge = Some(mode);
        c.return_sequences = return_sequences;
        c.check_time_distributed(
            3,
            &format!(
                "TimeDistributed(Bidirectional({}) {mode:?}) seq={return_sequences}",
                name(kind)
            ),
        );
    }
    // The cell's dropout masks are drawn for all N*outer sequences and kept for the backward.
    let mut c = case(LSTM);
    c.timesteps = 4;
    c.batch = 2;
    c.dropout = CellDropout {
        input: 0.3,
        recurrent: 0.3,
        per_gate: true,
    };
    c.check_time_distributed(3, "TimeDistributed(LSTM) dropout");
}
