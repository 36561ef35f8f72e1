//! GPU training of the merge family against the CPU reference path: the backward of every
//! merge (Add ... Minimum, Average, Divide, broadcast inputs, masked), Dot (every axis pairing,
//! normalize), PReLU (shared axes, frozen alpha) and the Softmax layer (any contiguous axes,
//! log_softmax) runs from given output gradients (`Mode::Seeded`) at batch 1 and 33 and sizes
//! that are not multiples of 4 or of the workgroup, placed after trainable layers so both the
//! parameter and the input gradients flow through it; each must match the CPU's within
//! 1e-4·(1 + |cpu|).
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::{check_backward, float_input, padded_ids, Chain, Rng};
use ndarray::ArrayD;
use wgnn::graph::*;
use wgnn::PreparedInput;

/// A linear Dense from `features` to `units` on value `x`.
fn dense_on(graph: &mut Graph, rng: &mut Rng, name: &str, x: ValueId, units: usize) -> ValueId {
    let features = *graph.value(x).shape.last().unwrap();
    let scale = 1.0 / (features as f32).sqrt();
    let kernel = graph.params.add(
        format!("{name}/kernel"),
        rng.array(&[features, units], scale),
        true,
    );
    let bias = graph
        .params
        .add(format!("{name}/bias"), rng.array(&[units], 0.5), true);
    let op = Op::Dense(Dense {
        units,
        in_features: features,
        kernel,
        bias: Some(bias),
        activation: Activation::Linear,
    });
    graph.add_node(name, "Dense", op, &[x], None).unwrap()[0]
}

/// A model of one float input per item shape in `items`, each read by the merge-family node
/// `op` directly (`dense[k]` false) or through a Dense to its shape (from 3 features).
/// Returns the graph and the inputs' item shapes.
fn branches(
    rng: &mut Rng,
    items: &[Vec<usize>],
    dense: &[bool],
    class: &str,
    op: Op,
) -> (Graph, Vec<Vec<usize>>) {
    let mut graph = Graph::new("gpu_merge");
    let mut values = Vec::new();
    let mut shapes = Vec::new();
    for (k, item) in items.iter().enumerate() {
        if dense[k] {
            let mut shape = item.clone();
            *shape.last_mut().unwrap() = 3;
            let x = graph.add_input(format!("input{k}"), shape.clone(), DType::F32);
            let units = *item.last().unwrap();
            values.push(dense_on(&mut graph, rng, &format!("dense{k}"), x, units));
            shapes.push(shape);
        } else {
            values.push(graph.add_input(format!("input{k}"), item.clone(), DType::F32));
            shapes.push(item.clone());
        }
    }
    let y = graph
        .add_node("merge", class, op, &values, None)
        .unwrap_or_else(|e| panic!("{class} of {items:?}: {e}"));
    graph.add_output("output", y[0]);
    graph.verify().unwrap();
    (graph, shapes)
}

fn inputs_for(rng: &mut Rng, batch: usize, shapes: &[Vec<usize>]) -> Vec<PreparedInput> {
    shapes
        .iter()
        .map(|s| float_input(rng, batch, s, 1.0))
        .collect()
}

fn merge_op(op: BinaryOp, average: bool) -> Op {
    Op::Merge(Merge {
        op,
        average,
        masked: false,
    })
}

/// Same shapes; a size-1 axis stretched; both stretched; a lower rank; three inputs mixing
/// them; four inputs (a fold of three steps).
fn layouts() -> Vec<Vec<Vec<usize>>> {
    vec![
        vec![vec![5, 7], vec![5, 7]],
        vec![vec![5, 7], vec![1, 7]],
        vec![vec![1, 7], vec![5, 1]],
        vec![vec![3, 5, 7], vec![7]],
        vec![vec![5, 7], vec![1, 7], vec![7]],
        vec![vec![6], vec![6], vec![6], vec![6]],
    ]
}

#[test]
fn every_merge_backward_matches_cpu_with_broadcasting() {
    let ops = [
        (BinaryOp::Add, false, "Add"),
        (BinaryOp::Add, true, "Average"),
        (BinaryOp::Subtract, false, "Subtract"),
        (BinaryOp::Multiply, false, "Multiply"),
        (BinaryOp::Maximum, false, "Maximum"),
        (BinaryOp::Minimum, false, "Minimum"),
    ];
    for (c, (op, average, class)) in ops.iter().enumerate() {
        for (l, items) in layouts().iter().enumerate() {
            let mut rng = Rng::new(100 + 10 * c as u64 + l as u64);
            // Input 0 read directly, the others through a Dense (and the other way round).
            let dense: Vec<bool> = (0..items.len()).map(|k| (k + l) % 2 == 1).collect();
            let (graph, shapes) = branches(&mut rng, items, &dense, class, merge_op(*op, *average));
            let batch = if (c + l) % 2 == 0 { 33 } else { 1 };
            let xs = inputs_for(&mut rng, batch, &shapes);
            let what = format!("{class} of {items:?} (dense {dense:?}), batch {batch}");
            if !check_backward(&what, &graph, &xs, true) {
                return;
            }
        }
    }
}

#[test]
fn divide_backward_matches_cpu() {
    // x / y with y away from 0: y is an input in [1.5, 2.5), x goes through a Dense.
    for (items, batch) in [
        (vec![vec![4, 6], vec![4, 6]], 33),
        (vec![vec![4, 6], vec![1, 6]], 1),
        (vec![vec![4, 6], vec![6], vec![4, 1]], 5),
    ] {
        let mut rng = Rng::new(7);
        let mut dense = vec![false; items.len()];
        dense[0] = true;
        let op = merge_op(BinaryOp::Divide, false);
        let (graph, shapes) = branches(&mut rng, &items, &dense, "Divide", op);
        let mut xs = inputs_for(&mut rng, batch, &shapes);
        for x in xs.iter_mut().skip(1) {
            if let PreparedInput::Float(a) = x {
                a.mapv_inplace(|v| v * 0.5 + 2.0);
            }
        }
        let what = format!("Divide of {items:?}, batch {batch}");
        if !check_backward(&what, &graph, &xs, true) {
            return;
        }
    }
}

/// Values from {-1, -0.5, 0, 0.5, 1}: many exact ties between inputs.
fn tied_input(rng: &mut Rng, batch: usize, item: &[usize]) -> PreparedInput {
    let mut shape = vec![batch];
    shape.extend_from_slice(item);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.below(5) as f32 * 0.5 - 1.0).collect();
    PreparedInput::Float(ArrayD::from_shape_vec(ndarray::IxDyn(&shape), v).unwrap())
}

#[test]
fn maximum_and_minimum_ties_follow_the_cpu() {
    // Inputs read directly, so each input's own gradient shows where a tie went.
    for op in [BinaryOp::Maximum, BinaryOp::Minimum] {
        for items in [
            vec![vec![9], vec![9]],
            vec![vec![3, 9], vec![3, 9], vec![3, 9]],
            vec![vec![3, 9], vec![1, 9], vec![9]],
        ] {
            let mut rng = Rng::new(17);
            let dense = vec![false; items.len()];
            let (graph, shapes) =
                branches(&mut rng, &items, &dense, "Maximum", merge_op(op, false));
            let xs: Vec<PreparedInput> =
                shapes.iter().map(|s| tied_input(&mut rng, 6, s)).collect();
            let what = format!("{op:?} with ties, {items:?}");
            if !check_backward(&what, &graph, &xs, true) {
                return;
            }
        }
    }
}

#[test]
fn a_merge_reading_one_value_twice_sums_both_shares() {
    // op(d, e, d): the one Dense output d gets the shares of inputs 1 and 3.
    for (op, class) in [
        (BinaryOp::Multiply, "Multiply"),
        (BinaryOp::Subtract, "Subtract"),
        (BinaryOp::Maximum, "Maximum"),
    ] {
        let mut rng = Rng::new(23);
        let mut graph = Graph::new("gpu_merge");
        let x = graph.add_input("input", vec![4, 3], DType::F32);
        let d = dense_on(&mut graph, &mut rng, "dense", x, 5);
        let e = dense_on(&mut graph, &mut rng, "dense_b", x, 5);
        let y = graph
            .add_node("merge", class, merge_op(op, false), &[d, e, d], None)
            .unwrap();
        graph.add_output("output", y[0]);
        let xs = [float_input(&mut rng, 3, &[4, 3], 1.0)];
        if !check_backward(&format!("{class}(d, e, d)"), &graph, &xs, true) {
            return;
        }
    }
}

#[test]
fn masked_merges_match_cpu() {
    // Embedding(mask_zero) -> two Dense branches -> masked Multiply / Maximum / Minimum of two
    // or three: padded steps take nothing (Multiply) or go to input 0 whole.
    let timesteps = 6;
    for op in [BinaryOp::Multiply, BinaryOp::Maximum, BinaryOp::Minimum] {
        for count in [2, 3] {
            let mut rng = Rng::new(31 + count as u64);
            let chain = Chain::ids(timesteps).embedding(&mut rng, "embedding", 20, 5, true);
            let mask = chain.mask;
            let emb = chain.x;
            let mut graph = chain.graph;
            let values: Vec<ValueId> = (0..count)
                .map(|k| dense_on(&mut graph, &mut rng, &format!("dense{k}"), emb, 7))
                .collect();
            let m = Op::Merge(Merge {
                op,
                average: false,
                masked: true,
            });
            let y = graph
                .add_node("merge", "Multiply", m, &values, mask)
                .unwrap();
            let z = dense_on(&mut graph, &mut rng, "top", y[0], 3);
            graph.add_output("output", z);
            graph.verify().unwrap();
            for batch in [1, 9] {
                let ids = padded_ids(&mut rng, batch, timesteps, 20);
                let what = format!("masked {op:?} of {count}, batch {batch}");
                if !check_backward(&what, &graph, &[ids], false) {
                    return;
                }
            }
        }
    }
}

#[test]
fn dot_backward_matches_cpu() {
    // (x item, y item, axes): vectors, matrices on either axis, mixed ranks.
    let cases: [(&[usize], &[usize], [usize; 2]); 6] = [
        (&[5], &[5], [0, 0]),
        (&[4, 5], &[3, 5], [1, 1]),
        (&[4, 5], &[4, 3], [0, 0]),
        (&[4, 5], &[3, 4], [0, 1]),
        (&[2, 3, 5], &[5], [2, 0]),
        (&[2, 7, 3], &[6, 7], [1, 1]),
    ];
    for (c, (xi, yi, axes)) in cases.iter().enumerate() {
        for normalize in [false, true] {
            let mut rng = Rng::new(50 + c as u64);
            let items = vec![xi.to_vec(), yi.to_vec()];
            // Through Dense on one side or both.
            let dense = [true, c % 2 == 0];
            let op = Op::Dot(Dot {
                axes: *axes,
                normalize,
            });
            let (graph, shapes) = branches(&mut rng, &items, &dense, "Dot", op);
            let batch = if (c + normalize as usize).is_multiple_of(2) {
                33
            } else {
                1
            };
            let xs = inputs_for(&mut rng, batch, &shapes);
            let what =
                format!("Dot {xi:?} . {yi:?} axes {axes:?} normalize {normalize}, batch {batch}");
            if !check_backward(&what, &graph, &xs, true) {
                return;
            }
        }
    }
}

#[test]
fn dot_of_a_value_with_itself_matches_cpu() {
    let mut rng = Rng::new(61);
    let mut graph = Graph::new("gpu_merge");
    let x = graph.add_input("input", vec![5, 3], DType::F32);
    let d = dense_on(&mut graph, &mut rng, "dense", x, 6);
    for normalize in [false, true] {
        let mut g = graph.clone();
        let op = Op::Dot(Dot {
            axes: [1, 1],
            normalize,
        });
        let y = g.add_node("dot", "Dot", op, &[d, d], None).unwrap();
        g.add_output("output", y[0]);
        let xs = [float_input(&mut rng, 4, &[5, 3], 1.0)];
        if !check_backward(&format!("Dot(d, d) normalize {normalize}"), &g, &xs, true) {
            return;
        }
    }
}

/// Dense (or Conv) then PReLU with alpha shaped `alpha` (from `x`'s shape, 1 on the shared
/// axes), trainable or not.
fn prelu_graph(rng: &mut Rng, conv: bool, alpha: &[usize], trainable: bool) -> (Graph, Vec<usize>) {
    let (chain, input) = if conv {
        let input = vec![6, 5, 2];
        let c = Chain::float(&input).conv(
            rng,
            "conv",
            3,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::Linear,
            true,
        );
        (c, input)
    } else {
        let input = vec![4, 3];
        (
            Chain::float(&input).dense(rng, "dense", 7, Activation::Linear),
            input,
        )
    };
    let mut chain = chain;
    let a = rng.array(alpha, 0.8);
    let id = chain.graph.params.add("prelu/alpha", a, trainable);
    let graph = chain
        .op("prelu", "PReLU", Op::PRelu(PRelu { alpha: id }))
        .build();
    (graph, input)
}

#[test]
fn prelu_backward_matches_cpu_with_shared_axes() {
    // (conv, alpha shape): none shared, one, both spatial axes; after a Dense on (4, 7).
    let cases: [(bool, &[usize]); 5] = [
        (false, &[4, 7]),
        (false, &[1, 7]),
        (false, &[4, 1]),
        (true, &[6, 5, 3]),
        (true, &[1, 1, 3]),
    ];
    for (c, (conv, alpha)) in cases.iter().enumerate() {
        for trainable in [true, false] {
            let mut rng = Rng::new(70 + c as u64);
            let (graph, input) = prelu_graph(&mut rng, *conv, alpha, trainable);
            let batch = if (c + trainable as usize).is_multiple_of(2) {
                33
            } else {
                1
            };
            let x = float_input(&mut rng, batch, &input, 1.0);
            let what = format!("PReLU alpha {alpha:?} trainable {trainable}, batch {batch}");
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

#[test]
fn prelu_at_zero_takes_no_gradient() {
    // Read directly with many exact zeros: dx = 0 and nothing to alpha there.
    let mut rng = Rng::new(79);
    let mut chain = Chain::float(&[3, 5]);
    let id = chain
        .graph
        .params
        .add("prelu/alpha", rng.array(&[1, 5], 0.8), true);
    let graph = chain
        .op("prelu", "PReLU", Op::PRelu(PRelu { alpha: id }))
        .build();
    let x = tied_input(&mut rng, 7, &[3, 5]);
    check_backward("PReLU at zeros", &graph, &[x], true);
}

#[test]
fn softmax_layer_backward_matches_cpu_over_any_axes() {
    // (item shape, axes): the last axis, a middle one, the first, two of three.
    let cases: [(&[usize], &[usize]); 5] = [
        (&[5, 7], &[1]),
        (&[5, 7], &[0]),
        (&[3, 4, 5], &[1]),
        (&[3, 4, 5], &[0, 1]),
        (&[3, 4, 5], &[1, 2]),
    ];
    for (c, (item, axes)) in cases.iter().enumerate() {
        for log in [false, true] {
            let mut rng = Rng::new(90 + c as u64);
            let mut input = item.to_vec();
            *input.last_mut().unwrap() = 3;
            let op = Op::Softmax(Softmax {
                axes: axes.to_vec(),
                log,
            });
            let graph = Chain::float(&input)
                .dense(&mut rng, "dense", *item.last().unwrap(), Activation::Linear)
                .op("softmax", "Softmax", op)
                .build();
            let batch = if (c + log as usize).is_multiple_of(2) {
                33
            } else {
                1
            };
            let x = float_input(&mut rng, batch, &input, 2.0);
            let what = format!("Softmax {item:?} axes {axes:?} log {log}, batch {batch}");
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

#[test]
fn a_prelu_model_trains_on_the_gpu_as_on_the_cpu() {
    // The forward must read alpha from the parameter arena, where the optimizer updates it.
    use wgnn::train::optim::OptimizerSpec;
    use wgnn::train::train_metrics::TrainMetrics;
    use wgnn::train::{Loss, Quiet, Shuffle, TrainBackend, TrainConfig, TrainData, Trainer};
    let mut rng = Rng::new(83);
    let (graph, input) = prelu_graph(&mut rng, false, &[1, 7], true);
    let data = TrainData {
        inputs: vec![float_input(&mut rng, 24, &input, 1.0)],
        targets: vec![rng.array(&[24, 4, 7], 1.0)],
    };
    let config = TrainConfig {
        epochs: 3,
        batch_size: 8,
        shuffle: Shuffle::None,
        seed: 0,
        losses: vec![Loss::by_name("mse").unwrap()],
        loss_weights: vec![],
        optimizer: OptimizerSpec::by_name("sgd")
            .unwrap()
            .with_learning_rate(0.5),
        metrics: TrainMetrics::from_names(&[], &["output".into()]).unwrap(),
    };
    let mut cpu = Trainer::new(&graph, config.clone()).unwrap();
    let mut gpu = match Trainer::on(&graph, config, TrainBackend::Gpu { adapter: None }) {
        Ok(t) => t,
        Err(e) if common::no_adapter_outside_ci(&e) => return,
        Err(e) => panic!("gpu trainer: {e}"),
    };
    let h_cpu = cpu.fit(&data, None, &mut Quiet).unwrap();
    let h_gpu = gpu.fit(&data, None, &mut Quiet).unwrap();
    for (e, (g, c)) in h_gpu.epochs.iter().zip(&h_cpu.epochs).enumerate() {
        let rel = (g.loss - c.loss).abs() / c.loss.abs().max(1e-12);
        assert!(
            rel <= 1e-4,
            "epoch {e}: loss gpu {} vs cpu {}",
            g.loss,
            c.loss
        );
    }
    for (id, p) in cpu.params().iter() {
        let g = gpu.params().get(id).to_owned();
        gpu_support::assert_close(&format!("trained {}", p.name), &g, &p.value);
        if p.name == "prelu/alpha" {
            assert!(p.value != graph.params.get(id), "alpha moved");
        }
    }
}
