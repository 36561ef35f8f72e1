//! The graph fixtures of `tests/fixtures/graph/` (written by `tools/graph_fixtures.py` with
//! real Keras; sub-folders hold their own manifests in the same format): models with any number
//! of inputs and outputs, in every file form, and Keras's outputs for them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use wgnn::{Backend, Model, PreparedInput};

use super::{assert_matches_keras, read_npy_f32, read_npy_ids};

pub fn graph_dir() -> PathBuf {
    super::fixtures_dir().join("graph")
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphInput {
    pub file: String,
    /// "float" or "ids".
    pub kind: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphOutput {
    pub name: String,
    pub file: String,
    pub shape: Vec<usize>,
    /// The output's standard deviation, as the fixture script measured it.
    #[serde(default)]
    pub std: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphFixture {
    pub name: String,
    pub description: String,
    pub model: String,
    #[serde(default)]
    pub weights: Option<String>,
    /// keras, json_h5, json_npz, legacy_h5 or recipe (the families' own manifests omit it).
    #[serde(default)]
    pub form: String,
    pub inputs: Vec<GraphInput>,
    pub outputs: Vec<GraphOutput>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphBad {
    pub file: String,
    pub word: String,
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GraphManifest {
    pub fixtures: Vec<GraphFixture>,
    #[serde(default)]
    pub bad: Vec<GraphBad>,
}

/// The manifest in `folder` (relative to tests/fixtures/graph).
pub fn graph_manifest(folder: &str) -> GraphManifest {
    let path = graph_dir().join(folder).join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fixture `name` of the manifest in `folder`.
pub fn graph_fixture(folder: &str, name: &str) -> GraphFixture {
    graph_manifest(folder)
        .fixtures
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| {
            panic!("no fixture '{name}' in tests/fixtures/graph/{folder}/manifest.json")
        })
}

/// Loads a fixture's model the way a user would: one file, or a config with its weights.
pub fn load_graph_fixture(dir: &Path, fx: &GraphFixture) -> wgnn::Result<Model> {
    match &fx.weights {
        Some(w) => Model::load_with_weights(dir.join(&fx.model), dir.join(w)),
        None => Model::load(dir.join(&fx.model)),
    }
}

/// The fixture's inputs as float arrays (token ids as integral floats), each checked against
/// the shape the manifest gives.
pub fn graph_fixture_inputs(dir: &Path, fx: &GraphFixture) -> Vec<ndarray::ArrayD<f32>> {
    fx.inputs
        .iter()
        .map(|i| {
            let path = dir.join(&i.file);
            let x = match i.kind.as_str() {
                "float" => read_npy_f32(&path),
                "ids" => read_npy_ids(&path).mapv(|v| v as f32).into_dyn(),
                other => panic!("{}: unknown input kind '{other}'", fx.name),
            };
            assert_eq!(x.shape(), i.shape.as_slice(), "{}: input shape", fx.name);
            x
        })
        .collect()
}

/// Loads a fixture's model, panicking with the fixture's name and description on failure.
pub fn load_graph_fixture_or_panic(dir: &Path, fx: &GraphFixture) -> Model {
    load_graph_fixture(dir, fx).unwrap_or_else(|e| {
        panic!(
            "fixture '{}' ({}): load failed: {e}",
            fx.name, fx.description
        )
    })
}

/// The fixture's inputs, prepared for `model` in its input order.
pub fn graph_inputs(
    dir: &Path,
    fx: &GraphFixture,
    model: &Model,
) -> wgnn::Result<Vec<PreparedInput>> {
    fx.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let path = dir.join(&input.file);
            match input.kind.as_str() {
                "ids" => model.prepare_ids_for(i, read_npy_ids(&path).view()),
                _ => model.prepare_input(i, read_npy_f32(&path).view()),
            }
        })
        .collect()
}

/// Runs fixture `name` of `folder` on `backend` and compares every output with Keras's.
/// Returns without checking when the GPU has no adapter outside CI (see `no_adapter_outside_ci`).
pub fn check_graph_fixture(folder: &str, name: &str, backend: Backend) {
    let dir = graph_dir().join(folder);
    let fx = graph_fixture(folder, name);
    let model = load_graph_fixture(&dir, &fx)
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): load failed: {e}", fx.description));
    let inputs =
        graph_inputs(&dir, &fx, &model).unwrap_or_else(|e| panic!("fixture '{name}': inputs: {e}"));
    let outputs = match model.run_all(&inputs, backend) {
        Ok(o) => o,
        Err(e) if super::no_adapter_outside_ci(&e) => return,
        Err(e) => panic!("fixture '{name}' ({}) on {backend:?}: {e}", fx.description),
    };
    assert_eq!(
        outputs.len(),
        fx.outputs.len(),
        "fixture '{name}': wgnn gives {} outputs, Keras {}",
        outputs.len(),
        fx.outputs.len()
    );
    for (k, (got, want)) in outputs.iter().zip(&fx.outputs).enumerate() {
        let expected = read_npy_f32(&dir.join(&want.file));
        assert_eq!(
            expected.shape(),
            want.shape.as_slice(),
            "fixture '{name}' output {k}"
        );
        assert_matches_keras(
            &format!("{name} output {k} ({})", want.name),
            backend,
            got,
            &expected,
        );
    }
}

/// A bad file of `folder`'s manifest must be refused with an error containing its word.
pub fn check_graph_bad_file(folder: &str, file: &str) {
    let dir = graph_dir().join(folder);
    let bad = graph_manifest(folder)
        .bad
        .into_iter()
        .find(|b| b.file == file)
        .unwrap_or_else(|| {
            panic!("no bad file '{file}' in tests/fixtures/graph/{folder}/manifest.json")
        });
    match Model::load(dir.join(&bad.file)) {
        Ok(_) => panic!("{file} ({}) loaded, but must be rejected", bad.description),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&bad.word),
                "{file}: the error must mention '{}', got: {msg}",
                bad.word
            );
            assert!(!msg.contains('\n'), "{file}: error is not one line: {msg}");
        }
    }
}
