//! The seed report's 12 NusaX models (env WGNN_SEED_MODELS) on raw test.csv text (env WGNN_DATA):
//! macro-F1 and accuracy equal Keras's to 4 decimals, and the probabilities match Keras's own
//! within 1e-4 * (1 + |expected|), on the CPU and on the GPU.

mod common;

use common::env_dir;

use wgnn::data::nusax::Split;
use wgnn::eval::{eval_nusax, EvalOptions};
use wgnn::text::Tokenizer;
use wgnn::{Backend, Model};

const MODELS: [&str; 12] = [
    "lstm_cell8",
    "lstm_layer1",
    "lstm_layer2",
    "lstm_layer3",
    "rnn_cell16",
    "rnn_cell24",
    "rnn_cell8",
    "rnn_layer1",
    "rnn_layer1Bi",
    "rnn_layer1Uni",
    "rnn_layer2",
    "rnn_layer3",
];

fn read_probs(path: &std::path::Path) -> ndarray::Array2<f32> {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    ndarray::Array2::from_shape_vec((shape[0], shape[1]), npy.into_vec::<f32>().unwrap()).unwrap()
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn check_all(backend: Backend) {
    let (Some(seed), Some(_)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(seed.join("expected.json")).unwrap()).unwrap();
    let tokenizer = Tokenizer::load(&seed.join("nusax_tokenizer.json")).unwrap();
    let examples = wgnn::data::locate_nusax(None)
        .unwrap()
        .load(Split::Test, None)
        .unwrap();
    assert_eq!(examples.len(), 400);
    let opts = EvalOptions {
        backend,
        batch_size: 400,
        ..Default::default()
    };
    for name in MODELS {
        let model = Model::load(seed.join(format!("{name}.keras"))).unwrap();
        let outcome = match eval_nusax(&model, &examples, Some(&tokenizer), &opts) {
            Err(e) if common::no_adapter_outside_ci(&e) => return,
            other => other.unwrap_or_else(|e| panic!("{name}: {e}")),
        };
        let want = &expected[format!("{name}.keras")];
        let want_f1 = want["macro_f1"].as_f64().unwrap();
        let want_acc = want["accuracy"].as_f64().unwrap();
        assert_eq!(
            round4(outcome.macro_f1),
            want_f1,
            "{name}: macro-F1 on {backend:?}"
        );
        assert_eq!(
            round4(outcome.accuracy),
            want_acc,
            "{name}: accuracy on {backend:?}"
        );

        let keras = read_probs(&seed.join(format!("{name}.test_probs.npy")));
        assert_eq!(outcome.probabilities.dim(), keras.dim(), "{name}");
        for ((idx, &got), &exp) in outcome.probabilities.indexed_iter().zip(keras.iter()) {
            assert!(
                (got - exp).abs() <= 1e-4 * (1.0 + exp.abs()),
                "{name} on {backend:?}: probability {idx:?} is {got}, Keras gives {exp}"
            );
        }
    }
}

#[test]
fn seed_models_reproduce_keras_macro_f1_on_cpu() {
    check_all(Backend::Cpu);
}

#[test]
fn seed_models_reproduce_keras_macro_f1_on_gpu() {
    check_all(Backend::Gpu);
}

/// The authors' own weight files (with Adam's state under `optimizer/`) and their model JSON
/// load as the `.keras` rebuilds do, though their saved layer names differ from the JSON's.
#[test]
fn original_json_and_weights_h5_match_keras() {
    let (Some(seed), Some(_)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let tokenizer = Tokenizer::load(&seed.join("nusax_tokenizer.json")).unwrap();
    let examples = wgnn::data::locate_nusax(None)
        .unwrap()
        .load(Split::Test, None)
        .unwrap();
    for name in ["lstm_layer2", "rnn_layer1Bi"] {
        let original = seed.join("original");
        let model = Model::load_with_weights(
            original.join(format!("{name}.json")),
            original.join(format!("{name}.weights.h5")),
        )
        .unwrap();
        let opts = EvalOptions {
            backend: Backend::Cpu,
            batch_size: 400,
            ..Default::default()
        };
        let outcome = eval_nusax(&model, &examples, Some(&tokenizer), &opts).unwrap();
        let keras = read_probs(&seed.join(format!("{name}.test_probs.npy")));
        let worst = (&outcome.probabilities - &keras)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(worst <= 1e-4, "{name}: max |wgnn - keras| = {worst}");
    }
}
