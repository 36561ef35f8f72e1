//! GPU training of ConvLSTM1D / ConvLSTM2D against the CPU reference path. The backward runs
//! from given output gradients (`Mode::Seeded`) with the layer after a trainable Dense on the
//! channel axis, so the kernel, recurrent kernel and bias gradients and the gradient flowing
//! back through the layer into the Dense (and the input) are all compared, each within
//! 1e-4·(1 + |cpu|): batch 1 and 3, one step and several, go_backwards, return_sequences,
//! same / valid padding, strides, no bias, other activations.
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::{check_backward, fit_both, float_input, Chain, ConvLstmSpec, Rng};
use wgnn::graph::*;
use wgnn::train::optim::OptimizerSpec;
use wgnn::train::train_metrics::TrainMetrics;
use wgnn::train::{Loss, Shuffle, TrainConfig, TrainData};

/// `spec` after a Dense from 3 channels to the layer's channels, checked at each batch.
fn check(what: &str, spec: &ConvLstmSpec, batches: &[usize]) -> bool {
    let mut item = spec.input_shape();
    *item.last_mut().expect("channels") = 3;
    for &batch in batches {
        let mut rng = Rng::new(11 + batch as u64);
        let graph = Chain::float(&item)
            .dense(&mut rng, "proj", spec.image[2], Activation::Linear)
            .conv_lstm(&mut rng, "convlstm", spec)
            .build();
        let x = float_input(&mut rng, batch, &item, 1.0);
        let what = format!("{what}: {}, batch {batch}", spec.describe());
        if !check_backward(&what, &graph, &[x], true) {
            return false;
        }
    }
    true
}

#[test]
fn conv_lstm2d_last_and_sequences_both_directions() {
    for return_sequences in [false, true] {
        for go_backwards in [false, true] {
            let mut spec = ConvLstmSpec::new_2d(4, [3, 5, 2], 3, [3, 2]);
            spec.return_sequences = return_sequences;
            spec.go_backwards = go_backwards;
            if !check("ConvLSTM2D", &spec, &[1, 3]) {
                return;
            }
        }
    }
}

#[test]
fn conv_lstm2d_one_step() {
    for return_sequences in [false, true] {
        let mut spec = ConvLstmSpec::new_2d(1, [4, 3, 2], 5, [3, 3]);
        spec.return_sequences = return_sequences;
        if !check("ConvLSTM2D T=1", &spec, &[1, 3]) {
            return;
        }
    }
}

#[test]
fn conv_lstm2d_strides_and_padding() {
    for (strides, padding, hw) in [
        ([2, 2], Padding::Same, [5, 6]),
        ([2, 1], Padding::Valid, [6, 4]),
        ([1, 1], Padding::Valid, [4, 5]),
    ] {
        let mut spec = ConvLstmSpec::new_2d(3, [hw[0], hw[1], 2], 3, [3, 2]);
        spec.strides = strides;
        spec.padding = padding;
        spec.return_sequences = true;
        if !check("ConvLSTM2D", &spec, &[3]) {
            return;
        }
    }
}

#[test]
fn conv_lstm2d_no_bias_and_other_activations() {
    let mut spec = ConvLstmSpec::new_2d(3, [3, 4, 2], 3, [2, 2]);
    spec.bias = false;
    spec.recurrent_activation = Activation::HardSigmoid;
    spec.return_sequences = true;
    if !check("ConvLSTM2D", &spec, &[3]) {
        return;
    }
    // Keras 2's ConvLSTM2D default, and slopes that read the pre-activations and the carry.
    for (act, ract) in [
        (Activation::Tanh, Activation::HardSigmoidKeras2),
        (Activation::Silu, Activation::HardSigmoid),
        (Activation::Softsign, Activation::Sigmoid),
    ] {
        let mut spec = ConvLstmSpec::new_2d(3, [3, 4, 2], 3, [3, 3]);
        spec.activation = act;
        spec.recurrent_activation = ract;
        spec.go_backwards = true;
        if !check("ConvLSTM2D", &spec, &[3]) {
            return;
        }
    }
}

#[test]
fn conv_lstm1d_shapes() {
    for (strides, padding, w, seq, back) in [
        (1, Padding::Same, 7, true, false),
        (2, Padding::Valid, 7, false, true),
        (2, Padding::Same, 6, true, true),
        (1, Padding::Valid, 5, false, false),
    ] {
        let mut spec = ConvLstmSpec::new_1d(4, w, 2, 3, 3);
        spec.strides = [1, strides];
        spec.padding = padding;
        spec.return_sequences = seq;
        spec.go_backwards = back;
        if !check("ConvLSTM1D", &spec, &[1, 3]) {
            return;
        }
    }
    let mut spec = ConvLstmSpec::new_1d(1, 5, 2, 4, 2);
    spec.bias = false;
    check("ConvLSTM1D T=1", &spec, &[1, 3]);
}

/// Nine filters on eight channels: the GEMMs' K and columns cross their 4-wide vectors and
/// the gates kernel more than one 64-thread workgroup.
#[test]
fn conv_lstm2d_many_filters() {
    let mut spec = ConvLstmSpec::new_2d(2, [3, 4, 8], 9, [3, 3]);
    spec.return_sequences = true;
    check("ConvLSTM2D", &spec, &[3]);
}

/// Training steps end to end: the optimizer updates the ConvLSTM's weights in the parameter
/// arena, which the next step's forward reads; a short last batch takes a second plan.
#[test]
fn conv_lstm2d_fit_matches_cpu() {
    let mut rng = Rng::new(21);
    let mut spec = ConvLstmSpec::new_2d(3, [3, 4, 2], 3, [2, 2]);
    spec.go_backwards = true;
    let graph = Chain::float(&[3, 3, 4, 3])
        .dense(&mut rng, "proj", 2, Activation::Linear)
        .conv_lstm(&mut rng, "convlstm", &spec)
        .op("flat", "Flatten", Op::Reshape { shape: vec![36] })
        .dense(&mut rng, "out", 2, Activation::Linear)
        .build();
    let x = float_input(&mut rng, 10, &[3, 3, 4, 3], 1.0);
    let data = TrainData {
        inputs: vec![x],
        targets: vec![rng.array(&[10, 2], 1.0)],
    };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        shuffle: Shuffle::None,
        seed: 0,
        losses: vec![Loss::by_name("mse").unwrap()],
        loss_weights: vec![],
        optimizer: OptimizerSpec::by_name("adam")
            .unwrap()
            .with_learning_rate(0.01),
        metrics: TrainMetrics::from_names(&[], &["output".into()]).unwrap(),
    };
    fit_both("ConvLSTM2D adam", &graph, &data, None, config);
}
