//! Criterion benchmarks of the CPU backward rules at the seed's base CNN shapes (CIFAR-10,
//! batch 32): Conv2D 32x32x3 -> 32 filters 3x3 same (the first layer: kernel and bias
//! gradients only, its input being the model's), the same with the input gradient, Conv2D
//! 16x16x32 -> 64 3x3 same (the second layer) and MaxPooling2D 2x2 on 32x32x32.
//!
//! cargo bench --bench grad

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use wgnn::cpu::NodeStep;
use wgnn::graph::*;

const BATCH: usize = 32;

fn values(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0
                - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// A one-node graph: `op` (made with the graph's parameter store) on one float input.
fn graph(name: &str, item: Shape, op: impl FnOnce(&mut ParamStore) -> Op) -> Graph {
    let mut g = Graph::new(name);
    let x = g.add_input("input", item, DType::F32);
    let op = op(&mut g.params);
    let y = g.add_node(name, name, op, &[x], None).unwrap()[0];
    g.add_output("output", y);
    g
}

/// Conv2D 3x3 same, no fused activation (training runs it as its own node).
fn conv(side: usize, channels: usize, filters: usize) -> Graph {
    let window = Window::new(&[3, 3], &[1, 1], &[1, 1], Padding::Same, &[side, side]);
    graph("conv2d", vec![side, side, channels], |p| {
        Op::Conv(Conv {
            filters,
            window,
            in_channels: channels,
            groups: 1,
            kernel: p.add("kernel", values(&[3, 3, channels, filters], 1) * 0.2, true),
            bias: Some(p.add("bias", values(&[filters], 2), true)),
            activation: Activation::Linear,
        })
    })
}

fn pool(side: usize, channels: usize) -> Graph {
    let window = Window::new(&[2, 2], &[2, 2], &[1, 1], Padding::Valid, &[side, side]);
    graph("max_pooling2d", vec![side, side, channels], |_| {
        Op::Pool(Pool {
            op: PoolOp::Max,
            window,
            channels,
        })
    })
}

fn bench_grad(c: &mut Criterion) {
    let cases = [
        ("conv2d_32x32x3_32_dw", conv(32, 3, 32), false),
        ("conv2d_32x32x3_32_dw_dx", conv(32, 3, 32), true),
        ("conv2d_16x16x32_64_dw_dx", conv(16, 32, 64), true),
        ("max_pooling2d_32x32x32", pool(32, 32), true),
    ];
    for (name, g, needs_dx) in cases {
        let mut shape = vec![BATCH];
        shape.extend(
            &g.inputs
                .iter()
                .map(|p| g.value(p.value).shape.clone())
                .next()
                .unwrap(),
        );
        let step = NodeStep::new(g, 0, vec![values(&shape, 3)], vec![needs_dx]).unwrap();
        let mut group = c.benchmark_group(name);
        group.sample_size(20);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("cpu_backward", BATCH), |b| {
            b.iter(|| step.backward().unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench_grad);
criterion_main!(benches);
