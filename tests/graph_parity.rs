//! Every fixture of `tests/fixtures/graph/manifest.json` (real Keras outputs for the graph IR's
//! layers and model shapes: merges, nested and shared layers, several inputs and outputs, every
//! file form) on the CPU against Keras, and on the GPU against Keras too, at
//! |got - expected| <= 1e-4 * (1 + |expected|). The keras.applications recipes are in
//! `graph_apps.rs`. A test checks that no fixture of the manifest is left out here.
//!
//! Adding a fixture: rerun `tools/graph_fixtures.py`, then add one line below.

mod common;

use std::collections::BTreeSet;

use common::graph_fixtures::{
    check_graph_bad_file, check_graph_fixture, graph_dir, graph_manifest,
};
use wgnn::Backend;

/// Two `#[test]`s per fixture: `cpu_test, gpu_test => "fixture name"`.
macro_rules! matches_keras {
    ($($cpu:ident, $gpu:ident => $fixture:literal,)*) => {
        $(
            #[test]
            fn $cpu() {
                check_graph_fixture("", $fixture, Backend::Cpu);
            }

            #[test]
            fn $gpu() {
                check_graph_fixture("", $fixture, Backend::Gpu);
            }
        )*
        const LISTED: &[&str] = &[$($fixture),*];
    };
}

matches_keras! {
    bn_last_axis_cpu, bn_last_axis_gpu => "bn_last_axis",
    bn_axis1_cpu, bn_axis1_gpu => "bn_axis1",
    bn_dense_2d_cpu, bn_dense_2d_gpu => "bn_dense_2d",
    bn_no_center_no_scale_eps_cpu, bn_no_center_no_scale_eps_gpu => "bn_no_center_no_scale_eps",
    bn_no_center_cpu, bn_no_center_gpu => "bn_no_center",
    bn_no_scale_eps_cpu, bn_no_scale_eps_gpu => "bn_no_scale_eps",
    ln_last_axis_cpu, ln_last_axis_gpu => "ln_last_axis",
    ln_axes_1_2_cpu, ln_axes_1_2_gpu => "ln_axes_1_2",
    ln_axes_1_2_3_cpu, ln_axes_1_2_3_gpu => "ln_axes_1_2_3",
    ln_no_center_no_scale_eps_cpu, ln_no_center_no_scale_eps_gpu => "ln_no_center_no_scale_eps",
    ln_rms_scaling_cpu, ln_rms_scaling_gpu => "ln_rms_scaling",
    rms_normalization_cpu, rms_normalization_gpu => "rms_normalization",
    normalization_adapt_cpu, normalization_adapt_gpu => "normalization_adapt",
    normalization_adapt_json_h5_cpu, normalization_adapt_json_h5_gpu => "normalization_adapt_json_h5",
    normalization_explicit_cpu, normalization_explicit_gpu => "normalization_explicit",
    normalization_explicit_invert_cpu, normalization_explicit_invert_gpu => "normalization_explicit_invert",
    normalization_explicit_scalar_cpu, normalization_explicit_scalar_gpu => "normalization_explicit_scalar",
    conv1d_valid_cpu, conv1d_valid_gpu => "conv1d_valid",
    conv1d_same_even_kernel_cpu, conv1d_same_even_kernel_gpu => "conv1d_same_even_kernel",
    conv1d_causal_cpu, conv1d_causal_gpu => "conv1d_causal",
    conv1d_causal_dilation2_cpu, conv1d_causal_dilation2_gpu => "conv1d_causal_dilation2",
    conv1d_stride2_same_cpu, conv1d_stride2_same_gpu => "conv1d_stride2_same",
    conv1d_stride3_valid_cpu, conv1d_stride3_valid_gpu => "conv1d_stride3_valid",
    conv1d_dilation2_same_cpu, conv1d_dilation2_same_gpu => "conv1d_dilation2_same",
    conv1d_dilation2_valid_cpu, conv1d_dilation2_valid_gpu => "conv1d_dilation2_valid",
    conv1d_groups2_cpu, conv1d_groups2_gpu => "conv1d_groups2",
    conv1d_no_bias_cpu, conv1d_no_bias_gpu => "conv1d_no_bias",
    conv2d_dilation_2x3_valid_cpu, conv2d_dilation_2x3_valid_gpu => "conv2d_dilation_2x3_valid",
    conv2d_dilation_2x3_same_cpu, conv2d_dilation_2x3_same_gpu => "conv2d_dilation_2x3_same",
    conv2d_groups3_cpu, conv2d_groups3_gpu => "conv2d_groups3",
    conv2d_groups3_stride2_cpu, conv2d_groups3_stride2_gpu => "conv2d_groups3_stride2",
    conv3d_valid_cpu, conv3d_valid_gpu => "conv3d_valid",
    conv3d_same_stride2_cpu, conv3d_same_stride2_gpu => "conv3d_same_stride2",
    conv3d_same_dilation_cpu, conv3d_same_dilation_gpu => "conv3d_same_dilation",
    depthwise2d_m1_same_cpu, depthwise2d_m1_same_gpu => "depthwise2d_m1_same",
    depthwise2d_m2_stride2_valid_cpu, depthwise2d_m2_stride2_valid_gpu => "depthwise2d_m2_stride2_valid",
    depthwise2d_m2_stride2_same_cpu, depthwise2d_m2_stride2_same_gpu => "depthwise2d_m2_stride2_same",
    depthwise2d_dilation2_cpu, depthwise2d_dilation2_gpu => "depthwise2d_dilation2",
    depthwise1d_m1_valid_cpu, depthwise1d_m1_valid_gpu => "depthwise1d_m1_valid",
    depthwise1d_m2_stride2_same_cpu, depthwise1d_m2_stride2_same_gpu => "depthwise1d_m2_stride2_same",
    separable2d_m2_same_cpu, separable2d_m2_same_gpu => "separable2d_m2_same",
    separable2d_m2_valid_stride2_cpu, separable2d_m2_valid_stride2_gpu => "separable2d_m2_valid_stride2",
    separable1d_m2_same_cpu, separable1d_m2_same_gpu => "separable1d_m2_same",
    separable1d_m1_valid_cpu, separable1d_m1_valid_gpu => "separable1d_m1_valid",
    conv1d_transpose_s2_valid_cpu, conv1d_transpose_s2_valid_gpu => "conv1d_transpose_s2_valid",
    conv1d_transpose_s2_same_cpu, conv1d_transpose_s2_same_gpu => "conv1d_transpose_s2_same",
    conv1d_transpose_s3_outpad_cpu, conv1d_transpose_s3_outpad_gpu => "conv1d_transpose_s3_outpad",
    conv2d_transpose_s2_same_cpu, conv2d_transpose_s2_same_gpu => "conv2d_transpose_s2_same",
    conv2d_transpose_s2_valid_cpu, conv2d_transpose_s2_valid_gpu => "conv2d_transpose_s2_valid",
    conv2d_transpose_s2x3_k3x4_same_cpu, conv2d_transpose_s2x3_k3x4_same_gpu => "conv2d_transpose_s2x3_k3x4_same",
    conv2d_transpose_outpad_cpu, conv2d_transpose_outpad_gpu => "conv2d_transpose_outpad",
    conv2d_transpose_outpad_same_cpu, conv2d_transpose_outpad_same_gpu => "conv2d_transpose_outpad_same",
    conv3d_transpose_s2_same_cpu, conv3d_transpose_s2_same_gpu => "conv3d_transpose_s2_same",
    conv3d_transpose_s2_valid_outpad_cpu, conv3d_transpose_s2_valid_outpad_gpu => "conv3d_transpose_s2_valid_outpad",
    maxpool1d_valid_cpu, maxpool1d_valid_gpu => "maxpool1d_valid",
    maxpool1d_same_cpu, maxpool1d_same_gpu => "maxpool1d_same",
    maxpool1d_pool3_stride2_valid_cpu, maxpool1d_pool3_stride2_valid_gpu => "maxpool1d_pool3_stride2_valid",
    maxpool1d_pool3_stride2_same_cpu, maxpool1d_pool3_stride2_same_gpu => "maxpool1d_pool3_stride2_same",
    maxpool1d_pool4_stride1_same_cpu, maxpool1d_pool4_stride1_same_gpu => "maxpool1d_pool4_stride1_same",
    avgpool1d_valid_cpu, avgpool1d_valid_gpu => "avgpool1d_valid",
    avgpool1d_same_cpu, avgpool1d_same_gpu => "avgpool1d_same",
    avgpool1d_pool3_stride2_valid_cpu, avgpool1d_pool3_stride2_valid_gpu => "avgpool1d_pool3_stride2_valid",
    avgpool1d_pool3_stride2_same_cpu, avgpool1d_pool3_stride2_same_gpu => "avgpool1d_pool3_stride2_same",
    avgpool1d_pool4_stride1_same_cpu, avgpool1d_pool4_stride1_same_gpu => "avgpool1d_pool4_stride1_same",
    maxpool3d_valid_cpu, maxpool3d_valid_gpu => "maxpool3d_valid",
    maxpool3d_same_cpu, maxpool3d_same_gpu => "maxpool3d_same",
    maxpool3d_pool2x2x3_stride1_same_cpu, maxpool3d_pool2x2x3_stride1_same_gpu => "maxpool3d_pool2x2x3_stride1_same",
    maxpool3d_pool3_stride2_valid_cpu, maxpool3d_pool3_stride2_valid_gpu => "maxpool3d_pool3_stride2_valid",
    avgpool3d_valid_cpu, avgpool3d_valid_gpu => "avgpool3d_valid",
    avgpool3d_same_cpu, avgpool3d_same_gpu => "avgpool3d_same",
    avgpool3d_pool2x2x3_stride1_same_cpu, avgpool3d_pool2x2x3_stride1_same_gpu => "avgpool3d_pool2x2x3_stride1_same",
    avgpool3d_pool3_stride2_valid_cpu, avgpool3d_pool3_stride2_valid_gpu => "avgpool3d_pool3_stride2_valid",
    global_maxpool1d_cpu, global_maxpool1d_gpu => "global_maxpool1d",
    global_maxpool1d_keepdims_cpu, global_maxpool1d_keepdims_gpu => "global_maxpool1d_keepdims",
    global_avgpool1d_cpu, global_avgpool1d_gpu => "global_avgpool1d",
    global_avgpool1d_keepdims_cpu, global_avgpool1d_keepdims_gpu => "global_avgpool1d_keepdims",
    global_maxpool3d_cpu, global_maxpool3d_gpu => "global_maxpool3d",
    global_maxpool3d_keepdims_cpu, global_maxpool3d_keepdims_gpu => "global_maxpool3d_keepdims",
    global_avgpool3d_cpu, global_avgpool3d_gpu => "global_avgpool3d",
    global_avgpool3d_keepdims_cpu, global_avgpool3d_keepdims_gpu => "global_avgpool3d_keepdims",
    masked_global_avgpool1d_cpu, masked_global_avgpool1d_gpu => "masked_global_avgpool1d",
    zeropad1d_sym_cpu, zeropad1d_sym_gpu => "zeropad1d_sym",
    zeropad1d_asym_cpu, zeropad1d_asym_gpu => "zeropad1d_asym",
    zeropad2d_sym_cpu, zeropad2d_sym_gpu => "zeropad2d_sym",
    zeropad2d_asym_cpu, zeropad2d_asym_gpu => "zeropad2d_asym",
    zeropad2d_tuple2_cpu, zeropad2d_tuple2_gpu => "zeropad2d_tuple2",
    zeropad3d_sym_cpu, zeropad3d_sym_gpu => "zeropad3d_sym",
    zeropad3d_asym_cpu, zeropad3d_asym_gpu => "zeropad3d_asym",
    cropping1d_cpu, cropping1d_gpu => "cropping1d",
    cropping2d_cpu, cropping2d_gpu => "cropping2d",
    cropping2d_sym_cpu, cropping2d_sym_gpu => "cropping2d_sym",
    cropping3d_cpu, cropping3d_gpu => "cropping3d",
    upsampling1d_cpu, upsampling1d_gpu => "upsampling1d",
    upsampling2d_nearest_cpu, upsampling2d_nearest_gpu => "upsampling2d_nearest",
    upsampling2d_bilinear_cpu, upsampling2d_bilinear_gpu => "upsampling2d_bilinear",
    upsampling2d_bilinear_conv_cpu, upsampling2d_bilinear_conv_gpu => "upsampling2d_bilinear_conv",
    upsampling3d_cpu, upsampling3d_gpu => "upsampling3d",
    permute_2d_cpu, permute_2d_gpu => "permute_2d",
    permute_3d_cpu, permute_3d_gpu => "permute_3d",
    repeat_vector_cpu, repeat_vector_gpu => "repeat_vector",
    reshape_mid_cpu, reshape_mid_gpu => "reshape_mid",
    flatten_reshape_mid_cpu, flatten_reshape_mid_gpu => "flatten_reshape_mid",
    merge_add_cpu, merge_add_gpu => "merge_add",
    merge_subtract_cpu, merge_subtract_gpu => "merge_subtract",
    merge_multiply_cpu, merge_multiply_gpu => "merge_multiply",
    merge_average_cpu, merge_average_gpu => "merge_average",
    merge_maximum_cpu, merge_maximum_gpu => "merge_maximum",
    merge_minimum_cpu, merge_minimum_gpu => "merge_minimum",
    merge_add_direct_cpu, merge_add_direct_gpu => "merge_add_direct",
    merge_multiply_3d_cpu, merge_multiply_3d_gpu => "merge_multiply_3d",
    concat_last_axis_cpu, concat_last_axis_gpu => "concat_last_axis",
    concat_axis1_cpu, concat_axis1_gpu => "concat_axis1",
    concat_axis2_cpu, concat_axis2_gpu => "concat_axis2",
    concat_three_seq_cpu, concat_three_seq_gpu => "concat_three_seq",
    dot_axes1_2d_cpu, dot_axes1_2d_gpu => "dot_axes1_2d",
    dot_axes1_normalize_2d_cpu, dot_axes1_normalize_2d_gpu => "dot_axes1_normalize_2d",
    dot_axes2_3d_cpu, dot_axes2_3d_gpu => "dot_axes2_3d",
    dot_axes1_3d_normalize_cpu, dot_axes1_3d_normalize_gpu => "dot_axes1_3d_normalize",
    dot_axes_1_2_3d_cpu, dot_axes_1_2_3d_gpu => "dot_axes_1_2_3d",
    gru_last_cpu, gru_last_gpu => "gru_last",
    gru_sequences_cpu, gru_sequences_gpu => "gru_sequences",
    gru_reset_before_last_cpu, gru_reset_before_last_gpu => "gru_reset_before_last",
    gru_reset_before_sequences_cpu, gru_reset_before_sequences_gpu => "gru_reset_before_sequences",
    gru_go_backwards_last_cpu, gru_go_backwards_last_gpu => "gru_go_backwards_last",
    gru_go_backwards_sequences_cpu, gru_go_backwards_sequences_gpu => "gru_go_backwards_sequences",
    gru_no_bias_cpu, gru_no_bias_gpu => "gru_no_bias",
    gru_no_bias_reset_before_cpu, gru_no_bias_reset_before_gpu => "gru_no_bias_reset_before",
    gru_relu_hard_sigmoid_cpu, gru_relu_hard_sigmoid_gpu => "gru_relu_hard_sigmoid",
    bigru_concat_sequences_cpu, bigru_concat_sequences_gpu => "bigru_concat_sequences",
    bigru_sum_last_reset_before_cpu, bigru_sum_last_reset_before_gpu => "bigru_sum_last_reset_before",
    masked_gru_last_cpu, masked_gru_last_gpu => "masked_gru_last",
    masked_gru_sequences_cpu, masked_gru_sequences_gpu => "masked_gru_sequences",
    masked_gru_reset_before_sequences_cpu, masked_gru_reset_before_sequences_gpu => "masked_gru_reset_before_sequences",
    masked_gru_go_backwards_last_cpu, masked_gru_go_backwards_last_gpu => "masked_gru_go_backwards_last",
    masked_bigru_sequences_cpu, masked_bigru_sequences_gpu => "masked_bigru_sequences",
    time_distributed_dense_cpu, time_distributed_dense_gpu => "time_distributed_dense",
    time_distributed_conv2d_cpu, time_distributed_conv2d_gpu => "time_distributed_conv2d",
    time_distributed_conv2d_flatten_cpu, time_distributed_conv2d_flatten_gpu => "time_distributed_conv2d_flatten",
    lstm_return_state_cpu, lstm_return_state_gpu => "lstm_return_state",
    gru_return_state_cpu, gru_return_state_gpu => "gru_return_state",
    bilstm_return_state_cpu, bilstm_return_state_gpu => "bilstm_return_state",
    seq2seq_lstm_cpu, seq2seq_lstm_gpu => "seq2seq_lstm",
    seq2seq_gru_cpu, seq2seq_gru_gpu => "seq2seq_gru",
    free_time_axis_len11_cpu, free_time_axis_len11_gpu => "free_time_axis_len11",
    free_time_axis_len4_cpu, free_time_axis_len4_gpu => "free_time_axis_len4",
    free_time_axis_seq_cpu, free_time_axis_seq_gpu => "free_time_axis_seq",
    activation_gelu_cpu, activation_gelu_gpu => "activation_gelu",
    dense_gelu_cpu, dense_gelu_gpu => "dense_gelu",
    ops_gelu_approximate_cpu, ops_gelu_approximate_gpu => "ops_gelu_approximate",
    activation_mish_cpu, activation_mish_gpu => "activation_mish",
    activation_log_softmax_cpu, activation_log_softmax_gpu => "activation_log_softmax",
    conv1d_log_softmax_cpu, conv1d_log_softmax_gpu => "conv1d_log_softmax",
    softmax_axis1_cpu, softmax_axis1_gpu => "softmax_axis1",
    softmax_axis1_4d_cpu, softmax_axis1_4d_gpu => "softmax_axis1_4d",
    prelu_full_cpu, prelu_full_gpu => "prelu_full",
    prelu_shared_axes_1_2_cpu, prelu_shared_axes_1_2_gpu => "prelu_shared_axes_1_2",
    prelu_dense_cpu, prelu_dense_gpu => "prelu_dense",
    residual_block_cpu, residual_block_gpu => "residual_block",
    residual_block_legacy_cpu, residual_block_legacy_gpu => "residual_block_legacy",
    inception_block_cpu, inception_block_gpu => "inception_block",
    unet_small_cpu, unet_small_gpu => "unet_small",
    shared_dense_cpu, shared_dense_gpu => "shared_dense",
    shared_conv_siamese_cpu, shared_conv_siamese_gpu => "shared_conv_siamese",
    nested_sequential_in_functional_cpu, nested_sequential_in_functional_gpu => "nested_sequential_in_functional",
    nested_sequential_in_functional_legacy_cpu, nested_sequential_in_functional_legacy_gpu => "nested_sequential_in_functional_legacy",
    nested_functional_in_sequential_cpu, nested_functional_in_sequential_gpu => "nested_functional_in_sequential",
    nested_functional_in_sequential_npz_cpu, nested_functional_in_sequential_npz_gpu => "nested_functional_in_sequential_npz",
    two_inputs_two_outputs_cpu, two_inputs_two_outputs_gpu => "two_inputs_two_outputs",
    ops_arithmetic_cpu, ops_arithmetic_gpu => "ops_arithmetic",
    ops_residual_conv_cpu, ops_residual_conv_gpu => "ops_residual_conv",
    convlstm1d_same_sequences_cpu, convlstm1d_same_sequences_gpu => "convlstm1d_same_sequences",
    convlstm1d_valid_last_cpu, convlstm1d_valid_last_gpu => "convlstm1d_valid_last",
    convlstm2d_same_last_cpu, convlstm2d_same_last_gpu => "convlstm2d_same_last",
    convlstm2d_valid_sequences_cpu, convlstm2d_valid_sequences_gpu => "convlstm2d_valid_sequences",
    convlstm2d_stride2_go_backwards_cpu, convlstm2d_stride2_go_backwards_gpu => "convlstm2d_stride2_go_backwards",
}

macro_rules! rejected {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_graph_bad_file("", $file);
            }
        )*
        const LISTED_BAD: &[&str] = &[$($file),*];
    };
}

rejected! {
    bad_conv1d_channels_first_is_rejected => "bad/conv1d_channels_first.keras",
    bad_gru_stateful_is_rejected => "bad/gru_stateful.keras",
    bad_lambda_layer_is_rejected => "bad/lambda_layer.keras",
    bad_upsampling2d_bicubic_is_rejected => "bad/upsampling2d_bicubic.keras",
    bad_ops_cumsum_is_rejected => "bad/ops_cumsum.keras",
}

#[test]
fn every_fixture_of_the_manifest_is_tested() {
    let manifest = graph_manifest("");
    let listed: BTreeSet<&str> = LISTED.iter().copied().collect();
    let missing: Vec<&str> = manifest
        .fixtures
        .iter()
        .filter(|f| f.form != "recipe" && !listed.contains(f.name.as_str()))
        .map(|f| f.name.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "fixtures without a test here: {missing:?}"
    );
    let listed_bad: BTreeSet<&str> = LISTED_BAD.iter().copied().collect();
    let missing_bad: Vec<&str> = manifest
        .bad
        .iter()
        .filter(|b| !listed_bad.contains(b.file.as_str()))
        .map(|b| b.file.as_str())
        .collect();
    assert!(
        missing_bad.is_empty(),
        "bad files without a test here: {missing_bad:?}"
    );
    assert!(graph_dir().join("manifest.json").is_file());
}
