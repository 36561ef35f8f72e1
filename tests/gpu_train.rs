//! GPU training against the CPU reference path. The backward of each op family runs from
//! given output gradients (`Mode::Seeded`) at awkward shapes — batch 1 and 33, sizes that do
//! not divide the 64-wide GEMM tiles, split-K — and every parameter and input gradient must
//! match the CPU's within 1e-4·(1 + |cpu|).
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::{check_backward, fit_both, float_input, labels, Chain, Rng, ALL_ACTIVATIONS};
use wgnn::graph::*;
use wgnn::train::optim::OptimizerSpec;
use wgnn::train::train_metrics::TrainMetrics;
use wgnn::train::{Loss, Shuffle, TrainConfig, TrainData};
use wgnn::PreparedInput;

#[test]
fn dense_chain_backward_matches_cpu_at_awkward_batches() {
    for batch in [1, 33] {
        let mut rng = Rng::new(3);
        let graph = Chain::float(&[11])
            .dense(&mut rng, "d1", 13, Activation::RELU)
            .dense(&mut rng, "d2", 70, Activation::Tanh)
            .dense(&mut rng, "d3", 5, Activation::Softmax)
            .build();
        let x = float_input(&mut rng, batch, &[11], 1.0);
        if !check_backward(&format!("dense chain, batch {batch}"), &graph, &[x], true) {
            return;
        }
    }
}

#[test]
fn dense_kernel_gradient_with_split_k_matches_cpu() {
    // K = batch rows = 600 with a 3x2 tile output: the kernel gradient splits K.
    let mut rng = Rng::new(5);
    let graph = Chain::float(&[130])
        .dense(&mut rng, "wide", 70, Activation::Linear)
        .build();
    let x = float_input(&mut rng, 600, &[130], 1.0);
    check_backward("dense with split-K", &graph, &[x], true);
}

#[test]
fn dense_over_a_sequence_axis_matches_cpu() {
    // Dense on (steps, features) items multiplies every row: rows = batch x steps.
    let mut rng = Rng::new(9);
    let graph = Chain::float(&[7, 6])
        .dense(&mut rng, "td", 9, Activation::Sigmoid)
        .build();
    let x = float_input(&mut rng, 4, &[7, 6], 1.0);
    check_backward("dense over steps", &graph, &[x], true);
}

#[test]
fn every_activation_backward_matches_cpu() {
    for (k, act) in ALL_ACTIVATIONS.iter().enumerate() {
        let mut rng = Rng::new(20 + k as u64);
        let graph = Chain::float(&[9])
            .dense(&mut rng, "d", 10, Activation::Linear)
            .op("act", "Activation", Op::Activation(*act))
            .build();
        let x = float_input(&mut rng, 5, &[9], 2.0);
        if !check_backward(act.name(), &graph, &[x], true) {
            return;
        }
    }
}

#[test]
fn a_value_read_twice_sums_its_gradients() {
    // x -> d1 -> a; d2(a) + d3(a) -> output: a's gradient is the sum of two.
    let mut rng = Rng::new(31);
    let mut chain = Chain::float(&[6]).dense(&mut rng, "d1", 8, Activation::Tanh);
    let shared = chain.x;
    chain = chain.dense(&mut rng, "d2", 8, Activation::Linear);
    let y2 = chain.x;
    chain.x = shared;
    let leaky = Activation::Relu {
        negative_slope: 0.1,
        max_value: None,
        threshold: 0.0,
    };
    chain = chain.dense(&mut rng, "d3", 8, leaky);
    let y3 = chain.x;
    let add = Op::Merge(Merge {
        op: BinaryOp::Add,
        average: false,
        masked: false,
    });
    let sum = chain
        .graph
        .add_node("add", "Add", add, &[y2, y3], None)
        .expect("add");
    chain.x = sum[0];
    let graph = chain.build();
    let x = float_input(&mut rng, 3, &[6], 1.0);
    check_backward("a value read twice", &graph, &[x], true);
}

#[test]
fn a_cnn_trains_on_the_gpu_as_on_the_cpu() {
    let mut rng = Rng::new(41);
    let graph = Chain::float(&[9, 9, 3])
        .conv(
            &mut rng,
            "c1",
            8,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::RELU,
            true,
        )
        .pool("p1", PoolOp::Max, [2, 2], [2, 2], Padding::Valid)
        .conv(
            &mut rng,
            "c2",
            6,
            [2, 2],
            [1, 1],
            Padding::Valid,
            Activation::Tanh,
            true,
        )
        .op("flat", "Flatten", Op::Reshape { shape: vec![54] })
        .dense(&mut rng, "d1", 12, Activation::RELU)
        .dense(&mut rng, "out", 4, Activation::Softmax)
        .build();
    // 40 rows in batches of 16: a short last batch of 8 takes a second plan.
    let x = float_input(&mut rng, 40, &[9, 9, 3], 1.0);
    let data = TrainData {
        inputs: vec![x],
        targets: vec![labels(&mut rng, 40, 4)],
    };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        shuffle: Shuffle::None,
        seed: 0,
        losses: vec![Loss::by_name("sparse_categorical_crossentropy").unwrap()],
        loss_weights: vec![],
        optimizer: OptimizerSpec::by_name("adam")
            .unwrap()
            .with_learning_rate(0.01),
        metrics: TrainMetrics::from_names(&["accuracy".into()], &["output".into()]).unwrap(),
    };
    fit_both("cnn adam", &graph, &data, None, config);
}

#[test]
fn an_mlp_with_l2_and_validation_trains_on_the_gpu_as_on_the_cpu() {
    let mut rng = Rng::new(43);
    let mut graph = Chain::float(&[7])
        .dense(&mut rng, "d1", 20, Activation::Tanh)
        .dense(&mut rng, "out", 3, Activation::Linear)
        .build();
    let kernel = graph
        .params
        .iter()
        .find(|(_, p)| p.name == "d1/kernel")
        .unwrap()
        .0;
    graph.regularizers.push(Regularizer {
        target: Penalized::Param(kernel),
        l1: 0.0,
        l2: 0.01,
    });
    let x = float_input(&mut rng, 50, &[7], 1.0);
    let y = rng.array(&[50, 3], 1.0);
    let data = TrainData {
        inputs: vec![x],
        targets: vec![y],
    };
    let (train, val) = data.split_validation(0.2).unwrap();
    let config = TrainConfig {
        epochs: 3,
        batch_size: 8,
        shuffle: Shuffle::Seeded(5),
        seed: 0,
        losses: vec![Loss::by_name("mse").unwrap()],
        loss_weights: vec![],
        optimizer: OptimizerSpec::by_name("sgd")
            .unwrap()
            .with_learning_rate(0.05),
        metrics: TrainMetrics::from_names(&["mae".into()], &["output".into()]).unwrap(),
    };
    fit_both("mlp sgd l2", &graph, &train, Some(&val), config);
}

#[test]
fn a_cnn_with_batch_norm_and_validation_trains_and_evaluates_on_the_gpu_as_on_the_cpu() {
    // Validation runs the trainable BatchNormalization on its moving statistics as training
    // left them in the parameter arena (not as the plan was built).
    let mut rng = Rng::new(47);
    let mut chain = Chain::float(&[7, 7, 3]).conv(
        &mut rng,
        "c1",
        5,
        [3, 3],
        [1, 1],
        Padding::Same,
        Activation::Linear,
        // No bias before a BatchNormalization: its gradient is rounding noise about zero,
        // which Adam's normalized step turns into ±lr on either backend at random.
        false,
    );
    let channels = |rng: &mut Rng, offset: f32| {
        let v = rng.array(&[5], 0.5);
        v.mapv(|x| x + offset)
    };
    let (g, b, m, v) = (
        channels(&mut rng, 1.0),
        channels(&mut rng, 0.0),
        channels(&mut rng, 0.0),
        channels(&mut rng, 1.0),
    );
    let gamma = chain.param("bn/gamma", g);
    let beta = chain.param("bn/beta", b);
    let moving_mean = chain.graph.params.add("bn/moving_mean", m, false);
    let moving_variance = chain.graph.params.add("bn/moving_variance", v, false);
    let bn = Op::BatchNorm(BatchNorm {
        axes: vec![2],
        gamma: Some(gamma),
        beta: Some(beta),
        moving_mean,
        moving_variance,
        epsilon: 1e-3,
        momentum: 0.9,
        trainable: true,
        unused: vec![],
    });
    let graph = chain
        .op("bn", "BatchNormalization", bn)
        .op("relu", "Activation", Op::Activation(Activation::RELU))
        .op("flat", "Flatten", Op::Reshape { shape: vec![245] })
        .dense(&mut rng, "out", 3, Activation::Softmax)
        .build();
    // 45 rows: 36 to train in batches of 16 (a short last batch), 9 to validate.
    let x = float_input(&mut rng, 45, &[7, 7, 3], 1.0);
    let data = TrainData {
        inputs: vec![x],
        targets: vec![labels(&mut rng, 45, 3)],
    };
    let (train, val) = data.split_validation(0.2).unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        shuffle: Shuffle::None,
        seed: 0,
        losses: vec![Loss::by_name("sparse_categorical_crossentropy").unwrap()],
        loss_weights: vec![],
        optimizer: OptimizerSpec::by_name("adam")
            .unwrap()
            .with_learning_rate(0.01),
        metrics: TrainMetrics::from_names(&["accuracy".into()], &["output".into()]).unwrap(),
    };
    fit_both(
        "cnn batch norm validation",
        &graph,
        &train,
        Some(&val),
        config,
    );
}

/// Ids with many repeats (a small vocabulary), zeros included.
fn repeated_ids(rng: &mut Rng, batch: usize, timesteps: usize, vocab: usize) -> PreparedInput {
    PreparedInput::Ids(ndarray::Array2::from_shape_fn((batch, timesteps), |_| {
        rng.below(vocab) as u32
    }))
}

fn average_over_steps() -> Op {
    Op::GlobalPool {
        op: PoolOp::Average,
        keepdims: false,
        rank: 1,
    }
}

/// Embedding(vocab, 7) -> GlobalAveragePooling1D -> Dense; with `shared`, a second Embedding
/// node on the same ids reads the same table and the two are added (the table's gradient
/// sums both calls' lookups).
fn embedding_model(rng: &mut Rng, timesteps: usize, vocab: usize, shared: bool) -> Graph {
    let mut chain = Chain::ids(timesteps).embedding(rng, "embedding", vocab, 7, false);
    if shared {
        let node = chain
            .graph
            .nodes
            .iter()
            .find(|n| n.name == "embedding")
            .unwrap();
        let (op, ids) = (node.op.clone(), node.inputs[0]);
        let first = chain.x;
        let again = chain
            .graph
            .add_node("embedding_again", "Embedding", op, &[ids], None)
            .unwrap();
        let add = Op::Merge(Merge {
            op: BinaryOp::Add,
            average: false,
            masked: false,
        });
        chain.x = chain
            .graph
            .add_node("add", "Add", add, &[first, again[0]], None)
            .unwrap()[0];
    }
    chain
        .op("pool", "GlobalAveragePooling1D", average_over_steps())
        .dense(rng, "out", 5, Activation::Tanh)
        .build()
}

#[test]
fn embedding_table_gradient_matches_cpu_with_repeated_ids() {
    for (batch, timesteps, shared) in [(1, 1, false), (33, 9, false), (6, 70, true)] {
        let mut rng = Rng::new(50 + batch as u64);
        let graph = embedding_model(&mut rng, timesteps, 13, shared);
        let ids = repeated_ids(&mut rng, batch, timesteps, 13);
        let what = format!("embedding, batch {batch}, {timesteps} steps, shared {shared}");
        if !check_backward(&what, &graph, &[ids], false) {
            return;
        }
    }
}

#[test]
fn every_dropout_kind_matches_cpu_with_the_same_draws() {
    let kinds = [
        DropoutKind::Dropout,
        DropoutKind::GaussianDropout,
        DropoutKind::GaussianNoise { stddev: 0.5 },
        DropoutKind::AlphaDropout,
    ];
    for (k, kind) in kinds.into_iter().enumerate() {
        for shared_axes in [vec![], vec![0]] {
            let mut rng = Rng::new(60 + k as u64);
            let graph = Chain::float(&[6, 5])
                .dense(&mut rng, "d1", 9, Activation::Tanh)
                .op(
                    "noise",
                    "Dropout",
                    Op::Dropout(Dropout {
                        kind,
                        rate: 0.3,
                        shared_axes: shared_axes.clone(),
                    }),
                )
                .dense(&mut rng, "d2", 4, Activation::Linear)
                .build();
            let x = float_input(&mut rng, 33, &[6, 5], 1.0);
            let what = format!("{kind:?}, shared axes {shared_axes:?}");
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

#[test]
fn a_text_model_with_dropout_and_a_sparse_adam_trains_on_the_gpu_as_on_the_cpu() {
    // Repeated ids make Adam's squares of rows differ from the square of their sum; clipnorm
    // reads the rows' squares too. Dropout draws from the run's RNG every step.
    let mut rng = Rng::new(71);
    let graph = Chain::ids(8)
        .embedding(&mut rng, "embedding", 11, 6, false)
        .op(
            "drop",
            "Dropout",
            Op::Dropout(Dropout {
                kind: DropoutKind::Dropout,
                rate: 0.25,
                shared_axes: vec![],
            }),
        )
        .op("pool", "GlobalAveragePooling1D", average_over_steps())
        .dense(&mut rng, "out", 3, Activation::Softmax)
        .build();
    let ids = repeated_ids(&mut rng, 40, 8, 11);
    let data = TrainData {
        inputs: vec![ids],
        targets: vec![labels(&mut rng, 40, 3)],
    };
    let mut optimizer = OptimizerSpec::by_name("adam")
        .unwrap()
        .with_learning_rate(0.02);
    optimizer.clip = wgnn::train::optim::Clip::Norm(0.5);
    let config = TrainConfig {
        epochs: 3,
        batch_size: 16,
        shuffle: Shuffle::Seeded(3),
        seed: 9,
        losses: vec![Loss::by_name("sparse_categorical_crossentropy").unwrap()],
        loss_weights: vec![],
        optimizer,
        metrics: TrainMetrics::from_names(&["accuracy".into()], &["output".into()]).unwrap(),
    };
    fit_both("text adam clipnorm dropout", &graph, &data, None, config);
}
