//! Convolutions and poolings, 1-D to 3-D: (1) the CPU path against real Keras on the fixtures in
//! tests/fixtures/graph/conv/ (manifest.json there: Conv1D valid/same/causal, strides,
//! dilation, groups; Conv2D dilation and groups; Conv3D; DepthwiseConv1D/2D with
//! depth_multiplier 2; SeparableConv1D/2D; Conv1D/2D/3DTranspose with output_padding; max and
//! average pooling 1-D and 3-D; global pooling 1-D and 3-D with keepdims; the masked
//! GlobalAveragePooling1D), at odd sizes; dilated transposed convolutions, whose expected
//! outputs are TensorFlow's gradient of the dilated forward conv (its CPU kernels refuse
//! dilated conv_transpose; tools/graph_fixtures_conv.py); (2) the GPU path against the CPU on every fixture
//! model at batch 1 and 33 (row counts that do not divide the GEMM tiles, channel counts that
//! are not multiples of 4), and a few synthetic graphs (grouped, dilated 3-D).

mod common;

use common::graph_fixtures::{
    graph_dir, graph_fixture, graph_fixture_inputs, graph_manifest, load_graph_fixture_or_panic,
    GraphFixture as Fixture, GraphManifest as Manifest,
};

use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use wgnn::graph::*;
use wgnn::{Backend, Model};

use common::{assert_matches_keras, no_adapter_outside_ci, read_npy_f32};

fn dir() -> PathBuf {
    graph_dir().join("conv")
}

fn manifest() -> Manifest {
    graph_manifest("conv")
}

fn fixture(name: &str) -> Fixture {
    graph_fixture("conv", name)
}

fn load(fx: &Fixture) -> Model {
    load_graph_fixture_or_panic(&dir(), fx)
}

/// The fixture's inputs as float arrays (token ids as integral floats).
fn inputs(fx: &Fixture) -> Vec<ArrayD<f32>> {
    graph_fixture_inputs(&dir(), fx)
}

fn check_keras(name: &str) {
    let fx = fixture(name);
    let model = load(&fx);
    let xs = inputs(&fx);
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let got = model
        .predict_many(&views, Backend::Cpu)
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): predict failed: {e}", fx.description));
    assert_eq!(got.len(), fx.outputs.len(), "{name}: number of outputs");
    for (g, o) in got.iter().zip(&fx.outputs) {
        let expected = read_npy_f32(&dir().join(&o.file));
        assert_eq!(
            expected.shape(),
            o.shape.as_slice(),
            "{name}: expected shape"
        );
        // The fixture must say something: outputs that vary across the batch.
        let mean = expected.mean().unwrap_or(0.0);
        let std = expected
            .mapv(|v| (v - mean) * (v - mean))
            .mean()
            .unwrap_or(0.0)
            .sqrt();
        assert!(
            std > 0.05 || o.std.is_some_and(|s| s > 0.05),
            "{name}: the expected output is nearly constant (std {std})"
        );
        assert_matches_keras(name, Backend::Cpu, g, &expected);
    }
}

macro_rules! keras_fixtures {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_keras(stringify!($name));
            }
        )*
        /// Every fixture in the manifest has its own test above.
        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

keras_fixtures!(
    conv1d_valid,
    conv1d_same_even_kernel,
    conv1d_causal,
    conv1d_causal_dilation2,
    conv1d_stride2_same,
    conv1d_stride3_valid,
    conv1d_dilation2_same,
    conv1d_dilation2_valid,
    conv1d_groups2,
    conv1d_no_bias,
    conv2d_dilation_2x3_valid,
    conv2d_dilation_2x3_same,
    conv2d_groups3,
    conv2d_groups3_stride2,
    conv3d_valid,
    conv3d_same_stride2,
    conv3d_same_dilation,
    depthwise2d_m1_same,
    depthwise2d_m2_stride2_valid,
    depthwise2d_m2_stride2_same,
    depthwise2d_dilation2,
    depthwise1d_m1_valid,
    depthwise1d_m2_stride2_same,
    separable2d_m2_same,
    separable2d_m2_valid_stride2,
    separable1d_m2_same,
    separable1d_m1_valid,
    conv1d_transpose_s2_valid,
    conv1d_transpose_s2_same,
    conv1d_transpose_s3_outpad,
    conv2d_transpose_s2_same,
    conv2d_transpose_s2_valid,
    conv2d_transpose_s2x3_k3x4_same,
    conv2d_transpose_outpad,
    conv2d_transpose_outpad_same,
    conv3d_transpose_s2_same,
    conv3d_transpose_s2_valid_outpad,
    maxpool1d_valid,
    maxpool1d_same,
    maxpool1d_pool3_stride2_valid,
    maxpool1d_pool3_stride2_same,
    maxpool1d_pool4_stride1_same,
    avgpool1d_valid,
    avgpool1d_same,
    avgpool1d_pool3_stride2_valid,
    avgpool1d_pool3_stride2_same,
    avgpool1d_pool4_stride1_same,
    maxpool3d_valid,
    maxpool3d_same,
    maxpool3d_pool2x2x3_stride1_same,
    maxpool3d_pool3_stride2_valid,
    avgpool3d_valid,
    avgpool3d_same,
    avgpool3d_pool2x2x3_stride1_same,
    avgpool3d_pool3_stride2_valid,
    global_maxpool1d,
    global_maxpool1d_keepdims,
    global_avgpool1d,
    global_avgpool1d_keepdims,
    global_maxpool3d,
    global_maxpool3d_keepdims,
    global_avgpool3d,
    global_avgpool3d_keepdims,
    masked_global_avgpool1d,
    // tools/graph_fixtures_conv.py
    conv2d_transpose_dilation2_same,
    conv1d_transpose_dilation2_valid,
    depthwise1d_dilation2_m2,
    separable2d_dilation2,
    conv1d_groups3_causal_dilation2,
    conv3d_groups2_valid,
    conv2d_plain_batch5,
);

#[test]
fn every_fixture_in_the_manifest_has_a_test() {
    for fx in manifest().fixtures {
        assert!(
            TESTED.contains(&fx.name.as_str()),
            "fixture '{}' has no test in tests/graph_conv.rs",
            fx.name
        );
    }
}

// ------------------------------------------------------------------ GPU against the CPU

/// Deterministic values in [-1, 1) (xorshift).
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let len = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), noise(len, seed)).expect("shape")
}

/// GPU vs CPU on `model` for a batch of `batch` random inputs (token-id inputs get ids that
/// include padding). Returns false when the GPU is missing outside CI (skipped).
fn gpu_matches_cpu(name: &str, model: &Model, batch: usize, seed: u64) -> bool {
    let graph = model.graph();
    let xs: Vec<ArrayD<f32>> = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let info = graph.value(p.value);
            let mut shape = vec![batch];
            shape.extend_from_slice(&info.shape);
            let x = random(&shape, seed + k as u64);
            match info.dtype {
                DType::F32 => x,
                _ => x.mapv(|v| ((v + 1.0) * 4.0).floor()),
            }
        })
        .collect();
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let cpu = model
        .predict_many(&views, Backend::Cpu)
        .unwrap_or_else(|e| panic!("{name}: CPU failed: {e}"));
    let gpu = match model.predict_many(&views, Backend::Gpu) {
        Ok(y) => y,
        Err(e) if no_adapter_outside_ci(&e) => return false,
        Err(e) => panic!("{name} at batch {batch}: GPU failed: {e}"),
    };
    for (g, c) in gpu.iter().zip(&cpu) {
        assert_matches_keras(
            &format!("{name} (GPU vs CPU, batch {batch})"),
            Backend::Gpu,
            g,
            c,
        );
    }
    true
}

/// Every fixture model on the GPU at batch 1 and 33, against the CPU (the masked global
/// average with random token ids, padding included, and on the fixture's own ids).
#[test]
fn gpu_matches_cpu_on_every_fixture_model() {
    for fx in manifest().fixtures {
        let model = load(&fx);
        for batch in [1, 33] {
            if !gpu_matches_cpu(&fx.name, &model, batch, 7 + batch as u64) {
                return;
            }
        }
        if fx.name == "masked_global_avgpool1d" {
            let xs = inputs(&fx);
            let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
            let cpu = model.predict_many(&views, Backend::Cpu).expect("cpu");
            let gpu = model.predict_many(&views, Backend::Gpu).expect("gpu");
            assert_matches_keras(&fx.name, Backend::Gpu, &gpu[0], &cpu[0]);
            // Every step masked: Keras divides 0 by a mask sum of 0, NaN on both backends.
            let mut ids = xs[0].clone();
            ids.index_axis_mut(ndarray::Axis(0), 0).fill(0.0);
            for backend in [Backend::Cpu, Backend::Gpu] {
                let y = model.predict_many(&[ids.view()], backend).expect("predict");
                let first = y[0].index_axis(ndarray::Axis(0), 0).to_owned();
                assert!(first.iter().all(|v| v.is_nan()), "{backend:?}: {first}");
                let rest = y[0].slice(ndarray::s![1.., ..]).to_owned();
                assert!(rest.iter().all(|v| v.is_finite()), "{backend:?}: {rest}");
            }
        }
    }
}

/// Builds a one-node graph around `op` on an input of `shape` (without the batch axis).
fn one_op_model(shape: &[usize], op: impl FnOnce(&mut Graph) -> Op) -> Model {
    let mut g = Graph::new("synthetic");
    let x = g.add_input("x", shape.to_vec(), DType::F32);
    let op = op(&mut g);
    let y = g
        .add_node("op", "Synthetic", op, &[x], None)
        .expect("shape rule")[0];
    g.add_output("y", y);
    Model::from_graph(g, std::path::Path::new("synthetic"))
}

fn param(g: &mut Graph, name: &str, shape: &[usize], seed: u64) -> ParamId {
    let scale = 1.0 / (shape[..shape.len() - 1].iter().product::<usize>() as f32).sqrt();
    let v = random(shape, seed).mapv(|v| v * scale * 1.7);
    g.params.add(name, v, true)
}

#[test]
fn gpu_matches_cpu_on_grouped_dilated_and_3d_convs() {
    // Grouped Conv2D with 5 channels per group and 7 filters per group, dilation 2.
    let grouped = one_op_model(&[13, 11, 10], |g| {
        let window = Window::new(&[3, 3], &[1, 1], &[2, 2], Padding::Same, &[13, 11]);
        Op::Conv(Conv {
            filters: 14,
            window,
            in_channels: 10,
            groups: 2,
            kernel: param(g, "k", &[3, 3, 5, 14], 1),
            bias: Some(param(g, "b", &[14], 2)),
            activation: Activation::RELU,
        })
    });
    // Conv3D strided, 3 input channels, 5 filters.
    let conv3d = one_op_model(&[5, 7, 6, 3], |g| {
        let window = Window::new(
            &[2, 3, 3],
            &[2, 1, 2],
            &[1, 1, 1],
            Padding::Same,
            &[5, 7, 6],
        );
        Op::Conv(Conv {
            filters: 5,
            window,
            in_channels: 3,
            groups: 1,
            kernel: param(g, "k", &[2, 3, 3, 3, 5], 4),
            bias: None,
            activation: Activation::Tanh,
        })
    });
    // Causal dilated Conv1D with groups 3 and a deep K (split-K is off for groups).
    let causal = one_op_model(&[37, 6], |g| {
        let window = Window::new(&[3], &[1], &[3], Padding::Causal, &[37]);
        Op::Conv(Conv {
            filters: 9,
            window,
            in_channels: 6,
            groups: 3,
            kernel: param(g, "k", &[3, 2, 9], 5),
            bias: Some(param(g, "b", &[9], 6)),
            activation: Activation::Linear,
        })
    });
    // Conv1D one row, long enough that the GEMM uses split-K at batch 1 (K = 9 * 70 = 630).
    let deep = one_op_model(&[5, 70], |g| {
        let window = Window::new(&[9], &[1], &[1], Padding::Same, &[5]);
        Op::Conv(Conv {
            filters: 3,
            window,
            in_channels: 70,
            groups: 1,
            kernel: param(g, "k", &[9, 70, 3], 7),
            bias: Some(param(g, "b", &[3], 8)),
            activation: Activation::Linear,
        })
    });
    // The same, dilated: the general kernel (ConvNd) with split-K.
    let deep_dilated = one_op_model(&[7, 70], |g| {
        let window = Window::new(&[9], &[1], &[2], Padding::Same, &[7]);
        Op::Conv(Conv {
            filters: 3,
            window,
            in_channels: 70,
            groups: 1,
            kernel: param(g, "k", &[9, 70, 3], 13),
            bias: Some(param(g, "b", &[3], 14)),
            activation: Activation::Linear,
        })
    });
    // Depthwise 2-D with multiplier 3 and dilation; transposed 2-D with dilation.
    let depthwise = one_op_model(&[9, 10, 5], |g| {
        let window = Window::new(&[3, 2], &[1, 1], &[2, 3], Padding::Same, &[9, 10]);
        Op::DepthwiseConv(DepthwiseConv {
            window,
            channels: 5,
            multiplier: 3,
            kernel: param(g, "k", &[3, 2, 5, 3], 9),
            bias: Some(param(g, "b", &[15], 10)),
            activation: Activation::Linear,
        })
    });
    let transpose = one_op_model(&[6, 5, 3], |g| {
        let (k, s, d) = ([1, 3, 2], [1, 1, 1], [1, 2, 2]);
        let input = [1, 6, 5];
        let mut output = [1; 3];
        let mut pad = [0; 3];
        for a in 1..3 {
            let (o, p) = transpose_axis(input[a], k[a], s[a], d[a], Padding::Same, None).unwrap();
            output[a] = o;
            pad[a] = p;
        }
        Op::ConvTranspose(ConvTranspose {
            filters: 7,
            in_channels: 3,
            rank: 2,
            kernel_size: k,
            strides: s,
            dilation: d,
            padding: Padding::Same,
            input,
            output,
            pad_before: pad,
            kernel: param(g, "k", &[3, 2, 7, 3], 11),
            bias: Some(param(g, "b", &[7], 12)),
            activation: Activation::Linear,
        })
    });
    for (name, model) in [
        ("grouped dilated conv2d", &grouped),
        ("strided conv3d", &conv3d),
        ("causal grouped conv1d", &causal),
        ("deep conv1d (split-K)", &deep),
        ("deep dilated conv1d (split-K)", &deep_dilated),
        ("dilated depthwise x3", &depthwise),
        ("dilated transpose", &transpose),
    ] {
        for batch in [1, 33] {
            if !gpu_matches_cpu(name, model, batch, 100 + batch as u64) {
                return;
            }
        }
    }
}

/// The CPU's general path (dilation, groups) against a direct loop, on a grouped, dilated,
/// strided Conv1D with an odd length: independent of Keras and of the fast paths.
#[test]
fn cpu_general_conv_matches_a_direct_loop() {
    let (len, cin, filters, groups, k, stride, dil) = (23, 6, 4, 2, 3, 2, 1);
    let window = Window::new(&[k], &[stride], &[dil], Padding::Causal, &[len]);
    let model = one_op_model(&[len, cin], |g| {
        Op::Conv(Conv {
            filters,
            window,
            in_channels: cin,
            groups,
            kernel: param(g, "k", &[k, cin / groups, filters], 21),
            bias: None,
            activation: Activation::Linear,
        })
    });
    let x = random(&[2, len, cin], 22);
    let y = model.predict(x.view(), Backend::Cpu).expect("cpu");
    let kernel = model.graph().params.get(ParamId(0)).to_owned();
    let (cg, fg) = (cin / groups, filters / groups);
    let out_len = window.output[2];
    for n in 0..2 {
        for o in 0..out_len {
            for f in 0..filters {
                let g = f / fg;
                let mut want = 0.0f32;
                for t in 0..k {
                    let i = (o * stride + t * dil) as isize - window.pad_before[2] as isize;
                    if i < 0 || i >= len as isize {
                        continue;
                    }
                    for c in 0..cg {
                        want += x[[n, i as usize, g * cg + c]] * kernel[[t, c, f]];
                    }
                }
                let got = y[[n, o, f]];
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "[{n}, {o}, {f}]: got {got}, want {want}"
                );
            }
        }
    }
}

/// Options wgnn does not implement are load errors naming the layer and the field, never
/// silently ignored: a fixture's JSON with one field changed.
#[test]
fn unsupported_conv_options_are_errors_naming_the_field() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let cases = [
        // (fixture, text to replace, replacement, word the error must contain)
        (
            "conv1d_same_even_kernel",
            "\"data_format\": \"channels_last\"",
            "\"data_format\": \"channels_first\"",
            "data_format",
        ),
        (
            "conv2d_groups3_stride2",
            "\"padding\": \"valid\"",
            "\"padding\": \"causal\"",
            "padding",
        ),
        (
            "conv2d_groups3_stride2",
            "\"groups\": 3",
            "\"groups\": 4",
            "groups",
        ),
        (
            "conv1d_same_even_kernel",
            "\"groups\": 1",
            "\"groups\": 1, \"lora_rank\": 2",
            "lora_rank",
        ),
    ];
    for (name, from, to, word) in cases {
        let fx = fixture(name);
        let json = std::fs::read_to_string(dir().join(&fx.model)).expect("model json");
        assert!(json.contains(from), "{name}: no {from} in its config");
        let path = tmp.path().join(format!("{name}_{word}.json"));
        std::fs::write(&path, json.replacen(from, to, 1)).expect("write");
        let weights = dir().join(fx.weights.as_deref().expect("a JSON fixture has weights"));
        match Model::load_with_weights(&path, &weights) {
            Ok(_) => panic!("{name} with {to}: loaded, but must be rejected"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(word),
                    "{name} with {to}: error must name '{word}': {msg}"
                );
            }
        }
    }
}
