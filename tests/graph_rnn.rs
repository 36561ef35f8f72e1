//! Recurrent family (GRU, SimpleRNN/LSTM return_state and initial_state, Bidirectional, a free
//! time axis, TimeDistributed): the CPU path against real Keras (fixtures written by
//! tools/graph_fixtures_rnn.py into tests/fixtures/graph/rnn/), and the GPU path against the
//! CPU at awkward shapes. GPU tests skip with a note when no adapter exists, and fail under CI.

mod common;

use common::graph_fixtures::{
    graph_dir, graph_fixture, graph_fixture_inputs, load_graph_fixture_or_panic,
    GraphFixture as Fixture,
};

use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use wgnn::{Backend, Model};

fn dir() -> PathBuf {
    graph_dir().join("rnn")
}

fn fixture(name: &str) -> Fixture {
    graph_fixture("rnn", name)
}

fn load(fx: &Fixture) -> Model {
    load_graph_fixture_or_panic(&dir(), fx)
}

/// The fixture's inputs as float arrays (token ids as integral floats).
fn inputs(fx: &Fixture) -> Vec<ArrayD<f32>> {
    graph_fixture_inputs(&dir(), fx)
}

fn run(model: &Model, xs: &[ArrayD<f32>], backend: Backend) -> wgnn::Result<Vec<ArrayD<f32>>> {
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    model.predict_many(&views, backend)
}

/// Runs fixture `name` on the CPU and compares every output with Keras's.
fn check_cpu(name: &str) {
    let fx = fixture(name);
    let model = load(&fx);
    let got = run(&model, &inputs(&fx), Backend::Cpu)
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): predict failed: {e}", fx.description));
    assert_eq!(
        got.len(),
        fx.outputs.len(),
        "fixture '{name}': output count"
    );
    for (k, (g, o)) in got.iter().zip(&fx.outputs).enumerate() {
        let expected = common::read_npy_f32(&dir().join(&o.file));
        assert_eq!(expected.shape(), o.shape.as_slice());
        common::assert_matches_keras(
            &format!("{name} output {k} ({})", o.name),
            Backend::Cpu,
            g,
            &expected,
        );
    }
}

macro_rules! cpu_fixtures {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_cpu(stringify!($name));
            }
        )*
        /// Every fixture with a CPU test, for the GPU comparison.
        const ALL: &[&str] = &[$(stringify!($name)),*];
    };
}

cpu_fixtures!(
    gru_last,
    gru_sequences,
    gru_reset_before_sequences,
    gru_reset_before_no_bias_last,
    gru_no_bias_sequences,
    gru_go_backwards_sequences,
    gru_go_backwards_reset_before_last,
    gru_relu_hard_sigmoid,
    gru_wide_sequences,
    gru_wide_reset_before_last,
    gru_t1,
    masked_gru_last,
    masked_gru_sequences,
    masked_gru_reset_before_sequences,
    masked_gru_go_backwards_last,
    masked_gru_wide_sequences,
    masked_gru_zero_output_sequences,
    bigru_concat_sequences,
    bigru_sum_last_reset_before,
    bigru_ave_sequences,
    bigru_mul_last,
    masked_bigru_sequences,
    masked_bigru_reset_before_last,
    lstm_return_state,
    gru_return_state,
    masked_simplernn_return_state,
    masked_lstm_wide_return_state,
    masked_lstm_t1_return_state,
    bilstm_return_state,
    masked_bigru_return_state,
    bilstm_merge_none_sequences,
    masked_bigru_merge_none_return_state,
    seq2seq_lstm,
    seq2seq_gru,
    seq2seq_masked_decoder,
    seq2seq_bidirectional,
    seq2seq_wide_lstm,
    free_time_len9,
    free_time_len1,
    free_time_len4,
    free_time_functional_len11,
    free_time_functional_len3,
    free_time_masked_ids,
    td_dense,
    td_conv2d_gmp_lstm,
    td_conv_pool_flatten_gru,
    masked_td_dense_lstm,
    td_lstm,
    td_bigru_sequences,
    mask_kwarg_bool_input,
    free_time_strided_conv1d,
    convlstm1d_same_sequences,
    convlstm1d_valid_last,
    convlstm1d_stride2_backwards,
    convlstm2d_same_last,
    convlstm2d_valid_sequences,
    convlstm2d_stride2_go_backwards,
    convlstm2d_no_bias_relu_t1,
);

/// TimeDistributed around a layer it cannot fold is an error naming the layer, not a guess.
#[test]
fn time_distributed_of_an_unsupported_layer_is_an_error() {
    let fx = fixture("td_conv_pool_flatten_gru");
    let text = std::fs::read_to_string(dir().join(&fx.model)).expect("config");
    assert!(text.contains("\"MaxPooling2D\""));
    let bad = text.replace("\"MaxPooling2D\"", "\"UpSampling2D\"");
    let tmp = std::env::temp_dir().join(format!("wgnn_rnn_td_{}.json", std::process::id()));
    std::fs::write(&tmp, bad).expect("write");
    let err = Model::load_with_weights(&tmp, dir().join(fx.weights.as_deref().expect("weights")))
        .expect_err("TimeDistributed(UpSampling2D) must be rejected");
    let _ = std::fs::remove_file(&tmp);
    assert!(err.to_string().contains("UpSampling2D"), "{err}");
}

/// One model with a free time axis runs at several lengths in turn (each length builds its own
/// graph once), and the lengths in between do not disturb each other.
#[test]
fn free_time_axis_lengths_interleave() {
    for _ in 0..2 {
        for name in ["free_time_len4", "free_time_len9", "free_time_len1"] {
            check_cpu(name);
        }
    }
    let fx = fixture("free_time_len9");
    let model = load(&fx);
    let xs = inputs(&fx);
    let first = run(&model, &xs, Backend::Cpu).expect("length 9");
    let short = xs[0].slice(ndarray::s![.., ..3, ..]).to_owned().into_dyn();
    let y3 = run(&model, &[short], Backend::Cpu).expect("length 3");
    assert_eq!(y3[0].shape(), &[2, 3, 2]);
    // A causal GRU: the first 3 steps of the length-9 run are the length-3 run.
    let head = first[0]
        .slice(ndarray::s![.., ..3, ..])
        .to_owned()
        .into_dyn();
    common::assert_matches_keras("free_time_len9 prefix", Backend::Cpu, &y3[0], &head);
    let again = run(&model, &xs, Backend::Cpu).expect("length 9 again");
    assert_eq!(again[0], first[0]);
}

/// Only the time axis may be free: a `None` feature axis, or a wrong feature count, is an error.
#[test]
fn free_dimension_outside_the_time_axis_is_an_error() {
    let fx = fixture("free_time_len9");
    let text = std::fs::read_to_string(dir().join(&fx.model)).expect("config");
    assert!(text.contains("\"batch_shape\": [null, null, 5]"));
    let bad = text.replace(
        "\"batch_shape\": [null, null, 5]",
        "\"batch_shape\": [null, 9, null]",
    );
    let tmp =
        std::env::temp_dir().join(format!("wgnn_rnn_free_feature_{}.json", std::process::id()));
    std::fs::write(&tmp, bad).expect("write");
    let err = Model::load_with_weights(&tmp, dir().join(fx.weights.as_deref().expect("weights")))
        .expect_err("a free feature axis must be rejected");
    let _ = std::fs::remove_file(&tmp);
    assert!(err.to_string().contains("free dimension"), "{err}");

    let model = load(&fx);
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 9, 4]));
    let err = run(&model, &[wrong], Backend::Cpu).expect_err("4 features where 5 are expected");
    assert!(err.to_string().contains("None, 5"), "{err}");
}

/// Every output of `model` on the GPU against the CPU at the parity tolerance; false when the
/// test should skip (no adapter outside CI).
fn gpu_matches_cpu(label: &str, model: &Model, xs: &[ArrayD<f32>]) -> bool {
    let cpu = run(model, xs, Backend::Cpu).unwrap_or_else(|e| panic!("{label}: CPU failed: {e}"));
    let gpu = match run(model, xs, Backend::Gpu) {
        Ok(g) => g,
        Err(e) if common::no_adapter_outside_ci(&e) => return false,
        Err(e) => panic!("{label}: GPU failed: {e}"),
    };
    assert_eq!(cpu.len(), gpu.len(), "{label}: output count");
    for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        common::assert_matches_keras(
            &format!("{label} output {k} (GPU vs CPU)"),
            Backend::Gpu,
            g,
            c,
        );
    }
    true
}

/// A batch of `n` rows built from the fixture's rows (repeated in order, and for float inputs
/// perturbed per copy so rows differ).
fn resized(xs: &[ArrayD<f32>], kinds: &[&str], n: usize) -> Vec<ArrayD<f32>> {
    xs.iter()
        .zip(kinds)
        .map(|(x, kind)| {
            let rows = x.shape()[0];
            let mut shape = x.shape().to_vec();
            shape[0] = n;
            let per = x.len() / rows;
            let src = x.as_standard_layout();
            let src = src.as_slice().expect("standard layout");
            let data: Vec<f32> = (0..n * per)
                .map(|i| {
                    let (row, k) = (i / per, i % per);
                    let v = src[(row % rows) * per + k];
                    if *kind == "ids" {
                        v
                    } else {
                        v + 0.1 * ((row / rows) as f32) * ((k % 7) as f32 - 3.0) / 3.0
                    }
                })
                .collect();
            ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape")
        })
        .collect()
}

#[test]
fn gpu_matches_cpu_on_every_fixture() {
    for name in ALL {
        let fx = fixture(name);
        let model = load(&fx);
        if !gpu_matches_cpu(name, &model, &inputs(&fx)) {
            return;
        }
    }
}

#[test]
fn gpu_matches_cpu_at_batch_1_and_33() {
    for name in [
        "gru_wide_sequences",
        "gru_wide_reset_before_last",
        "masked_bigru_sequences",
        "masked_gru_reset_before_sequences",
        "bilstm_return_state",
        "masked_bigru_merge_none_return_state",
        "seq2seq_masked_decoder",
        "seq2seq_wide_lstm",
        "free_time_functional_len3",
        "td_conv_pool_flatten_gru",
        "td_conv2d_gmp_lstm",
        "convlstm2d_stride2_go_backwards",
        "convlstm1d_same_sequences",
    ] {
        let fx = fixture(name);
        let model = load(&fx);
        let xs = inputs(&fx);
        let kinds: Vec<&str> = fx.inputs.iter().map(|i| i.kind.as_str()).collect();
        for n in [1, 33] {
            if !gpu_matches_cpu(
                &format!("{name} at batch {n}"),
                &model,
                &resized(&xs, &kinds, n),
            ) {
                return;
            }
        }
    }
}
