//! Shared code for the Keras-parity tests: reads `tests/fixtures/manifest.json` (written by
//! `tools/keras_fixtures.py`) and the `.npy` files it names, runs a fixture through wgnn on a
//! chosen backend, and compares with Keras's own output at the crate-wide tolerance.
//!
//! The fixtures are committed, so nothing here needs Python or an environment variable.

// Each test binary that includes this module uses a different subset of it.
#![allow(dead_code)]

pub mod grad_fixtures;
pub mod graph_fixtures;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, Dimension, IxDyn};
use serde::Deserialize;
use wgnn::{Backend, Model};

/// Parity tolerance everywhere: |got - expected| <= 1e-4 * (1 + |expected|).
pub const RELATIVE_TOLERANCE: f32 = 1e-4;

pub fn within_tolerance(got: f32, expected: f32) -> bool {
    // NaN on either side compares false, so it fails.
    (got - expected).abs() <= RELATIVE_TOLERANCE * (1.0 + expected.abs())
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FixtureInput {
    /// float32 `.npy`, fed to `Model::predict`.
    Float,
    /// int32/int64 token ids `.npy`, fed to `Model::predict_ids`.
    Ids,
}

/// One model with an input batch and Keras's output for it. Paths are relative to
/// `fixtures_dir()`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    pub name: String,
    /// `.keras`, or a `model.to_json()` file when `weights` is set.
    pub model: String,
    /// `.weights.h5` or `.npz` (`np.savez(path, *model.get_weights())`).
    #[serde(default)]
    pub weights: Option<String>,
    pub input: String,
    pub expected: String,
    pub input_kind: FixtureInput,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub description: String,
}

/// A file the loader must reject with an error that contains `word`.
#[derive(Debug, Clone, Deserialize)]
pub struct BadFile {
    pub file: String,
    #[serde(default)]
    pub weights: Option<String>,
    pub word: String,
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub fixtures: Vec<Fixture>,
    pub bad: Vec<BadFile>,
}

pub fn manifest() -> Manifest {
    let path = fixtures_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture(name: &str) -> Fixture {
    manifest()
        .fixtures
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture named '{name}' in tests/fixtures/manifest.json"))
}

pub fn bad_file(file: &str) -> BadFile {
    manifest()
        .bad
        .into_iter()
        .find(|b| b.file == file)
        .unwrap_or_else(|| panic!("no bad file '{file}' in tests/fixtures/manifest.json"))
}

/// Loads a model the way a user would: `Model::load` for a lone file, `load_with_weights`
/// for JSON + weights.
pub fn load_model_files(model: &str, weights: Option<&str>) -> wgnn::Result<Model> {
    let dir = fixtures_dir();
    match weights {
        Some(weights) => Model::load_with_weights(dir.join(model), dir.join(weights)),
        None => Model::load(dir.join(model)),
    }
}

pub fn load_fixture_model(fx: &Fixture) -> wgnn::Result<Model> {
    load_model_files(&fx.model, fx.weights.as_deref())
}

fn open_npy(path: &Path) -> npyz::NpyFile<BufReader<File>> {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .unwrap_or_else(|e| panic!("{}: not an npy file: {e}", path.display()));
    assert_eq!(
        npy.order(),
        npyz::Order::C,
        "{}: Fortran-order arrays are not expected in fixtures",
        path.display()
    );
    npy
}

fn npy_type(npy: &npyz::NpyFile<BufReader<File>>) -> String {
    match npy.dtype() {
        npyz::DType::Plain(ty) => ty.to_string(),
        other => format!("{other:?}"),
    }
}

fn npy_shape(npy: &npyz::NpyFile<BufReader<File>>) -> Vec<usize> {
    npy.shape().iter().map(|&d| d as usize).collect()
}

/// Reads a little-endian float32 `.npy` into an array of its shape.
pub fn read_npy_f32(path: &Path) -> ArrayD<f32> {
    let npy = open_npy(path);
    let ty = npy_type(&npy);
    assert_eq!(ty, "<f4", "{}: expected float32 data", path.display());
    let shape = npy_shape(&npy);
    let data = npy
        .into_vec::<f32>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads an int32 or int64 `.npy` of token ids shaped (N, T).
pub fn read_npy_ids(path: &Path) -> Array2<i64> {
    let npy = open_npy(path);
    let ty = npy_type(&npy);
    let shape = npy_shape(&npy);
    assert_eq!(
        shape.len(),
        2,
        "{}: token ids must be (N, T)",
        path.display()
    );
    let data: Vec<i64> = match ty.as_str() {
        "<i4" => npy
            .into_vec::<i32>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .map(i64::from)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        // A boolean mask input: 0/1.
        "|b1" => npy
            .into_vec::<bool>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .map(i64::from)
            .collect(),
        other => panic!(
            "{}: expected int32, int64 or bool ids, found {other}",
            path.display()
        ),
    };
    Array2::from_shape_vec((shape[0], shape[1]), data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs a fixture's input through `model` on `backend`.
pub fn predict_fixture(fx: &Fixture, model: &Model, backend: Backend) -> wgnn::Result<ArrayD<f32>> {
    let input = fixtures_dir().join(&fx.input);
    match fx.input_kind {
        FixtureInput::Float => model.predict(read_npy_f32(&input).view(), backend),
        FixtureInput::Ids => model.predict_ids(read_npy_ids(&input).view(), backend),
    }
}

/// Panics unless `got` has `expected`'s shape and every value is within tolerance. The message
/// names the fixture, how many values are off, and the worst one: index, got, expected.
pub fn assert_matches_keras(
    name: &str,
    backend: Backend,
    got: &ArrayD<f32>,
    expected: &ArrayD<f32>,
) {
    assert_eq!(
        got.shape(),
        expected.shape(),
        "fixture '{name}' on {backend:?}: output shape {:?}, Keras gives {:?}",
        got.shape(),
        expected.shape()
    );
    let mut failures = 0usize;
    // The worst value is the one furthest outside its own tolerance (NaN counts as worst).
    let mut worst: Option<(f32, IxDyn, f32, f32)> = None;
    for ((index, &e), &g) in expected.indexed_iter().zip(got.iter()) {
        if within_tolerance(g, e) {
            continue;
        }
        failures += 1;
        let excess = (g - e).abs() / (RELATIVE_TOLERANCE * (1.0 + e.abs()));
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if worst.as_ref().is_none_or(|w| excess > w.0) {
            worst = Some((excess, index, g, e));
        }
    }
    if let Some((excess, index, g, e)) = worst {
        panic!(
            "fixture '{name}' on {backend:?}: {failures} of {} values outside \
             |got - expected| <= 1e-4 * (1 + |expected|); worst at {:?}: got {g}, expected {e} \
             (|diff| {:e}, {excess:.1}x the tolerance)",
            expected.len(),
            index.slice(),
            (g - e).abs(),
        );
    }
}

/// Loads fixture `name` from the manifest, runs it on `backend` and compares with Keras.
pub fn check_fixture(name: &str, backend: Backend) {
    let fx = fixture(name);
    let model = load_fixture_model(&fx)
        .unwrap_or_else(|e| panic!("fixture '{name}' ({}): load failed: {e}", fx.description));
    let got = predict_fixture(&fx, &model, backend).unwrap_or_else(|e| {
        panic!(
            "fixture '{name}' ({}): predict on {backend:?} failed: {e}",
            fx.description
        )
    });
    let expected = read_npy_f32(&fixtures_dir().join(&fx.expected));
    assert_matches_keras(name, backend, &got, &expected);
}

/// Loading bad file `file` must return an error (not panic) whose message contains its word.
pub fn check_bad_file_rejected(file: &str) {
    let bad = bad_file(file);
    match load_model_files(&bad.file, bad.weights.as_deref()) {
        Ok(_) => panic!("{file} ({}): loaded, but must be rejected", bad.description),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&bad.word),
                "{file} ({}): error must mention '{}', got: {message}",
                bad.description,
                bad.word
            );
        }
    }
}

/// A folder named by env `name` that a test needs (datasets, seed models): under CI (env `CI`
/// set) a missing variable fails the test; elsewhere the test prints a note and skips.
pub fn env_dir(name: &str) -> Option<PathBuf> {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ if std::env::var_os("CI").is_some() => panic!("env {name} must be set under CI"),
        _ => {
            eprintln!("note: env {name} is unset; skipping");
            None
        }
    }
}

/// Whether a GPU test stops here because this machine has no GPU adapter: true outside CI (with
/// a note), while under CI (env `CI` set) a missing adapter fails the test. Other errors: false.
pub fn no_adapter_outside_ci(err: &wgnn::Error) -> bool {
    let wgnn::Error::Gpu(msg) = err else {
        return false;
    };
    if !wgnn::gpu::is_no_adapter(msg) {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but there is no GPU adapter: {msg}"
    );
    eprintln!("note: no GPU adapter ({msg}); skipping outside CI");
    true
}
