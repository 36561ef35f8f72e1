//! A whole text model end to end against Keras: tests/fixtures/text/nusax_textvec_bilstm.keras is
//! TextVectorization(adapted on NusaX train.csv, 2,000 tokens, 24 ids) -> Embedding(mask_zero) ->
//! Bidirectional(LSTM(6)) -> Dense(3) logits; nusax_textvec_bilstm.cases.json holds raw strings
//! (punctuation, mixed case, unknown words, "", only punctuation, longer than 24 tokens, NusaX
//! valid.csv sentences) and the logits Keras returned for each. Both made by
//! `tools/train_nusax.py --fixture tests/fixtures/text`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wgnn::{Backend, Model};

const RELATIVE_TOLERANCE: f32 = 1e-4;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name)
}

struct Case {
    text: String,
    ids: Vec<i64>,
    expected: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_path("nusax_textvec_bilstm.cases.json")).unwrap(),
    )
    .unwrap();
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect(),
            expected: c["expected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

/// Runs every case's raw text through the model's own TextVectorization and the network on
/// `backend`; returns the first mismatch as a message, or the largest relative error.
fn run_cases(backend: Backend) -> wgnn::Result<f32> {
    let model = Model::load(fixture_path("nusax_textvec_bilstm.keras"))?;
    let cases = cases();
    assert!(cases.len() >= 10, "the fixture should hold about 12 cases");
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let input = wgnn::eval::texts_to_input(&model, None, &texts)?;
    let output = model.run(&input, backend)?;
    assert_eq!(
        output.shape(),
        &[cases.len(), 3],
        "one row of 3 logits per text"
    );
    let mut worst = 0.0f32;
    for (row, case) in output.outer_iter().zip(&cases) {
        for (&got, &expected) in row.iter().zip(&case.expected) {
            let allowed = RELATIVE_TOLERANCE * (1.0 + expected.abs());
            assert!(
                (got - expected).abs() <= allowed,
                "{backend:?}: text {:?}: got {:?}, Keras {:?}",
                case.text,
                row.iter().collect::<Vec<_>>(),
                case.expected
            );
            worst = worst.max((got - expected).abs() / (1.0 + expected.abs()));
        }
    }
    Ok(worst)
}

#[test]
fn fixture_logits_are_not_near_uniform() {
    // A fixture with near-equal logits would let a broken network pass.
    let strong = cases()
        .iter()
        .filter(|c| {
            let max = c.expected.iter().cloned().fold(f32::MIN, f32::max);
            let min = c.expected.iter().cloned().fold(f32::MAX, f32::min);
            max - min > 1.0
        })
        .count();
    assert!(strong >= 8, "only {strong} cases have a logit spread > 1");
}

#[test]
fn model_text_vectorization_gives_keras_ids() {
    let model = Model::load(fixture_path("nusax_textvec_bilstm.keras")).unwrap();
    let tv = model
        .graph()
        .text_vectorization
        .as_ref()
        .expect("the fixture starts with TextVectorization");
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let ids = tv.vectorize(&texts);
    for (row, case) in ids.outer_iter().zip(&cases) {
        assert_eq!(row.to_vec(), case.ids, "ids for {:?}", case.text);
    }
}

#[test]
fn raw_text_on_cpu_matches_keras() {
    let worst = run_cases(Backend::Cpu).unwrap();
    println!("cpu: largest |got - keras| / (1 + |keras|) = {worst:.3e}");
}

#[test]
fn raw_text_on_gpu_matches_keras() {
    match run_cases(Backend::Gpu) {
        Ok(worst) => println!("gpu: largest |got - keras| / (1 + |keras|) = {worst:.3e}"),
        Err(e) if common::no_adapter_outside_ci(&e) => {}
        Err(e) => panic!("gpu: {e}"),
    }
}

#[test]
fn cli_sentiment_labels_raw_text() {
    let output = Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args([
            "sentiment",
            fixture_path("nusax_textvec_bilstm.keras").to_str().unwrap(),
            "Makanan di sini ENAK sekali!!!",
            "--backend",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "wgnn sentiment failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.stdout.is_empty(), "wgnn sentiment printed nothing");
}
