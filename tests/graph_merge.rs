//! Merge and shape ops: every fixture of tests/fixtures/graph/merge/ (written by
//! tools/graph_fixtures_merge.py with Keras 3) on the CPU and the GPU against Keras, the GPU
//! against the CPU at batch 1 and 33 on random inputs, and the files the loader must reject.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde::Deserialize;
use wgnn::{Backend, Model};

#[derive(Debug, Deserialize)]
struct Port {
    file: String,
    #[serde(default)]
    kind: Option<String>,
    shape: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct Fixture {
    name: String,
    description: String,
    model: String,
    #[serde(default)]
    weights: Option<String>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

#[derive(Debug, Deserialize)]
struct Bad {
    file: String,
    #[serde(default)]
    weights: Option<String>,
    word: String,
    description: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    fixtures: Vec<Fixture>,
    bad: Vec<Bad>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graph/merge")
}

fn manifest() -> Manifest {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Fixture {
    manifest()
        .fixtures
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| {
            panic!("no fixture '{name}' in tests/fixtures/graph/merge/manifest.json")
        })
}

fn load(model: &str, weights: Option<&str>) -> wgnn::Result<Model> {
    match weights {
        Some(w) => Model::load_with_weights(dir().join(model), dir().join(w)),
        None => Model::load(dir().join(model)),
    }
}

fn read_input(port: &Port) -> ArrayD<f32> {
    let path = dir().join(&port.file);
    match port.kind.as_deref() {
        Some("ids") => common::read_npy_ids(&path).mapv(|v| v as f32).into_dyn(),
        _ => common::read_npy_f32(&path),
    }
}

/// Runs `fx` on `backend`; None when the GPU is absent outside CI.
fn run(
    fx: &Fixture,
    model: &Model,
    xs: &[ArrayD<f32>],
    backend: Backend,
) -> Option<Vec<ArrayD<f32>>> {
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    match model.predict_many(&views, backend) {
        Ok(outs) => Some(outs),
        Err(e) if backend == Backend::Gpu && common::no_adapter_outside_ci(&e) => None,
        Err(e) => panic!(
            "fixture '{}' ({}): predict on {backend:?} failed: {e}",
            fx.name, fx.description
        ),
    }
}

fn check_keras(name: &str, backend: Backend) {
    let fx = fixture(name);
    let model = load(&fx.model, fx.weights.as_deref())
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): load failed: {e}", fx.description));
    let xs: Vec<ArrayD<f32>> = fx.inputs.iter().map(read_input).collect();
    for (x, p) in xs.iter().zip(&fx.inputs) {
        assert_eq!(x.shape(), p.shape.as_slice(), "{name}: input {}", p.file);
    }
    let Some(outs) = run(&fx, &model, &xs, backend) else {
        return;
    };
    assert_eq!(outs.len(), fx.outputs.len(), "{name}: number of outputs");
    for (k, (got, port)) in outs.iter().zip(&fx.outputs).enumerate() {
        let expected = common::read_npy_f32(&dir().join(&port.file));
        assert_eq!(expected.shape(), port.shape.as_slice());
        common::assert_matches_keras(&format!("{name} output {k}"), backend, got, &expected);
    }
}

/// Deterministic pseudo-random values in [-2, 2) (no extra dependency).
fn noise(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape")
}

/// Token ids below 13 with trailing zeros of varying length per row (mask padding).
fn ids(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut x = noise(shape, seed).mapv(|v| ((v + 2.0) * 3.2).floor().clamp(1.0, 12.0));
    let t = shape[1];
    for (row, mut r) in x.outer_iter_mut().enumerate() {
        let keep = (row * 5 + 3) % (t + 1);
        for (j, v) in r.iter_mut().enumerate() {
            if j >= keep {
                *v = 0.0;
            }
        }
    }
    x
}

/// The GPU against the CPU on fresh inputs at batch `batch`.
fn check_gpu_vs_cpu(name: &str, batch: usize) {
    let fx = fixture(name);
    let model = load(&fx.model, fx.weights.as_deref()).expect("fixture loads");
    let xs: Vec<ArrayD<f32>> = fx
        .inputs
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut shape = p.shape.clone();
            shape[0] = batch;
            match p.kind.as_deref() {
                Some("ids") => ids(&shape, 7 + k as u64),
                _ => noise(&shape, 100 * batch as u64 + k as u64),
            }
        })
        .collect();
    let Some(gpu) = run(&fx, &model, &xs, Backend::Gpu) else {
        return;
    };
    let cpu = run(&fx, &model, &xs, Backend::Cpu).expect("the CPU always runs");
    for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        common::assert_matches_keras(
            &format!("{name} output {k} at batch {batch}, GPU vs CPU"),
            Backend::Gpu,
            g,
            c,
        );
    }
}

macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        mod cpu_vs_keras {
            $(#[test] fn $name() { super::check_keras(stringify!($name), wgnn::Backend::Cpu); })*
        }
        mod gpu_vs_keras {
            $(#[test] fn $name() { super::check_keras(stringify!($name), wgnn::Backend::Gpu); })*
        }
        mod gpu_vs_cpu_batch1 {
            $(#[test] fn $name() { super::check_gpu_vs_cpu(stringify!($name), 1); })*
        }
        mod gpu_vs_cpu_batch33 {
            $(#[test] fn $name() { super::check_gpu_vs_cpu(stringify!($name), 33); })*
        }
        #[test]
        fn every_fixture_has_a_test() {
            let listed: Vec<&str> = vec![$(stringify!($name)),*];
            for f in manifest().fixtures {
                assert!(listed.contains(&f.name.as_str()), "fixture '{}' has no test", f.name);
            }
        }
    };
}

fixture_tests!(
    merge_all_ops,
    merge_broadcast,
    residual_conv,
    residual_mid_output,
    shared_layer_twice,
    add_same_tensor_twice,
    inception_block,
    concat_axes,
    dot_all,
    ops_arithmetic,
    ops_residual_conv,
    zeropad_all,
    cropping_all,
    upsampling_all,
    permute_repeat,
    flatten_reshape_mid,
    masked_merges,
    sequential_shape_layers,
    merge_single_input,
    ops_broadcast,
);

#[test]
fn bad_files_are_rejected_with_a_reason() {
    for b in manifest().bad {
        match load(&b.file, b.weights.as_deref()) {
            Ok(_) => panic!(
                "{} ({}): loaded, but must be rejected",
                b.file, b.description
            ),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&b.word),
                    "{} ({}): error must mention '{}', got: {msg}",
                    b.file,
                    b.description,
                    b.word
                );
            }
        }
    }
}
