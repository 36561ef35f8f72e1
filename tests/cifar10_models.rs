//! The shipped CIFAR-10 models on the official first test images (exact pixels; env WGNN_DATA):
//! wgnn's probabilities equal Keras's (saved by tools/train_cifar10.py) within
//! 1e-4 * (1 + |keras|), every argmax agrees, and so the metrics are Keras's — on CPU and GPU.

mod common;

use common::env_dir;
use std::path::Path;

use ndarray::{s, Array2};
use wgnn::eval::{eval_cifar10, EvalOptions};
use wgnn::{Backend, Model};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn keras_probs(name: &str) -> Array2<f32> {
    let path = root().join(format!(
        "tests/fixtures/cifar10/{name}.first1000.keras_probs.npy"
    ));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    Array2::from_shape_vec((1000, 10), npy.into_vec::<f32>().unwrap()).unwrap()
}

fn check(name: &str, backend: Backend, limit: usize) {
    let Some(data) = env_dir("WGNN_DATA") else {
        return;
    };
    let model = Model::load(root().join(format!("models/{name}.keras"))).unwrap();
    let cifar = wgnn::data::locate_cifar10(Some(&data)).unwrap();
    let opts = EvalOptions {
        backend,
        batch_size: 32,
        limit: Some(limit),
        ..Default::default()
    };
    let outcome = match eval_cifar10(&model, &cifar, &opts) {
        Err(e) if common::no_adapter_outside_ci(&e) => return,
        other => other.unwrap(),
    };
    let keras = keras_probs(name);
    let keras = keras.slice(s![..limit, ..]);
    let mut agree = 0;
    for (i, (got, want)) in outcome
        .probabilities
        .rows()
        .into_iter()
        .zip(keras.rows())
        .enumerate()
    {
        for (j, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{name} on {backend:?}: image {i} class {j}: wgnn {g}, Keras {w}"
            );
        }
        let arg = |r: ndarray::ArrayView1<f32>| {
            wgnn::metrics::argmax_rows(r.insert_axis(ndarray::Axis(0)))[0]
        };
        agree += (arg(got) == arg(want)) as usize;
    }
    assert_eq!(agree, limit, "{name} on {backend:?}: argmax agreement");
    let labels: Vec<usize> = cifar
        .load(wgnn::data::cifar10::Split::Test, Some(limit))
        .unwrap()
        .labels
        .iter()
        .map(|&l| l as usize)
        .collect();
    let keras_report = wgnn::metrics::ClassificationReport::from_probabilities(
        &labels,
        keras,
        cifar.class_names(),
    )
    .unwrap();
    assert_eq!(outcome.macro_f1, keras_report.macro_f1, "{name}: macro-F1");
    assert_eq!(outcome.accuracy, keras_report.accuracy, "{name}: accuracy");
}

#[test]
fn cifar10_base_matches_keras_on_cpu() {
    check("cifar10_base", Backend::Cpu, 1000);
}

#[test]
fn cifar10_base_matches_keras_on_gpu() {
    check("cifar10_base", Backend::Gpu, 1000);
}

#[test]
fn cifar10_vgg6_matches_keras_on_cpu() {
    check("cifar10_vgg6", Backend::Cpu, 1000);
}

#[test]
fn cifar10_vgg6_matches_keras_on_gpu() {
    // VGG6 is 0.31 GFLOP an image; on CI's software GPU (lavapipe) a few batches keep the run
    // short. The full 10,000-image comparison is `wgnn eval cifar10 --compare` on a real GPU.
    check("cifar10_vgg6", Backend::Gpu, 64);
}
