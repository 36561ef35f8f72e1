//! Shared by the GPU test binaries: reproducible random values, a `Chain` builder of hand-made
//! `Graph`s for every op, and the GPU-vs-CPU comparison at |gpu - cpu| <= 1e-4 * (1 + |cpu|).

// Each test binary uses a different subset.
#![allow(dead_code)]

use ndarray::{Array2, ArrayD, IxDyn};
use wgnn::gpu::train::GpuTrainer;
use wgnn::gpu::GpuRuntime;
use wgnn::graph::*;
use wgnn::train::{Quiet, TrainBackend, TrainConfig, TrainData, TrainGraph, Trainer};
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

/// A hand-made model built as a chain: each method adds one node reading the previous value
/// (and, for recurrent ops, the padding mask that reaches it, as Keras propagates it).
pub struct Chain {
    pub graph: Graph,
    /// The value the next node reads.
    pub x: ValueId,
    /// The padding mask attached to `x`, if an `Embedding(mask_zero)` made one.
    pub mask: Option<ValueId>,
}

impl Chain {
    pub fn new(name: &str, shape: &[usize], dtype: DType) -> Chain {
        let mut graph = Graph::new(name);
        let x = graph.add_input("input", shape.to_vec(), dtype);
        Chain {
            graph,
            x,
            mask: None,
        }
    }

    /// A float input named `input`, in a model named `gpu_ops`.
    pub fn float(shape: &[usize]) -> Chain {
        Chain::new("gpu_ops", shape, DType::F32)
    }

    /// A token-id input of `timesteps` ids.
    pub fn ids(timesteps: usize) -> Chain {
        Chain::new("gpu_ops", &[timesteps], DType::Ids)
    }

    pub fn named(mut self, name: &str) -> Chain {
        self.graph.name = name.into();
        self
    }

    /// The shape of the value the next node reads.
    pub fn shape(&self) -> Vec<usize> {
        self.graph.value(self.x).shape.clone()
    }

    pub fn param(&mut self, name: &str, value: ArrayD<f32>) -> ParamId {
        self.graph.params.add(name, value, true)
    }

    /// Adds `op` on the current value; panics with the shape rule's message if it does not fit.
    pub fn op(mut self, name: &str, class: &str, op: Op) -> Chain {
        let mask = if op.takes_mask() { self.mask } else { None };
        let outs = self
            .graph
            .add_node(name, class, op, &[self.x], mask)
            .unwrap_or_else(|e| panic!("layer '{name}' ({class}): {e}"));
        self.x = outs[0];
        self
    }

    /// Makes the current value the (only) output and checks the graph.
    pub fn build(mut self) -> Graph {
        self.graph.add_output("output", self.x);
        self.graph.verify().unwrap();
        self.graph
    }

    pub fn dense(mut self, rng: &mut Rng, name: &str, units: usize, act: Activation) -> Chain {
        let k = *self.shape().last().unwrap();
        let scale = 1.0 / (k as f32).sqrt();
        let kernel = self.param(&format!("{name}/kernel"), rng.array(&[k, units], scale));
        let bias = self.param(&format!("{name}/bias"), rng.array(&[units], 0.5));
        let op = Op::Dense(Dense {
            units,
            in_features: k,
            kernel,
            bias: Some(bias),
            activation: act,
        });
        self.op(name, "Dense", op)
    }

    // Every argument is a knob the conv tests turn.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        mut self,
        rng: &mut Rng,
        name: &str,
        filters: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        activation: Activation,
        bias: bool,
    ) -> Chain {
        let [h, w, c] = self.shape()[..] else {
            panic!(
                "conv '{name}' needs an (H, W, C) input, got {:?}",
                self.shape()
            )
        };
        let window = Window::new(&kernel, &strides, &[1, 1], padding, &[h, w]);
        let fan_in = kernel[0] * kernel[1] * c;
        let weights = rng.array(
            &[kernel[0], kernel[1], c, filters],
            1.0 / (fan_in as f32).sqrt(),
        );
        let kernel = self.param(&format!("{name}/kernel"), weights);
        let bias = bias.then(|| {
            let b = rng.array(&[filters], 0.3);
            self.param(&format!("{name}/bias"), b)
        });
        let op = Op::Conv(Conv {
            filters,
            window,
            in_channels: c,
            groups: 1,
            kernel,
            bias,
            activation,
        });
        self.op(name, "Conv2D", op)
    }

    pub fn pool(
        self,
        name: &str,
        op: PoolOp,
        pool: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Chain {
        let [h, w, c] = self.shape()[..] else {
            panic!(
                "pool '{name}' needs an (H, W, C) input, got {:?}",
                self.shape()
            )
        };
        let window = Window::new(&pool, &strides, &[1, 1], padding, &[h, w]);
        let op = Op::Pool(Pool {
            op,
            window,
            channels: c,
        });
        self.op(name, "Pooling2D", op)
    }

    /// Embedding of the token ids; with `mask_zero`, a `PaddingMask` node on the ids makes the
    /// mask that the recurrent nodes after it read.
    pub fn embedding(
        mut self,
        rng: &mut Rng,
        name: &str,
        vocab: usize,
        dim: usize,
        mask_zero: bool,
    ) -> Chain {
        let ids = self.x;
        let table = self.param(&format!("{name}/embeddings"), rng.array(&[vocab, dim], 1.0));
        let op = Op::Embedding(Embedding {
            input_dim: vocab,
            output_dim: dim,
            table,
            mask_zero,
        });
        let mut chain = self.op(name, "Embedding", op);
        if mask_zero {
            let mask = chain
                .graph
                .add_node(
                    &format!("{name}_mask"),
                    "NotEqual",
                    Op::PaddingMask,
                    &[ids],
                    None,
                )
                .unwrap();
            chain.mask = Some(mask[0]);
        }
        chain
    }

    /// A recurrent layer as `spec` describes it; it reads the chain's mask, and passes it on
    /// only with return_sequences (as Keras).
    pub fn rnn(mut self, rng: &mut Rng, name: &str, spec: &RnnSpec) -> Chain {
        let forward = spec.cell(rng, &mut self.graph.params, name, spec.go_backwards);
        let backward = spec
            .bidirectional
            .then(|| spec.cell(rng, &mut self.graph.params, name, !spec.go_backwards));
        let r = Recurrent {
            forward,
            backward,
            merge_mode: spec.merge,
            return_sequences: spec.return_sequences,
            timesteps: spec.timesteps,
            input_features: spec.features,
            // As Keras: Bidirectional forces zero_output_for_mask = return_sequences.
            zero_masked_outputs: spec.zero_masked_outputs
                || (spec.bidirectional && spec.return_sequences),
            return_state: false,
            initial_state: false,
        };
        let class = if spec.bidirectional {
            "Bidirectional"
        } else {
            "RNN"
        };
        let mask = self.mask;
        let mut chain = self.op(name, class, Op::Recurrent(Box::new(r)));
        chain.mask = if spec.return_sequences { mask } else { None };
        chain
    }
}

/// The runtime for `graph`, or None (with a note) when this machine has no GPU adapter and `CI`
/// is unset.
pub fn runtime(graph: &Graph) -> Option<GpuRuntime> {
    match GpuRuntime::new(graph, None) {
        Ok(rt) => Some(rt),
        Err(e) if crate::common::no_adapter_outside_ci(&e) => None,
        Err(e) => panic!("creating the GPU runtime for '{}' failed: {e}", graph.name),
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

/// Runs a single-input `graph` on both backends and compares.
pub fn check(what: &str, graph: &Graph, input: &PreparedInput) {
    let Some(gpu) = runtime(graph) else { return };
    check_with(what, &gpu, graph, input);
}

pub fn check_with(what: &str, gpu: &GpuRuntime, graph: &Graph, input: &PreparedInput) {
    check_all_with(what, gpu, graph, std::slice::from_ref(input));
}

/// Runs `graph` on both backends with one batch per graph input and compares every output;
/// returns the CPU outputs.
pub fn check_all_with(
    what: &str,
    gpu: &GpuRuntime,
    graph: &Graph,
    inputs: &[PreparedInput],
) -> Vec<ArrayD<f32>> {
    let cpu_out = wgnn::cpu::run(graph, inputs).unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let gpu_out = gpu
        .run(graph, inputs)
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    assert_eq!(
        gpu_out.len(),
        cpu_out.len(),
        "{what}: the backends return different numbers of outputs"
    );
    assert_eq!(cpu_out.len(), graph.outputs.len(), "{what}: output count");
    for (k, (g, c)) in gpu_out.iter().zip(&cpu_out).enumerate() {
        let name = &graph.outputs[k].name;
        assert_close(&format!("{what}, output '{name}'"), g, c);
    }
    cpu_out
}

pub fn float_input(rng: &mut Rng, batch: usize, shape: &[usize], scale: f32) -> PreparedInput {
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    PreparedInput::Float(rng.array(&full, scale))
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

/// A small CNN end to end: rescaling, conv stack, pooling, flatten, dropout, dense softmax.
pub fn small_cnn(rng: &mut Rng) -> Graph {
    let rescale = Op::Rescaling {
        scale: vec![1.0 / 255.0],
        offset: vec![0.0],
    };
    Chain::float(&[12, 12, 3])
        .named("small_cnn")
        .op("rescaling", "Rescaling", rescale)
        .conv(
            rng,
            "conv1",
            8,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::RELU,
            true,
        )
        .pool("pool", PoolOp::Max, [2, 2], [2, 2], Padding::Valid)
        .conv(
            rng,
            "conv2",
            16,
            [3, 3],
            [1, 1],
            Padding::Valid,
            Activation::RELU,
            true,
        )
        .pool("pool2", PoolOp::Average, [2, 2], [2, 2], Padding::Same)
        .op("flatten", "Flatten", Op::Reshape { shape: vec![64] })
        .op("dropout", "Dropout", Op::Identity)
        .dense(rng, "dense", 10, Activation::Softmax)
        .build()
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
    /// Both directions' dropout / recurrent_dropout.
    pub dropout: CellDropout,
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
            dropout: CellDropout::default(),
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

    /// One direction's cell, its weights added to `params` under `layer/forward|backward/...`.
    pub fn cell(
        &self,
        rng: &mut Rng,
        params: &mut ParamStore,
        layer: &str,
        go_backwards: bool,
    ) -> RecurrentCell {
        let cols = self.kind.gates() * self.units;
        let scale = 1.0 / (self.units as f32).sqrt();
        let dir = if go_backwards { "backward" } else { "forward" };
        let prefix = format!("{layer}/{dir}");
        let kernel = params.add(
            format!("{prefix}/kernel"),
            rng.array(&[self.features, cols], scale),
            true,
        );
        let recurrent_kernel = params.add(
            format!("{prefix}/recurrent_kernel"),
            rng.array(&[self.units, cols], scale),
            true,
        );
        let bias = self.bias.then(|| {
            // A reset_after GRU has input and recurrent biases, (2, 3·units).
            let b = if self.kind == (CellKind::Gru { reset_after: true }) {
                rng.array(&[2, cols], 0.5)
            } else {
                rng.array(&[cols], 0.5)
            };
            params.add(format!("{prefix}/bias"), b, true)
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
pub fn small_bilstm(rng: &mut Rng, timesteps: usize) -> Graph {
    let mut bi = RnnSpec::new(CellKind::Lstm, timesteps, 16, 12);
    bi.bidirectional = true;
    bi.return_sequences = true;
    let top = RnnSpec::new(CellKind::Lstm, timesteps, 24, 10);
    Chain::ids(timesteps)
        .named("small_bilstm")
        .embedding(rng, "embedding", 100, 16, true)
        .rnn(rng, "bidirectional", &bi)
        .rnn(rng, "lstm", &top)
        .dense(rng, "dense", 3, Activation::Softmax)
        .build()
}

/// A ConvLSTM1D/2D layer for `Chain::conv_lstm`, with Keras's defaults (tanh / sigmoid, bias,
/// last output only, forward in time).
pub struct ConvLstmSpec {
    pub one_d: bool,
    pub timesteps: usize,
    /// One step's image (H, W, C); a 1-D layer has H = 1 and a (T, W, C) input.
    pub image: [usize; 3],
    pub filters: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
    pub activation: Activation,
    pub recurrent_activation: Activation,
    pub bias: bool,
    pub return_sequences: bool,
    pub go_backwards: bool,
}

impl ConvLstmSpec {
    /// A 2-D layer on (T, H, W, C) with a `kernel` window, stride 1, `same`.
    pub fn new_2d(timesteps: usize, image: [usize; 3], filters: usize, kernel: [usize; 2]) -> Self {
        ConvLstmSpec {
            one_d: false,
            timesteps,
            image,
            filters,
            kernel,
            strides: [1, 1],
            padding: Padding::Same,
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            bias: true,
            return_sequences: false,
            go_backwards: false,
        }
    }

    /// A 1-D layer on (T, W, C) with a window of `kernel` taps.
    pub fn new_1d(
        timesteps: usize,
        width: usize,
        channels: usize,
        filters: usize,
        kernel: usize,
    ) -> Self {
        ConvLstmSpec {
            one_d: true,
            ..ConvLstmSpec::new_2d(timesteps, [1, width, channels], filters, [1, kernel])
        }
    }

    /// The layer's input shape without the batch axis.
    pub fn input_shape(&self) -> Vec<usize> {
        let [h, w, c] = self.image;
        if self.one_d {
            vec![self.timesteps, w, c]
        } else {
            vec![self.timesteps, h, w, c]
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "ConvLSTM{} T{} {:?} F{} k{:?} s{:?} {:?} {}/{}{}{}{}",
            if self.one_d { "1D" } else { "2D" },
            self.timesteps,
            self.image,
            self.filters,
            self.kernel,
            self.strides,
            self.padding,
            self.activation.name(),
            self.recurrent_activation.name(),
            if self.bias { "" } else { " no bias" },
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
}

impl Chain {
    /// A ConvLSTM layer as `spec` describes it, on the chain's current value (which must have
    /// the spec's input shape).
    pub fn conv_lstm(mut self, rng: &mut Rng, name: &str, spec: &ConvLstmSpec) -> Chain {
        assert_eq!(self.shape(), spec.input_shape(), "conv_lstm '{name}' input");
        let [h, w, c] = spec.image;
        let [kh, kw] = spec.kernel;
        let f = spec.filters;
        let window = Window2d::new(spec.kernel, spec.strides, spec.padding, [h, w]);
        let recurrent_window = Window2d::new(spec.kernel, [1, 1], Padding::Same, window.out_hw);
        let shape = |rows: usize| {
            if spec.one_d {
                vec![kw, rows, 4 * f]
            } else {
                vec![kh, kw, rows, 4 * f]
            }
        };
        let taps = (kh * kw) as f32;
        let kernel = rng.array(&shape(c), 1.0 / (taps * c as f32).sqrt());
        let kernel = self.param(&format!("{name}/kernel"), kernel);
        let recurrent = rng.array(&shape(f), 1.0 / (taps * f as f32).sqrt());
        let recurrent_kernel = self.param(&format!("{name}/recurrent_kernel"), recurrent);
        let bias = spec.bias.then(|| {
            let b = rng.array(&[4 * f], 0.5);
            self.param(&format!("{name}/bias"), b)
        });
        let op = Op::ConvLstm(Box::new(ConvLstm {
            filters: f,
            timesteps: spec.timesteps,
            in_channels: c,
            one_d: spec.one_d,
            window,
            recurrent_window,
            kernel,
            recurrent_kernel,
            bias,
            activation: spec.activation,
            recurrent_activation: spec.recurrent_activation,
            return_sequences: spec.return_sequences,
            go_backwards: spec.go_backwards,
            dropout: 0.0,
            recurrent_dropout: 0.0,
        }));
        let class = if spec.one_d {
            "ConvLSTM1D"
        } else {
            "ConvLSTM2D"
        };
        self.op(name, class, op)
    }
}

// GPU training vs the CPU reference: the backward of a graph from seeded output gradients.

/// The GPU trainer for `tg`, or None (with a note) without an adapter outside CI.
pub fn trainer(tg: &TrainGraph) -> Option<GpuTrainer> {
    match GpuTrainer::new(tg, 0, None) {
        Ok(t) => Some(t),
        Err(e) if crate::common::no_adapter_outside_ci(&e) => None,
        Err(e) => panic!(
            "creating the GPU trainer for '{}' failed: {e}",
            tg.graph.name
        ),
    }
}

/// Random output gradients shaped like each output for `batch` items.
pub fn seeds(rng: &mut Rng, graph: &Graph, batch: usize) -> Vec<ArrayD<f32>> {
    graph
        .outputs
        .iter()
        .map(|p| {
            let mut shape = vec![batch];
            shape.extend_from_slice(&graph.value(p.value).shape);
            rng.array(&shape, 1.0)
        })
        .collect()
}

/// The backward of `graph` from random output gradients on both backends, compared: every
/// parameter gradient and (with `input_grads`) the input's gradient. Returns false when the
/// GPU is missing outside CI.
pub fn check_backward(
    what: &str,
    graph: &Graph,
    inputs: &[PreparedInput],
    input_grads: bool,
) -> bool {
    let tg = if input_grads {
        TrainGraph::with_input_gradients(graph)
    } else {
        TrainGraph::new(graph)
    }
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let Some(mut gpu) = trainer(&tg) else {
        return false;
    };
    let batch = inputs[0].batch();
    let mut rng = Rng::new(batch as u64 + 7);
    let dys = seeds(&mut rng, &tg.graph, batch);
    let (cpu_grads, cpu_inputs) = tg
        .seeded_gradients(inputs, &dys, &mut wgnn::train::Rng::new(1))
        .unwrap_or_else(|e| panic!("{what}: cpu: {e}"));
    let (gpu_grads, gpu_inputs) = gpu
        .seeded_gradients(&tg, inputs, &dys, &mut wgnn::train::Rng::new(1))
        .unwrap_or_else(|e| panic!("{what}: gpu: {e}"));
    let mut compared = 0;
    for (id, g) in &gpu_grads {
        let name = &tg.graph.params.param(*id).name;
        let c = cpu_grads
            .get(*id)
            .unwrap_or_else(|| panic!("{what}: the CPU has no gradient of {name}"));
        assert_close(&format!("{what}: d {name}"), g, c);
        compared += 1;
    }
    let trainable = tg.graph.params.iter().filter(|(_, p)| p.trainable).count();
    assert_eq!(
        compared, trainable,
        "{what}: every trainable parameter compared"
    );
    for (k, (g, c)) in gpu_inputs.iter().zip(&cpu_inputs).enumerate() {
        match (g, c) {
            (Some(g), Some(c)) => assert_close(&format!("{what}: d input {k}"), g, c),
            (None, None) => {}
            _ => panic!("{what}: input {k}: one backend computed its gradient, the other not"),
        }
    }
    if input_grads {
        assert!(
            gpu_inputs.iter().any(Option::is_some),
            "{what}: input gradient compared"
        );
    }
    true
}

/// `fit` with `config` on the CPU and on the GPU from the same weights: every epoch's loss,
/// metric and validation loss within 1e-4 relative, and the trained weights within
/// 1e-4·(1 + |cpu|). Returns false when the GPU is missing outside CI.
pub fn fit_both(
    what: &str,
    graph: &Graph,
    data: &TrainData,
    val: Option<&TrainData>,
    config: TrainConfig,
) -> bool {
    let mut cpu = Trainer::new(graph, config.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let gpu_backend = TrainBackend::Gpu { adapter: None };
    let mut gpu = match Trainer::on(graph, config, gpu_backend) {
        Ok(t) => t,
        Err(e) if crate::common::no_adapter_outside_ci(&e) => return false,
        Err(e) => panic!("{what}: gpu trainer: {e}"),
    };
    let h_cpu = cpu
        .fit(data, val, &mut Quiet)
        .unwrap_or_else(|e| panic!("{what}: cpu fit: {e}"));
    let h_gpu = gpu
        .fit(data, val, &mut Quiet)
        .unwrap_or_else(|e| panic!("{what}: gpu fit: {e}"));
    let rel = |g: f64, c: f64| (g - c).abs() / c.abs().max(1e-12);
    for (e, (g, c)) in h_gpu.epochs.iter().zip(&h_cpu.epochs).enumerate() {
        assert!(
            rel(g.loss, c.loss) <= 1e-4,
            "{what}: epoch {e} loss gpu {} vs cpu {}",
            g.loss,
            c.loss
        );
        for ((name, gv), (_, cv)) in g.metrics.iter().zip(&c.metrics) {
            assert!(
                (gv - cv).abs() <= 1e-4 * (1.0 + cv.abs()),
                "{what}: epoch {e} {name}: gpu {gv} vs cpu {cv}"
            );
        }
        if let (Some(gv), Some(cv)) = (g.val_loss, c.val_loss) {
            assert!(
                rel(gv, cv) <= 1e-4,
                "{what}: epoch {e} val_loss gpu {gv} vs cpu {cv}"
            );
        }
        println!("{what}: epoch {e}: loss gpu {} cpu {}", g.loss, c.loss);
    }
    assert_eq!(h_gpu.epochs.len(), h_cpu.epochs.len());
    for (id, p) in cpu.params().iter() {
        let g = gpu.params().get(id).to_owned();
        assert_close(&format!("{what}: trained {}", p.name), &g, &p.value);
    }
    let moved = cpu
        .params()
        .iter()
        .any(|(id, p)| p.trainable && p.value != graph.params.get(id));
    assert!(moved, "{what}: training changed no weight");
    true
}

pub fn labels(rng: &mut Rng, n: usize, classes: usize) -> ArrayD<f32> {
    ArrayD::from_shape_fn(ndarray::IxDyn(&[n]), |_| rng.below(classes) as f32)
}
