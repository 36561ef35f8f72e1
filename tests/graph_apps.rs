//! keras.applications MobileNetV2, ResNet50, EfficientNetB0, DenseNet121 and VGG16
//! (`weights=None`, 32x32, 10 classes) against Keras on both backends. Their weights are too big
//! to commit, so `tools/graph_fixtures.py` commits each model's config and a recipe (seeded
//! splitmix64 values per weight, see the manifest's `recipe_definition`); this test rebuilds the
//! weights bit for bit, checks them against the manifest's check values, and compares the
//! outputs with Keras's on the recipe input.

mod common;

use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use wgnn::{Backend, Model};

fn graph_fixtures() -> PathBuf {
    common::fixtures_dir().join("graph")
}

fn manifest() -> Value {
    let path = graph_fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn recipe_entry(name: &str) -> Value {
    manifest()["fixtures"]
        .as_array()
        .expect("fixtures list")
        .iter()
        .find(|f| f["name"] == name && f["form"] == "recipe")
        .unwrap_or_else(|| {
            panic!("no recipe fixture '{name}' in tests/fixtures/graph/manifest.json")
        })
        .clone()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The recipe's values: offset + (2u - 1) * scale in f64, rounded to f32 (int64 arrays are
/// truncated to integers first, then stored as f32 like every weight wgnn reads).
fn recipe_values(recipe: &Value, len: usize) -> Vec<f32> {
    let seed = recipe["seed"].as_u64().expect("seed");
    let offset = recipe["offset"].as_f64().expect("offset");
    let scale = recipe["scale"].as_f64().expect("scale");
    let int = recipe["dtype"].as_str() == Some("int64");
    (0..len as u64)
        .map(|j| {
            let u = (splitmix64(seed.wrapping_add(j)) >> 40) as f64 / (1u64 << 24) as f64;
            let v = offset + (2.0 * u - 1.0) * scale;
            if int {
                (v as i64) as f32
            } else {
                v as f32
            }
        })
        .collect()
}

fn shape_of(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

/// The model with its recipe weights, each checked against the manifest's first values and sum.
fn load_app(entry: &Value) -> Model {
    let mut arrays = Vec::new();
    for w in entry["weights_recipe"].as_array().expect("weights_recipe") {
        let shape = shape_of(&w["shape"]);
        let values = recipe_values(w, shape.iter().product());
        let check = &w["check"];
        for (i, first) in check["first"].as_array().expect("first").iter().enumerate() {
            assert_eq!(
                values[i],
                first.as_f64().expect("f32") as f32,
                "{}: value {i} differs from the recipe's check",
                w["path"]
            );
        }
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let want = check["sum"].as_f64().expect("sum");
        assert!(
            (sum - want).abs() <= 1e-9 * (1.0 + want.abs()) * values.len() as f64,
            "{}: sum {sum} vs {want}",
            w["path"]
        );
        arrays.push((shape, values));
    }
    let config = graph_fixtures().join(entry["model"].as_str().expect("model path"));
    Model::load_with_weight_arrays(&config, arrays)
        .unwrap_or_else(|e| panic!("{}: {e}", entry["name"]))
}

fn check_app(name: &str, backend: Backend) {
    let entry = recipe_entry(name);
    let model = load_app(&entry);
    let input = &entry["inputs"][0];
    let x = common::read_npy_f32(&graph_fixtures().join(input["file"].as_str().expect("file")));
    // The committed input is the recipe input; check that too.
    let recipe_x = recipe_values(&input["recipe"], x.len());
    assert_eq!(
        x.iter().copied().collect::<Vec<_>>(),
        recipe_x,
        "{name}: input"
    );
    let output = &entry["outputs"][0];
    let expected =
        common::read_npy_f32(&graph_fixtures().join(output["file"].as_str().expect("file")));
    let got = match model.predict(x.view(), backend) {
        Ok(y) => y,
        Err(e) if common::no_adapter_outside_ci(&e) => return,
        Err(e) => panic!("{name}: {e}"),
    };
    let expected = expected
        .into_shape_with_order(IxDyn(got.shape()))
        .unwrap_or_else(|e| panic!("{name}: output shape {:?} vs Keras's: {e}", got.shape()));
    common::assert_matches_keras(name, backend, &got, &expected);
    assert_outputs_differ(name, &expected);
}

/// The fixture proves something only if Keras's outputs differ from row to row.
fn assert_outputs_differ(name: &str, expected: &ArrayD<f32>) {
    let rows: Vec<Vec<f32>> = expected
        .outer_iter()
        .map(|r| r.iter().copied().collect())
        .collect();
    let spread = rows[1..]
        .iter()
        .flat_map(|r| r.iter().zip(&rows[0]).map(|(a, b)| (a - b).abs()))
        .fold(0.0f32, f32::max);
    assert!(
        spread > 1e-3,
        "{name}: Keras's outputs barely depend on the input ({spread})"
    );
}

macro_rules! app_tests {
    ($($cpu:ident, $gpu:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $cpu() {
                check_app($name, Backend::Cpu);
            }

            #[test]
            fn $gpu() {
                check_app($name, Backend::Gpu);
            }
        )*
    };
}

app_tests! {
    mobilenetv2_matches_keras_on_cpu, mobilenetv2_matches_keras_on_gpu => "mobilenetv2",
    resnet50_matches_keras_on_cpu, resnet50_matches_keras_on_gpu => "resnet50",
    efficientnetb0_matches_keras_on_cpu, efficientnetb0_matches_keras_on_gpu => "efficientnetb0",
    densenet121_matches_keras_on_cpu, densenet121_matches_keras_on_gpu => "densenet121",
    vgg16_matches_keras_on_cpu, vgg16_matches_keras_on_gpu => "vgg16",
}
