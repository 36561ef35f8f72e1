//! Shared by the GPU test binaries: reproducible random values, `ModelIr` builders for every
//! layer kind, and the GPU-vs-CPU comparison at |gpu - cpu| <= 1e-4 * (1 + |cpu|).

// Each test binary uses a different subset.
#![allow(dead_code)]

use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use wgnn::gpu::GpuRuntime;
use wgnn::ir::*;
use wgnn::PreparedInput;

/// xorshift64*: reproducible values without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }

    pub fn array(&mut self, shape: &[usize], scale: f32) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), self.vec(n, scale)).unwrap()
    }
}

pub fn layer(name: &str, class: &str, kind: LayerKind, input: &[usize], output: &[usize]) -> Layer {
    Layer {
        name: name.into(),
        class: class.into(),
        kind,
        input_shape: input.to_vec(),
        output_shape: output.to_vec(),
    }
}

pub fn model(input_kind: InputKind, input_shape: &[usize], layers: Vec<Layer>) -> ModelIr {
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
pub fn runtime(ir: &ModelIr) -> Option<GpuRuntime> {
    match GpuRuntime::new(ir, None) {
        Ok(rt) => Some(rt),
        Err(e) if crate::common::no_adapter_outside_ci(&e) => None,
        Err(e) => panic!("creating the GPU runtime for '{}' failed: {e}", ir.name),
    }
}

pub fn assert_close(what: &str, gpu: &ArrayD<f32>, cpu: &ArrayD<f32>) {
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

pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        index[d] = i % n.max(1);
        i /= n.max(1);
    }
    index
}

/// Runs `ir` on both backends and compares.
pub fn check(what: &str, ir: &ModelIr, input: &PreparedInput) {
    let Some(gpu) = runtime(ir) else { return };
    check_with(what, &gpu, ir, input);
}

pub fn check_with(what: &str, gpu: &GpuRuntime, ir: &ModelIr, input: &PreparedInput) {
    let cpu_out = wgnn::cpu::run(ir, input).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let gpu_out = gpu
        .run(ir, input)
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    assert_close(what, &gpu_out, &cpu_out);
}

pub fn float_input(rng: &mut Rng, batch: usize, shape: &[usize], scale: f32) -> PreparedInput {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    PreparedInput::Float(rng.array(&full, scale))
}

pub fn dense_layer(
    rng: &mut Rng,
    name: &str,
    input: &[usize],
    units: usize,
    act: Activation,
) -> Layer {
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

pub const ALL_ACTIVATIONS: [Activation; 15] = [
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

// Every argument is a knob the conv tests turn.
#[allow(clippy::too_many_arguments)]
pub fn conv_layer(
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

pub fn pool_layer(
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

pub struct RnnSpec {
    pub kind: CellKind,
    pub timesteps: usize,
    pub features: usize,
    pub units: usize,
    pub bidirectional: bool,
    pub merge: MergeMode,
    pub return_sequences: bool,
    pub go_backwards: bool,
    pub activation: Activation,
    pub recurrent_activation: Activation,
    pub bias: bool,
    /// A plain layer's `zero_output_for_mask`.
    pub zero_masked_outputs: bool,
}

impl RnnSpec {
    pub fn new(kind: CellKind, timesteps: usize, features: usize, units: usize) -> Self {
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

    pub fn describe(&self) -> String {
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

    pub fn cell(&self, rng: &mut Rng, go_backwards: bool) -> RecurrentCell {
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

    pub fn layer(&self, rng: &mut Rng, masked: bool) -> Layer {
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
            LayerKind::Recurrent(Box::new(r)),
            &[self.timesteps, self.features],
            &output,
        )
    }
}

pub fn embedding_layer(
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
pub fn padded_ids(rng: &mut Rng, batch: usize, timesteps: usize, vocab: usize) -> PreparedInput {
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
