//! Legacy Keras HDF5 files: every fixture in `tests/fixtures/legacy/manifest.json` (written by
//! `tools/legacy_fixtures.py` with real Keras 3.15 and real Keras 2 / tf_keras 2.21) loads —
//! `Model::load` for a whole-model `.h5`, `Model::load_with_weights` for a model JSON with a
//! weights-only `.h5` — and predicts on the CPU within |got - expected| <= 1e-4 * (1 + |expected|)
//! of Keras. Broken legacy files, files of the wrong kind and SavedModel folders are errors that
//! name the file and the problem.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{assert_matches_keras, read_npy_f32, read_npy_ids};
use ndarray::{ArrayD, Axis};
use serde::Deserialize;
use wgnn::{Backend, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InputKind {
    Float,
    Ids,
}

#[derive(Debug, Clone, Deserialize)]
struct Fixture {
    name: String,
    /// A legacy `.h5` model file, or a model JSON when `weights` is set.
    model: String,
    /// A weights-only legacy `.h5` (`save_weights`).
    #[serde(default)]
    weights: Option<String>,
    input: String,
    expected: String,
    input_kind: InputKind,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    description: String,
}

#[derive(Debug, Clone, Deserialize)]
struct BadFile {
    file: String,
    #[serde(default)]
    weights: Option<String>,
    word: String,
    description: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    fixtures: Vec<Fixture>,
    bad: Vec<BadFile>,
}

fn dir() -> PathBuf {
    common::fixtures_dir().join("legacy")
}

fn manifest() -> Manifest {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Fixture {
    manifest()
        .fixtures
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture '{name}' in tests/fixtures/legacy/manifest.json"))
}

fn load(model: &Path, weights: Option<&Path>) -> wgnn::Result<Model> {
    match weights {
        Some(w) => Model::load_with_weights(model, w),
        None => Model::load(model),
    }
}

fn predict(fx: &Fixture, model: &Model) -> wgnn::Result<ArrayD<f32>> {
    predict_on(fx, model, Backend::Cpu)
}

fn predict_on(fx: &Fixture, model: &Model, backend: Backend) -> wgnn::Result<ArrayD<f32>> {
    let input = dir().join(&fx.input);
    match fx.input_kind {
        InputKind::Float => model.predict(read_npy_f32(&input).view(), backend),
        InputKind::Ids => model.predict_ids(read_npy_ids(&input).view(), backend),
    }
}

/// The largest difference between any batch row and the first: a model (or a fixture) whose
/// output ignores its input would give 0.
fn spread_across_batch(out: &ArrayD<f32>) -> f32 {
    let first = out.index_axis(Axis(0), 0);
    out.axis_iter(Axis(0))
        .flat_map(|row| {
            row.iter()
                .zip(first.iter())
                .map(|(a, b)| (a - b).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0, f32::max)
}

fn check_fixture(name: &str) {
    let fx = fixture(name);
    let d = dir();
    let weights = fx.weights.as_ref().map(|w| d.join(w));
    let model = load(&d.join(&fx.model), weights.as_deref())
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): load failed: {e}", fx.description));
    let got = predict(&fx, &model)
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): predict failed: {e}", fx.description));
    let expected = read_npy_f32(&d.join(&fx.expected));
    assert_eq!(
        expected.shape(),
        fx.output_shape.as_slice(),
        "fixture '{name}'"
    );
    assert!(
        spread_across_batch(&expected) > 1e-3,
        "fixture '{name}': Keras's outputs do not vary across the batch"
    );
    assert_matches_keras(name, Backend::Cpu, &got, &expected);
}

/// One `#[test]` per fixture: `test_name => "fixture name"`.
macro_rules! legacy_matches_keras_on_cpu {
    ($($test:ident => $fixture:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_fixture($fixture);
            }
        )*
    };
}

legacy_matches_keras_on_cpu! {
    // Keras 3.15 `model.save("m.h5")`, and model.to_json() + Keras 3's legacy weights writer.
    k3_seq_cnn => "k3_seq_cnn",
    k3_seq_cnn_weights => "k3_seq_cnn_weights",
    k3_functional_cnn => "k3_functional_cnn",
    k3_functional_cnn_weights => "k3_functional_cnn_weights",
    k3_text_bilstm => "k3_text_bilstm",
    k3_text_bilstm_weights => "k3_text_bilstm_weights",
    k3_text_functional => "k3_text_functional",
    k3_text_functional_weights => "k3_text_functional_weights",
    k3_stacked_simplernn => "k3_stacked_simplernn",
    k3_stacked_simplernn_weights => "k3_stacked_simplernn_weights",
    // Keras 2 (tf_keras 2.21) `model.save("m.h5")`, and model.to_json() + `save_weights("w.h5")`.
    k2_seq_cnn => "k2_seq_cnn",
    k2_seq_cnn_weights => "k2_seq_cnn_weights",
    k2_functional_cnn => "k2_functional_cnn",
    k2_functional_cnn_weights => "k2_functional_cnn_weights",
    k2_text_bilstm => "k2_text_bilstm",
    k2_text_bilstm_weights => "k2_text_bilstm_weights",
    k2_text_functional => "k2_text_functional",
    k2_text_functional_weights => "k2_text_functional_weights",
    k2_stacked_simplernn => "k2_stacked_simplernn",
    k2_stacked_simplernn_weights => "k2_stacked_simplernn_weights",
    // Keras 2 as older stacks stored it: fixed-length strings, chunked layer_names, "Model".
    k2_old_text_functional => "k2_old_text_functional",
    k2_old_text_functional_weights => "k2_old_text_functional_weights",
    // What the two Kerases mean differently, and files real models produce: operators
    // (Keras 2 TFOpLambda), hard_sigmoid (0.2x + 0.5 in Keras 2), a Functional tower called
    // twice (node numbering, nested legacy weight order), initial_state with a mask.
    k3_cnn_hard_swish => "k3_cnn_hard_swish",
    k3_cnn_hard_swish_weights => "k3_cnn_hard_swish_weights",
    k2_cnn_hard_swish => "k2_cnn_hard_swish",
    k2_cnn_hard_swish_weights => "k2_cnn_hard_swish_weights",
    k3_convlstm_defaults => "k3_convlstm_defaults",
    k3_convlstm_defaults_weights => "k3_convlstm_defaults_weights",
    k2_convlstm_defaults => "k2_convlstm_defaults",
    k2_convlstm_defaults_weights => "k2_convlstm_defaults_weights",
    k3_lstm_hard_sigmoid => "k3_lstm_hard_sigmoid",
    k3_lstm_hard_sigmoid_weights => "k3_lstm_hard_sigmoid_weights",
    k2_lstm_hard_sigmoid => "k2_lstm_hard_sigmoid",
    k2_lstm_hard_sigmoid_weights => "k2_lstm_hard_sigmoid_weights",
    k3_cnn_shared_tower => "k3_cnn_shared_tower",
    k3_cnn_shared_tower_weights => "k3_cnn_shared_tower_weights",
    k2_cnn_shared_tower => "k2_cnn_shared_tower",
    k2_cnn_shared_tower_weights => "k2_cnn_shared_tower_weights",
    k3_text_seq2seq_state => "k3_text_seq2seq_state",
    k3_text_seq2seq_state_weights => "k3_text_seq2seq_state_weights",
    k2_text_seq2seq_state => "k2_text_seq2seq_state",
    k2_text_seq2seq_state_weights => "k2_text_seq2seq_state_weights",
}

/// The Keras 2 meanings on the GPU too: every Keras 2 model file against Keras's outputs.
#[test]
fn keras2_model_files_match_keras_on_the_gpu() {
    for fx in manifest().fixtures {
        if !fx.name.starts_with("k2_") || fx.weights.is_some() {
            continue;
        }
        let model = load(&dir().join(&fx.model), None)
            .unwrap_or_else(|e| panic!("fixture '{}': load failed: {e}", fx.name));
        let got = match predict_on(&fx, &model, Backend::Gpu) {
            Ok(g) => g,
            Err(e) if common::no_adapter_outside_ci(&e) => return,
            Err(e) => panic!("fixture '{}' on the GPU: {e}", fx.name),
        };
        let expected = read_npy_f32(&dir().join(&fx.expected));
        assert_matches_keras(&fx.name, Backend::Gpu, &got, &expected);
    }
}

#[test]
fn every_manifest_entry_has_its_own_test() {
    let source = include_str!("legacy_h5.rs");
    let mut names = BTreeSet::new();
    for fx in manifest().fixtures {
        assert!(
            names.insert(fx.name.clone()),
            "fixture '{}' listed twice",
            fx.name
        );
        assert!(
            source.contains(&format!("=> \"{}\",", fx.name)),
            "fixture '{}' has no line in legacy_matches_keras_on_cpu!",
            fx.name
        );
    }
}

#[test]
fn manifest_covers_every_file_and_shapes_match() {
    let m = manifest();
    let d = dir();
    let mut listed = BTreeSet::from(["manifest.json".to_string()]);
    for fx in &m.fixtures {
        listed.extend([fx.model.clone(), fx.input.clone(), fx.expected.clone()]);
        listed.extend(fx.weights.clone());
        let shape = match fx.input_kind {
            InputKind::Float => read_npy_f32(&d.join(&fx.input)).shape().to_vec(),
            InputKind::Ids => read_npy_ids(&d.join(&fx.input)).shape().to_vec(),
        };
        assert_eq!(shape, fx.input_shape, "fixture '{}': input", fx.name);
    }
    for bad in &m.bad {
        listed.insert(bad.file.clone());
        listed.extend(bad.weights.clone());
    }
    let mut on_disk = BTreeSet::new();
    for (sub, prefix) in [(d.clone(), ""), (d.join("bad"), "bad/")] {
        for entry in std::fs::read_dir(&sub).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                on_disk.insert(format!(
                    "{prefix}{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    let orphans: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        orphans.is_empty(),
        "files no manifest entry lists: {orphans:?}"
    );
    assert!(
        missing.is_empty(),
        "listed files that do not exist: {missing:?}"
    );
}

/// `load` must fail (not panic) with a message naming `file_name` and containing every word.
#[track_caller]
fn assert_rejected(result: wgnn::Result<Model>, file_name: &str, words: &[&str]) -> String {
    let message = match result {
        Ok(_) => panic!("{file_name}: loaded, but must be rejected"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains(file_name),
        "error must name the file '{file_name}': {message}"
    );
    for word in words {
        assert!(
            message.contains(word),
            "error must mention '{word}': {message}"
        );
    }
    assert!(!message.contains('\n'), "error must be one line: {message}");
    message
}

#[test]
fn bad_legacy_files_are_rejected_naming_the_problem() {
    let d = dir();
    for bad in manifest().bad {
        let weights = bad.weights.as_ref().map(|w| d.join(w));
        let named = bad.weights.as_deref().unwrap_or(&bad.file);
        let name = Path::new(named).file_name().unwrap().to_string_lossy();
        let message = assert_rejected(
            load(&d.join(&bad.file), weights.as_deref()),
            &name,
            &[&bad.word],
        );
        eprintln!("{} ({}): {message}", bad.file, bad.description);
    }
}

fn temp_copy(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn truncated_legacy_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = dir();
    for (model, weights) in [
        ("k2_text_bilstm.h5", None),
        ("k3_functional_cnn.h5", None),
        ("k2_old_text_functional.h5", None),
        ("k2_seq_cnn.json", Some("k2_seq_cnn_weights.h5")),
    ] {
        let target = weights.unwrap_or(model);
        let bytes = std::fs::read(d.join(target)).unwrap();
        for keep in [
            12,
            96,
            512,
            bytes.len() / 4,
            bytes.len() / 2,
            bytes.len() - 1000,
        ] {
            let name = format!("cut{keep}_{target}");
            let cut = temp_copy(tmp.path(), &name, &bytes[..keep]);
            let result = match weights {
                Some(_) => Model::load_with_weights(d.join(model), &cut),
                None => Model::load(&cut),
            };
            assert_rejected(result, &name, &[]);
        }
    }
}

#[test]
fn corrupt_legacy_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir().join("k2_seq_cnn.h5")).unwrap();

    // The superblock after the signature overwritten.
    let mut broken = bytes.clone();
    broken[8..64].fill(0xff);
    let path = temp_copy(tmp.path(), "superblock.h5", &broken);
    assert_rejected(Model::load(&path), "superblock.h5", &["HDF5"]);

    // The model_config JSON damaged where it is stored.
    let at = find(&bytes, br#"{"class_name": "Sequential""#).expect("model_config in the file");
    let mut broken = bytes.clone();
    broken[at] = b'<';
    let path = temp_copy(tmp.path(), "config.h5", &broken);
    assert_rejected(Model::load(&path), "config.h5", &["model_config", "JSON"]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `fixture`'s model JSON after `edit`, for a weights mismatch.
fn edited_json(tmp: &Path, json: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let text = std::fs::read_to_string(dir().join(json)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    let path = tmp.join(format!("edited_{json}"));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn weights_that_do_not_fit_the_config_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = dir().join("k2_seq_cnn_weights.h5");
    let layers = |c: &mut serde_json::Value| -> Vec<serde_json::Value> {
        c["config"]["layers"].as_array().unwrap().clone()
    };

    // A layer of the file that the config lacks: 'probs' is left over.
    let json = edited_json(tmp.path(), "k2_seq_cnn.json", |c| {
        let mut l = layers(c);
        l.pop();
        c["config"]["layers"] = l.into();
    });
    let m = assert_rejected(
        Model::load_with_weights(&json, &weights),
        "k2_seq_cnn_weights.h5",
        &["'probs'", "extra"],
    );
    eprintln!("{m}");

    // A config layer the file has no weights for: layers are found by name.
    let json = edited_json(tmp.path(), "k2_seq_cnn.json", |c| {
        c["config"]["layers"][1]["config"]["name"] = "renamed_conv".into();
    });
    let m = assert_rejected(
        Model::load_with_weights(&json, &weights),
        "k2_seq_cnn_weights.h5",
        &["'renamed_conv'", "missing", "conv"],
    );
    eprintln!("{m}");

    // A Dense of another width: the kernel's shape is checked.
    let json = edited_json(tmp.path(), "k2_seq_cnn.json", |c| {
        let last = c["config"]["layers"].as_array().unwrap().len() - 1;
        c["config"]["layers"][last]["config"]["units"] = 6.into();
    });
    let m = assert_rejected(
        Model::load_with_weights(&json, &weights),
        "k2_seq_cnn_weights.h5",
        &["'probs'", "shape"],
    );
    eprintln!("{m}");

    // Dense without bias in the config, with one in the file: the bias is left over.
    let json = edited_json(tmp.path(), "k2_seq_cnn.json", |c| {
        let last = c["config"]["layers"].as_array().unwrap().len() - 1;
        c["config"]["layers"][last]["config"]["use_bias"] = false.into();
    });
    let m = assert_rejected(
        Model::load_with_weights(&json, &weights),
        "k2_seq_cnn_weights.h5",
        &["'probs'", "extra", "bias"],
    );
    eprintln!("{m}");
}

#[test]
fn saved_model_folders_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("my_saved_model");
    std::fs::create_dir_all(saved.join("variables")).unwrap();
    std::fs::write(saved.join("saved_model.pb"), b"\x08\x01").unwrap();
    let m = assert_rejected(
        Model::load(&saved),
        "my_saved_model",
        &[
            "SavedModel",
            "saved_model.pb",
            "model.save(\"model.keras\")",
        ],
    );
    eprintln!("{m}");
    // The graph file itself.
    assert_rejected(
        Model::load(saved.join("saved_model.pb")),
        "saved_model.pb",
        &["SavedModel", "model.keras"],
    );
    // A folder without a SavedModel in it.
    let empty = tmp.path().join("just_a_folder");
    std::fs::create_dir(&empty).unwrap();
    let m = assert_rejected(Model::load(&empty), "just_a_folder", &["folder"]);
    assert!(!m.contains("SavedModel folder"), "{m}");
    // A folder as the weights.
    assert_rejected(
        Model::load_with_weights(dir().join("k2_seq_cnn.json"), &empty),
        "just_a_folder",
        &["folder"],
    );
}

#[test]
fn weights_files_passed_as_the_model_say_to_use_weights() {
    assert_rejected(
        Model::load(dir().join("k2_seq_cnn_weights.h5")),
        "k2_seq_cnn_weights.h5",
        &["legacy", "--weights"],
    );
    let keras3 = common::fixtures_dir().join("h5_weights_cnn.weights.h5");
    assert_rejected(
        Model::load(keras3),
        "h5_weights_cnn.weights.h5",
        &["Keras 3 weights", "--weights"],
    );
}

#[test]
fn a_legacy_model_file_also_serves_as_weights() {
    // Its own JSON with the whole model file as --weights; and the model file with its
    // weights-only twin overriding its own weights.
    for (model, weights) in [
        ("k2_text_bilstm.json", "k2_text_bilstm.h5"),
        ("k3_functional_cnn.h5", "k3_functional_cnn_weights.h5"),
    ] {
        let name = model.split('.').next().unwrap();
        let fx = fixture(name);
        let m = Model::load_with_weights(dir().join(model), dir().join(weights))
            .unwrap_or_else(|e| panic!("{model} + {weights}: {e}"));
        let got = predict(&fx, &m).unwrap();
        let expected = read_npy_f32(&dir().join(&fx.expected));
        assert_matches_keras(name, Backend::Cpu, &got, &expected);
        assert!(
            spread_across_batch(&got) > 1e-3,
            "{name}: output ignores the input"
        );
    }
}
