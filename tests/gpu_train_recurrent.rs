//! GPU training of the recurrent-side layers against the CPU reference path: Bidirectional
//! with merge_mode mul and None (two outputs), and TimeDistributed around a convolution, a
//! pooling or a recurrent layer. The backward runs from given output gradients
//! (`Mode::Seeded`) with SimpleRNN / LSTM / GRU, masked mixed lengths, sequence length 1 and
//! batches 1 and 33, each layer after a trainable one so that both parameter and input
//! gradients flow through it; every gradient must match the CPU's within 1e-4·(1 + |cpu|).
//!
//! The cells' dropout / recurrent_dropout draw their masks on the host from the run's RNG in
//! node order, between the Dropout layers' draws, as the CPU does.
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::{check_backward, fit_both, float_input, labels, padded_ids, Chain, Rng, RnnSpec};
use wgnn::graph::*;
use wgnn::train::optim::OptimizerSpec;
use wgnn::train::train_metrics::TrainMetrics;
use wgnn::train::{Loss, Shuffle, TrainConfig, TrainData};

const CELLS: [CellKind; 4] = [
    CellKind::SimpleRnn,
    CellKind::Lstm,
    CellKind::Gru { reset_after: true },
    CellKind::Gru { reset_after: false },
];

fn bidi(
    kind: CellKind,
    timesteps: usize,
    features: usize,
    units: usize,
    merge: MergeMode,
) -> RnnSpec {
    let mut s = RnnSpec::new(kind, timesteps, features, units);
    s.bidirectional = true;
    s.merge = merge;
    s
}

#[test]
fn bidirectional_mul_backward_matches_cpu_after_a_dense() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for (batch, timesteps, sequences) in [(1, 1, true), (33, 5, true), (3, 4, false)] {
            let mut rng = Rng::new(40 + k as u64);
            let mut spec = bidi(kind, timesteps, 6, 5, MergeMode::Multiply);
            spec.return_sequences = sequences;
            spec.go_backwards = batch == 3;
            let graph = Chain::float(&[timesteps, 3])
                .dense(&mut rng, "dense", 6, Activation::Tanh)
                .rnn(&mut rng, "bidirectional", &spec)
                .build();
            let x = float_input(&mut rng, batch, &[timesteps, 3], 1.0);
            let what = format!("{}, batch {batch}", spec.describe());
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

#[test]
fn masked_bidirectional_mul_backward_matches_cpu() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for sequences in [true, false] {
            let mut rng = Rng::new(60 + k as u64);
            let mut spec = bidi(kind, 6, 4, 3, MergeMode::Multiply);
            spec.return_sequences = sequences;
            let graph = Chain::ids(6)
                .embedding(&mut rng, "embedding", 9, 4, true)
                .rnn(&mut rng, "bidirectional", &spec)
                .build();
            let ids = padded_ids(&mut rng, 33, 6, 9);
            let what = format!("masked {}", spec.describe());
            if !check_backward(&what, &graph, &[ids], false) {
                return;
            }
        }
    }
}

/// Dense -> Bidirectional(merge_mode None), each direction's output a model output (or, with
/// `only_first`, the backward direction's output unused).
fn two_output_graph(rng: &mut Rng, spec: &RnnSpec, only_first: bool) -> Graph {
    let chain =
        Chain::float(&[spec.timesteps, 3]).dense(rng, "dense", spec.features, Activation::Linear);
    let mut graph = chain.graph;
    let forward = spec.cell(rng, &mut graph.params, "bidirectional", spec.go_backwards);
    let backward = spec.cell(rng, &mut graph.params, "bidirectional", !spec.go_backwards);
    let r = Recurrent {
        forward,
        backward: Some(backward),
        merge_mode: MergeMode::None,
        return_sequences: spec.return_sequences,
        timesteps: spec.timesteps,
        input_features: spec.features,
        zero_masked_outputs: spec.return_sequences,
        return_state: false,
        initial_state: false,
    };
    let outs = graph
        .add_node(
            "bidirectional",
            "Bidirectional",
            Op::Recurrent(Box::new(r)),
            &[chain.x],
            None,
        )
        .unwrap();
    graph.add_output("forward", outs[0]);
    if !only_first {
        graph.add_output("backward", outs[1]);
    }
    graph.verify().unwrap();
    graph
}

#[test]
fn bidirectional_merge_none_backward_matches_cpu() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for (batch, timesteps, sequences, only_first) in [
            (1, 1, true, false),
            (33, 4, true, false),
            (5, 3, false, false),
            (4, 3, true, true),
        ] {
            let mut rng = Rng::new(80 + k as u64);
            let mut spec = bidi(kind, timesteps, 5, 7, MergeMode::None);
            spec.return_sequences = sequences;
            let graph = two_output_graph(&mut rng, &spec, only_first);
            let x = float_input(&mut rng, batch, &[timesteps, 3], 1.0);
            let what = format!(
                "{}, batch {batch}{}",
                spec.describe(),
                if only_first {
                    ", first output only"
                } else {
                    ""
                }
            );
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

fn time_distributed(chain: Chain, name: &str, inner: Op) -> Chain {
    chain.op(
        name,
        "TimeDistributed",
        Op::TimeDistributed {
            inner: Box::new(inner),
        },
    )
}

/// A Conv2D op on (H, W, C) items, weights added to the chain's parameters.
#[allow(clippy::too_many_arguments)]
fn conv_op(
    chain: &mut Chain,
    rng: &mut Rng,
    [h, w, c]: [usize; 3],
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    bias: bool,
) -> Op {
    let window = Window::new(&kernel, &strides, &[1, 1], padding, &[h, w]);
    let fan_in = kernel[0] * kernel[1] * c;
    let weights = rng.array(
        &[kernel[0], kernel[1], c, filters],
        1.0 / (fan_in as f32).sqrt(),
    );
    let kernel = chain.param("td_conv/kernel", weights);
    let bias = bias.then(|| {
        let b = rng.array(&[filters], 0.3);
        chain.param("td_conv/bias", b)
    });
    Op::Conv(Conv {
        filters,
        window,
        in_channels: c,
        groups: 1,
        kernel,
        bias,
        activation: Activation::Linear,
    })
}

#[test]
fn time_distributed_conv_backward_matches_cpu_after_a_dense() {
    let cases = [
        (1, 1, [3, 3], [1, 1], Padding::Same, true),
        (33, 3, [2, 3], [2, 1], Padding::Valid, false),
        (2, 5, [3, 2], [2, 2], Padding::Same, true),
    ];
    for (k, (batch, steps, kernel, strides, padding, bias)) in cases.into_iter().enumerate() {
        let mut rng = Rng::new(100 + k as u64);
        let item = [5, 7, 3];
        let mut chain =
            Chain::float(&[steps, 5, 7, 2]).dense(&mut rng, "dense", 3, Activation::Tanh);
        let conv = conv_op(
            &mut chain, &mut rng, item, 5, kernel, strides, padding, bias,
        );
        let graph = time_distributed(chain, "td_conv", conv).build();
        let x = float_input(&mut rng, batch, &[steps, 5, 7, 2], 1.0);
        let what = format!("TimeDistributed(Conv2D {kernel:?} {strides:?} {padding:?}), batch {batch}, {steps} steps");
        if !check_backward(&what, &graph, &[x], true) {
            return;
        }
    }
}

#[test]
fn time_distributed_pooling_backward_matches_cpu_after_a_dense() {
    for (k, op) in [PoolOp::Max, PoolOp::Average].into_iter().enumerate() {
        for (batch, steps) in [(1, 1), (33, 3)] {
            let mut rng = Rng::new(120 + k as u64);
            let window = Window::new(&[2, 3], &[2, 2], &[1, 1], Padding::Same, &[5, 7]);
            let pool = Op::Pool(Pool {
                op,
                window,
                channels: 3,
            });
            let chain =
                Chain::float(&[steps, 5, 7, 2]).dense(&mut rng, "dense", 3, Activation::Tanh);
            let graph = time_distributed(chain, "td_pool", pool).build();
            let x = float_input(&mut rng, batch, &[steps, 5, 7, 2], 1.0);
            let what = format!("TimeDistributed({op:?} pooling), batch {batch}, {steps} steps");
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
            for keepdims in [false, true] {
                let global = Op::GlobalPool {
                    op,
                    keepdims,
                    rank: 2,
                };
                let chain =
                    Chain::float(&[steps, 5, 7, 2]).dense(&mut rng, "dense", 3, Activation::Tanh);
                let graph = time_distributed(chain, "td_global", global).build();
                let x = float_input(&mut rng, batch, &[steps, 5, 7, 2], 1.0);
                let what = format!(
                    "TimeDistributed(global {op:?} pooling, keepdims {keepdims}), batch {batch}"
                );
                if !check_backward(&what, &graph, &[x], true) {
                    return;
                }
            }
        }
    }
}

/// Dense -> TimeDistributed(the recurrent layer `spec` describes) on (steps, T, 3) inputs.
fn time_distributed_rnn(rng: &mut Rng, steps: usize, spec: &RnnSpec) -> Graph {
    let mut chain = Chain::float(&[steps, spec.timesteps, 3]).dense(
        rng,
        "dense",
        spec.features,
        Activation::Tanh,
    );
    let forward = spec.cell(rng, &mut chain.graph.params, "td", spec.go_backwards);
    let backward = spec
        .bidirectional
        .then(|| spec.cell(rng, &mut chain.graph.params, "td", !spec.go_backwards));
    let r = Recurrent {
        forward,
        backward,
        merge_mode: spec.merge,
        return_sequences: spec.return_sequences,
        timesteps: spec.timesteps,
        input_features: spec.features,
        zero_masked_outputs: spec.zero_masked_outputs,
        return_state: false,
        initial_state: false,
    };
    time_distributed(chain, "td", Op::Recurrent(Box::new(r))).build()
}

#[test]
fn time_distributed_recurrent_backward_matches_cpu_after_a_dense() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        let cases = [
            // (batch, outer steps, timesteps, sequences, go_backwards, bidirectional merge)
            (1, 1, 1, false, false, None),
            (33, 2, 4, true, true, None),
            (3, 3, 3, false, false, Some(MergeMode::Concat)),
            (2, 2, 5, true, false, Some(MergeMode::Sum)),
            (2, 3, 4, true, true, Some(MergeMode::Multiply)),
            (4, 2, 3, false, false, Some(MergeMode::Average)),
        ];
        for (batch, steps, timesteps, sequences, backwards, merge) in cases {
            let mut rng = Rng::new(140 + k as u64);
            let mut spec = RnnSpec::new(kind, timesteps, 4, 5);
            spec.return_sequences = sequences;
            spec.go_backwards = backwards;
            if let Some(m) = merge {
                spec.bidirectional = true;
                spec.merge = m;
            }
            let graph = time_distributed_rnn(&mut rng, steps, &spec);
            let x = float_input(&mut rng, batch, &[steps, timesteps, 3], 1.0);
            let what = format!(
                "TimeDistributed({}), batch {batch}, {steps} outer steps",
                spec.describe()
            );
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

/// One direction's (or a Bidirectional's) recurrent op of `spec`, its weights under `name`.
fn recurrent_op(rng: &mut Rng, graph: &mut Graph, name: &str, spec: &RnnSpec) -> Recurrent {
    let forward = spec.cell(rng, &mut graph.params, name, spec.go_backwards);
    let backward = spec
        .bidirectional
        .then(|| spec.cell(rng, &mut graph.params, name, !spec.go_backwards));
    Recurrent {
        forward,
        backward,
        merge_mode: spec.merge,
        return_sequences: spec.return_sequences,
        timesteps: spec.timesteps,
        input_features: spec.features,
        zero_masked_outputs: spec.zero_masked_outputs
            || (spec.bidirectional && spec.return_sequences),
        return_state: false,
        initial_state: false,
    }
}

/// An encoder with return_state whose final states start a decoder (initial_state), both on
/// the chain's value and mask: outputs the decoder's sequence, the encoder's output and its
/// first final state (so that state's gradient comes from both the decoder and a seed).
fn encoder_decoder(rng: &mut Rng, chain: Chain, enc: &RnnSpec, dec: &RnnSpec) -> Graph {
    let (x, mask) = (chain.x, chain.mask);
    let mut graph = chain.graph;
    let mut e = recurrent_op(rng, &mut graph, "encoder", enc);
    e.return_state = true;
    let enc_outs = graph
        .add_node("encoder", "RNN", Op::Recurrent(Box::new(e)), &[x], mask)
        .unwrap();
    let mut d = recurrent_op(rng, &mut graph, "decoder", dec);
    d.initial_state = true;
    let mut inputs = vec![x];
    inputs.extend_from_slice(&enc_outs[1..]);
    let dec_outs = graph
        .add_node("decoder", "RNN", Op::Recurrent(Box::new(d)), &inputs, mask)
        .unwrap();
    graph.add_output("decoded", dec_outs[0]);
    graph.add_output("encoded", enc_outs[0]);
    graph.add_output("state", enc_outs[1]);
    graph.verify().unwrap();
    graph
}

#[test]
fn return_state_and_initial_state_backward_matches_cpu_after_a_dense() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for (batch, timesteps, bidirectional, backwards) in [
            (1, 1, false, false),
            (33, 4, false, true),
            (3, 3, true, false),
        ] {
            let mut rng = Rng::new(160 + k as u64);
            let mut enc = RnnSpec::new(kind, timesteps, 4, 6);
            enc.go_backwards = backwards;
            let mut dec = RnnSpec::new(kind, timesteps, 4, 6);
            dec.return_sequences = true;
            if bidirectional {
                enc.bidirectional = true;
                dec.bidirectional = true;
                enc.merge = MergeMode::Sum;
            }
            let chain = Chain::float(&[timesteps, 3]).dense(&mut rng, "dense", 4, Activation::Tanh);
            let graph = encoder_decoder(&mut rng, chain, &enc, &dec);
            let x = float_input(&mut rng, batch, &[timesteps, 3], 1.0);
            let what = format!(
                "encoder {} -> decoder {}, batch {batch}",
                enc.describe(),
                dec.describe()
            );
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
    }
}

/// A masked decoder started from the encoder's states: its masked steps output zeros
/// (zero_output_for_mask), or repeat the previous output, which is zero before the row's first
/// live step (not the given state) and carries its gradient back to the live step that made it.
#[test]
fn masked_return_state_and_initial_state_backward_matches_cpu() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for (zero_masked, sequences) in [(true, true), (false, true), (false, false)] {
            let mut rng = Rng::new(180 + k as u64);
            let enc = RnnSpec::new(kind, 6, 4, 5);
            let mut dec = RnnSpec::new(kind, 6, 4, 5);
            dec.return_sequences = sequences;
            dec.zero_masked_outputs = zero_masked;
            let chain = Chain::ids(6).embedding(&mut rng, "embedding", 9, 4, true);
            let graph = encoder_decoder(&mut rng, chain, &enc, &dec);
            let ids = padded_ids(&mut rng, 33, 6, 9);
            let what = format!(
                "masked encoder {} -> decoder {}, zero_output_for_mask {zero_masked}",
                enc.describe(),
                dec.describe()
            );
            if !check_backward(&what, &graph, &[ids], false) {
                return;
            }
        }
    }
}

/// `fit` of a masked encoder-decoder classifier whose decoder starts from the encoder's states
/// and repeats its previous output at masked steps (zero_output_for_mask false): an all-padding
/// row outputs zeros, not the given (non-zero) state, so the loss sees the forward rule too.
#[test]
fn masked_encoder_decoder_with_repeated_outputs_fits_on_the_gpu_as_on_the_cpu() {
    for (k, kind) in [CellKind::Lstm, CellKind::Gru { reset_after: false }]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(190 + k as u64);
        let chain = Chain::ids(7).embedding(&mut rng, "embedding", 12, 4, true);
        let (x, mask) = (chain.x, chain.mask);
        let mut graph = chain.graph;
        let mut e = recurrent_op(
            &mut rng,
            &mut graph,
            "encoder",
            &RnnSpec::new(kind, 7, 4, 6),
        );
        e.return_state = true;
        // The encoder reads the padding too, so an all-padding row's state is not zero.
        let enc = graph
            .add_node("encoder", "RNN", Op::Recurrent(Box::new(e)), &[x], None)
            .unwrap();
        let mut d = recurrent_op(
            &mut rng,
            &mut graph,
            "decoder",
            &RnnSpec::new(kind, 7, 4, 6),
        );
        d.initial_state = true;
        let mut inputs = vec![x];
        inputs.extend_from_slice(&enc[1..]);
        let dec = graph
            .add_node("decoder", "RNN", Op::Recurrent(Box::new(d)), &inputs, mask)
            .unwrap();
        let graph = Chain {
            graph,
            x: dec[0],
            mask: None,
        }
        .dense(&mut rng, "out", 3, Activation::Softmax)
        .build();
        let data = TrainData {
            inputs: vec![padded_ids(&mut rng, 24, 7, 12)],
            targets: vec![labels(&mut rng, 24, 3)],
        };
        let config = TrainConfig {
            epochs: 2,
            batch_size: 12,
            shuffle: Shuffle::None,
            seed: 5,
            losses: vec![Loss::by_name("sparse_categorical_crossentropy").unwrap()],
            loss_weights: vec![],
            optimizer: OptimizerSpec::by_name("adam")
                .unwrap()
                .with_learning_rate(0.02),
            metrics: TrainMetrics::from_names(&["accuracy".into()], &["output".into()]).unwrap(),
        };
        if !fit_both(
            &format!("{kind:?} encoder-decoder"),
            &graph,
            &data,
            None,
            config,
        ) {
            return;
        }
    }
}

fn dropout_layer(chain: Chain, name: &str) -> Chain {
    chain.op(
        name,
        "Dropout",
        Op::Dropout(Dropout {
            kind: DropoutKind::Dropout,
            rate: 0.2,
            shared_axes: vec![],
        }),
    )
}

#[test]
fn recurrent_dropout_between_dropout_layers_matches_cpu_with_the_same_draws() {
    for (k, kind) in CELLS.into_iter().enumerate() {
        for (bidirectional, per_gate) in [(false, false), (true, true), (true, false)] {
            let mut rng = Rng::new(200 + k as u64);
            let mut spec = RnnSpec::new(kind, 7, 6, 5);
            spec.bidirectional = bidirectional;
            spec.return_sequences = true;
            spec.dropout = CellDropout {
                input: 0.3,
                recurrent: 0.3,
                per_gate,
            };
            let chain = Chain::float(&[7, 3]).dense(&mut rng, "dense", 6, Activation::Tanh);
            let chain = dropout_layer(chain, "drop_before").rnn(&mut rng, "rnn", &spec);
            let graph = dropout_layer(chain, "drop_after").build();
            let x = float_input(&mut rng, 3, &[7, 3], 1.0);
            let what = format!("{} between Dropout layers", spec.describe());
            if !check_backward(&what, &graph, &[x], true) {
                return;
            }
        }
        // Masked mixed lengths, and a TimeDistributed recurrent layer (masks over the folded
        // batch).
        let mut rng = Rng::new(220 + k as u64);
        let mut spec = bidi(kind, 6, 4, 3, MergeMode::Concat);
        spec.return_sequences = true;
        spec.dropout = CellDropout {
            input: 0.3,
            recurrent: 0.3,
            per_gate: true,
        };
        let graph = Chain::ids(6)
            .embedding(&mut rng, "embedding", 9, 4, true)
            .rnn(&mut rng, "bidirectional", &spec)
            .build();
        let ids = padded_ids(&mut rng, 33, 6, 9);
        if !check_backward(
            &format!("masked {}", spec.describe()),
            &graph,
            &[ids],
            false,
        ) {
            return;
        }
        let mut spec = RnnSpec::new(kind, 4, 4, 5);
        spec.dropout = CellDropout {
            input: 0.3,
            recurrent: 0.3,
            per_gate: false,
        };
        let graph = time_distributed_rnn(&mut rng, 3, &spec);
        let x = float_input(&mut rng, 2, &[3, 4, 3], 1.0);
        let what = format!("TimeDistributed({})", spec.describe());
        if !check_backward(&what, &graph, &[x], true) {
            return;
        }
    }
}
