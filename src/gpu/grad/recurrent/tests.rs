//! The GPU training forward and BPTT against the CPU's (`cpu::grad::recurrent`): y, dx and
//! every parameter gradient, for each cell, Bidirectional merges, go_backwards, masks and the
//! cells' dropout / recurrent_dropout (masks drawn from the same seed as the CPU's).

use ndarray::{Array2, ArrayD, IxDyn};

use super::super::test_emit::TestEmit;
use super::*;
use crate::cpu::grad::check::uniform;
use crate::cpu::grad::testing::{assert_close, run_backward};
use crate::cpu::Tensor;
use crate::gpu::testing::{runner, KernelRunner};
use crate::graph::{Activation, CellDropout, DType, Graph, Op, ParamStore};
use crate::train::Rng;

/// What the GPU writes into an output buffer it must overwrite.
const STALE: f32 = 123.0;

const LSTM: CellKind = CellKind::Lstm;
const GRU: CellKind = CellKind::Gru { reset_after: true };
const GRU_BEFORE: CellKind = CellKind::Gru { reset_after: false };
const RNN: CellKind = CellKind::SimpleRnn;

#[derive(Clone)]
struct Case {
    kind: CellKind,
    units: usize,
    features: usize,
    timesteps: usize,
    batch: usize,
    merge: Option<MergeMode>,
    return_sequences: bool,
    go_backwards: bool,
    /// Mixed lengths by row: full, length 1, all padding, padded at the start (repeating).
    masked: bool,
    zero_masked: bool,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    /// Stage the shared state in workgroup memory (else read it back from storage, the path
    /// units too large for workgroup memory take).
    staging: bool,
    /// The cells' dropout: the forward direction's, and the backward's where it differs.
    dropout: CellDropout,
    backward_dropout: Option<CellDropout>,
    /// Cap one invocation's loop iterations (as llvmpipe does), splitting the time loops.
    loop_cap: Option<u32>,
}

fn case(kind: CellKind) -> Case {
    Case {
        kind,
        units: 5,
        features: 3,
        timesteps: 9,
        batch: 3,
        merge: None,
        return_sequences: false,
        go_backwards: false,
        masked: false,
        zero_masked: false,
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        use_bias: true,
        staging: true,
        dropout: CellDropout::default(),
        backward_dropout: None,
        loop_cap: None,
    }
}

/// Dropout on x and on h_prev; `per_gate`: Keras's implementation=1 (one mask per gate block).
fn drop(input: f32, recurrent: f32, per_gate: bool) -> CellDropout {
    CellDropout {
        input,
        recurrent,
        per_gate,
    }
}

impl Case {
    fn units(mut self, u: usize) -> Self {
        self.units = u;
        self
    }
    fn steps(mut self, t: usize) -> Self {
        self.timesteps = t;
        self
    }
    fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
    fn features(mut self, f: usize) -> Self {
        self.features = f;
        self
    }
    fn sequences(mut self) -> Self {
        self.return_sequences = true;
        self
    }
    fn backwards(mut self) -> Self {
        self.go_backwards = true;
        self
    }
    fn bidi(mut self, m: MergeMode) -> Self {
        self.merge = Some(m);
        self
    }
    fn masked(mut self, zero: bool) -> Self {
        self.masked = true;
        self.zero_masked = zero;
        self
    }
    fn loop_cap(mut self, cap: u32) -> Self {
        self.loop_cap = Some(cap);
        self
    }
    fn unstaged(mut self) -> Self {
        self.staging = false;
        self
    }
    fn dropout(mut self, d: CellDropout) -> Self {
        self.dropout = d;
        self
    }
    fn backward_dropout(mut self, d: CellDropout) -> Self {
        self.backward_dropout = Some(d);
        self
    }
    fn without_dropout(mut self) -> Self {
        self.dropout = CellDropout::default();
        self.backward_dropout = None;
        self
    }

    fn cell(
        &self,
        p: &mut ParamStore,
        dir: &str,
        seed: u64,
        go_backwards: bool,
        dropout: CellDropout,
    ) -> RecurrentCell {
        let g = self.kind.gates() * self.units;
        let kernel = p.add(
            format!("{dir}/kernel"),
            uniform(&[self.features, g], seed, 0.6),
            true,
        );
        let recurrent_kernel = p.add(
            format!("{dir}/recurrent_kernel"),
            uniform(&[self.units, g], seed + 1, 0.6),
            true,
        );
        let bias_shape = match self.kind {
            CellKind::Gru { reset_after: true } => vec![2, g],
            _ => vec![g],
        };
        let bias = self.use_bias.then(|| {
            p.add(
                format!("{dir}/bias"),
                uniform(&bias_shape, seed + 2, 0.4),
                true,
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
            dropout,
        }
    }

    fn graph(&self) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", vec![self.timesteps, self.features], DType::F32);
        let forward = self.cell(
            &mut g.params,
            "forward",
            10,
            self.go_backwards,
            self.dropout,
        );
        let backward = self.merge.map(|_| {
            let d = self.backward_dropout.unwrap_or(self.dropout);
            self.cell(&mut g.params, "backward", 20, !self.go_backwards, d)
        });
        let op = Recurrent {
            forward,
            backward,
            merge_mode: self.merge.unwrap_or(MergeMode::Concat),
            return_sequences: self.return_sequences,
            return_state: false,
            initial_state: false,
            timesteps: self.timesteps,
            input_features: self.features,
            zero_masked_outputs: self.zero_masked,
        };
        let ys = g
            .add_node("rnn", "Test", Op::Recurrent(Box::new(op)), &[x], None)
            .expect("shape");
        g.add_output("y", ys[0]);
        g
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

    fn name(&self) -> String {
        let mut s = format!(
            "{} u={} f={} t={} n={}",
            self.kind.name(),
            self.units,
            self.features,
            self.timesteps,
            self.batch
        );
        if self.kind == GRU_BEFORE {
            s.push_str(" reset_after=False");
        }
        if let Some(m) = self.merge {
            s.push_str(&format!(" bidirectional {m:?}"));
        }
        for (on, what) in [
            (self.return_sequences, " sequences"),
            (self.go_backwards, " go_backwards"),
            (self.masked, " masked"),
            (self.zero_masked, " zero_masked"),
            (!self.use_bias, " no bias"),
            (!self.staging, " unstaged"),
        ] {
            if on {
                s.push_str(what);
            }
        }
        let d = self.dropout;
        if d != CellDropout::default() {
            s.push_str(&format!(
                " dropout={} recurrent_dropout={}{}",
                d.input,
                d.recurrent,
                if d.per_gate { " per gate" } else { "" }
            ));
        }
        if let Some(d) = self.backward_dropout {
            s.push_str(&format!(" backward {d:?}"));
        }
        s
    }
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

fn shaped(v: &[f32], shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape")
}

/// The CPU training forward's y of a case (its masks drawn from seed 1).
fn cpu_y(c: &Case) -> ArrayD<f32> {
    let g = c.graph();
    let x = uniform(&[c.batch, c.timesteps, c.features], 3, 1.0);
    let fw = crate::cpu::grad::forward(
        &g,
        &g.nodes[0],
        &[Tensor::F32(x)],
        c.mask().as_ref(),
        &mut Rng::new(1),
    )
    .expect("CPU forward");
    match fw.outputs.into_iter().next() {
        Some(Tensor::F32(y)) => y,
        _ => panic!("float output"),
    }
}

/// Runs the case's training forward and backward on the CPU and the GPU (one submit) and
/// compares y, dx and every parameter gradient; returns the GPU's y and dx. The cells'
/// dropout masks are drawn on the host from the seed the CPU's forward draws them from.
fn check(r: &mut KernelRunner, c: &Case) -> (Vec<f32>, Vec<f32>) {
    let name = c.name();
    let g = c.graph();
    let node = &g.nodes[0];
    let Op::Recurrent(rec) = &node.op else {
        panic!("not recurrent")
    };
    let (n, t, f) = (c.batch, c.timesteps, c.features);
    let x = uniform(&[n, t, f], 3, 1.0);
    let mask = c.mask();
    let fw = crate::cpu::grad::forward(
        &g,
        node,
        &[Tensor::F32(x.clone())],
        mask.as_ref(),
        &mut Rng::new(1),
    )
    .expect("CPU forward");
    let Tensor::F32(y_cpu) = &fw.outputs[0] else {
        panic!("float output")
    };
    let dy = uniform(y_cpu.shape(), 4, 1.0);
    let (dx, grads) = run_backward(&g, &x, &dy, true, mask.as_ref());
    let dx = dx.expect("dx");

    let ids: Vec<f32> = match &mask {
        Some(m) => m
            .indexed_iter()
            .map(|((b, s), &live)| {
                f32::from_bits(if live {
                    1 + ((7 * b + s) % 5) as u32
                } else {
                    0
                })
            })
            .collect(),
        None => vec![0.0],
    };
    let cells: Vec<&RecurrentCell> = rec.cells().collect();
    let mut bufs = vec![flat(&x), ids];
    for cell in &cells {
        bufs.push(g.params.slice(cell.kernel).to_vec());
        bufs.push(g.params.slice(cell.recurrent_kernel).to_vec());
        bufs.push(cell.bias.map_or(vec![0.0], |b| g.params.slice(b).to_vec()));
    }
    let drop_floats = recurrent_dropout_floats(rec, n);
    let mi = bufs.len();
    bufs.push(if drop_floats > 0 {
        let masks = recurrent_dropout_masks(rec, n, &mut Rng::new(1));
        assert_eq!(masks.len(), drop_floats, "{name}: dropout masks' size");
        masks
    } else {
        vec![0.0]
    });
    let yi = bufs.len();
    bufs.push(vec![STALE; y_cpu.len()]);
    let si = bufs.len();
    bufs.push(vec![STALE; recurrent_saved_floats(rec, n)]);
    let dyi = bufs.len();
    bufs.push(flat(&dy));
    let dxi = bufs.len();
    bufs.push(vec![STALE; dx.len()]);
    let gi = bufs.len();
    for cell in &cells {
        bufs.push(vec![STALE; g.params.slice(cell.kernel).len()]);
        bufs.push(vec![STALE; g.params.slice(cell.recurrent_kernel).len()]);
        bufs.push(vec![
            STALE;
            cell.bias.map_or(1, |b| g.params.slice(b).len())
        ]);
    }
    let b = BufRef::Input;
    let cell_bufs: Vec<CellBuffers> = cells
        .iter()
        .enumerate()
        .map(|(d, cell)| CellBuffers {
            kernel: b(2 + 3 * d),
            recurrent_kernel: b(3 + 3 * d),
            bias: cell.bias.map(|_| b(4 + 3 * d)),
        })
        .collect();
    let cell_grads: Vec<CellGrads> = cells
        .iter()
        .enumerate()
        .map(|(d, cell)| CellGrads {
            kernel: Some(b(gi + 3 * d)),
            recurrent_kernel: Some(b(gi + 3 * d + 1)),
            bias: cell.bias.map(|_| b(gi + 3 * d + 2)),
        })
        .collect();
    let ids_buf = c.masked.then_some(b(1));
    let drop_buf = (drop_floats > 0).then_some(b(mi));
    let mut limits = r.limits;
    limits.loop_iterations = c.loop_cap.or(limits.loop_iterations);
    let mut e = TestEmit::new(limits, bufs.len());
    let (x_buf, y_buf, saved, dy_buf, dx_buf) = (b(0), b(yi), b(si), b(dyi), Some(b(dxi)));
    if c.staging {
        recurrent_train_forward(
            &mut e,
            node,
            0,
            rec,
            n,
            x_buf,
            ids_buf,
            &cell_bufs,
            &[y_buf],
            saved,
            None,
            &[],
            drop_buf,
        )
        .expect("forward lowering");
        recurrent_backward(
            &mut e,
            node,
            0,
            rec,
            n,
            x_buf,
            ids_buf,
            &cell_bufs,
            saved,
            None,
            &[dy_buf],
            dx_buf,
            &[],
            &cell_grads,
            drop_buf,
        )
        .expect("backward lowering");
    } else {
        train_forward(
            &mut e,
            node,
            0,
            rec,
            n,
            x_buf,
            ids_buf,
            &cell_bufs,
            &[y_buf],
            saved,
            None,
            &[],
            drop_buf,
            false,
        )
        .expect("forward lowering");
        backward(
            &mut e,
            node,
            0,
            rec,
            n,
            x_buf,
            ids_buf,
            &cell_bufs,
            saved,
            None,
            &[dy_buf],
            dx_buf,
            &[],
            &cell_grads,
            drop_buf,
            false,
        )
        .expect("backward lowering");
    }
    if c.loop_cap.is_some() {
        for kernel in [Kernel::RnnTrainForward, Kernel::RnnTrainBackward] {
            let runs = e
                .ops
                .iter()
                .filter(|op| matches!(op, crate::gpu::plan::Op::Dispatch(d) if d.kernel == kernel))
                .count();
            assert!(runs >= 3, "{name}: {} in {runs} dispatches", kernel.name());
        }
    }
    let got = e.run(r, &bufs).expect("GPU run");
    assert_close(
        &format!("{name}: y"),
        &shaped(&got[yi], y_cpu.shape()),
        y_cpu,
    );
    assert!(
        got[si].iter().all(|&v| v != STALE),
        "{name}: saved not fully written"
    );
    assert_close(&format!("{name}: dx"), &shaped(&got[dxi], dx.shape()), &dx);
    for (d, cell) in cells.iter().enumerate() {
        let mut params = vec![
            ("kernel", cell.kernel),
            ("recurrent_kernel", cell.recurrent_kernel),
        ];
        params.extend(cell.bias.map(|b| ("bias", b)));
        for (k, (what, id)) in params.into_iter().enumerate() {
            let expected = grads.get(id).expect("a gradient");
            assert_close(
                &format!("{name}: direction {d} d{what}"),
                &shaped(&got[gi + 3 * d + k], expected.shape()),
                expected,
            );
        }
    }
    (got[yi].clone(), got[dxi].clone())
}

#[test]
fn lstm_and_simple_rnn_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN] {
        for c in [
            case(kind),
            case(kind).sequences(),
            case(kind).sequences().backwards(),
            case(kind).backwards(),
            // Batch 1 and one step.
            case(kind).batch(1).steps(1).sequences(),
            case(kind).batch(1).units(13),
            // 33 sequences: more than one workgroup of rows (26 rows each at 5 units).
            case(kind).batch(33).steps(4).sequences(),
            // 70 steps.
            case(kind)
                .batch(2)
                .steps(70)
                .units(13)
                .features(4)
                .sequences(),
        ] {
            check(&mut r, &c);
        }
    }
}

#[test]
fn bidirectional_matches_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN] {
        for merge in [MergeMode::Concat, MergeMode::Sum, MergeMode::Average] {
            check(&mut r, &case(kind).bidi(merge));
            check(&mut r, &case(kind).bidi(merge).sequences().units(13));
        }
        check(
            &mut r,
            &case(kind).bidi(MergeMode::Concat).sequences().backwards(),
        );
        check(&mut r, &case(kind).bidi(MergeMode::Sum).batch(33).steps(3));
    }
}

#[test]
fn masked_mixed_lengths_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN, GRU, GRU_BEFORE] {
        for (sequences, zero) in [(false, false), (true, false), (true, true)] {
            for back in [false, true] {
                let mut c = case(kind).batch(5).masked(zero);
                c.return_sequences = sequences;
                c.go_backwards = back;
                check(&mut r, &c);
            }
        }
        check(
            &mut r,
            &case(kind)
                .batch(6)
                .masked(true)
                .sequences()
                .bidi(MergeMode::Concat),
        );
        check(
            &mut r,
            &case(kind).batch(6).masked(false).bidi(MergeMode::Sum),
        );
    }
}

#[test]
fn gru_matches_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [GRU, GRU_BEFORE] {
        for c in [
            case(kind),
            case(kind).sequences().backwards(),
            case(kind).batch(1).steps(1).sequences(),
            case(kind).batch(33).steps(4).units(13).sequences(),
            case(kind).batch(2).steps(70).units(13).sequences(),
            case(kind).bidi(MergeMode::Concat).sequences(),
            case(kind).bidi(MergeMode::Average).units(13),
        ] {
            check(&mut r, &c);
        }
        let mut c = case(kind);
        c.use_bias = false;
        check(&mut r, &c);
    }
}

#[test]
fn other_activations_and_no_bias_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN, GRU, GRU_BEFORE] {
        let mut c = case(kind).sequences();
        c.activation = Activation::Relu {
            negative_slope: 0.0,
            max_value: None,
            threshold: 0.0,
        };
        c.recurrent_activation = Activation::HardSigmoid;
        check(&mut r, &c);
        let mut c = case(kind).bidi(MergeMode::Concat);
        c.use_bias = false;
        c.activation = Activation::Softsign;
        check(&mut r, &c);
    }
}

/// The path for units too large for workgroup memory (state read back from storage), forced
/// at small sizes; and 130 units (more than one GEMM tile), staged.
#[test]
fn state_in_storage_and_large_units_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN, GRU, GRU_BEFORE] {
        check(
            &mut r,
            &case(kind).unstaged().sequences().masked(false).batch(5),
        );
        check(
            &mut r,
            &case(kind).unstaged().bidi(MergeMode::Concat).units(13),
        );
    }
    check(&mut r, &case(LSTM).units(130).batch(2).steps(3).sequences());
    check(
        &mut r,
        &case(GRU).units(130).batch(2).steps(2).bidi(MergeMode::Sum),
    );
}

/// Under a cap on one invocation's loop iterations (llvmpipe's, or here a small forced one) the
/// forward and BPTT loops run as several dispatches of consecutive steps, handing h, c and the
/// running dh, dc over through storage; runs that start at odd steps, masks, both directions.
#[test]
fn time_loops_split_under_a_loop_iteration_cap_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for kind in [LSTM, RNN, GRU, GRU_BEFORE] {
        let c = case(kind).steps(23).batch(5).loop_cap(150);
        check(&mut r, &c.clone().sequences().masked(false));
        check(&mut r, &c.clone().bidi(MergeMode::Concat).units(13));
        check(&mut r, &c.unstaged().sequences().backwards());
    }
}

#[test]
fn unsupported_configurations_are_refused() {
    let limits = crate::gpu::plan::PlanLimits {
        max_binding_bytes: 1 << 30,
        max_workgroups_per_dim: 65535,
        max_storage_buffers_per_stage: 8,
        fold_batch_norm: false,
        loop_iterations: None,
    };
    let g = case(LSTM).bidi(MergeMode::Concat).graph();
    let node = &g.nodes[0];
    let Op::Recurrent(base) = &node.op else {
        panic!("not recurrent")
    };
    let b = BufRef::Input;
    let cells = [CellBuffers {
        kernel: b(0),
        recurrent_kernel: b(0),
        bias: None,
    }; 2];
    let with = |edit: &dyn Fn(&mut Recurrent), field: &str| {
        let mut rec = (**base).clone();
        edit(&mut rec);
        let mut e = TestEmit::new(limits, 4);
        let err = recurrent_train_forward(
            &mut e,
            node,
            0,
            &rec,
            2,
            b(0),
            None,
            &cells,
            &[b(1)],
            b(2),
            None,
            &[],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("layer 'rnn'") && err.contains(field), "{err}");
        assert!(e.ops.is_empty(), "{field}: nothing emitted");
    };
    with(
        &|r| r.backward.as_mut().unwrap().units = 4,
        "backward_layer",
    );
}

const RATE: f32 = 0.3;

/// Every cell with one mask shared by its gate blocks and (but a SimpleRNN, which has one
/// block) one mask per block.
fn cells_and_mask_sharing() -> impl Iterator<Item = (CellKind, bool)> {
    [RNN, LSTM, GRU, GRU_BEFORE]
        .into_iter()
        .flat_map(|kind| [false, true].map(|per_gate| (kind, per_gate)))
        .filter(|&(kind, per_gate)| !(kind == RNN && per_gate))
}

/// Dropout and recurrent dropout of every cell, with one mask shared by the gate blocks and
/// one per gate block (Keras's implementation 2 and 1), one and seven steps, batch 3, 5 units.
#[test]
fn cell_dropout_matches_the_cpu() {
    let Some(mut r) = runner() else { return };
    for (kind, per_gate) in cells_and_mask_sharing() {
        let d = drop(RATE, RATE, per_gate);
        for t in [1, 7] {
            check(&mut r, &case(kind).steps(t).dropout(d));
            check(&mut r, &case(kind).steps(t).dropout(d).sequences());
        }
        check(
            &mut r,
            &case(kind).steps(7).dropout(d).sequences().backwards(),
        );
        // Only one of the two.
        check(
            &mut r,
            &case(kind).steps(7).dropout(drop(RATE, 0.0, per_gate)),
        );
        check(
            &mut r,
            &case(kind).steps(7).dropout(drop(0.0, RATE, per_gate)),
        );
        // The state read back from storage; 33 sequences (two workgroups of rows).
        check(
            &mut r,
            &case(kind).steps(7).dropout(d).unstaged().sequences(),
        );
        check(&mut r, &case(kind).steps(4).batch(33).dropout(d));
    }
    // A SimpleRNN drops everything at rate 1 (Keras draws zeros), LSTM and GRU nothing.
    check(&mut r, &case(RNN).steps(7).dropout(drop(1.0, 1.0, false)));
    check(&mut r, &case(LSTM).steps(7).dropout(drop(1.0, 1.0, true)));
}

/// Dropout with Keras's padding mask (mixed lengths) and in both directions of a
/// Bidirectional, each direction with its own masks (and its own rates).
#[test]
fn cell_dropout_masked_and_bidirectional_match_the_cpu() {
    let Some(mut r) = runner() else { return };
    for (kind, per_gate) in cells_and_mask_sharing() {
        let d = drop(RATE, RATE, per_gate);
        for t in [1, 7] {
            for zero in [false, true] {
                let c = case(kind).steps(t).batch(5).masked(zero).dropout(d);
                check(&mut r, &c.clone().sequences());
                check(&mut r, &c.backwards());
            }
            check(
                &mut r,
                &case(kind).steps(t).dropout(d).bidi(MergeMode::Concat),
            );
        }
        check(
            &mut r,
            &case(kind)
                .steps(7)
                .batch(6)
                .masked(true)
                .sequences()
                .dropout(d)
                .bidi(MergeMode::Concat),
        );
        check(
            &mut r,
            &case(kind)
                .steps(7)
                .dropout(d)
                .sequences()
                .bidi(MergeMode::Average),
        );
        // The directions' masks differ in kind: the backward's are repeated per block or
        // stand in as ones.
        check(
            &mut r,
            &case(kind)
                .steps(7)
                .dropout(drop(RATE, 0.0, per_gate))
                .backward_dropout(drop(0.0, 0.5, !per_gate))
                .bidi(MergeMode::Sum),
        );
        check(
            &mut r,
            &case(kind)
                .steps(7)
                .batch(5)
                .masked(false)
                .dropout(CellDropout::default())
                .backward_dropout(d)
                .bidi(MergeMode::Concat),
        );
    }
}

/// The GPU's outputs and input gradients differ from a run without dropout, for each mask on
/// its own: a GPU that ignored a mask would fail here (having matched the CPU above).
#[test]
fn cell_dropout_changes_the_results() {
    let Some(mut r) = runner() else { return };
    let differs = |a: &[f32], b: &ArrayD<f32>| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b.iter())
            .any(|(x, y)| (x - y).abs() > 1e-2 * (1.0 + y.abs()))
    };
    for kind in [RNN, LSTM, GRU, GRU_BEFORE] {
        for per_gate in [false, true] {
            for (input, recurrent) in [(RATE, 0.0), (0.0, RATE)] {
                for bidi in [false, true] {
                    let mut c = case(kind)
                        .steps(7)
                        .sequences()
                        .dropout(drop(input, recurrent, per_gate));
                    if bidi {
                        c = c.bidi(MergeMode::Concat);
                    }
                    let name = c.name();
                    let (y, dx) = check(&mut r, &c);
                    let plain = c.clone().without_dropout();
                    assert!(differs(&y, &cpu_y(&plain)), "{name}: y ignores the masks");
                    let x = uniform(&[c.batch, c.timesteps, c.features], 3, 1.0);
                    let dy = uniform(
                        &[c.batch, c.timesteps, c.units * if bidi { 2 } else { 1 }],
                        4,
                        1.0,
                    );
                    let (dx_plain, _) = run_backward(&plain.graph(), &x, &dy, true, None);
                    let dx_plain = dx_plain.expect("dx");
                    assert!(differs(&dx, &dx_plain), "{name}: dx ignores the masks");
                }
            }
        }
    }
}
