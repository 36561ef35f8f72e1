//! Criterion benchmarks of single ops at the shipped models' shapes, CPU and GPU side by side:
//! Dense (VGG6's 4096 -> 512), Conv2D 3x3 (VGG6's 32x32x64 -> 64), MaxPooling2D 2x2, and the
//! seed report's LSTM(8) and Bidirectional SimpleRNN(24) over 60 tokens.
//!
//! cargo bench --bench ops        (GPU rows only where wgpu finds an adapter)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{Array1, Array2, Array4};
use wgnn::ir::*;
use wgnn::{Backend, Model};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0
                - 1.0
        })
        .map(|v| v * 0.2)
        .collect()
}

fn model(
    name: &str,
    input_kind: InputKind,
    input_shape: Shape,
    kind: LayerKind,
    output_shape: Shape,
) -> Model {
    let ir = ModelIr {
        name: name.into(),
        input_kind,
        input_shape: input_shape.clone(),
        layers: vec![Layer {
            name: name.into(),
            class: name.into(),
            kind,
            input_shape,
            output_shape,
        }],
        text_vectorization: None,
    };
    Model::from_ir(ir, std::path::Path::new(name))
}

fn dense() -> Model {
    let kind = LayerKind::Dense(Dense {
        units: 512,
        kernel: Array2::from_shape_vec((4096, 512), values(4096 * 512, 1)).unwrap(),
        bias: Some(Array1::from(values(512, 2))),
        activation: Activation::RELU,
    });
    model("dense", InputKind::Float, vec![4096], kind, vec![512])
}

fn conv() -> Model {
    let window = Window2d::new([3, 3], [1, 1], Padding::Same, [32, 32]);
    let kind = LayerKind::Conv2d(Conv2d {
        filters: 64,
        window,
        in_channels: 64,
        kernel: Array4::from_shape_vec((3, 3, 64, 64), values(9 * 64 * 64, 3)).unwrap(),
        bias: Some(Array1::from(values(64, 4))),
        activation: Activation::RELU,
    });
    model(
        "conv2d",
        InputKind::Float,
        vec![32, 32, 64],
        kind,
        vec![32, 32, 64],
    )
}

fn pool() -> Model {
    let window = Window2d::new([2, 2], [2, 2], Padding::Valid, [32, 32]);
    let kind = LayerKind::Pool2d(Pool2d {
        op: PoolOp::Max,
        window,
        channels: 64,
    });
    model(
        "max_pooling2d",
        InputKind::Float,
        vec![32, 32, 64],
        kind,
        vec![16, 16, 64],
    )
}

fn cell(kind: CellKind, units: usize, features: usize, go_backwards: bool) -> RecurrentCell {
    let g = kind.gates() * units;
    RecurrentCell {
        kind,
        units,
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        kernel: Array2::from_shape_vec((features, g), values(features * g, 5)).unwrap(),
        recurrent_kernel: Array2::from_shape_vec((units, g), values(units * g, 6)).unwrap(),
        bias: Some(Array1::from(values(g, 7))),
        go_backwards,
    }
}

fn recurrent(name: &str, kind: CellKind, units: usize, bidirectional: bool) -> Model {
    let r = Recurrent {
        forward: cell(kind, units, 50, false),
        backward: bidirectional.then(|| cell(kind, units, 50, true)),
        merge_mode: MergeMode::Concat,
        return_sequences: false,
        timesteps: 60,
        input_features: 50,
        masked: false,
        zero_masked_outputs: false,
    };
    let out = r.output_features();
    model(
        name,
        InputKind::Float,
        vec![60, 50],
        LayerKind::Recurrent(Box::new(r)),
        vec![out],
    )
}

fn bench_ops(c: &mut Criterion) {
    let cases: Vec<(Model, usize)> = vec![
        (dense(), 250),
        (conv(), 32),
        (pool(), 250),
        (recurrent("lstm8", CellKind::Lstm, 8, false), 400),
        (recurrent("bi_rnn24", CellKind::SimpleRnn, 24, true), 400),
    ];
    for (model, batch) in &cases {
        let name = model.ir().name.clone();
        let input = wgnn::bench::synthetic_input(model, *batch).unwrap();
        let mut group = c.benchmark_group(&name);
        group.sample_size(10);
        group.throughput(Throughput::Elements(*batch as u64));
        for (label, backend) in [("cpu", Backend::Cpu), ("gpu", Backend::Gpu)] {
            if let Err(e) = model.run(&input, backend) {
                eprintln!("{name} on {label}: {e}; skipped");
                continue;
            }
            group.bench_with_input(BenchmarkId::new(label, batch), &input, |b, input| {
                b.iter(|| model.run(input, backend).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
