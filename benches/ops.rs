//! Criterion benchmarks of single ops at the shipped models' shapes, CPU and GPU side by side:
//! Dense (VGG6's 4096 -> 512), Conv2D 3x3 (VGG6's 32x32x64 -> 64), MaxPooling2D 2x2, and the
//! seed report's LSTM(8) and Bidirectional SimpleRNN(24) over 60 tokens.
//!
//! cargo bench --bench ops        (GPU rows only where wgpu finds an adapter)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use wgnn::graph::*;
use wgnn::{Backend, Model};

fn values(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0
                - 1.0
        })
        .map(|v| v * 0.2)
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// A one-node model: `op` (made with the graph's parameter store) on one float input.
fn model(name: &str, input_shape: Shape, op: impl FnOnce(&mut ParamStore) -> Op) -> Model {
    let mut g = Graph::new(name);
    let x = g.add_input("input", input_shape, DType::F32);
    let op = op(&mut g.params);
    let y = g.add_node(name, name, op, &[x], None).unwrap()[0];
    g.add_output("output", y);
    g.verify().unwrap();
    Model::from_graph(g, std::path::Path::new(name))
}

fn dense() -> Model {
    model("dense", vec![4096], |p| {
        Op::Dense(Dense {
            units: 512,
            in_features: 4096,
            kernel: p.add("dense/kernel", values(&[4096, 512], 1), true),
            bias: Some(p.add("dense/bias", values(&[512], 2), true)),
            activation: Activation::RELU,
        })
    })
}

fn conv() -> Model {
    let window = Window::new(&[3, 3], &[1, 1], &[1, 1], Padding::Same, &[32, 32]);
    model("conv2d", vec![32, 32, 64], |p| {
        Op::Conv(Conv {
            filters: 64,
            window,
            in_channels: 64,
            groups: 1,
            kernel: p.add("conv2d/kernel", values(&[3, 3, 64, 64], 3), true),
            bias: Some(p.add("conv2d/bias", values(&[64], 4), true)),
            activation: Activation::RELU,
        })
    })
}

fn pool() -> Model {
    let window = Window::new(&[2, 2], &[2, 2], &[1, 1], Padding::Valid, &[32, 32]);
    model("max_pooling2d", vec![32, 32, 64], |_| {
        Op::Pool(Pool {
            op: PoolOp::Max,
            window,
            channels: 64,
        })
    })
}

fn cell(
    p: &mut ParamStore,
    kind: CellKind,
    units: usize,
    features: usize,
    go_backwards: bool,
) -> RecurrentCell {
    let g = kind.gates() * units;
    let dir = if go_backwards { "backward" } else { "forward" };
    RecurrentCell {
        kind,
        units,
        activation: Activation::Tanh,
        recurrent_activation: Activation::Sigmoid,
        kernel: p.add(format!("{dir}/kernel"), values(&[features, g], 5), true),
        recurrent_kernel: p.add(
            format!("{dir}/recurrent_kernel"),
            values(&[units, g], 6),
            true,
        ),
        bias: Some(p.add(format!("{dir}/bias"), values(&[g], 7), true)),
        go_backwards,
        dropout: CellDropout::default(),
    }
}

fn recurrent(name: &str, kind: CellKind, units: usize, bidirectional: bool) -> Model {
    model(name, vec![60, 50], |p| {
        Op::Recurrent(Box::new(Recurrent {
            forward: cell(p, kind, units, 50, false),
            backward: bidirectional.then(|| cell(p, kind, units, 50, true)),
            merge_mode: MergeMode::Concat,
            return_sequences: false,
            timesteps: 60,
            input_features: 50,
            zero_masked_outputs: false,
            return_state: false,
            initial_state: false,
        }))
    })
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
        let name = model.graph().name.clone();
        let input = wgnn::bench::synthetic_inputs(model, *batch).unwrap();
        let mut group = c.benchmark_group(&name);
        group.sample_size(10);
        group.throughput(Throughput::Elements(*batch as u64));
        for (label, backend) in [("cpu", Backend::Cpu), ("gpu", Backend::Gpu)] {
            if let Err(e) = model.run_all(&input, backend) {
                eprintln!("{name} on {label}: {e}; skipped");
                continue;
            }
            group.bench_with_input(BenchmarkId::new(label, batch), &input, |b, input| {
                b.iter(|| model.run_all(input, backend).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
