//! CPU parity with Keras: every fixture in `tests/fixtures/manifest.json` (written by
//! `tools/keras_fixtures.py` with real Keras) loads, predicts on the CPU, and matches Keras's own
//! output within |got - expected| <= 1e-4 * (1 + |expected|). Files in `tests/fixtures/bad/`
//! must be rejected with an error that names the offending field or class.
//!
//! Adding a fixture: rerun the script, then add one line below (a test checks none is missed).

mod common;

use std::collections::BTreeSet;

use common::{
    check_bad_file_rejected, check_fixture, fixtures_dir, manifest, read_npy_f32, read_npy_ids,
    FixtureInput,
};
use wgnn::Backend;

/// One `#[test]` per fixture: `test_name => "fixture name"`.
macro_rules! matches_keras_on_cpu {
    ($($test:ident => $fixture:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_fixture($fixture, Backend::Cpu);
            }
        )*
    };
}

matches_keras_on_cpu! {
    // Conv2D: padding, strides, kernel shapes, bias, activations.
    conv2d_valid_matches_keras => "conv2d_valid",
    conv2d_same_matches_keras => "conv2d_same",
    conv2d_same_even_kernel_matches_keras => "conv2d_same_even_kernel",
    conv2d_same_stride2_matches_keras => "conv2d_same_stride2",
    conv2d_valid_stride2_matches_keras => "conv2d_valid_stride2",
    conv2d_kernel3x5_stride2x1_same_matches_keras => "conv2d_kernel3x5_stride2x1_same",
    conv2d_kernel3x5_stride2x1_valid_matches_keras => "conv2d_kernel3x5_stride2x1_valid",
    conv2d_no_bias_matches_keras => "conv2d_no_bias",
    conv2d_relu_matches_keras => "conv2d_relu",
    conv2d_tanh_matches_keras => "conv2d_tanh",
    conv2d_sigmoid_matches_keras => "conv2d_sigmoid",
    conv2d_linear_matches_keras => "conv2d_linear",
    conv2d_elu_matches_keras => "conv2d_elu",
    conv2d_leaky_relu_matches_keras => "conv2d_leaky_relu",
    conv2d_softmax_matches_keras => "conv2d_softmax",
    conv2d_stack_matches_keras => "conv2d_stack",

    // Pooling: valid and same (TF's end padding; average divides by in-bounds cells), global.
    maxpool2d_valid_matches_keras => "maxpool2d_valid",
    maxpool2d_same_matches_keras => "maxpool2d_same",
    maxpool2d_pool3_stride2_valid_matches_keras => "maxpool2d_pool3_stride2_valid",
    maxpool2d_pool3_stride2_same_matches_keras => "maxpool2d_pool3_stride2_same",
    maxpool2d_pool2x3_stride1_same_matches_keras => "maxpool2d_pool2x3_stride1_same",
    avgpool2d_valid_matches_keras => "avgpool2d_valid",
    avgpool2d_same_matches_keras => "avgpool2d_same",
    avgpool2d_pool3_stride2_valid_matches_keras => "avgpool2d_pool3_stride2_valid",
    avgpool2d_pool3_stride2_same_matches_keras => "avgpool2d_pool3_stride2_same",
    avgpool2d_pool2x3_stride1_same_matches_keras => "avgpool2d_pool2x3_stride1_same",
    global_maxpool2d_matches_keras => "global_maxpool2d",
    global_maxpool2d_keepdims_matches_keras => "global_maxpool2d_keepdims",
    global_avgpool2d_matches_keras => "global_avgpool2d",
    global_avgpool2d_keepdims_matches_keras => "global_avgpool2d_keepdims",

    // Dense, Flatten, Dropout, Rescaling, Reshape.
    flatten_dense_matches_keras => "flatten_dense",
    dense_2d_matches_keras => "dense_2d",
    dense_no_bias_matches_keras => "dense_no_bias",
    dense_3d_sequence_matches_keras => "dense_3d_sequence",
    dense_4d_image_matches_keras => "dense_4d_image",
    dropout_matches_keras => "dropout",
    spatial_dropout2d_matches_keras => "spatial_dropout2d",
    rescaling_scalar_matches_keras => "rescaling_scalar",
    rescaling_per_channel_matches_keras => "rescaling_per_channel",
    reshape_matches_keras => "reshape",

    // Activation layers and the ReLU / LeakyReLU / ELU / Softmax layers.
    activation_linear_matches_keras => "activation_linear",
    activation_relu_matches_keras => "activation_relu",
    activation_sigmoid_matches_keras => "activation_sigmoid",
    activation_tanh_matches_keras => "activation_tanh",
    activation_softmax_matches_keras => "activation_softmax",
    activation_elu_matches_keras => "activation_elu",
    activation_leaky_relu_matches_keras => "activation_leaky_relu",
    activation_selu_matches_keras => "activation_selu",
    activation_silu_matches_keras => "activation_silu",
    activation_softplus_matches_keras => "activation_softplus",
    activation_softsign_matches_keras => "activation_softsign",
    activation_hard_sigmoid_matches_keras => "activation_hard_sigmoid",
    activation_exponential_matches_keras => "activation_exponential",
    activation_relu6_matches_keras => "activation_relu6",
    activation_swish_matches_keras => "activation_swish",
    relu_layer_full_matches_keras => "relu_layer_full",
    relu_layer_max_value_matches_keras => "relu_layer_max_value",
    relu_layer_default_matches_keras => "relu_layer_default",
    leaky_relu_layer_matches_keras => "leaky_relu_layer",
    elu_layer_matches_keras => "elu_layer",
    softmax_layer_matches_keras => "softmax_layer",

    // Embedding.
    embedding_matches_keras => "embedding",
    embedding_mask_zero_dense_matches_keras => "embedding_mask_zero_dense",
    embedding_flatten_dense_matches_keras => "embedding_flatten_dense",
    embedding_lstm_unmasked_matches_keras => "embedding_lstm_unmasked",

    // SimpleRNN and LSTM on float sequences.
    simplernn_last_matches_keras => "simplernn_last",
    simplernn_sequences_matches_keras => "simplernn_sequences",
    simplernn_go_backwards_last_matches_keras => "simplernn_go_backwards_last",
    simplernn_go_backwards_sequences_matches_keras => "simplernn_go_backwards_sequences",
    simplernn_no_bias_matches_keras => "simplernn_no_bias",
    simplernn_relu_matches_keras => "simplernn_relu",
    lstm_last_matches_keras => "lstm_last",
    lstm_sequences_matches_keras => "lstm_sequences",
    lstm_go_backwards_last_matches_keras => "lstm_go_backwards_last",
    lstm_go_backwards_sequences_matches_keras => "lstm_go_backwards_sequences",
    lstm_no_bias_matches_keras => "lstm_no_bias",
    lstm_relu_matches_keras => "lstm_relu",
    lstm_hard_sigmoid_recurrent_matches_keras => "lstm_hard_sigmoid_recurrent",
    lstm_tanh_recurrent_matches_keras => "lstm_tanh_recurrent",

    // Bidirectional: merge modes concat / sum / ave / mul, last output and return_sequences.
    bisimplernn_concat_last_matches_keras => "bisimplernn_concat_last",
    bisimplernn_concat_sequences_matches_keras => "bisimplernn_concat_sequences",
    bisimplernn_sum_last_matches_keras => "bisimplernn_sum_last",
    bisimplernn_sum_sequences_matches_keras => "bisimplernn_sum_sequences",
    bisimplernn_ave_last_matches_keras => "bisimplernn_ave_last",
    bisimplernn_ave_sequences_matches_keras => "bisimplernn_ave_sequences",
    bisimplernn_mul_last_matches_keras => "bisimplernn_mul_last",
    bisimplernn_mul_sequences_matches_keras => "bisimplernn_mul_sequences",
    bilstm_concat_last_matches_keras => "bilstm_concat_last",
    bilstm_concat_sequences_matches_keras => "bilstm_concat_sequences",
    bilstm_sum_last_matches_keras => "bilstm_sum_last",
    bilstm_sum_sequences_matches_keras => "bilstm_sum_sequences",
    bilstm_ave_last_matches_keras => "bilstm_ave_last",
    bilstm_ave_sequences_matches_keras => "bilstm_ave_sequences",
    bilstm_mul_last_matches_keras => "bilstm_mul_last",
    bilstm_mul_sequences_matches_keras => "bilstm_mul_sequences",

    // Stacked recurrent layers.
    stacked_simplernn_matches_keras => "stacked_simplernn",
    stacked_lstm_matches_keras => "stacked_lstm",
    stacked_bilstm_matches_keras => "stacked_bilstm",
    stacked_mixed_rnn_matches_keras => "stacked_mixed_rnn",

    // Masking: Embedding(mask_zero) on post-padded rows of lengths 8, 3, 0, 5.
    masked_simplernn_last_matches_keras => "masked_simplernn_last",
    masked_simplernn_sequences_matches_keras => "masked_simplernn_sequences",
    masked_simplernn_go_backwards_last_matches_keras => "masked_simplernn_go_backwards_last",
    masked_simplernn_go_backwards_sequences_matches_keras => "masked_simplernn_go_backwards_sequences",
    masked_bisimplernn_last_matches_keras => "masked_bisimplernn_last",
    masked_bisimplernn_sequences_matches_keras => "masked_bisimplernn_sequences",
    masked_lstm_last_matches_keras => "masked_lstm_last",
    masked_lstm_sequences_matches_keras => "masked_lstm_sequences",
    masked_lstm_go_backwards_last_matches_keras => "masked_lstm_go_backwards_last",
    masked_lstm_go_backwards_sequences_matches_keras => "masked_lstm_go_backwards_sequences",
    masked_bilstm_last_matches_keras => "masked_bilstm_last",
    masked_bilstm_sequences_matches_keras => "masked_bilstm_sequences",
    masked_bilstm_sum_sequences_matches_keras => "masked_bilstm_sum_sequences",
    masked_stacked_simplernn_matches_keras => "masked_stacked_simplernn",
    masked_stacked_lstm_matches_keras => "masked_stacked_lstm",
    masked_stacked_bilstm_matches_keras => "masked_stacked_bilstm",
    masked_bilstm_then_lstm_sequences_matches_keras => "masked_bilstm_then_lstm_sequences",

    // Functional chains and the three file forms (.keras, json + .weights.h5, json + .npz).
    functional_cnn_chain_matches_keras => "functional_cnn_chain",
    functional_rnn_chain_matches_keras => "functional_rnn_chain",
    h5_weights_cnn_matches_keras => "h5_weights_cnn",
    h5_weights_rnn_matches_keras => "h5_weights_rnn",
    h5_weights_functional_cnn_matches_keras => "h5_weights_functional_cnn",
    npz_weights_cnn_matches_keras => "npz_weights_cnn",
    npz_weights_rnn_matches_keras => "npz_weights_rnn",
    npz_weights_functional_rnn_matches_keras => "npz_weights_functional_rnn",
    npz_weights_bilstm_unmasked_matches_keras => "npz_weights_bilstm_unmasked",
}

/// One `#[test]` per bad file: `test_name => "bad/file"`.
macro_rules! rejected_with_named_cause {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_bad_file_rejected($file);
            }
        )*
    };
}

rejected_with_named_cause! {
    conv2d_lora_rank_is_rejected => "bad/conv2d_lora.keras",
    conv2d_channels_first_is_rejected => "bad/conv2d_channels_first.keras",
    stateful_lstm_is_rejected => "bad/lstm_stateful.keras",
}

/// The manifest still lists `former_bad_files_now_load => "bad/gru.keras",` and
/// `former_bad_files_now_load => "bad/bilstm_merge_none.keras",` among the bad files: they were
/// written when GRU and Bidirectional(merge_mode=None) were unsupported. Both load now
/// (tests/graph_rnn.rs checks them against Keras); tools/keras_fixtures.py should drop them on
/// its next run.
#[test]
fn former_bad_files_now_load() {
    for file in ["bad/gru.keras", "bad/bilstm_merge_none.keras"] {
        let bad = common::bad_file(file);
        common::load_model_files(&bad.file, bad.weights.as_deref())
            .unwrap_or_else(|e| panic!("{file} should load now: {e}"));
    }
}

/// Subfolders of tests/fixtures that hold this manifest's files. Others (e.g. `text/`) belong
/// to other suites with their own manifests.
const MANIFEST_SUBFOLDERS: &[&str] = &["bad"];

/// The files this manifest is responsible for: those directly in the fixtures folder and in
/// `MANIFEST_SUBFOLDERS`, relative to it, with `/` separators.
fn manifest_owned_files() -> BTreeSet<String> {
    let root = fixtures_dir();
    let mut out = BTreeSet::new();
    for (dir, prefix) in std::iter::once((root.clone(), String::new())).chain(
        MANIFEST_SUBFOLDERS
            .iter()
            .map(|sub| (root.join(sub), format!("{sub}/"))),
    ) {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.is_file() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                out.insert(format!("{prefix}{name}"));
            }
        }
    }
    out
}

#[test]
fn manifest_covers_every_fixture_file() {
    let manifest = manifest();
    let mut listed = BTreeSet::new();
    listed.insert("manifest.json".to_string());
    for fx in &manifest.fixtures {
        listed.extend([fx.model.clone(), fx.input.clone(), fx.expected.clone()]);
        listed.extend(fx.weights.clone());
    }
    for bad in &manifest.bad {
        listed.insert(bad.file.clone());
        listed.extend(bad.weights.clone());
    }
    let on_disk = manifest_owned_files();
    let orphans: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        orphans.is_empty(),
        "files in tests/fixtures that manifest.json does not list (so no test reads them): {orphans:?}"
    );
    assert!(
        missing.is_empty(),
        "manifest.json lists files that do not exist: {missing:?}"
    );
}

#[test]
fn every_manifest_entry_has_its_own_test() {
    let source = include_str!("keras_parity.rs");
    let manifest = manifest();
    let mut names = BTreeSet::new();
    for fx in &manifest.fixtures {
        assert!(
            names.insert(fx.name.as_str()),
            "fixture '{}' is listed twice",
            fx.name
        );
        assert!(
            source.contains(&format!("=> \"{}\",", fx.name)),
            "fixture '{}' has no line in matches_keras_on_cpu! (tests/keras_parity.rs)",
            fx.name
        );
    }
    for bad in &manifest.bad {
        assert!(
            source.contains(&format!("=> \"{}\",", bad.file)),
            "bad file '{}' has no line in rejected_with_named_cause! (tests/keras_parity.rs)",
            bad.file
        );
    }
}

#[test]
fn fixture_arrays_have_the_shapes_the_manifest_records() {
    let dir = fixtures_dir();
    for fx in manifest().fixtures {
        let input = dir.join(&fx.input);
        let input_shape = match fx.input_kind {
            FixtureInput::Float => read_npy_f32(&input).shape().to_vec(),
            FixtureInput::Ids => read_npy_ids(&input).shape().to_vec(),
        };
        assert_eq!(input_shape, fx.input_shape, "fixture '{}': input", fx.name);
        let expected = read_npy_f32(&dir.join(&fx.expected));
        assert_eq!(
            expected.shape(),
            fx.output_shape.as_slice(),
            "fixture '{}': expected output",
            fx.name
        );
    }
}

#[test]
fn tolerance_is_relative_to_the_expected_value() {
    assert!(common::within_tolerance(1000.05, 1000.0));
    assert!(!common::within_tolerance(1000.2, 1000.0));
    assert!(common::within_tolerance(0.0, 0.0001));
    assert!(!common::within_tolerance(0.0, 0.0002));
    assert!(!common::within_tolerance(f32::NAN, 0.0));
}

#[test]
#[should_panic(
    expected = "fixture 'synthetic' on Cpu: 2 of 6 values outside |got - expected| <= 1e-4 * (1 + |expected|); worst at [1, 0]: got 2.5, expected 2"
)]
fn mismatch_message_names_fixture_worst_index_got_and_expected() {
    let expected = ndarray::arr2(&[[0.0f32, 1.0, 2.0], [2.0, 3.0, 4.0]]).into_dyn();
    let mut got = expected.clone();
    got[[0, 1]] += 0.01;
    got[[1, 0]] += 0.5;
    common::assert_matches_keras("synthetic", Backend::Cpu, &got, &expected);
}
