//! What a Keras config says about training, checked against real Keras (fixtures and manifest
//! from tools/train_config_fixtures.py in tests/fixtures/train_config/):
//!
//! - `Graph.regularizers` give Keras's `model.losses` after a call on the fixture's inputs:
//!   `l1 * sum|w| + l2 * sum w^2` per regularized trainable weight, and per output of each call
//!   of a layer with an activity regularizer, divided by the batch size;
//! - the trainable and non-trainable weights are Keras's, by name and in order;
//! - `Graph.compile_config` is the compile config Keras saved, for every optimizer;
//! - a model with no weights loads initialized, predicts finite values, and each weight has the
//!   shape, fans and statistics of Keras's own initialization of it.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use serde::Deserialize;
use serde_json::Value;
use wgnn::graph::{DType, Graph, Op, ParamId, Penalized, ValueId};
use wgnn::train::init::compute_fans;
use wgnn::{Backend, Model, PreparedInput};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train_config")
}

#[derive(Deserialize)]
struct Manifest {
    penalties: Vec<PenaltyFixture>,
    compile: Vec<CompileFixture>,
    init: Vec<InitFixture>,
    bad: Vec<BadFixture>,
}

#[derive(Deserialize)]
struct WeightEntry {
    path: String,
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct PenaltyFixture {
    name: String,
    model: String,
    inputs: Vec<String>,
    batch: usize,
    trainable: Vec<WeightEntry>,
    non_trainable: Vec<WeightEntry>,
    penalties: Penalties,
    compile_config: Value,
}

#[derive(Deserialize)]
struct Penalties {
    /// Per layer with activity penalties, in Keras's layer order: one value per call and output.
    activity: Vec<LayerActivity>,
    /// Per trainable weight with a regularizer, in Keras's weight order.
    weights: Vec<WeightPenalty>,
    total: f64,
}

#[derive(Deserialize)]
struct LayerActivity {
    layer: String,
    values: Vec<f64>,
}

#[derive(Deserialize)]
struct WeightPenalty {
    path: String,
    value: f64,
}

#[derive(Deserialize)]
struct CompileFixture {
    name: String,
    model: String,
    /// Whether the file carries weights (else it is loaded initialized).
    weights: bool,
    compile_config: Option<Value>,
}

#[derive(Deserialize)]
struct InitFixture {
    name: String,
    model: String,
    inputs: Vec<String>,
    pool: usize,
    weights: Vec<InitStats>,
}

/// Keras's initialization of one weight, pooled over `draws` fresh builds.
#[derive(Deserialize)]
struct InitStats {
    path: String,
    shape: Vec<usize>,
    fans: [usize; 2],
    draws: usize,
    /// Every Keras build gave the same values.
    deterministic: bool,
    n: usize,
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    bounded: bool,
}

#[derive(Deserialize)]
struct BadFixture {
    file: String,
    words: Vec<String>,
    description: String,
}

fn manifest() -> Manifest {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn within_tolerance(got: f64, expected: f64) -> bool {
    (got - expected).abs() <= 1e-4 * (1.0 + expected.abs())
}

/// The fixture's inputs for `model`: token-id inputs as ids, the others as floats.
fn inputs(model: &Model, files: &[String]) -> Vec<PreparedInput> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let x = wgnn::npy::read(&dir().join(f))
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .into_f32();
            let prepared = if model.graph().input_info(i).dtype == DType::Ids {
                let ids = x
                    .mapv(|v| v as i64)
                    .into_dimensionality::<ndarray::Ix2>()
                    .unwrap_or_else(|e| panic!("{f}: {e}"));
                model.prepare_ids_for(i, ids.view())
            } else {
                model.prepare_input(i, x.view())
            };
            prepared.unwrap_or_else(|e| panic!("{f}: {e}"))
        })
        .collect()
}

/// Whether wgnn's parameter name stands for Keras's variable path: the same layer (wgnn names
/// a weight after the layer that configures it, Keras's path holds every container), the same
/// variable, and the same direction of a Bidirectional.
fn same_weight(ours: &str, keras: &str) -> bool {
    let ours: Vec<&str> = ours.split('/').collect();
    let keras: Vec<&str> = keras.split('/').collect();
    let direction = ours.iter().all(|part| match *part {
        "forward_layer" => keras.iter().any(|k| k.starts_with("forward_")),
        "backward_layer" => keras.iter().any(|k| k.starts_with("backward_")),
        _ => true,
    });
    keras.contains(&ours[0]) && ours.last() == keras.last() && direction
}

fn assert_weight_list(graph: &Graph, trainable: bool, keras: &[WeightEntry], what: &str) {
    let ours: Vec<_> = graph
        .params
        .iter()
        .filter(|(_, p)| p.trainable == trainable)
        .collect();
    let names: Vec<&str> = ours.iter().map(|(_, p)| p.name.as_str()).collect();
    let expected: Vec<&str> = keras.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        ours.len(),
        keras.len(),
        "{what}: wgnn {names:?}, Keras {expected:?}"
    );
    for ((_, p), k) in ours.iter().zip(keras) {
        assert!(
            same_weight(&p.name, &k.path),
            "{what}: wgnn has {} where Keras has {} (wgnn {names:?}, Keras {expected:?})",
            p.name,
            k.path
        );
        assert_eq!(p.value.shape(), k.shape.as_slice(), "{what}: {}", p.name);
    }
}

fn penalty(values: impl Iterator<Item = f32>, l1: f32, l2: f32) -> f64 {
    let (mut abs, mut sq) = (0.0f64, 0.0f64);
    for v in values {
        abs += (v as f64).abs();
        sq += (v as f64) * (v as f64);
    }
    l1 as f64 * abs + l2 as f64 * sq
}

/// The values of `targets` on `inputs`: the graph with each target added as an output.
fn probe(
    graph: &Graph,
    source: &Path,
    targets: &[ValueId],
    inputs: &[PreparedInput],
) -> Vec<ArrayD<f32>> {
    let mut probed = graph.clone();
    let first = probed.outputs.len();
    for (i, &v) in targets.iter().enumerate() {
        probed.add_output(format!("probe_{i}"), v);
    }
    let model = Model::from_graph(probed, source);
    let mut outs = model
        .run_all(inputs, Backend::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    outs.split_off(first)
}

#[test]
fn regularizers_give_keras_losses() {
    for fx in manifest().penalties {
        let path = dir().join(&fx.model);
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        let graph = model.graph();
        let inputs = inputs(&model, &fx.inputs);
        assert_eq!(inputs[0].batch(), fx.batch, "{}", fx.name);

        // Weight penalties: one per regularized trainable weight, in Keras's order.
        let weights: Vec<(ParamId, f32, f32)> = graph
            .regularizers
            .iter()
            .filter_map(|r| match r.target {
                Penalized::Param(id) => Some((id, r.l1, r.l2)),
                Penalized::Activity(_) => None,
            })
            .collect();
        let names: Vec<&str> = weights
            .iter()
            .map(|(id, ..)| graph.params.param(*id).name.as_str())
            .collect();
        assert_eq!(
            weights.len(),
            fx.penalties.weights.len(),
            "{}: wgnn regularizes {names:?}",
            fx.name
        );
        let mut total = 0.0;
        for ((id, l1, l2), k) in weights.iter().zip(&fx.penalties.weights) {
            let p = graph.params.param(*id);
            assert!(
                same_weight(&p.name, &k.path),
                "{}: {} vs {}",
                fx.name,
                p.name,
                k.path
            );
            assert!(
                p.trainable,
                "{}: {} is penalized but frozen",
                fx.name, p.name
            );
            let got = penalty(p.value.iter().copied(), *l1, *l2);
            assert!(
                within_tolerance(got, k.value),
                "{}: penalty of {}: wgnn {got}, Keras {}",
                fx.name,
                p.name,
                k.value
            );
            total += got;
        }

        // Activity penalties: per output of each call, divided by the batch size; grouped by
        // the layer that made the output, in call order.
        let activity: Vec<(ValueId, f32, f32)> = graph
            .regularizers
            .iter()
            .filter_map(|r| match r.target {
                Penalized::Activity(v) => Some((v, r.l1, r.l2)),
                Penalized::Param(_) => None,
            })
            .collect();
        let targets: Vec<ValueId> = activity.iter().map(|a| a.0).collect();
        let values = probe(graph, &path, &targets, &inputs);
        let producers = graph.producers();
        let mut by_layer: Vec<(String, Vec<f64>)> = Vec::new();
        for ((v, l1, l2), value) in activity.iter().zip(&values) {
            let node = producers[*v].expect("an activity target is a node output");
            let layer = graph.nodes[node].name.clone();
            let got = penalty(value.iter().copied(), *l1, *l2) / fx.batch as f64;
            total += got;
            match by_layer.iter_mut().find(|(name, _)| *name == layer) {
                Some((_, list)) => list.push(got),
                None => by_layer.push((layer, vec![got])),
            }
        }
        assert_eq!(
            by_layer.len(),
            fx.penalties.activity.len(),
            "{}: wgnn penalizes the outputs of {:?}",
            fx.name,
            by_layer.iter().map(|l| &l.0).collect::<Vec<_>>()
        );
        for k in &fx.penalties.activity {
            let (_, got) = by_layer
                .iter()
                .find(|(name, _)| *name == k.layer)
                .unwrap_or_else(|| panic!("{}: no activity penalty on {}", fx.name, k.layer));
            assert_eq!(
                got.len(),
                k.values.len(),
                "{}: calls of {}",
                fx.name,
                k.layer
            );
            for (g, e) in got.iter().zip(&k.values) {
                assert!(
                    within_tolerance(*g, *e),
                    "{}: activity penalty of {}: wgnn {g}, Keras {e}",
                    fx.name,
                    k.layer
                );
            }
        }
        assert!(
            within_tolerance(total, fx.penalties.total),
            "{}: sum of the losses: wgnn {total}, Keras {}",
            fx.name,
            fx.penalties.total
        );

        assert_weight_list(
            graph,
            true,
            &fx.trainable,
            &format!("{} trainable", fx.name),
        );
        assert_weight_list(
            graph,
            false,
            &fx.non_trainable,
            &format!("{} non-trainable", fx.name),
        );
        // A frozen BatchNormalization (by its own flag or its container's) also runs on its
        // moving statistics in training: the op's flag follows its weights'.
        for node in &graph.nodes {
            if let Op::BatchNorm(bn) = &node.op {
                let gamma = bn
                    .gamma
                    .expect("the fixtures' BatchNormalization layers scale");
                assert_eq!(
                    bn.trainable,
                    graph.params.param(gamma).trainable,
                    "{}: {}",
                    fx.name,
                    node.name
                );
            }
        }
        assert_eq!(
            graph.compile_config.as_ref(),
            Some(&fx.compile_config),
            "{}",
            fx.name
        );
    }
}

#[test]
fn compile_configs_are_recorded_as_keras_saves_them() {
    let fixtures = manifest().compile;
    assert!(fixtures.len() > 10, "one fixture per optimizer");
    for fx in fixtures {
        let path = dir().join(&fx.model);
        let graph = if fx.weights {
            wgnn::keras::load(&path, None)
        } else {
            wgnn::keras::load_initialized(&path, 0)
        }
        .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        assert_eq!(graph.compile_config, fx.compile_config, "{}", fx.name);
        if !fx.weights && fx.model.ends_with(".keras") {
            // Without load_initialized, a .keras without weights is the usual error.
            let err = wgnn::keras::load(&path, None).unwrap_err().to_string();
            assert!(err.contains("model.weights.h5"), "{}: {err}", fx.name);
        }
    }
}

/// The init fixture's model loaded initialized with `seed`.
fn initialized(fx: &InitFixture, seed: u64) -> Graph {
    wgnn::keras::load_initialized(&dir().join(&fx.model), seed)
        .unwrap_or_else(|e| panic!("{} (seed {seed}): {e}", fx.name))
}

fn param<'g>(graph: &'g Graph, name: &str) -> (ParamId, &'g wgnn::graph::Param) {
    graph
        .params
        .iter()
        .find(|(_, p)| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

/// Statistics of wgnn's draws equal Keras's: the mean and the standard deviation within five
/// standard errors of the difference of the two pooled samples (the standard error of a sample
/// standard deviation is at most s / sqrt(2 n) for the distributions here, whose kurtosis is at
/// most 3); for bounded initializers, the extremes within 2% of the range (each sample has
/// hundreds of draws or more near each bound).
#[test]
fn initialized_weights_have_keras_statistics() {
    for fx in manifest().init {
        let graphs: Vec<Graph> = (0..fx.pool as u64).map(|s| initialized(&fx, s)).collect();
        let first = &graphs[0];
        assert_eq!(
            first.params.len(),
            fx.weights.len(),
            "{}: weight count",
            fx.name
        );
        for (i, k) in fx.weights.iter().enumerate() {
            let id = ParamId(i);
            let p = first.params.param(id);
            let what = format!("{}: {} (Keras {})", fx.name, p.name, k.path);
            assert!(same_weight(&p.name, &k.path), "{what}: not the same weight");
            assert_eq!(p.value.shape(), k.shape.as_slice(), "{what}: shape");
            let fans = compute_fans(&k.shape, None, None).unwrap();
            assert_eq!([fans.0, fans.1], k.fans, "{what}: fans");
            let pooled: Vec<f64> = graphs[..k.draws]
                .iter()
                .flat_map(|g| g.params.param(id).value.iter().map(|&v| v as f64))
                .collect();
            assert_eq!(pooled.len(), k.n, "{what}: pooled size");
            let n = pooled.len() as f64;
            let mean = pooled.iter().sum::<f64>() / n;
            let std = (pooled.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let (min, max) = pooled
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let se_mean = k.std * (2.0 / n).sqrt();
            let se_std = k.std * (1.0 / n).sqrt();
            let slack = 1e-6 * (1.0 + k.mean.abs());
            assert!(
                (mean - k.mean).abs() <= 5.0 * se_mean + slack,
                "{what}: mean {mean}, Keras {}",
                k.mean
            );
            assert!(
                (std - k.std).abs() <= 5.0 * se_std + slack,
                "{what}: std {std}, Keras {}",
                k.std
            );
            if k.bounded {
                let range = 0.02 * (k.max - k.min) + slack;
                assert!(
                    (min - k.min).abs() <= range && (max - k.max).abs() <= range,
                    "{what}: range [{min}, {max}], Keras [{}, {}]",
                    k.min,
                    k.max
                );
            }
        }
    }
}

#[test]
fn initialized_models_predict_finite_values() {
    for fx in manifest().init {
        let path = dir().join(&fx.model);
        let model =
            Model::load_initialized(&path, 7).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        let inputs = inputs(&model, &fx.inputs);
        let outs = model
            .run_all(&inputs, Backend::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        for out in outs {
            assert!(!out.is_empty(), "{}", fx.name);
            assert!(out.iter().all(|v| v.is_finite()), "{}: {out:?}", fx.name);
        }
    }
}

#[test]
fn a_free_time_axis_keeps_the_initialized_weights() {
    let fx = manifest()
        .init
        .into_iter()
        .find(|f| f.name == "init_free_time")
        .expect("init_free_time fixture");
    let path = dir().join(&fx.model);
    // The model rebuilds its graph for the input's length (7): with the seed's weights, the
    // same as a graph built for length 7 directly.
    let model = Model::load_initialized(&path, 9).unwrap();
    let x = inputs(&model, &fx.inputs);
    let got = model.run_all(&x, Backend::Cpu).unwrap();
    let (graph, free) = wgnn::keras::load_initialized_for_lengths(&path, 9, &[7]).unwrap();
    assert_eq!(free, vec![0]);
    let direct = Model::from_graph(graph, &path)
        .run_all(&x, Backend::Cpu)
        .unwrap();
    assert_eq!(got, direct);
    let other = Model::load_initialized(&path, 10).unwrap();
    assert_ne!(other.run_all(&x, Backend::Cpu).unwrap(), got);
}

#[test]
fn initialization_is_reproducible_by_seed() {
    for fx in manifest().init {
        let (a, b, c) = (
            initialized(&fx, 3),
            initialized(&fx, 3),
            initialized(&fx, 4),
        );
        let mut differs = 0;
        for (((_, pa), (_, pb)), (_, pc)) in
            a.params.iter().zip(b.params.iter()).zip(c.params.iter())
        {
            assert_eq!(
                pa.value, pb.value,
                "{}: {} with the same seed",
                fx.name, pa.name
            );
            if pa.value != pc.value {
                differs += 1;
            }
        }
        // The weights Keras draws differently in each build change with the seed, the others
        // (constants, the identity, seeded initializers) do not.
        let random = fx.weights.iter().filter(|k| !k.deterministic).count();
        assert!(random > 0, "{}", fx.name);
        assert_eq!(
            differs, random,
            "{}: weights that change with the seed",
            fx.name
        );
    }
}

/// W W^T = gain^2 I for a wide matrix (orthonormal rows), W^T W for a tall one.
fn assert_orthogonal(w: &ArrayD<f32>, gain: f64, what: &str) {
    let cols = *w.shape().last().unwrap();
    let rows = w.len() / cols;
    let m: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let at = |r: usize, c: usize| m[r * cols + c];
    let (outer, inner) = if rows < cols {
        (rows, cols)
    } else {
        (cols, rows)
    };
    for a in 0..outer {
        for b in 0..outer {
            let dot: f64 = (0..inner)
                .map(|k| {
                    if rows < cols {
                        at(a, k) * at(b, k)
                    } else {
                        at(k, a) * at(k, b)
                    }
                })
                .sum();
            let want = if a == b { gain * gain } else { 0.0 };
            assert!((dot - want).abs() < 1e-4, "{what}: [{a},{b}] = {dot}");
        }
    }
}

#[test]
fn recurrent_layers_get_keras_defaults() {
    let fx = manifest()
        .init
        .into_iter()
        .find(|f| f.name == "init_rnn")
        .expect("init_rnn fixture");
    let graph = initialized(&fx, 11);
    for name in [
        "lstm/recurrent_kernel",
        "bi/forward_layer/recurrent_kernel",
        "bi/backward_layer/recurrent_kernel",
        "gru/recurrent_kernel",
        "gru_v1/recurrent_kernel",
        "lstm_plain/recurrent_kernel",
        "convlstm/recurrent_kernel",
        "rnn/recurrent_kernel",
    ] {
        assert_orthogonal(&param(&graph, name).1.value, 1.0, name);
    }
    // unit_forget_bias: gates i, f, c, o; the forget gate's quarter is one, the rest zeros.
    for (name, units) in [
        ("lstm/bias", 16),
        ("bi/forward_layer/bias", 12),
        ("bi/backward_layer/bias", 12),
        ("convlstm/bias", 4),
    ] {
        let b: Vec<f32> = param(&graph, name).1.value.iter().copied().collect();
        assert_eq!(b.len(), 4 * units, "{name}");
        for (i, v) in b.iter().enumerate() {
            let want = if (units..2 * units).contains(&i) {
                1.0
            } else {
                0.0
            };
            assert_eq!(*v, want, "{name}[{i}]");
        }
    }
    // unit_forget_bias=False with bias_initializer="ones"; GRU biases zeros.
    assert!(param(&graph, "lstm_plain/bias")
        .1
        .value
        .iter()
        .all(|&v| v == 1.0));
    assert!(param(&graph, "gru/bias").1.value.iter().all(|&v| v == 0.0));
    assert_eq!(param(&graph, "gru/bias").1.value.shape(), &[2, 48]);
    // Embedding: uniform(-0.05, 0.05).
    let emb = &param(&graph, "emb/embeddings").1.value;
    assert!(emb.iter().all(|&v| (-0.05..0.05).contains(&v)));
}

#[test]
fn initializers_named_in_the_config_are_used() {
    let fx = manifest()
        .init
        .into_iter()
        .find(|f| f.name == "init_cnn")
        .expect("init_cnn fixture");
    let graph = initialized(&fx, 5);
    let values = |name: &str| -> Vec<f32> { param(&graph, name).1.value.iter().copied().collect() };
    let eye = values("eye/kernel");
    for (i, v) in eye.iter().enumerate() {
        assert_eq!(
            *v,
            if i / 64 == i % 64 { 1.0 } else { 0.0 },
            "eye/kernel[{i}]"
        );
    }
    assert!(values("dw/bias").iter().all(|&v| v == 0.1));
    assert!(values("normal/bias").iter().all(|&v| v == 1.0));
    assert!(values("ln/gamma").iter().all(|&v| v == 2.0));
    assert!(values("bn/moving_variance").iter().all(|&v| v == 1.0));
    assert!(values("prelu/alpha").iter().all(|&v| v == 0.0));
    assert_orthogonal(&param(&graph, "orth/kernel").1.value, 1.5, "orth/kernel");
    // GlorotUniform(seed=7) on two layers of one shape: Keras draws the same kernel for both,
    // whatever the model's seed.
    assert_eq!(values("seeded_a/kernel"), values("seeded_b/kernel"));
    let other = initialized(&fx, 6);
    assert_eq!(
        param(&other, "seeded_a/kernel").1.value,
        param(&graph, "seeded_a/kernel").1.value
    );
    // TruncatedNormal(stddev=0.1) never goes beyond two standard deviations.
    assert!(values("trunc/kernel")
        .iter()
        .all(|&v| v.abs() <= 0.2 + 1e-6));
    // Trainable flags of a fresh model: everything but BatchNormalization's moving statistics.
    for (_, p) in graph.params.iter() {
        let moving = p.name.contains("moving_");
        assert_eq!(p.trainable, !moving, "{}", p.name);
    }
}

#[test]
fn unknown_initializer_is_an_error_naming_layer_and_field() {
    let fixture = dir().join("init_cnn.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture).unwrap()).unwrap();
    let layer = config["config"]["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["config"]["name"] == "trunc")
        .expect("layer trunc");
    layer["config"]["kernel_initializer"] =
        serde_json::json!({"module": "keras.initializers", "class_name": "Bogus", "config": {}});
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bogus_initializer.json");
    std::fs::write(&bad, config.to_string()).unwrap();
    let err = wgnn::keras::load_initialized(&bad, 0)
        .unwrap_err()
        .to_string();
    for word in [
        "bogus_initializer.json",
        "'trunc'",
        "kernel_initializer",
        "Bogus",
    ] {
        assert!(err.contains(word), "missing '{word}' in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn unsupported_configs_are_errors_naming_layer_and_field() {
    for fx in manifest().bad {
        let path = dir().join(&fx.file);
        let err = match wgnn::keras::load_initialized(&path, 0) {
            Ok(_) => panic!("{} ({}): loaded", fx.file, fx.description),
            Err(e) => e.to_string(),
        };
        for word in &fx.words {
            assert!(
                err.contains(word.as_str()),
                "{}: missing '{word}' in: {err}",
                fx.file
            );
        }
    }
}
