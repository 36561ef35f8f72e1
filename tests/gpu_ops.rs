//! GPU kernels against the CPU reference path (`wgnn::cpu::run`), op by op, on `ModelIr` values
//! built here with random weights: sizes that do not divide the 64-wide tiles, batch 1 and 33,
//! every activation, same/valid padding, strides, non-square windows, both recurrent directions,
//! masking with mixed lengths. Tolerance: |gpu - cpu| <= 1e-4 * (1 + |cpu|).
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use wgnn::gpu::{is_no_adapter, GpuRuntime};
use wgnn::ir::*;
use wgnn::PreparedInput;

/// xorshift64*: reproducible values without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }

    fn array(&mut self, shape: &[usize], scale: f32) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), self.vec(n, scale)).unwrap()
    }
}

fn layer(name: &str, class: &str, kind: LayerKind, input: &[usize], output: &[usize]) -> Layer {
    Layer {
        name: name.into(),
        class: class.into(),
        kind,
        input_shape: input.to_vec(),
        output_shape: output.to_vec(),
    }
}

fn model(input_kind: InputKind, input_shape: &[usize], layers: Vec<Layer>) -> ModelIr {
    ModelIr {
        name: "gpu_ops".into(),
        input_kind,
        input_shape: input_shape.to_vec(),
        layers,
        text_vectorization: None,
    }
}

/// The runtime for `ir`, or None (with a note) when this machine has no GPU adapter and `CI`
/// is unset.
fn runtime(ir: &ModelIr) -> Option<GpuRuntime> {
    match GpuRuntime::new(ir, None) {
        Ok(rt) => Some(rt),
        Err(wgnn::Error::Gpu(msg)) if is_no_adapter(&msg) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but there is no GPU adapter: {msg}");
            }
            eprintln!("note: skipping GPU test, {msg}");
            None
        }
        Err(e) => panic!("creating the GPU runtime for '{}' failed: {e}", ir.name),
    }
}

fn assert_close(what: &str, gpu: &ArrayD<f32>, cpu: &ArrayD<f32>) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shapes differ");
    for (i, (g, c)) in gpu.iter().zip(cpu.iter()).enumerate() {
        let excess = (g - c).abs() - 1e-4 * (1.0 + c.abs());
        if excess.is_nan() || excess > 0.0 {
            panic!(
                "{what}: element {i} (index {:?}): gpu {g} vs cpu {c}",
                unravel(i, cpu.shape())
            );
        }
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        index[d] = i % n.max(1);
        i /= n.max(1);
    }
    index
}

/// Runs `ir` on both backends and compares.
fn check(what: &str, ir: &ModelIr, input: &PreparedInput) {
    let Some(gpu) = runtime(ir) else { return };
    check_with(what, &gpu, ir, input);
}

fn check_with(what: &str, gpu: &GpuRuntime, ir: &ModelIr, input: &PreparedInput) {
    let cpu_out = wgnn::cpu::run(ir, input).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let gpu_out = gpu
        .run(ir, input)
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    assert_close(what, &gpu_out, &cpu_out);
}

fn float_input(rng: &mut Rng, batch: usize, shape: &[usize], scale: f32) -> PreparedInput {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    PreparedInput::Float(rng.array(&full, scale))
}

fn dense_layer(rng: &mut Rng, name: &str, input: &[usize], units: usize, act: Activation) -> Layer {
    let k = *input.last().unwrap();
    let mut output = input.to_vec();
    *output.last_mut().unwrap() = units;
    let scale = 1.0 / (k as f32).sqrt();
    let kind = LayerKind::Dense(Dense {
        units,
        kernel: Array2::from_shape_vec((k, units), rng.vec(k * units, scale)).unwrap(),
        bias: Some(Array1::from(rng.vec(units, 0.5))),
        activation: act,
    });
    layer(name, "Dense", kind, input, &output)
}

const ALL_ACTIVATIONS: [Activation; 15] = [
    Activation::Linear,
    Activation::RELU,
    Activation::Relu {
        negative_slope: 0.2,
        max_value: None,
        threshold: 0.0,
    },
    Activation::Relu {
        negative_slope: 0.0,
        max_value: Some(6.0),
        threshold: 0.0,
    },
    Activation::Relu {
        negative_slope: 0.1,
        max_value: Some(1.5),
        threshold: 0.5,
    },
    Activation::Sigmoid,
    Activation::HardSigmoid,
    Activation::Tanh,
    Activation::Softmax,
    Activation::Elu { alpha: 0.7 },
    Activation::Selu,
    Activation::Silu,
    Activation::Softplus,
    Activation::Softsign,
    Activation::Exponential,
];

#[test]
fn dense_matches_cpu_for_odd_sizes_and_batches() {
    let mut rng = Rng::new(1);
    for (batch, k, units) in [
        (1, 3, 1),
        (33, 37, 13),
        (2, 130, 70),
        (5, 64, 64),
        (1, 200, 129),
    ] {
        let ir = model(
            InputKind::Float,
            &[k],
            vec![dense_layer(
                &mut rng,
                "dense",
                &[k],
                units,
                Activation::Linear,
            )],
        );
        let input = float_input(&mut rng, batch, &[k], 1.0);
        check(&format!("dense {k}->{units} batch {batch}"), &ir, &input);
    }
}

#[test]
fn dense_applies_every_activation_in_its_epilogue() {
    let mut rng = Rng::new(2);
    for (i, act) in ALL_ACTIVATIONS.iter().enumerate() {
        let batch = if i % 2 == 0 { 1 } else { 33 };
        let ir = model(
            InputKind::Float,
            &[19],
            vec![dense_layer(&mut rng, "dense", &[19], 11, *act)],
        );
        let input = float_input(&mut rng, batch, &[19], 3.0);
        check(&format!("dense {} batch {batch}", act.name()), &ir, &input);
    }
}

#[test]
fn dense_on_sequences_multiplies_every_timestep() {
    let mut rng = Rng::new(3);
    let ir = model(
        InputKind::Float,
        &[7, 10],
        vec![dense_layer(
            &mut rng,
            "td",
            &[7, 10],
            5,
            Activation::Softmax,
        )],
    );
    check(
        "dense over (7, 10)",
        &ir,
        &float_input(&mut rng, 3, &[7, 10], 1.0),
    );
}

fn conv_layer(
    rng: &mut Rng,
    in_hwc: [usize; 3],
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    activation: Activation,
    bias: bool,
) -> Layer {
    let [h, w, c] = in_hwc;
    let window = Window2d::new(kernel, strides, padding, [h, w]);
    let fan_in = kernel[0] * kernel[1] * c;
    let weights = rng.vec(fan_in * filters, 1.0 / (fan_in as f32).sqrt());
    let kind = LayerKind::Conv2d(Conv2d {
        filters,
        window,
        in_channels: c,
        kernel: Array4::from_shape_vec((kernel[0], kernel[1], c, filters), weights).unwrap(),
        bias: bias.then(|| Array1::from(rng.vec(filters, 0.3))),
        activation,
    });
    let out = [window.out_hw[0], window.out_hw[1], filters];
    layer("conv", "Conv2D", kind, &in_hwc, &out)
}

#[test]
fn conv2d_matches_cpu_for_padding_strides_and_odd_shapes() {
    let mut rng = Rng::new(4);
    // (input HWC, filters, kernel, strides, padding, batch)
    let cases = [
        ([8, 8, 3], 4, [3, 3], [1, 1], Padding::Same, 1),
        ([9, 7, 3], 5, [3, 3], [1, 1], Padding::Valid, 33),
        ([9, 7, 2], 6, [3, 2], [2, 1], Padding::Same, 2),
        ([10, 11, 3], 3, [2, 4], [2, 3], Padding::Valid, 3),
        ([6, 6, 7], 66, [5, 1], [1, 2], Padding::Same, 2),
        ([5, 5, 4], 2, [4, 4], [2, 2], Padding::Same, 1),
        ([4, 4, 1], 1, [1, 1], [1, 1], Padding::Valid, 33),
    ];
    for (i, (hwc, filters, kernel, strides, padding, batch)) in cases.into_iter().enumerate() {
        let act = if i % 2 == 0 {
            Activation::RELU
        } else {
            Activation::Linear
        };
        let conv = conv_layer(
            &mut rng,
            hwc,
            filters,
            kernel,
            strides,
            padding,
            act,
            i != 3,
        );
        let ir = model(InputKind::Float, &hwc, vec![conv]);
        let what = format!("conv {hwc:?} x{filters} k{kernel:?} s{strides:?} {padding:?} b{batch}");
        check(&what, &ir, &float_input(&mut rng, batch, &hwc, 1.0));
    }
}

#[test]
fn conv2d_applies_every_activation() {
    let mut rng = Rng::new(5);
    for act in ALL_ACTIVATIONS {
        let conv = conv_layer(
            &mut rng,
            [5, 4, 3],
            6,
            [3, 3],
            [1, 1],
            Padding::Same,
            act,
            true,
        );
        let ir = model(InputKind::Float, &[5, 4, 3], vec![conv]);
        let what = format!("conv {}", act.name());
        check(&what, &ir, &float_input(&mut rng, 2, &[5, 4, 3], 2.0));
    }
}

fn pool_layer(
    op: PoolOp,
    in_hwc: [usize; 3],
    pool: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
) -> Layer {
    let window = Window2d::new(pool, strides, padding, [in_hwc[0], in_hwc[1]]);
    let out = [window.out_hw[0], window.out_hw[1], in_hwc[2]];
    let kind = LayerKind::Pool2d(Pool2d {
        op,
        window,
        channels: in_hwc[2],
    });
    layer("pool", "Pooling2D", kind, &in_hwc, &out)
}

#[test]
fn pooling_matches_cpu_with_same_padding_counting_only_inside_cells() {
    let mut rng = Rng::new(6);
    let cases = [
        ([8, 8, 3], [2, 2], [2, 2], Padding::Valid, 1),
        ([7, 9, 2], [2, 2], [2, 2], Padding::Same, 33),
        ([7, 7, 5], [3, 3], [2, 2], Padding::Valid, 2),
        ([7, 6, 5], [3, 3], [2, 2], Padding::Same, 2),
        ([6, 5, 3], [2, 3], [1, 1], Padding::Same, 3),
        ([5, 8, 2], [3, 1], [1, 3], Padding::Same, 1),
    ];
    for (hwc, pool, strides, padding, batch) in cases {
        for op in [PoolOp::Max, PoolOp::Average] {
            let ir = model(
                InputKind::Float,
                &hwc,
                vec![pool_layer(op, hwc, pool, strides, padding)],
            );
            let what = format!("{op:?} pool {hwc:?} p{pool:?} s{strides:?} {padding:?} b{batch}");
            check(&what, &ir, &float_input(&mut rng, batch, &hwc, 4.0));
        }
    }
}

#[test]
fn global_pooling_matches_cpu() {
    let mut rng = Rng::new(7);
    for op in [PoolOp::Max, PoolOp::Average] {
        for keepdims in [false, true] {
            let out: Vec<usize> = if keepdims { vec![1, 1, 67] } else { vec![67] };
            let kind = LayerKind::GlobalPool2d { op, keepdims };
            let ir = model(
                InputKind::Float,
                &[5, 3, 67],
                vec![layer("gp", "GlobalPooling2D", kind, &[5, 3, 67], &out)],
            );
            let what = format!("global {op:?} keepdims {keepdims}");
            check(&what, &ir, &float_input(&mut rng, 33, &[5, 3, 67], 4.0));
        }
    }
}

#[test]
fn activation_layers_match_cpu_for_every_variant() {
    let mut rng = Rng::new(8);
    for act in ALL_ACTIVATIONS {
        let shape = [3, 70];
        let ir = model(
            InputKind::Float,
            &shape,
            vec![layer(
                "act",
                "Activation",
                LayerKind::Activation(act),
                &shape,
                &shape,
            )],
        );
        let what = format!("activation {}", act.name());
        check(&what, &ir, &float_input(&mut rng, 5, &shape, 6.0));
    }
}

#[test]
fn softmax_is_stable_for_large_logits_and_long_rows() {
    let mut rng = Rng::new(9);
    for cols in [1, 10, 64, 65, 1000] {
        let ir = model(
            InputKind::Float,
            &[cols],
            vec![layer(
                "sm",
                "Softmax",
                LayerKind::Activation(Activation::Softmax),
                &[cols],
                &[cols],
            )],
        );
        // Logits around +-80 overflow exp() without the max subtraction.
        let input = float_input(&mut rng, 4, &[cols], 80.0);
        check(&format!("softmax over {cols}"), &ir, &input);
    }
}

#[test]
fn rescaling_matches_cpu_with_scalar_and_per_channel_factors() {
    let mut rng = Rng::new(10);
    let shape = [4, 4, 3];
    for (scale, offset) in [
        (vec![1.0 / 255.0], vec![0.0]),
        (vec![0.5, 2.0, -1.0], vec![-1.0]),
        (vec![2.0], vec![0.1, 0.2, 0.3]),
    ] {
        let kind = LayerKind::Rescaling {
            scale: scale.clone(),
            offset: offset.clone(),
        };
        let ir = model(
            InputKind::Float,
            &shape,
            vec![layer("rescale", "Rescaling", kind, &shape, &shape)],
        );
        let what = format!("rescaling {scale:?} {offset:?}");
        check(&what, &ir, &float_input(&mut rng, 2, &shape, 255.0));
    }
}

/// A small CNN end to end: rescaling, conv stack, pooling, flatten, dropout, dense softmax.
pub fn small_cnn(rng: &mut Rng) -> ModelIr {
    let rescale = layer(
        "rescaling",
        "Rescaling",
        LayerKind::Rescaling {
            scale: vec![1.0 / 255.0],
            offset: vec![0.0],
        },
        &[12, 12, 3],
        &[12, 12, 3],
    );
    let mut conv1 = conv_layer(
        rng,
        [12, 12, 3],
        8,
        [3, 3],
        [1, 1],
        Padding::Same,
        Activation::RELU,
        true,
    );
    conv1.name = "conv1".into();
    let pool1 = pool_layer(PoolOp::Max, [12, 12, 8], [2, 2], [2, 2], Padding::Valid);
    let mut conv2 = conv_layer(
        rng,
        [6, 6, 8],
        16,
        [3, 3],
        [1, 1],
        Padding::Valid,
        Activation::RELU,
        true,
    );
    conv2.name = "conv2".into();
    let mut pool2 = pool_layer(PoolOp::Average, [4, 4, 16], [2, 2], [2, 2], Padding::Same);
    pool2.name = "pool2".into();
    let flatten = layer("flatten", "Flatten", LayerKind::Reshape, &[2, 2, 16], &[64]);
    let dropout = layer("dropout", "Dropout", LayerKind::Identity, &[64], &[64]);
    let dense = dense_layer(rng, "dense", &[64], 10, Activation::Softmax);
    let mut ir = model(
        InputKind::Float,
        &[12, 12, 3],
        vec![rescale, conv1, pool1, conv2, pool2, flatten, dropout, dense],
    );
    ir.name = "small_cnn".into();
    ir
}

#[test]
fn small_cnn_matches_cpu_end_to_end() {
    let mut rng = Rng::new(11);
    let ir = small_cnn(&mut rng);
    let Some(gpu) = runtime(&ir) else { return };
    for batch in [1, 33] {
        let input = PreparedInput::Float(rng.array(&[batch, 12, 12, 3], 255.0).mapv(f32::abs));
        check_with(&format!("small cnn batch {batch}"), &gpu, &ir, &input);
    }
}

struct RnnSpec {
    kind: CellKind,
    timesteps: usize,
    features: usize,
    units: usize,
    bidirectional: bool,
    merge: MergeMode,
    return_sequences: bool,
    go_backwards: bool,
    activation: Activation,
    recurrent_activation: Activation,
    bias: bool,
    /// A plain layer's `zero_output_for_mask`.
    zero_masked_outputs: bool,
}

impl RnnSpec {
    fn new(kind: CellKind, timesteps: usize, features: usize, units: usize) -> Self {
        RnnSpec {
            kind,
            timesteps,
            features,
            units,
            bidirectional: false,
            merge: MergeMode::Concat,
            return_sequences: false,
            go_backwards: false,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            bias: true,
            zero_masked_outputs: false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} T{} F{} U{}{}{}{}",
            self.kind,
            self.timesteps,
            self.features,
            self.units,
            if self.bidirectional {
                format!(" bidirectional {:?}", self.merge)
            } else {
                String::new()
            },
            if self.return_sequences {
                " sequences"
            } else {
                ""
            },
            if self.go_backwards {
                " go_backwards"
            } else {
                ""
            },
        )
    }

    fn cell(&self, rng: &mut Rng, go_backwards: bool) -> RecurrentCell {
        let cols = self.kind.gates() * self.units;
        let scale = 1.0 / (self.units as f32).sqrt();
        RecurrentCell {
            kind: self.kind,
            units: self.units,
            activation: self.activation,
            recurrent_activation: self.recurrent_activation,
            kernel: Array2::from_shape_vec(
                (self.features, cols),
                rng.vec(self.features * cols, scale),
            )
            .unwrap(),
            recurrent_kernel: Array2::from_shape_vec(
                (self.units, cols),
                rng.vec(self.units * cols, scale),
            )
            .unwrap(),
            bias: self.bias.then(|| Array1::from(rng.vec(cols, 0.5))),
            go_backwards,
        }
    }

    fn layer(&self, rng: &mut Rng, masked: bool) -> Layer {
        let forward = self.cell(rng, self.go_backwards);
        let backward = self
            .bidirectional
            .then(|| self.cell(rng, !self.go_backwards));
        let r = Recurrent {
            forward,
            backward,
            merge_mode: self.merge,
            return_sequences: self.return_sequences,
            timesteps: self.timesteps,
            input_features: self.features,
            masked,
            // As Keras: Bidirectional forces zero_output_for_mask = return_sequences.
            zero_masked_outputs: self.zero_masked_outputs
                || (self.bidirectional && self.return_sequences),
        };
        let out_features = r.output_features();
        let output: Vec<usize> = if self.return_sequences {
            vec![self.timesteps, out_features]
        } else {
            vec![out_features]
        };
        let class = if self.bidirectional {
            "Bidirectional"
        } else {
            "RNN"
        };
        layer(
            "rnn",
            class,
            LayerKind::Recurrent(r),
            &[self.timesteps, self.features],
            &output,
        )
    }
}

fn embedding_layer(
    rng: &mut Rng,
    vocab: usize,
    dim: usize,
    timesteps: usize,
    mask_zero: bool,
) -> Layer {
    let kind = LayerKind::Embedding(Embedding {
        input_dim: vocab,
        output_dim: dim,
        table: Array2::from_shape_vec((vocab, dim), rng.vec(vocab * dim, 1.0)).unwrap(),
        mask_zero,
    });
    layer(
        "embedding",
        "Embedding",
        kind,
        &[timesteps],
        &[timesteps, dim],
    )
}

/// Token ids with mixed lengths: rows padded with id 0 at the end, at the start, not at all,
/// and (for batches over 4) one row entirely padding.
fn padded_ids(rng: &mut Rng, batch: usize, timesteps: usize, vocab: usize) -> PreparedInput {
    let mut ids = Array2::<u32>::zeros((batch, timesteps));
    for b in 0..batch {
        let len = match b % 4 {
            0 => timesteps,
            3 if batch > 4 && b == 3 => 0,
            _ => 1 + rng.below(timesteps),
        };
        let pad_front = b % 4 == 2;
        for t in 0..len {
            let pos = if pad_front { timesteps - len + t } else { t };
            ids[[b, pos]] = 1 + rng.below(vocab - 1) as u32;
        }
    }
    PreparedInput::Ids(ids)
}

#[test]
fn embedding_gathers_rows_of_the_table() {
    let mut rng = Rng::new(12);
    let ir = model(
        InputKind::TokenIds,
        &[9],
        vec![embedding_layer(&mut rng, 50, 7, 9, false)],
    );
    check("embedding", &ir, &padded_ids(&mut rng, 33, 9, 50));
}

fn check_rnn(rng: &mut Rng, spec: &RnnSpec, batch: usize) {
    let ir = model(
        InputKind::Float,
        &[spec.timesteps, spec.features],
        vec![spec.layer(rng, false)],
    );
    let input = float_input(rng, batch, &[spec.timesteps, spec.features], 1.0);
    check(&format!("{} batch {batch}", spec.describe()), &ir, &input);
}

#[test]
fn simple_rnn_matches_cpu() {
    let mut rng = Rng::new(13);
    check_rnn(&mut rng, &RnnSpec::new(CellKind::SimpleRnn, 1, 3, 5), 1);
    let mut spec = RnnSpec::new(CellKind::SimpleRnn, 70, 6, 13);
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 33);
    spec.activation = Activation::RELU;
    spec.return_sequences = false;
    spec.timesteps = 12;
    check_rnn(&mut rng, &spec, 2);
    spec.go_backwards = true;
    spec.return_sequences = true;
    spec.bias = false;
    check_rnn(&mut rng, &spec, 3);
}

#[test]
fn lstm_matches_cpu_for_long_sequences_and_wide_layers() {
    let mut rng = Rng::new(14);
    let mut spec = RnnSpec::new(CellKind::Lstm, 70, 8, 13);
    check_rnn(&mut rng, &spec, 33);
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 1);
    // More units than one 64-thread workgroup covers.
    let mut wide = RnnSpec::new(CellKind::Lstm, 9, 5, 70);
    wide.return_sequences = true;
    check_rnn(&mut rng, &wide, 3);
    let mut one_step = RnnSpec::new(CellKind::Lstm, 1, 4, 6);
    one_step.recurrent_activation = Activation::HardSigmoid;
    one_step.bias = false;
    check_rnn(&mut rng, &one_step, 2);
}

#[test]
fn standalone_go_backwards_keeps_processing_order() {
    let mut rng = Rng::new(15);
    let mut spec = RnnSpec::new(CellKind::Lstm, 11, 4, 7);
    spec.go_backwards = true;
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 4);
    spec.return_sequences = false;
    check_rnn(&mut rng, &spec, 4);
}

#[test]
fn bidirectional_matches_cpu_for_every_merge_mode() {
    let mut rng = Rng::new(16);
    for merge in [
        MergeMode::Concat,
        MergeMode::Sum,
        MergeMode::Average,
        MergeMode::Multiply,
    ] {
        for (kind, return_sequences) in [(CellKind::Lstm, true), (CellKind::SimpleRnn, false)] {
            let mut spec = RnnSpec::new(kind, 10, 5, 9);
            spec.bidirectional = true;
            spec.merge = merge;
            spec.return_sequences = return_sequences;
            check_rnn(&mut rng, &spec, 3);
        }
    }
    let mut long = RnnSpec::new(CellKind::Lstm, 70, 6, 13);
    long.bidirectional = true;
    long.return_sequences = true;
    check_rnn(&mut rng, &long, 33);
}

fn check_masked(rng: &mut Rng, spec: &RnnSpec, batch: usize) {
    let vocab = 30;
    let ir = model(
        InputKind::TokenIds,
        &[spec.timesteps],
        vec![
            embedding_layer(rng, vocab, spec.features, spec.timesteps, true),
            spec.layer(rng, true),
        ],
    );
    let ids = padded_ids(rng, batch, spec.timesteps, vocab);
    check(
        &format!("masked {} batch {batch}", spec.describe()),
        &ir,
        &ids,
    );
}

#[test]
fn masking_keeps_state_at_padding_for_plain_layers() {
    let mut rng = Rng::new(17);
    for kind in [CellKind::Lstm, CellKind::SimpleRnn] {
        for (return_sequences, go_backwards) in [(true, false), (false, false), (true, true)] {
            let mut spec = RnnSpec::new(kind, 12, 6, 5);
            spec.return_sequences = return_sequences;
            spec.go_backwards = go_backwards;
            check_masked(&mut rng, &spec, 9);
        }
    }
    // zero_output_for_mask=True on a plain layer writes zeros instead of repeating.
    let mut spec = RnnSpec::new(CellKind::Lstm, 12, 6, 5);
    spec.return_sequences = true;
    spec.zero_masked_outputs = true;
    check_masked(&mut rng, &spec, 9);
}

#[test]
fn masking_writes_zeros_at_padding_inside_bidirectional() {
    let mut rng = Rng::new(18);
    for (merge, return_sequences) in [
        (MergeMode::Concat, true),
        (MergeMode::Concat, false),
        (MergeMode::Sum, true),
        (MergeMode::Multiply, false),
    ] {
        let mut spec = RnnSpec::new(CellKind::Lstm, 15, 4, 6);
        spec.bidirectional = true;
        spec.merge = merge;
        spec.return_sequences = return_sequences;
        check_masked(&mut rng, &spec, 9);
    }
    let mut long = RnnSpec::new(CellKind::Lstm, 70, 8, 12);
    long.bidirectional = true;
    long.return_sequences = true;
    check_masked(&mut rng, &long, 33);
}

/// Embedding(mask_zero) -> Bidirectional(LSTM, sequences) -> LSTM -> Dense softmax.
pub fn small_bilstm(rng: &mut Rng, timesteps: usize) -> ModelIr {
    let mut bi = RnnSpec::new(CellKind::Lstm, timesteps, 16, 12);
    bi.bidirectional = true;
    bi.return_sequences = true;
    let mut bi_layer = bi.layer(rng, true);
    bi_layer.name = "bidirectional".into();
    let top = RnnSpec::new(CellKind::Lstm, timesteps, 24, 10);
    let mut top_layer = top.layer(rng, true);
    top_layer.name = "lstm".into();
    let dense = dense_layer(rng, "dense", &[10], 3, Activation::Softmax);
    let mut ir = model(
        InputKind::TokenIds,
        &[timesteps],
        vec![
            embedding_layer(rng, 100, 16, timesteps, true),
            bi_layer,
            top_layer,
            dense,
        ],
    );
    ir.name = "small_bilstm".into();
    ir
}

#[test]
fn stacked_bilstm_classifier_matches_cpu_end_to_end() {
    let mut rng = Rng::new(19);
    let ir = small_bilstm(&mut rng, 20);
    let Some(gpu) = runtime(&ir) else { return };
    for batch in [1, 33] {
        let ids = padded_ids(&mut rng, batch, 20, 100);
        check_with(&format!("bilstm batch {batch}"), &gpu, &ir, &ids);
    }
}
