//! `Model::train`: Keras's `fit` through the library's one-call API trains the model in place —
//! its history is Keras's and its predictions afterwards are the trained model's (the committed
//! fit fixture `cnn_adam_scce_l2`, made by tools/train_fixtures.py with real Keras).

use std::path::Path;

use ndarray::ArrayD;
use wgnn::npy::{read_npz, NpyArray};
use wgnn::train::compile::Compiled;
use wgnn::train::{Shuffle, TrainConfig, TrainData};
use wgnn::{Backend, Model};

/// How many times Keras's own one-ulp drift a difference may be (as tests/train_fit.rs).
const DRIFT_MULTIPLE: f64 = 4.0;

fn float(a: &NpyArray) -> ArrayD<f32> {
    match a {
        NpyArray::Float(x) => x.clone(),
        NpyArray::Float64(x) => x.mapv(|v| v as f32),
        NpyArray::Int(x) => x.mapv(|v| v as f32),
    }
}

#[test]
fn model_train_is_keras_fit_in_place() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/fit");
    let name = "cnn_adam_scce_l2";
    let mut model = Model::load(dir.join(format!("{name}.keras"))).expect("load");
    let arrays = read_npz(&dir.join(format!("{name}.npz"))).expect("npz");
    let get = |key: &str| {
        arrays
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| float(a))
            .unwrap_or_else(|| panic!("{name}.npz has no {key}"))
    };
    let x = get("x0");
    let before = model.predict(x.view(), Backend::Cpu).expect("predict");

    let compiled = Compiled::from_graph(model.graph(), model.source()).expect("compile config");
    let config = TrainConfig {
        epochs: 3,
        batch_size: 16,
        shuffle: Shuffle::None,
        seed: 0,
        losses: compiled.losses,
        loss_weights: compiled.loss_weights,
        optimizer: compiled.optimizer.expect("optimizer"),
        metrics: compiled.metrics,
    };
    let data = TrainData {
        inputs: vec![model.prepare_input(0, x.view()).expect("input")],
        targets: vec![get("y0")],
    };
    let history = model.train(&data, &config).expect("train");

    let (want, drift) = (get("loss"), get("drift_loss"));
    assert_eq!(history.epochs.len(), want.len());
    for (e, log) in history.epochs.iter().enumerate() {
        let (w, d) = (want[e] as f64, drift[e] as f64);
        let tol = (1e-4 * (1.0 + w.abs())).max(DRIFT_MULTIPLE * d);
        assert!(
            (log.loss - w).abs() <= tol,
            "epoch {e}: loss {} vs Keras {w} (tolerance {tol})",
            log.loss
        );
    }

    // The model itself now predicts as Keras's trained model does.
    let after = model.predict(x.view(), Backend::Cpu).expect("predict");
    let (pred, drift_pred) = (get("pred0"), get("drift_pred")[[]] as f64);
    let tol = 1e-4f64.max(DRIFT_MULTIPLE * drift_pred);
    let mut moved = 0.0f32;
    for ((a, p), b) in after.iter().zip(pred.iter()).zip(before.iter()) {
        let rel = ((a - p).abs() / (1.0 + p.abs())) as f64;
        assert!(
            rel <= tol,
            "prediction {a} vs Keras's trained {p} (tolerance {tol})"
        );
        moved = moved.max((a - b).abs());
    }
    assert!(
        moved > 1e-3,
        "training left the predictions where they were"
    );
}
