//! GPU kernels against the CPU reference path (`wgnn::cpu::run`), op by op, on `Graph`s
//! built here with random weights: sizes that do not divide the 64-wide tiles, batch 1 and 33,
//! every activation, same/valid padding, strides, non-square windows, both recurrent directions,
//! masking with mixed lengths. Tolerance: |gpu - cpu| <= 1e-4 * (1 + |cpu|).
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::*;
use wgnn::graph::*;
use wgnn::PreparedInput;

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
        let graph = Chain::float(&[k])
            .dense(&mut rng, "dense", units, Activation::Linear)
            .build();
        let input = float_input(&mut rng, batch, &[k], 1.0);
        check(&format!("dense {k}->{units} batch {batch}"), &graph, &input);
    }
}

#[test]
fn deep_gemms_with_few_tiles_split_k_and_still_match_cpu() {
    let mut rng = Rng::new(20);
    // Flatten -> Dense at small batch: one output tile, K split across workgroups.
    for (batch, k, units, act) in [
        (1, 4096, 64, Activation::RELU),
        (33, 1000, 13, Activation::Softmax),
        (2, 777, 70, Activation::Tanh),
    ] {
        let graph = Chain::float(&[k])
            .dense(&mut rng, "dense", units, act)
            .build();
        let input = float_input(&mut rng, batch, &[k], 1.0);
        check(
            &format!("split-K dense {k}->{units} batch {batch}"),
            &graph,
            &input,
        );
    }
    // A late conv: 4x4 positions, K = 3*3*64 = 576.
    let graph = Chain::float(&[4, 4, 64])
        .conv(
            &mut rng,
            "conv",
            10,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::RELU,
            true,
        )
        .build();
    check(
        "split-K conv",
        &graph,
        &float_input(&mut rng, 1, &[4, 4, 64], 1.0),
    );
    let plan = wgnn::gpu::describe_plan(&graph, 1, None).unwrap();
    assert!(plan.contains("splitk_reduce"), "{plan}");
}

#[test]
fn dense_applies_every_activation_in_its_epilogue() {
    let mut rng = Rng::new(2);
    for (i, act) in ALL_ACTIVATIONS.iter().enumerate() {
        let batch = if i % 2 == 0 { 1 } else { 33 };
        let graph = Chain::float(&[19])
            .dense(&mut rng, "dense", 11, *act)
            .build();
        let input = float_input(&mut rng, batch, &[19], 3.0);
        check(
            &format!("dense {} batch {batch}", act.name()),
            &graph,
            &input,
        );
    }
}

#[test]
fn dense_on_sequences_multiplies_every_timestep() {
    let mut rng = Rng::new(3);
    let graph = Chain::float(&[7, 10])
        .dense(&mut rng, "td", 5, Activation::Softmax)
        .build();
    check(
        "dense over (7, 10)",
        &graph,
        &float_input(&mut rng, 3, &[7, 10], 1.0),
    );
}

#[test]
fn conv2d_matches_cpu_for_padding_strides_and_odd_shapes() {
    let mut rng = Rng::new(4);
    // (input HWC, filters, kernel, strides, padding, batch)
    let cases = [
        ([8, 8, 3], 4, [3, 3], [1, 1], Padding::Same, 1),
        ([9, 7, 3], 5, [3, 3], [1, 1], Padding::Valid, 33),
        ([9, 7, 2], 6, [3, 2], [2, 1], Padding::Same, 2),
        ([10, 11, 3], 3, [2, 4], [2, 3], Padding::Valid, 3),
        ([6, 6, 7], 66, [5, 1], [1, 2], Padding::Same, 2),
        ([5, 5, 4], 2, [4, 4], [2, 2], Padding::Same, 1),
        ([4, 4, 1], 1, [1, 1], [1, 1], Padding::Valid, 33),
    ];
    for (i, (hwc, filters, kernel, strides, padding, batch)) in cases.into_iter().enumerate() {
        let act = if i % 2 == 0 {
            Activation::RELU
        } else {
            Activation::Linear
        };
        let graph = Chain::float(&hwc)
            .conv(
                &mut rng,
                "conv",
                filters,
                kernel,
                strides,
                padding,
                act,
                i != 3,
            )
            .build();
        let what = format!("conv {hwc:?} x{filters} k{kernel:?} s{strides:?} {padding:?} b{batch}");
        check(&what, &graph, &float_input(&mut rng, batch, &hwc, 1.0));
    }
}

#[test]
fn conv2d_applies_every_activation() {
    let mut rng = Rng::new(5);
    for act in ALL_ACTIVATIONS {
        let graph = Chain::float(&[5, 4, 3])
            .conv(
                &mut rng,
                "conv",
                6,
                [3, 3],
                [1, 1],
                Padding::Same,
                act,
                true,
            )
            .build();
        let what = format!("conv {}", act.name());
        check(&what, &graph, &float_input(&mut rng, 2, &[5, 4, 3], 2.0));
    }
}

#[test]
fn pooling_matches_cpu_with_same_padding_counting_only_inside_cells() {
    let mut rng = Rng::new(6);
    let cases = [
        ([8, 8, 3], [2, 2], [2, 2], Padding::Valid, 1),
        ([7, 9, 2], [2, 2], [2, 2], Padding::Same, 33),
        ([7, 7, 5], [3, 3], [2, 2], Padding::Valid, 2),
        ([7, 6, 5], [3, 3], [2, 2], Padding::Same, 2),
        ([6, 5, 3], [2, 3], [1, 1], Padding::Same, 3),
        ([5, 8, 2], [3, 1], [1, 3], Padding::Same, 1),
    ];
    for (hwc, pool, strides, padding, batch) in cases {
        for op in [PoolOp::Max, PoolOp::Average] {
            let graph = Chain::float(&hwc)
                .pool("pool", op, pool, strides, padding)
                .build();
            let what = format!("{op:?} pool {hwc:?} p{pool:?} s{strides:?} {padding:?} b{batch}");
            check(&what, &graph, &float_input(&mut rng, batch, &hwc, 4.0));
        }
    }
}

#[test]
fn global_pooling_matches_cpu() {
    let mut rng = Rng::new(7);
    for op in [PoolOp::Max, PoolOp::Average] {
        for keepdims in [false, true] {
            let out: Vec<usize> = if keepdims { vec![1, 1, 67] } else { vec![67] };
            let graph = Chain::float(&[5, 3, 67])
                .op(
                    "gp",
                    "GlobalPooling2D",
                    Op::GlobalPool {
                        op,
                        keepdims,
                        rank: 2,
                    },
                )
                .build();
            assert_eq!(graph.output_info(0).shape, out);
            let what = format!("global {op:?} keepdims {keepdims}");
            check(&what, &graph, &float_input(&mut rng, 33, &[5, 3, 67], 4.0));
        }
    }
}

#[test]
fn activation_layers_match_cpu_for_every_variant() {
    let mut rng = Rng::new(8);
    for act in ALL_ACTIVATIONS {
        let shape = [3, 70];
        let graph = Chain::float(&shape)
            .op("act", "Activation", Op::Activation(act))
            .build();
        let what = format!("activation {}", act.name());
        check(&what, &graph, &float_input(&mut rng, 5, &shape, 6.0));
    }
}

#[test]
fn softmax_is_stable_for_large_logits_and_long_rows() {
    let mut rng = Rng::new(9);
    for cols in [1, 10, 64, 65, 1000] {
        let graph = Chain::float(&[cols])
            .op("sm", "Softmax", Op::Activation(Activation::Softmax))
            .build();
        // Logits around +-80 overflow exp() without the max subtraction.
        let input = float_input(&mut rng, 4, &[cols], 80.0);
        check(&format!("softmax over {cols}"), &graph, &input);
    }
}

#[test]
fn rescaling_matches_cpu_with_scalar_and_per_channel_factors() {
    let mut rng = Rng::new(10);
    let shape = [4, 4, 3];
    for (scale, offset) in [
        (vec![1.0 / 255.0], vec![0.0]),
        (vec![0.5, 2.0, -1.0], vec![-1.0]),
        (vec![2.0], vec![0.1, 0.2, 0.3]),
    ] {
        let op = Op::Rescaling {
            scale: scale.clone(),
            offset: offset.clone(),
        };
        let graph = Chain::float(&shape).op("rescale", "Rescaling", op).build();
        let what = format!("rescaling {scale:?} {offset:?}");
        check(&what, &graph, &float_input(&mut rng, 2, &shape, 255.0));
    }
}

#[test]
fn small_cnn_matches_cpu_end_to_end() {
    let mut rng = Rng::new(11);
    let graph = small_cnn(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    for batch in [1, 33] {
        let input = PreparedInput::Float(rng.array(&[batch, 12, 12, 3], 255.0).mapv(f32::abs));
        check_with(&format!("small cnn batch {batch}"), &gpu, &graph, &input);
    }
}

#[test]
fn embedding_gathers_rows_of_the_table() {
    let mut rng = Rng::new(12);
    let graph = Chain::ids(9)
        .embedding(&mut rng, "embedding", 50, 7, false)
        .build();
    check("embedding", &graph, &padded_ids(&mut rng, 33, 9, 50));
}

fn check_rnn(rng: &mut Rng, spec: &RnnSpec, batch: usize) {
    let graph = Chain::float(&[spec.timesteps, spec.features])
        .rnn(rng, "rnn", spec)
        .build();
    let input = float_input(rng, batch, &[spec.timesteps, spec.features], 1.0);
    check(
        &format!("{} batch {batch}", spec.describe()),
        &graph,
        &input,
    );
}

#[test]
fn simple_rnn_matches_cpu() {
    let mut rng = Rng::new(13);
    check_rnn(&mut rng, &RnnSpec::new(CellKind::SimpleRnn, 1, 3, 5), 1);
    let mut spec = RnnSpec::new(CellKind::SimpleRnn, 70, 6, 13);
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 33);
    spec.activation = Activation::RELU;
    spec.return_sequences = false;
    spec.timesteps = 12;
    check_rnn(&mut rng, &spec, 2);
    spec.go_backwards = true;
    spec.return_sequences = true;
    spec.bias = false;
    check_rnn(&mut rng, &spec, 3);
}

#[test]
fn lstm_matches_cpu_for_long_sequences_and_wide_layers() {
    let mut rng = Rng::new(14);
    let mut spec = RnnSpec::new(CellKind::Lstm, 70, 8, 13);
    check_rnn(&mut rng, &spec, 33);
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 1);
    // More units than one 64-thread workgroup covers.
    let mut wide = RnnSpec::new(CellKind::Lstm, 9, 5, 70);
    wide.return_sequences = true;
    check_rnn(&mut rng, &wide, 3);
    let mut one_step = RnnSpec::new(CellKind::Lstm, 1, 4, 6);
    one_step.recurrent_activation = Activation::HardSigmoid;
    one_step.bias = false;
    check_rnn(&mut rng, &one_step, 2);
}

#[test]
fn gru_matches_cpu_both_reset_after_variants() {
    let mut rng = Rng::new(37);
    for reset_after in [true, false] {
        let kind = CellKind::Gru { reset_after };
        // 26 sequences of 5 units share a workgroup: batch 33 leaves a part-filled group.
        let mut spec = RnnSpec::new(kind, 9, 4, 5);
        spec.return_sequences = true;
        check_rnn(&mut rng, &spec, 33);
        spec.bias = false;
        spec.return_sequences = false;
        spec.go_backwards = true;
        check_rnn(&mut rng, &spec, 2);
        let mut bidi = RnnSpec::new(kind, 6, 3, 13);
        bidi.bidirectional = true;
        bidi.merge = MergeMode::Sum;
        bidi.return_sequences = true;
        check_rnn(&mut rng, &bidi, 3);
        check_masked(&mut rng, &bidi, 9);
    }
}

/// Layers whose h does not fit the time loop's workgroup memory (over 1536 units, or 1024 for
/// a reset_after=False GRU, which also keeps r * h) read it back from storage between steps.
/// On llvmpipe their 5 steps also outrun its loop-iteration cap, so the loop is split.
#[test]
fn recurrent_layers_too_wide_for_workgroup_memory_match_cpu() {
    let mut rng = Rng::new(38);
    for (kind, units) in [
        (CellKind::SimpleRnn, 1537),
        (CellKind::Gru { reset_after: false }, 1025),
    ] {
        let mut spec = RnnSpec::new(kind, 5, 4, units);
        spec.return_sequences = true;
        let graph = Chain::float(&[spec.timesteps, spec.features])
            .rnn(&mut rng, "rnn", &spec)
            .build();
        let plan = wgnn::gpu::describe_plan(&graph, 2, None).unwrap();
        assert!(plan.contains("state read back from storage"), "{plan}");
        check_rnn(&mut rng, &spec, 2);
    }
}

/// The whole time loop of both directions is one dispatch, whatever the sequence length.
#[test]
fn recurrent_plan_runs_the_time_loop_in_one_dispatch() {
    let mut rng = Rng::new(39);
    let mut spec = RnnSpec::new(CellKind::Lstm, 70, 6, 13);
    spec.bidirectional = true;
    spec.merge = MergeMode::Sum;
    let graph = Chain::float(&[spec.timesteps, spec.features])
        .rnn(&mut rng, "rnn", &spec)
        .build();
    let plan = wgnn::gpu::describe_plan(&graph, 33, None).unwrap();
    assert_eq!(plan.matches("rnn_sequence").count(), 1, "{plan}");
    assert!(
        plan.contains(
            "LSTM 13 units x 2 direction(s), 70 steps in one loop, 10 sequence(s) per workgroup"
        ),
        "{plan}"
    );
    // 4 groups of 10 sequences (the last of 3) for each direction.
    assert!(
        plan.contains("workgroups 8 as [8, 1, 1] of 128 threads"),
        "{plan}"
    );
    assert!(!plan.contains("state read back"), "{plan}");
}

#[test]
fn standalone_go_backwards_keeps_processing_order() {
    let mut rng = Rng::new(15);
    let mut spec = RnnSpec::new(CellKind::Lstm, 11, 4, 7);
    spec.go_backwards = true;
    spec.return_sequences = true;
    check_rnn(&mut rng, &spec, 4);
    spec.return_sequences = false;
    check_rnn(&mut rng, &spec, 4);
}

#[test]
fn bidirectional_matches_cpu_for_every_merge_mode() {
    let mut rng = Rng::new(16);
    for merge in [
        MergeMode::Concat,
        MergeMode::Sum,
        MergeMode::Average,
        MergeMode::Multiply,
    ] {
        for (kind, return_sequences) in [(CellKind::Lstm, true), (CellKind::SimpleRnn, false)] {
            let mut spec = RnnSpec::new(kind, 10, 5, 9);
            spec.bidirectional = true;
            spec.merge = merge;
            spec.return_sequences = return_sequences;
            check_rnn(&mut rng, &spec, 3);
        }
    }
    let mut long = RnnSpec::new(CellKind::Lstm, 70, 6, 13);
    long.bidirectional = true;
    long.return_sequences = true;
    check_rnn(&mut rng, &long, 33);
}

fn check_masked(rng: &mut Rng, spec: &RnnSpec, batch: usize) {
    let vocab = 30;
    let graph = Chain::ids(spec.timesteps)
        .embedding(rng, "embedding", vocab, spec.features, true)
        .rnn(rng, "rnn", spec)
        .build();
    let rnn = graph.nodes.last().unwrap();
    assert!(
        rnn.mask.is_some(),
        "the recurrent node reads the padding mask"
    );
    let ids = padded_ids(rng, batch, spec.timesteps, vocab);
    check(
        &format!("masked {} batch {batch}", spec.describe()),
        &graph,
        &ids,
    );
}

#[test]
fn masking_keeps_state_at_padding_for_plain_layers() {
    let mut rng = Rng::new(17);
    for kind in [CellKind::Lstm, CellKind::SimpleRnn] {
        for (return_sequences, go_backwards) in [(true, false), (false, false), (true, true)] {
            let mut spec = RnnSpec::new(kind, 12, 6, 5);
            spec.return_sequences = return_sequences;
            spec.go_backwards = go_backwards;
            check_masked(&mut rng, &spec, 9);
        }
    }
    // zero_output_for_mask=True on a plain layer writes zeros instead of repeating.
    let mut spec = RnnSpec::new(CellKind::Lstm, 12, 6, 5);
    spec.return_sequences = true;
    spec.zero_masked_outputs = true;
    check_masked(&mut rng, &spec, 9);
}

#[test]
fn masking_writes_zeros_at_padding_inside_bidirectional() {
    let mut rng = Rng::new(18);
    for (merge, return_sequences) in [
        (MergeMode::Concat, true),
        (MergeMode::Concat, false),
        (MergeMode::Sum, true),
        (MergeMode::Multiply, false),
    ] {
        let mut spec = RnnSpec::new(CellKind::Lstm, 15, 4, 6);
        spec.bidirectional = true;
        spec.merge = merge;
        spec.return_sequences = return_sequences;
        check_masked(&mut rng, &spec, 9);
    }
    let mut long = RnnSpec::new(CellKind::Lstm, 70, 8, 12);
    long.bidirectional = true;
    long.return_sequences = true;
    check_masked(&mut rng, &long, 33);
}

#[test]
fn stacked_bilstm_classifier_matches_cpu_end_to_end() {
    let mut rng = Rng::new(19);
    let graph = small_bilstm(&mut rng, 20);
    let Some(gpu) = runtime(&graph) else { return };
    for batch in [1, 33] {
        let ids = padded_ids(&mut rng, batch, 20, 100);
        check_with(&format!("bilstm batch {batch}"), &gpu, &graph, &ids);
    }
}

/// One ConvLSTM layer on the GPU against the CPU, at batch 1 and 3 on one runtime.
fn check_conv_lstm(rng: &mut Rng, spec: &ConvLstmSpec) {
    let graph = Chain::float(&spec.input_shape())
        .named("conv_lstm")
        .conv_lstm(rng, "conv_lstm", spec)
        .build();
    let Some(gpu) = runtime(&graph) else { return };
    for batch in [1, 3] {
        let input = float_input(rng, batch, &spec.input_shape(), 1.0);
        check_with(
            &format!("{} batch {batch}", spec.describe()),
            &gpu,
            &graph,
            &input,
        );
    }
}

#[test]
fn conv_lstm2d_matches_cpu_for_odd_images_filters_and_lengths() {
    let mut rng = Rng::new(31);
    // 5 filters over a 5x7 image, 7 steps, every sequence output.
    let mut spec = ConvLstmSpec::new_2d(7, [5, 7, 3], 5, [3, 3]);
    spec.return_sequences = true;
    check_conv_lstm(&mut rng, &spec);
    // One step, one filter, an even kernel (TensorFlow puts the odd `same` pad after).
    let mut one = ConvLstmSpec::new_2d(1, [3, 3, 1], 1, [2, 2]);
    check_conv_lstm(&mut rng, &one);
    one.return_sequences = true;
    check_conv_lstm(&mut rng, &one);
    // `valid`, strides 2x1 on a 7x5 image, a 3x2 kernel, last output only.
    let mut strided = ConvLstmSpec::new_2d(7, [7, 5, 2], 3, [3, 2]);
    strided.padding = Padding::Valid;
    strided.strides = [2, 1];
    check_conv_lstm(&mut rng, &strided);
    strided.padding = Padding::Same;
    strided.strides = [2, 3];
    strided.return_sequences = true;
    check_conv_lstm(&mut rng, &strided);
}

#[test]
fn conv_lstm_go_backwards_keeps_processing_order() {
    let mut rng = Rng::new(32);
    let mut spec = ConvLstmSpec::new_2d(7, [4, 5, 2], 6, [3, 3]);
    spec.go_backwards = true;
    spec.return_sequences = true;
    check_conv_lstm(&mut rng, &spec);
    spec.return_sequences = false;
    spec.padding = Padding::Valid;
    check_conv_lstm(&mut rng, &spec);
    let mut one_d = ConvLstmSpec::new_1d(7, 9, 4, 6, 3);
    one_d.go_backwards = true;
    one_d.strides = [1, 2];
    one_d.return_sequences = true;
    check_conv_lstm(&mut rng, &one_d);
}

#[test]
fn conv_lstm1d_matches_cpu() {
    let mut rng = Rng::new(33);
    let mut spec = ConvLstmSpec::new_1d(7, 11, 3, 7, 3);
    spec.return_sequences = true;
    check_conv_lstm(&mut rng, &spec);
    // A kernel as wide as the input: one output position.
    let mut narrow = ConvLstmSpec::new_1d(1, 5, 2, 7, 5);
    narrow.padding = Padding::Valid;
    check_conv_lstm(&mut rng, &narrow);
    narrow.timesteps = 4;
    narrow.strides = [1, 3];
    narrow.padding = Padding::Same;
    narrow.return_sequences = true;
    check_conv_lstm(&mut rng, &narrow);
}

#[test]
fn conv_lstm_applies_its_activations_with_and_without_bias() {
    let mut rng = Rng::new(34);
    for (activation, recurrent_activation, bias) in [
        (Activation::RELU, Activation::HardSigmoid, false),
        (Activation::Elu { alpha: 0.7 }, Activation::Sigmoid, true),
        (Activation::Linear, Activation::Tanh, true),
        (Activation::Silu, Activation::Softsign, false),
    ] {
        let mut spec = ConvLstmSpec::new_2d(4, [3, 4, 2], 3, [3, 3]);
        spec.activation = activation;
        spec.recurrent_activation = recurrent_activation;
        spec.bias = bias;
        spec.return_sequences = true;
        check_conv_lstm(&mut rng, &spec);
    }
}

#[test]
fn conv_lstm_with_deep_recurrent_convs_splits_k_and_matches_cpu() {
    let mut rng = Rng::new(35);
    // K = 3*3*57 = 513 over 4x3 positions: few tiles, so every step's recurrent conv splits K.
    let spec = ConvLstmSpec::new_2d(3, [4, 3, 3], 57, [3, 3]);
    check_conv_lstm(&mut rng, &spec);
    let graph = Chain::float(&spec.input_shape())
        .conv_lstm(&mut rng, "conv_lstm", &spec)
        .build();
    let plan = wgnn::gpu::describe_plan(&graph, 1, None).unwrap();
    assert!(plan.contains("splitk_reduce"), "{plan}");
}

/// The plan shows the layer's steps: one input conv for every timestep, then per step the
/// recurrent conv (none at the first, where h is zero) and the gate update, all in one submit.
#[test]
fn conv_lstm_plan_lists_every_step() {
    let mut rng = Rng::new(36);
    let mut spec = ConvLstmSpec::new_2d(5, [6, 6, 2], 4, [3, 3]);
    spec.go_backwards = true;
    spec.return_sequences = true;
    let graph = Chain::float(&spec.input_shape())
        .conv_lstm(&mut rng, "conv_lstm", &spec)
        .build();
    let plan = wgnn::gpu::describe_plan(&graph, 2, None).unwrap();
    assert_eq!(
        plan.matches("input conv of all 5 steps").count(),
        1,
        "{plan}"
    );
    assert_eq!(plan.matches("recurrent conv of h").count(), 4, "{plan}");
    assert_eq!(plan.matches("conv_lstm_gates").count(), 5, "{plan}");
    assert!(plan.contains("step 0 (input t=4)"), "{plan}");
    assert!(plan.contains("step 4 (input t=0)"), "{plan}");
    assert!(plan.contains("10 dispatches in one submit"), "{plan}");
}
