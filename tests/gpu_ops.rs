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
