//! Normalization layers and activations: (1) the CPU path against real Keras 3 outputs for every
//! layer, option and activation (fixtures in tests/fixtures/graph/norm/, written by
//! tools/graph_fixtures_norm.py), files the loader must reject, and (2) the GPU against the CPU,
//! with BatchNormalization folding on and off, at awkward shapes.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use wgnn::gpu::{GpuRuntime, LimitOverrides};
use wgnn::graph::*;
use wgnn::{Backend, Model, PreparedInput};

fn norm_dir() -> PathBuf {
    common::fixtures_dir().join("graph").join("norm")
}

fn read_manifest(dir: &Path) -> Value {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(dir: &Path, fx: &Value) -> wgnn::Result<Model> {
    let model = dir.join(fx["model"].as_str().expect("model"));
    match fx.get("weights").and_then(Value::as_str) {
        Some(w) => Model::load_with_weights(model, dir.join(w)),
        None => Model::load(model),
    }
}

fn inputs(dir: &Path, fx: &Value) -> Vec<ArrayD<f32>> {
    fx["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| common::read_npy_f32(&dir.join(i["file"].as_str().expect("file"))))
        .collect()
}

/// The first element outside |got - expected| <= 1e-4 (1 + |expected|), as a message.
fn mismatch(got: &ArrayD<f32>, want: &ArrayD<f32>) -> Option<String> {
    if got.shape() != want.shape() {
        return Some(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    got.iter()
        .zip(want.iter())
        .enumerate()
        .find(|(_, (g, w))| !common::within_tolerance(**g, **w))
        .map(|(i, (g, w))| format!("element {i}: got {g}, expected {w}"))
}

/// Runs `fixtures` (manifest entries in `dir`) on `backend` against Keras; returns the
/// failures, or None when the GPU has no adapter (outside CI).
fn run_keras_fixtures(dir: &Path, fixtures: &[&Value], backend: Backend) -> Option<Vec<String>> {
    let mut failures = Vec::new();
    for fx in fixtures {
        let name = fx["name"].as_str().unwrap_or("?");
        let model = match load(dir, fx) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: load: {e}"));
                continue;
            }
        };
        let xs = inputs(dir, fx);
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        let outs = match model.predict_many(&views, backend) {
            Ok(o) => o,
            Err(e) if backend == Backend::Gpu && common::no_adapter_outside_ci(&e) => return None,
            Err(e) => {
                failures.push(format!("{name}: predict: {e}"));
                continue;
            }
        };
        let expected = fx["outputs"].as_array().expect("outputs");
        if outs.len() != expected.len() {
            failures.push(format!(
                "{name}: {} outputs, Keras has {}",
                outs.len(),
                expected.len()
            ));
            continue;
        }
        for (k, (got, e)) in outs.iter().zip(expected).enumerate() {
            let want = common::read_npy_f32(&dir.join(e["file"].as_str().expect("file")));
            if let Some(m) = mismatch(got, &want) {
                failures.push(format!("{name} output {k}: {m}"));
            }
        }
    }
    Some(failures)
}

#[test]
fn cpu_matches_keras_for_every_layer_option_and_activation() {
    let dir = norm_dir();
    let manifest = read_manifest(&dir);
    let fixtures: Vec<&Value> = manifest["fixtures"]
        .as_array()
        .expect("fixtures")
        .iter()
        .collect();
    assert!(fixtures.len() >= 60, "only {} fixtures", fixtures.len());
    let failures = run_keras_fixtures(&dir, &fixtures, Backend::Cpu).expect("cpu");
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from Keras:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

/// The family's fixtures among the shared ones in tests/fixtures/graph/ (written by
/// tools/graph_fixtures.py), once that directory is there.
#[test]
fn cpu_and_gpu_match_keras_on_the_shared_graph_fixtures_of_this_family() {
    const NAMES: &[&str] = &[
        "bn_last_axis",
        "bn_axis1",
        "bn_no_center_no_scale_eps",
        "bn_no_scale_eps",
        "ln_last_axis",
        "ln_axes_1_2",
        "ln_axes_1_2_3",
        "ln_no_center_no_scale_eps",
        "ln_rms_scaling",
        "rms_normalization",
        "normalization_adapt",
        "normalization_adapt_json_h5",
        "normalization_explicit",
        "normalization_explicit_invert",
        "normalization_explicit_scalar",
        "prelu_full",
        "prelu_shared_axes_1_2",
        "activation_gelu",
        "dense_gelu",
        "ops_gelu_approximate",
        "activation_mish",
        "activation_log_softmax",
        "softmax_axis1",
        "softmax_axis1_4d",
    ];
    let dir = common::fixtures_dir().join("graph");
    if !dir.join("manifest.json").exists() {
        eprintln!("note: no tests/fixtures/graph/manifest.json yet; the family's own fixtures cover these");
        return;
    }
    let manifest = read_manifest(&dir);
    let all = manifest["fixtures"].as_array().expect("fixtures");
    let fixtures: Vec<&Value> = NAMES
        .iter()
        .map(|n| {
            all.iter()
                .find(|f| f["name"] == *n)
                .unwrap_or_else(|| panic!("no fixture '{n}' in {}", dir.display()))
        })
        .collect();
    for backend in [Backend::Cpu, Backend::Gpu] {
        if let Some(failures) = run_keras_fixtures(&dir, &fixtures, backend) {
            assert!(failures.is_empty(), "{backend:?}:\n{}", failures.join("\n"));
        }
    }
}

#[test]
fn unsupported_options_and_activations_are_errors() {
    let dir = norm_dir();
    let manifest = read_manifest(&dir);
    let bad = manifest["bad"].as_array().expect("bad");
    assert!(bad.len() >= 4);
    for b in bad {
        let file = b["file"].as_str().expect("file");
        let word = b["word"].as_str().expect("word");
        match Model::load(dir.join(file)) {
            Ok(_) => panic!("{file} loaded; expected an error containing '{word}'"),
            Err(e) => assert!(
                e.to_string().contains(word),
                "{file}: error '{e}' does not contain '{word}'"
            ),
        }
    }
}

#[test]
fn moving_statistics_are_not_trainable() {
    let dir = norm_dir();
    let model = Model::load(dir.join("bn_renorm_synchronized.keras")).expect("load");
    let params = &model.graph().params;
    let trainable: Vec<(String, bool)> = params
        .iter()
        .map(|(_, p)| {
            (
                p.name.rsplit('/').next().unwrap_or("").to_string(),
                p.trainable,
            )
        })
        .collect();
    for (name, t) in &trainable {
        let expect = matches!(name.as_str(), "kernel" | "bias" | "gamma" | "beta");
        assert_eq!(*t, expect, "{name}: trainable {t} ({trainable:?})");
    }
    assert_eq!(trainable.len(), 2 + 7, "{trainable:?}");
}

// ------------------------------------------------------------------ GPU vs CPU

fn runtime(graph: &Graph, fold: bool) -> Option<GpuRuntime> {
    let overrides = LimitOverrides {
        no_batch_norm_folding: !fold,
        ..LimitOverrides::default()
    };
    match GpuRuntime::with_limits(graph, None, overrides) {
        Ok(rt) => Some(rt),
        Err(e) if common::no_adapter_outside_ci(&e) => None,
        Err(e) => panic!("creating the GPU runtime for '{}' failed: {e}", graph.name),
    }
}

fn assert_close(what: &str, gpu: &ArrayD<f32>, cpu: &ArrayD<f32>) {
    if let Some(m) = mismatch(gpu, cpu) {
        panic!("{what}: GPU vs CPU: {m}");
    }
}

/// Runs `graph` on both backends at `batch`, folding on and off; returns false without an
/// adapter (outside CI).
fn gpu_matches_cpu(what: &str, graph: &Graph, batch: usize, seed: u64) -> bool {
    let mut shape = vec![batch];
    shape.extend_from_slice(&graph.input_info(0).shape);
    let x = random(&shape, seed, 2.0);
    let input = [PreparedInput::Float(x)];
    let cpu = wgnn::cpu::run(graph, &input).expect("cpu");
    for fold in [true, false] {
        let Some(rt) = runtime(graph, fold) else {
            return false;
        };
        let gpu = rt.run(graph, &input).expect("gpu");
        for (k, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_close(
                &format!("{what} batch {batch} fold {fold} output {k}"),
                g,
                c,
            );
        }
    }
    true
}

/// Deterministic values in [-scale, scale).
fn random(shape: &[usize], seed: u64, scale: f32) -> ArrayD<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let values = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape")
}

fn param(
    g: &mut Graph,
    name: &str,
    shape: &[usize],
    seed: u64,
    offset: f32,
    scale: f32,
) -> ParamId {
    let v = random(shape, seed, scale).mapv(|v| v + offset);
    g.params.add(name, v, true)
}

fn batch_norm(g: &mut Graph, axes: Vec<usize>, channels: &[usize], seed: u64) -> Op {
    Op::BatchNorm(BatchNorm {
        axes,
        gamma: Some(param(g, "gamma", channels, seed, 1.0, 0.4)),
        beta: Some(param(g, "beta", channels, seed + 1, 0.0, 0.3)),
        moving_mean: param(g, "mean", channels, seed + 2, 0.0, 0.5),
        moving_variance: param(g, "var", channels, seed + 3, 1.2, 0.8),
        epsilon: 1e-3,
        momentum: 0.99,
        trainable: true,
        unused: Vec::new(),
    })
}

fn add(g: &mut Graph, op: Op, x: ValueId) -> ValueId {
    let n = g.nodes.len();
    g.add_node(&format!("n{n}"), "Test", op, &[x], None)
        .expect("shape rule")[0]
}

/// Conv2D(7 filters, 3x3 same, linear) -> BatchNormalization on 5x6x3, plus Dense(5) on a
/// rank-3 input -> BatchNormalization: both fold.
fn conv_dense_bn() -> Graph {
    let mut g = Graph::new("conv_dense_bn");
    let x = g.add_input("x", vec![5, 6, 3], DType::F32);
    let kernel = param(&mut g, "k", &[3, 3, 3, 7], 1, 0.0, 0.3);
    let bias = Some(param(&mut g, "b", &[7], 2, 0.0, 0.2));
    let conv = Op::Conv(Conv {
        filters: 7,
        window: Window::new(&[3, 3], &[1, 1], &[1, 1], Padding::Same, &[5, 6]),
        in_channels: 3,
        groups: 1,
        kernel,
        bias,
        activation: Activation::Linear,
    });
    let c = add(&mut g, conv, x);
    let bn = batch_norm(&mut g, vec![2], &[7], 10);
    let y = add(&mut g, bn, c);
    let kernel = param(&mut g, "dk", &[7, 5], 3, 0.0, 0.4);
    let dense = Op::Dense(Dense {
        units: 5,
        in_features: 7,
        kernel,
        bias: None,
        activation: Activation::Linear,
    });
    let d = add(&mut g, dense, y);
    let bn = batch_norm(&mut g, vec![2], &[5], 20);
    let z = add(&mut g, bn, d);
    g.add_output("z", z);
    g
}

#[test]
fn gpu_folds_batch_norm_into_conv_and_dense_and_matches_cpu() {
    let g = conv_dense_bn();
    for (fold, expect_affine) in [(true, false), (false, true)] {
        let Some(rt) = runtime(&g, fold) else { return };
        let plan = rt.describe_plan(&g, 3).expect("plan");
        assert_eq!(
            plan.contains("affine"),
            expect_affine,
            "fold {fold}:\n{plan}"
        );
    }
    for batch in [1, 33] {
        if !gpu_matches_cpu("conv/dense -> bn", &g, batch, batch as u64) {
            return;
        }
    }
}

#[test]
fn gpu_keeps_batch_norm_apart_where_folding_is_not_exact() {
    // Dense with relu, and a Conv2D whose output is also a graph output: neither folds.
    let mut g = Graph::new("no_fold");
    let x = g.add_input("x", vec![4, 5, 6], DType::F32);
    let kernel = param(&mut g, "k", &[6, 9], 1, 0.0, 0.4);
    let dense = Op::Dense(Dense {
        units: 9,
        in_features: 6,
        kernel,
        bias: None,
        activation: Activation::RELU,
    });
    let d = add(&mut g, dense, x);
    let bn = batch_norm(&mut g, vec![2], &[9], 5);
    let y = add(&mut g, bn, d);
    let kernel = param(&mut g, "k2", &[1, 1, 9, 3], 2, 0.0, 0.4);
    let conv = Op::Conv(Conv {
        filters: 3,
        window: Window::new(&[1, 1], &[1, 1], &[1, 1], Padding::Valid, &[4, 5]),
        in_channels: 9,
        groups: 1,
        kernel,
        bias: None,
        activation: Activation::Linear,
    });
    let c = add(&mut g, conv, y);
    let bn = batch_norm(&mut g, vec![2], &[3], 6);
    let z = add(&mut g, bn, c);
    g.add_output("z", z);
    g.add_output("c", c);
    let Some(rt) = runtime(&g, true) else { return };
    let plan = rt.describe_plan(&g, 2).expect("plan");
    assert_eq!(plan.matches("affine ").count(), 2, "{plan}");
    for batch in [1, 33] {
        gpu_matches_cpu("unfoldable bn", &g, batch, 7 + batch as u64);
    }
}

#[test]
fn gpu_matches_cpu_for_norm_layers_at_awkward_shapes() {
    // (N, 3, 150, 7): BatchNorm over axis 1, LayerNorm over the last two axes (1050 values per
    // group, several strides of a workgroup) and over axis 1 (strided), RMS norm, Normalization
    // and PReLU with broadcast weights, softmax over axis 1 and log_softmax over axes (1, 2).
    let mut g = Graph::new("awkward");
    let shape = vec![3, 150, 7];
    let x = g.add_input("x", shape.clone(), DType::F32);
    let bn = batch_norm(&mut g, vec![1], &[150], 1);
    let mut v = add(&mut g, bn, x);
    let ln = Op::LayerNorm(LayerNorm {
        axes: vec![1, 2],
        gamma: Some(param(&mut g, "g", &[150, 7], 2, 1.0, 0.3)),
        beta: Some(param(&mut g, "b", &[150, 7], 3, 0.0, 0.3)),
        epsilon: 1e-3,
        kind: LayerNormKind::Standard,
    });
    v = add(&mut g, ln, v);
    let ln = Op::LayerNorm(LayerNorm {
        axes: vec![0],
        gamma: Some(param(&mut g, "g0", &[3], 4, 1.0, 0.3)),
        beta: None,
        epsilon: 1e-2,
        kind: LayerNormKind::RmsScaling,
    });
    v = add(&mut g, ln, v);
    let rms = Op::LayerNorm(LayerNorm {
        axes: vec![2],
        gamma: Some(param(&mut g, "s", &[7], 5, 1.0, 0.3)),
        beta: None,
        epsilon: 1e-6,
        kind: LayerNormKind::Rms,
    });
    v = add(&mut g, rms, v);
    let norm = Op::Normalization(Normalization {
        mean: param(&mut g, "m", &[3, 1, 7], 6, 0.0, 0.5),
        variance: param(&mut g, "v", &[3, 1, 7], 7, 1.0, 0.5),
        count: None,
        invert: false,
    });
    v = add(&mut g, norm, v);
    let prelu = Op::PRelu(PRelu {
        alpha: param(&mut g, "a", &[1, 150, 1], 8, 0.2, 0.5),
    });
    v = add(&mut g, prelu, v);
    let inv = Op::Normalization(Normalization {
        mean: param(&mut g, "m2", &[1, 1, 1], 9, 0.0, 0.5),
        variance: param(&mut g, "v2", &[1, 1, 1], 10, 1.0, 0.5),
        count: None,
        invert: true,
    });
    v = add(&mut g, inv, v);
    let sm = Op::Softmax(Softmax {
        axes: vec![0],
        log: false,
    });
    let s = add(&mut g, sm, v);
    let lsm = Op::Softmax(Softmax {
        axes: vec![1, 2],
        log: true,
    });
    let t = add(&mut g, lsm, v);
    g.add_output("softmax_axis1", s);
    g.add_output("log_softmax_axes", t);
    for batch in [1, 5] {
        if !gpu_matches_cpu("norm layers", &g, batch, 100 + batch as u64) {
            return;
        }
    }
}

/// Every activation, standalone and as a Dense epilogue (row-wise ones: softmax after a
/// GEMM), on values spread over [-8, 8].
#[test]
fn gpu_matches_cpu_for_every_activation() {
    let acts = [
        Activation::Gelu { approximate: false },
        Activation::Gelu { approximate: true },
        Activation::Mish,
        Activation::Celu { alpha: 1.0 },
        Activation::HardSilu,
        Activation::HardTanh,
        Activation::HardShrink { threshold: 0.5 },
        Activation::SoftShrink { threshold: 0.5 },
        Activation::TanhShrink,
        Activation::SparsePlus,
        Activation::SparseSigmoid,
        Activation::Squareplus { b: 4.0 },
        Activation::LogSigmoid,
        Activation::LogSoftmax,
        Activation::Softmax,
        Activation::Silu,
        Activation::Softplus,
        Activation::Selu,
    ];
    let mut g = Graph::new("activations");
    let x = g.add_input("x", vec![2, 13], DType::F32);
    for (k, act) in acts.iter().enumerate() {
        let y = add(&mut g, Op::Activation(*act), x);
        g.add_output(format!("{}_{k}", act.name()), y);
        let kernel = param(&mut g, "k", &[13, 7], k as u64, 0.0, 1.0);
        let dense = Op::Dense(Dense {
            units: 7,
            in_features: 13,
            kernel,
            bias: None,
            activation: *act,
        });
        let d = add(&mut g, dense, x);
        g.add_output(format!("dense_{}_{k}", act.name()), d);
    }
    let mut shape = vec![3];
    shape.extend_from_slice(&g.input_info(0).shape);
    let input = [PreparedInput::Float(random(&shape, 42, 8.0))];
    let cpu = wgnn::cpu::run(&g, &input).expect("cpu");
    let Some(rt) = runtime(&g, true) else { return };
    let gpu = rt.run(&g, &input).expect("gpu");
    for ((g_out, c_out), port) in gpu.iter().zip(&cpu).zip(&g.outputs) {
        assert_close(&port.name, g_out, c_out);
    }
}

/// The GPU against Keras on every fixture: folding on, and for the BatchNormalization ones off.
#[test]
fn gpu_matches_keras_for_every_fixture() {
    let dir = norm_dir();
    let manifest = read_manifest(&dir);
    let mut failures = Vec::new();
    for fx in manifest["fixtures"].as_array().expect("fixtures") {
        let name = fx["name"].as_str().unwrap_or("?");
        let model = load(&dir, fx).expect("load");
        let graph = model.graph();
        let xs = inputs(&dir, fx);
        let prepared: Vec<PreparedInput> = xs
            .iter()
            .enumerate()
            .map(|(i, x)| model.prepare_input(i, x.view()).expect("input"))
            .collect();
        let folds: &[bool] = if name.starts_with("bn_") {
            &[true, false]
        } else {
            &[true]
        };
        for &fold in folds {
            let Some(rt) = runtime(graph, fold) else {
                return;
            };
            let outs = match rt.run(graph, &prepared) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("{name} fold {fold}: {e}"));
                    continue;
                }
            };
            for (k, (got, e)) in outs
                .iter()
                .zip(fx["outputs"].as_array().expect("outputs"))
                .enumerate()
            {
                let want = common::read_npy_f32(&dir.join(e["file"].as_str().expect("file")));
                if let Some(m) = mismatch(got, &want) {
                    failures.push(format!("{name} fold {fold} output {k}: {m}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (N, 11, 5): softmax and LayerNormalization over axis 1 (time, per feature: strided groups),
/// BatchNormalization over the 5 features, at batch 1 and 33.
#[test]
fn gpu_matches_cpu_over_axis_1_of_a_3d_tensor() {
    let mut g = Graph::new("axis1_3d");
    let x = g.add_input("x", vec![11, 5], DType::F32);
    let bn = batch_norm(&mut g, vec![1], &[5], 3);
    let b = add(&mut g, bn, x);
    let sm = Op::Softmax(Softmax {
        axes: vec![0],
        log: false,
    });
    let s = add(&mut g, sm, b);
    let ln = Op::LayerNorm(LayerNorm {
        axes: vec![0],
        gamma: Some(param(&mut g, "g", &[11], 4, 1.0, 0.3)),
        beta: Some(param(&mut g, "b", &[11], 5, 0.0, 0.3)),
        epsilon: 1e-3,
        kind: LayerNormKind::Standard,
    });
    let l = add(&mut g, ln, b);
    g.add_output("softmax", s);
    g.add_output("layer_norm", l);
    for batch in [1, 33] {
        if !gpu_matches_cpu("axis 1 of (N, 11, 5)", &g, batch, 200 + batch as u64) {
            return;
        }
    }
}

/// GroupNormalization with groups of 2 channels at 9x10 positions (180 values a group: more
/// than a workgroup), and one group per channel, at batch 1 and 33.
#[test]
fn gpu_matches_cpu_for_group_norm() {
    let mut g = Graph::new("group_norm");
    let x = g.add_input("x", vec![9, 10, 6], DType::F32);
    let gn = Op::GroupNorm(GroupNorm {
        groups: 3,
        gamma: Some(param(&mut g, "g", &[6], 1, 1.0, 0.3)),
        beta: Some(param(&mut g, "b", &[6], 2, 0.0, 0.3)),
        epsilon: 1e-3,
    });
    let y = add(&mut g, gn, x);
    let instance = Op::GroupNorm(GroupNorm {
        groups: 6,
        gamma: None,
        beta: Some(param(&mut g, "b2", &[6], 3, 0.0, 0.3)),
        epsilon: 1e-2,
    });
    let z = add(&mut g, instance, y);
    g.add_output("y", y);
    g.add_output("z", z);
    for batch in [1, 33] {
        if !gpu_matches_cpu("group norm", &g, batch, 300 + batch as u64) {
            return;
        }
    }
}

/// UnitNormalization over 150 values (several strides of a workgroup) and over a strided axis,
/// with a zero row (1 / norm capped at 1e12, output 0).
#[test]
fn gpu_matches_cpu_for_unit_norm() {
    let mut g = Graph::new("unit_norm");
    let x = g.add_input("x", vec![150, 3], DType::F32);
    let unit = |axes| {
        Op::LayerNorm(LayerNorm {
            axes,
            gamma: None,
            beta: None,
            epsilon: 0.0,
            kind: LayerNormKind::Unit,
        })
    };
    let a = add(&mut g, unit(vec![0, 1]), x);
    let b = add(&mut g, unit(vec![0]), x);
    g.add_output("a", a);
    g.add_output("b", b);
    let mut xs = random(&[33, 150, 3], 400, 2.0);
    xs.index_axis_mut(ndarray::Axis(0), 5).fill(0.0);
    let input = [PreparedInput::Float(xs)];
    let cpu = wgnn::cpu::run(&g, &input).expect("cpu");
    assert!(cpu[0]
        .index_axis(ndarray::Axis(0), 5)
        .iter()
        .all(|&v| v == 0.0));
    let Some(rt) = runtime(&g, true) else { return };
    let gpu = rt.run(&g, &input).expect("gpu");
    for (k, (gv, cv)) in gpu.iter().zip(&cpu).enumerate() {
        assert_close(&format!("unit norm output {k}"), gv, cv);
    }
}
